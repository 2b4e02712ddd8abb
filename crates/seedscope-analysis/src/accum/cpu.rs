//! The CPU accumulator: block-centred f32 GEMMs (the `gemm` crate, threaded) merged into f64
//! totals.

use std::borrow::Cow;

use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;
use seedscope_gpu::TileReduction;

use super::{
    Accumulate, Finish, SavedState, inv_scale, missing_stream, no_stream, plan_mismatch,
    reduce_pairs, reduce_rows, used_streams,
};
use crate::AnalysisError;
use crate::plan::TileSpec;
use seedscope_model::matmul::{gram, matmul};

/// Running per-neuron moments on the CPU.
#[derive(Debug, Clone)]
pub struct CpuMoments {
    /// Mean.
    pub mean: Vec<f64>,
    /// Centred sum of squares.
    pub m2: Vec<f64>,
}

/// Accumulators of one pass on the CPU, f64 totals.
#[derive(Debug)]
pub struct CpuAccumulator {
    specs: Vec<TileSpec>,
    /// Per stream (none for streams the pass does not read).
    moments: Vec<Option<CpuMoments>>,
    /// `[a_len, b_len]` co-moments per dense tile, one per pair for a sparse one.
    tiles: Vec<Vec<f64>>,
    count: u64,
    /// Buffers kept from one update to the next (fresh ones cost the kernel a page clear each
    /// time: a tenth of an update at 4,096 × 1,024): each stream's centred block and one tile's
    /// f32 product.
    scratch: Scratch,
}

/// A read stream's block in an update: its centred rows (for dense tiles; `None` when only
/// sparse tiles read it) and each column's mean shift.
type Centred<'a> = (Option<ArrayView2<'a, f32>>, &'a [f64]);

/// Reused per-update buffers of a [`CpuAccumulator`].
#[derive(Debug, Default)]
struct Scratch {
    /// Per stream that dense tiles read: its centred block, `[rows, cols]`.
    centred: Vec<Vec<f32>>,
    /// Per stream that sparse tiles read: its centred block in [`Layout::Chunked`].
    columns: Vec<Vec<f32>>,
    /// One dense tile's f32 product.
    product: Vec<f32>,
}

impl CpuAccumulator {
    /// Zeroed accumulators for `specs`; `widths[s]` is stream `s`'s column count.
    pub fn new(specs: Vec<TileSpec>, widths: &[usize]) -> Self {
        let used = used_streams(&specs, widths.len());
        Self {
            moments: widths
                .iter()
                .zip(&used)
                .map(|(&w, &u)| {
                    u.then(|| CpuMoments {
                        mean: vec![0.0; w],
                        m2: vec![0.0; w],
                    })
                })
                .collect(),
            tiles: specs.iter().map(|t| vec![0.0; t.entries()]).collect(),
            specs,
            count: 0,
            scratch: Scratch::default(),
        }
    }

    /// The inverse scales `1/sqrt(M2)` of columns `cols` of stream `s`.
    fn scales(&self, s: usize, cols: std::ops::Range<usize>) -> Result<Vec<f64>, AnalysisError> {
        let m = self.moments[s].as_ref().ok_or_else(no_stream)?;
        Ok(cols
            .map(|i| inv_scale(m.mean[i], m.m2[i], self.count))
            .collect())
    }
}

impl Accumulate for CpuAccumulator {
    type Block = Array2<f32>;

    fn specs(&self) -> &[TileSpec] {
        &self.specs
    }

    fn streams(&self) -> Vec<bool> {
        self.moments.iter().map(Option::is_some).collect()
    }

    fn count(&self) -> u64 {
        self.count
    }

    fn update(&mut self, block: &[Option<Array2<f32>>]) -> Result<(), AnalysisError> {
        let rows = block
            .iter()
            .flatten()
            .map(|m| m.nrows())
            .next()
            .unwrap_or(0);
        if rows == 0 {
            return Ok(());
        }
        let (w_mean, w_cross) = seedscope_gpu::merge_weights(self.count, rows as u64);
        let Scratch {
            centred,
            columns,
            product,
        } = &mut self.scratch;
        let n_streams = self.moments.len();
        centred.resize_with(n_streams, Vec::new);
        columns.resize_with(n_streams, Vec::new);
        // How each stream is read: by dense tiles (rows, for the GEMMs), by sparse tiles
        // (chunked columns, for the pairs' dot products), or both.
        let (mut dense, mut sparse) = (vec![false; n_streams], vec![false; n_streams]);
        for t in &self.specs {
            let read = if t.pairs.is_some() {
                &mut sparse
            } else {
                &mut dense
            };
            read[t.a_stream] = true;
            read[t.b_stream] = true;
        }
        // Each read stream centred on its block means straight into the layout its tiles
        // read (both when both read it), with each column's mean shift. A stream only sparse
        // tiles read has no rows: they would double its memory (the refined second stage
        // reads every stream this way).
        let mut shifts: Vec<Option<Vec<f64>>> = Vec::with_capacity(n_streams);
        for (s, (m, x)) in self.moments.iter_mut().zip(block).enumerate() {
            shifts.push(match (m, x) {
                (Some(m), Some(x)) => {
                    let (x, cols) = (x.view(), x.ncols());
                    Some(if dense[s] {
                        let d =
                            center_block(x, m, (w_mean, w_cross), Layout::Rows, &mut centred[s]);
                        if sparse[s] {
                            chunk_rows(&centred[s], rows, cols, &mut columns[s]);
                        }
                        d
                    } else {
                        center_block(x, m, (w_mean, w_cross), Layout::Chunked, &mut columns[s])
                    })
                }
                _ => None,
            });
        }
        // This block's chunks (a kept buffer may be longer, from a longer block).
        let columns: Vec<Option<&[f32]>> = (0..n_streams)
            .map(|s| match &shifts[s] {
                Some(d) if sparse[s] => Some(&columns[s][..Layout::Chunked.len(rows, d.len())]),
                _ => None,
            })
            .collect();
        let centred: Vec<Option<Centred<'_>>> = shifts
            .iter()
            .zip(centred.iter())
            .zip(&dense)
            .map(|((d, buf), &dense)| {
                d.as_ref()
                    .map(|d| {
                        let rows = dense.then(|| rows_view(buf, rows, d.len())).transpose()?;
                        Ok((rows, d.as_slice()))
                    })
                    .transpose()
            })
            .collect::<Result<_, AnalysisError>>()?;
        for (t, acc) in self.specs.iter().zip(self.tiles.iter_mut()) {
            let (Some((ca, da)), Some((cb, db))) = (&centred[t.a_stream], &centred[t.b_stream])
            else {
                return Err(missing_stream());
            };
            if let Some(pairs) = &t.pairs {
                let (Some(xa), Some(xb)) = (columns[t.a_stream], columns[t.b_stream]) else {
                    return Err(missing_stream());
                };
                // Pair `e` is (anchor column a0 + e / per_row, pairs[e]). Independent pairs:
                // split over the cores (same sums, any split). Chunk by chunk of rows, so the
                // columns the pairs pick at random come from the cache, not from memory.
                let (a0, per_row) = (t.a_cols.start, pairs.len() / t.a_cols.len().max(1));
                let (wa, wb) = (da.len(), db.len());
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let chunk = pairs.len().div_ceil(threads).max(1);
                std::thread::scope(|scope| {
                    for (n, (accs, js)) in
                        acc.chunks_mut(chunk).zip(pairs.chunks(chunk)).enumerate()
                    {
                        let row_of = move |o: usize| a0 + (n * chunk + o) / per_row.max(1);
                        scope.spawn(move || {
                            let chunks = xa.chunks_exact(wa * ROW_CHUNK);
                            for (ca, cb) in chunks.zip(xb.chunks_exact(wb * ROW_CHUNK)) {
                                for (o, (c, &j)) in accs.iter_mut().zip(js).enumerate() {
                                    *c += dot(column(ca, row_of(o)), column(cb, j as usize));
                                }
                            }
                            for (o, (c, &j)) in accs.iter_mut().zip(js).enumerate() {
                                *c += da[row_of(o)] * w_cross * db[j as usize];
                            }
                        });
                    }
                });
                continue;
            }
            let (Some(ca), Some(cb)) = (ca, cb) else {
                return Err(missing_stream());
            };
            let (na, nb) = (t.a_cols.len(), t.b_cols.len());
            if na == 0 || nb == 0 {
                continue;
            }
            if product.len() < na * nb {
                product.resize(na * nb, 0.0);
            }
            if t.is_covariance() {
                gram(ca.slice(s![.., t.a_cols.clone()]), &mut product[..na * nb]);
            } else {
                matmul(
                    ca.slice(s![.., t.a_cols.clone()]).t(),
                    cb.slice(s![.., t.b_cols.clone()]),
                    &mut product[..na * nb],
                );
            }
            let (da, db) = (&da[t.a_cols.clone()], &db[t.b_cols.clone()]);
            let rows_of = acc
                .par_chunks_exact_mut(nb)
                .zip(product.par_chunks_exact(nb));
            rows_of.zip(da).for_each(|((row, grow), &dai)| {
                let dai = dai * w_cross;
                for ((c, &gv), &dbj) in row.iter_mut().zip(grow).zip(db) {
                    *c += gv as f64 + dai * dbj;
                }
            });
        }
        self.count += rows as u64;
        Ok(())
    }

    fn updates_done(&mut self) {
        self.scratch = Scratch::default();
    }

    async fn inv_scales(&self, stream: usize) -> Result<Vec<f64>, AnalysisError> {
        let width = self.moments[stream].as_ref().map_or(0, |m| m.mean.len());
        self.scales(stream, 0..width)
    }

    async fn mean_var(&self, stream: usize) -> Result<Vec<(f64, f64)>, AnalysisError> {
        let n = self.count.max(1) as f64;
        let m = self.moments[stream].as_ref().ok_or_else(no_stream)?;
        Ok(m.mean
            .iter()
            .zip(&m.m2)
            .map(|(&mean, &m2)| (mean, m2 / n))
            .collect())
    }

    async fn finalize(
        &self,
        finish: impl Fn(usize) -> Finish,
    ) -> Result<Vec<Option<TileReduction>>, AnalysisError> {
        let mut out = Vec::with_capacity(self.specs.len());
        for (k, (t, acc)) in self.specs.iter().zip(&self.tiles).enumerate() {
            let with_tile = match finish(k) {
                Finish::Skip => {
                    out.push(None);
                    continue;
                }
                f => f == Finish::WithTile,
            };
            let ia = self.scales(t.a_stream, t.a_cols.clone())?;
            let ib = self.scales(t.b_stream, t.b_cols.clone())?;
            out.push(Some(match &t.pairs {
                Some(p) => reduce_pairs(acc, p, (&ia, &ib), t.b_cols.start, with_tile),
                None => reduce_rows(acc, &ia, &ib, with_tile),
            }));
        }
        Ok(out)
    }

    async fn co_moments(&self, tile: usize) -> Result<Cow<'_, [f64]>, AnalysisError> {
        let t = self.tiles.get(tile).ok_or_else(plan_mismatch)?;
        Ok(Cow::Borrowed(t))
    }

    async fn save(&self) -> Result<SavedState, AnalysisError> {
        Ok(SavedState {
            count: self.count,
            moments: self
                .moments
                .iter()
                .map(|m| m.as_ref().map(|m| [m.mean.clone(), m.m2.clone()].concat()))
                .collect(),
            tiles: self.tiles.clone(),
            hists: Vec::new(),
            anatomy: Vec::new(),
        })
    }

    async fn save_canonical(&self) -> Result<SavedState, AnalysisError> {
        self.save().await
    }

    fn restore(&mut self, state: &SavedState) -> Result<(), AnalysisError> {
        if state.moments.len() != self.moments.len() || state.tiles.len() != self.tiles.len() {
            return Err(plan_mismatch());
        }
        for (m, s) in self.moments.iter_mut().zip(&state.moments) {
            match (m, s) {
                (Some(m), Some(s)) if s.len() == 2 * m.mean.len() => {
                    let w = m.mean.len();
                    m.mean.copy_from_slice(&s[..w]);
                    m.m2.copy_from_slice(&s[w..]);
                }
                (None, None) => {}
                _ => return Err(plan_mismatch()),
            }
        }
        for (t, s) in self.tiles.iter_mut().zip(&state.tiles) {
            if t.len() != s.len() {
                return Err(plan_mismatch());
            }
            t.copy_from_slice(s);
        }
        self.count = state.count;
        Ok(())
    }
}

/// How a centred block is laid out in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `[rows, cols]` row-major, for the dense tiles' GEMMs.
    Rows,
    /// Chunks of [`ROW_CHUNK`] rows, each `[cols, ROW_CHUNK]` (column by column, so a sparse
    /// pair's part of a chunk is one contiguous slice), the last padded with zeros, which add
    /// nothing to a dot product.
    Chunked,
}

impl Layout {
    /// Values a `[rows, cols]` block takes in this layout.
    fn len(self, rows: usize, cols: usize) -> usize {
        match self {
            Layout::Rows => rows * cols,
            Layout::Chunked => rows.div_ceil(ROW_CHUNK) * cols * ROW_CHUNK,
        }
    }
}

/// Rows per part of a block's centring: the parts are reduced in parallel and their sums added
/// in order, so the totals do not depend on the thread count. A multiple of [`ROW_CHUNK`], so
/// a part is whole chunks of a [`Layout::Chunked`] buffer too.
const PART: usize = 4 * ROW_CHUNK;

/// Centre a block on its means (corrected two-pass, f64), merge its moments into `m` (with the
/// merge weights of the mean and the cross term), write the centred f32 block in `layout`
/// into `out` (grown when short, its allocation kept for the next block), and return each
/// column's mean shift (block mean − previous mean). Parts of [`PART`] rows run in parallel.
fn center_block(
    x: ArrayView2<'_, f32>,
    m: &mut CpuMoments,
    (w_mean, w_m2): (f64, f64),
    layout: Layout,
    out: &mut Vec<f32>,
) -> Vec<f64> {
    let x = x.as_standard_layout();
    let (rows, cols) = x.dim();
    if cols == 0 {
        return Vec::new();
    }
    let flat = x.as_slice().unwrap_or_default();
    let len = layout.len(rows, cols);
    if out.len() < len {
        out.resize(len, 0.0);
    }
    // Row slices, so both passes vectorise across columns.
    let mut mean = sum_parts(flat.par_chunks(PART * cols).map(|part| {
        let mut sum = vec![0.0f64; cols];
        for r in part.chunks_exact(cols) {
            for (s, &v) in sum.iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        sum
    }));
    mean.iter_mut().for_each(|s| *s /= rows as f64);
    let mean = &mean;
    // A part's rows fill exactly `PART * cols` values of `out` in either layout.
    let outs = out[..len].par_chunks_mut(PART * cols);
    let m2 = sum_parts(outs.zip(flat.par_chunks(PART * cols)).map(|(o, part)| {
        let mut m2 = vec![0.0f64; cols];
        for (r, row) in part.chunks_exact(cols).enumerate() {
            let deltas = row.iter().zip(mean).map(|(&v, &mu)| v as f64 - mu);
            match layout {
                Layout::Rows => {
                    let o = &mut o[r * cols..(r + 1) * cols];
                    for ((o, d), s) in o.iter_mut().zip(deltas).zip(m2.iter_mut()) {
                        *s += d * d;
                        *o = d as f32;
                    }
                }
                Layout::Chunked => {
                    let chunk = &mut o[(r / ROW_CHUNK) * cols * ROW_CHUNK..];
                    let at = r % ROW_CHUNK;
                    for (j, (d, s)) in deltas.zip(m2.iter_mut()).enumerate() {
                        *s += d * d;
                        chunk[j * ROW_CHUNK + at] = d as f32;
                    }
                }
            }
        }
        m2
    }));
    if layout == Layout::Chunked {
        zero_padding(out, rows, cols);
    }
    let mut delta = vec![0.0f64; cols];
    for j in 0..cols {
        delta[j] = mean[j] - m.mean[j];
        m.mean[j] += delta[j] * w_mean;
        m.m2[j] += m2[j] + delta[j] * delta[j] * w_m2;
    }
    delta
}

/// The element-wise sum of the parts' vectors, added in part order.
fn sum_parts(parts: impl IndexedParallelIterator<Item = Vec<f64>>) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = parts.collect();
    let total = parts.into_iter().reduce(|mut total, part| {
        total.iter_mut().zip(&part).for_each(|(t, &v)| *t += v);
        total
    });
    total.unwrap_or_default()
}

/// A centred `[rows, cols]` block's rows copied into [`Layout::Chunked`] (for a stream both
/// kinds of tile read), parts of [`PART`] rows in parallel.
fn chunk_rows(x: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
    let len = Layout::Chunked.len(rows, cols);
    if out.len() < len {
        out.resize(len, 0.0);
    }
    if cols == 0 {
        return; // Nothing to copy (and no chunks of zero length to split into).
    }
    let parts = out[..len]
        .par_chunks_mut(PART * cols)
        .zip(x[..rows * cols].par_chunks(PART * cols));
    parts.for_each(|(o, part)| {
        for (r, row) in part.chunks_exact(cols).enumerate() {
            let chunk = &mut o[(r / ROW_CHUNK) * cols * ROW_CHUNK..];
            for (j, &v) in row.iter().enumerate() {
                chunk[j * ROW_CHUNK + r % ROW_CHUNK] = v;
            }
        }
    });
    zero_padding(out, rows, cols);
}

/// Zero the rows past `rows` in the last chunk of a [`Layout::Chunked`] buffer (a kept
/// buffer holds the previous block's values there).
fn zero_padding(out: &mut [f32], rows: usize, cols: usize) {
    let filled = rows % ROW_CHUNK;
    if filled == 0 {
        return;
    }
    let last = &mut out[(rows / ROW_CHUNK) * cols * ROW_CHUNK..][..cols * ROW_CHUNK];
    for col in last.chunks_exact_mut(ROW_CHUNK) {
        col[filled..].fill(0.0);
    }
}

/// The first `rows * cols` values of a centred block's buffer as its `[rows, cols]` matrix.
fn rows_view(buf: &[f32], rows: usize, cols: usize) -> Result<ArrayView2<'_, f32>, AnalysisError> {
    buf.get(..rows * cols)
        .and_then(|b| ArrayView2::from_shape((rows, cols), b).ok())
        .ok_or_else(plan_mismatch)
}

/// Rows per chunk of a stream that sparse tiles read: a GPT-2-small stream's columns over
/// one chunk are 9.4 MB, so a tile's random picks among them hit the cache (reading whole
/// columns of a block from memory for each pair made the refined second stage memory-bound).
const ROW_CHUNK: usize = 64;

/// Column `i` of one chunk of a [`Layout::Chunked`] block.
fn column(chunk: &[f32], i: usize) -> &[f32] {
    &chunk[i * ROW_CHUNK..(i + 1) * ROW_CHUNK]
}

/// Dot product of two f32 slices with eight partial sums (so it vectorises), in f64 at the end.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Sparse pairs come out as the exact correlation, over blocks that grow and shrink (the
    /// kept chunked buffers hold a longer block's values past a shorter one's end, and each
    /// block ends inside a chunk), for a stream only sparse tiles read (2), one only dense
    /// tiles read (1) and one both read (0).
    #[test]
    fn sparse_pairs_over_blocks_of_any_length_are_the_exact_correlations() {
        let widths = [5, 7, 6];
        let pairs = Arc::new(vec![0, 3, 5, 1, 2, 4, 5, 0, 1, 5, 4, 2, 3, 4, 1]);
        let specs = vec![
            TileSpec::dense(0, 0..5, 1, 0..7),
            TileSpec {
                pairs: Some(pairs.clone()),
                ..TileSpec::dense(0, 0..5, 2, 0..6)
            },
            TileSpec {
                pairs: Some(Arc::new(vec![1, 4, 0, 2, 3])),
                ..TileSpec::dense(0, 0..5, 0, 0..5)
            },
        ];
        let mut acc = CpuAccumulator::new(specs, &widths);
        let lengths = [100, 30, 140, 64, 1];
        let total: usize = lengths.iter().sum();
        // Columns with means far from zero and different scales (the centring matters).
        let value = |s: usize, c: usize, r: usize| -> f32 {
            let t = (r * 7919 + c * 104_729 + s * 1_299_709) % 1000;
            (t as f32 / 1000.0 - 0.5) * (1.0 + c as f32) + 3.0 * s as f32 + c as f32
        };
        let mut r0 = 0;
        for &n in &lengths {
            let block: Vec<Option<Array2<f32>>> = widths
                .iter()
                .enumerate()
                .map(|(s, &w)| Some(Array2::from_shape_fn((n, w), |(r, c)| value(s, c, r0 + r))))
                .collect();
            acc.update(&block).expect("update");
            r0 += n;
        }
        let out: Vec<_> = pollster::block_on(acc.finalize(|_| Finish::WithTile))
            .expect("finalize")
            .into_iter()
            .flatten()
            .collect();
        let column = |s: usize, c: usize| {
            (0..total)
                .map(|r| value(s, c, r) as f64)
                .collect::<Vec<_>>()
        };
        let check = |tile: &[f32], want: &[(usize, usize, usize, usize)]| {
            for (&got, &(sa, a, sb, b)) in tile.iter().zip(want) {
                let exact = crate::stats::pearson(&column(sa, a), &column(sb, b));
                assert!(
                    (got as f64 - exact).abs() < 1e-5,
                    "stream {sa} col {a} with stream {sb} col {b}: {got} vs {exact}"
                );
            }
        };
        let dense: Vec<_> = (0..5)
            .flat_map(|a| (0..7).map(move |b| (0, a, 1, b)))
            .collect();
        check(out[0].tile.as_deref().expect("dense tile"), &dense);
        let sparse: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(e, &b)| (0, e / 3, 2, b as usize))
            .collect();
        check(out[1].tile.as_deref().expect("sparse tile"), &sparse);
        let both: Vec<_> = [1, 4, 0, 2, 3]
            .iter()
            .enumerate()
            .map(|(a, &b)| (0, a, 0, b))
            .collect();
        check(out[2].tile.as_deref().expect("sparse tile"), &both);
    }
}
