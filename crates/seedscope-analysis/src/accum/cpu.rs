//! The CPU accumulator: block-centred f32 GEMMs (matrixmultiply through ndarray, threaded)
//! merged into f64 totals.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use seedscope_gpu::TileReduction;

use super::{
    Accumulate, SavedState, inv_scale, missing_stream, no_stream, plan_mismatch, reduce_pairs,
    reduce_rows, used_streams,
};
use crate::AnalysisError;
use crate::plan::TileSpec;

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
    centred: Vec<Vec<f32>>,
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
        let Scratch { centred, product } = &mut self.scratch;
        centred.resize_with(self.moments.len(), Vec::new);
        // Each read stream centred on its block means, with each column's mean shift.
        let mut shifts: Vec<Option<Vec<f64>>> = Vec::with_capacity(centred.len());
        for ((m, x), buf) in self.moments.iter_mut().zip(block).zip(centred.iter_mut()) {
            shifts.push(match (m, x) {
                (Some(m), Some(x)) => Some(center_block(x.view(), m, w_mean, w_cross, buf)),
                _ => None,
            });
        }
        // The streams that sparse tiles read, column by column (`[cols, rows]` flat, so each
        // pair is one dot product of contiguous slices).
        let mut columns: Vec<Option<Vec<f32>>> = vec![None; centred.len()];
        for t in self.specs.iter().filter(|t| t.pairs.is_some()) {
            for s in [t.a_stream, t.b_stream] {
                if columns[s].is_none()
                    && let Some(d) = &shifts[s]
                {
                    columns[s] = Some(
                        rows_view(&centred[s], rows, d.len())?
                            .t()
                            .iter()
                            .copied()
                            .collect(),
                    );
                }
            }
        }
        // A stream only sparse tiles read keeps its columns alone: its rows would double its
        // memory until the next block (the refined second stage holds every stream this way).
        let mut dense = vec![false; centred.len()];
        for t in self.specs.iter().filter(|t| t.pairs.is_none()) {
            dense[t.a_stream] = true;
            dense[t.b_stream] = true;
        }
        for (s, buf) in centred.iter_mut().enumerate() {
            if columns[s].is_some() && !dense[s] {
                *buf = Vec::new();
            }
        }
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
                let (Some(xa), Some(xb)) = (&columns[t.a_stream], &columns[t.b_stream]) else {
                    return Err(missing_stream());
                };
                // Pair `e` is (anchor column a0 + e / per_row, pairs[e]). Independent pairs:
                // split over the cores (same sums, any split).
                let (a0, per_row) = (t.a_cols.start, pairs.len() / t.a_cols.len().max(1));
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let chunk = pairs.len().div_ceil(threads).max(1);
                std::thread::scope(|scope| {
                    for (n, (accs, js)) in
                        acc.chunks_mut(chunk).zip(pairs.chunks(chunk)).enumerate()
                    {
                        scope.spawn(move || {
                            for (o, (c, &j)) in accs.iter_mut().zip(js).enumerate() {
                                let i = (a0 + (n * chunk + o) / per_row.max(1)) as u32;
                                let g = dot(column(xa, i, rows), column(xb, j, rows));
                                *c += g + da[i as usize] * w_cross * db[j as usize];
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
            let mut g = ArrayViewMut2::from_shape((na, nb), &mut product[..na * nb])
                .map_err(|_| plan_mismatch())?;
            general_mat_mul(
                1.0,
                &ca.slice(s![.., t.a_cols.clone()]).t(),
                &cb.slice(s![.., t.b_cols.clone()]),
                0.0,
                &mut g,
            );
            let (da, db) = (&da[t.a_cols.clone()], &db[t.b_cols.clone()]);
            let rows_of = acc.chunks_exact_mut(nb).zip(product.chunks_exact(nb));
            for ((row, grow), &dai) in rows_of.zip(da) {
                let dai = dai * w_cross;
                for ((c, &gv), &dbj) in row.iter_mut().zip(grow).zip(db) {
                    *c += gv as f64 + dai * dbj;
                }
            }
        }
        self.count += rows as u64;
        Ok(())
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
        want_tile: impl Fn(usize) -> bool,
    ) -> Result<Vec<TileReduction>, AnalysisError> {
        let mut out = Vec::with_capacity(self.specs.len());
        for (k, (t, acc)) in self.specs.iter().zip(&self.tiles).enumerate() {
            let ia = self.scales(t.a_stream, t.a_cols.clone())?;
            let ib = self.scales(t.b_stream, t.b_cols.clone())?;
            out.push(match &t.pairs {
                Some(p) => reduce_pairs(acc, p, (&ia, &ib), t.b_cols.start, want_tile(k)),
                None => reduce_rows(acc, &ia, &ib, want_tile(k)),
            });
        }
        Ok(out)
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

/// Centre a block on its means (corrected two-pass, f64), merge its moments into `m`, write the
/// centred f32 block row-major into `out` (grown when short, its allocation kept for the next
/// block), and return each column's mean shift (block mean − previous mean).
fn center_block(
    x: ArrayView2<'_, f32>,
    m: &mut CpuMoments,
    w_mean: f64,
    w_m2: f64,
    out: &mut Vec<f32>,
) -> Vec<f64> {
    let x = x.as_standard_layout();
    let (rows, cols) = x.dim();
    if cols == 0 {
        return Vec::new();
    }
    let flat = x.as_slice().unwrap_or_default();
    if out.len() < rows * cols {
        out.resize(rows * cols, 0.0);
    }
    let (mut mean, mut m2) = (vec![0.0f64; cols], vec![0.0f64; cols]);
    // Row slices, so both passes vectorise across columns.
    for r in flat.chunks_exact(cols) {
        for (s, &v) in mean.iter_mut().zip(r) {
            *s += v as f64;
        }
    }
    mean.iter_mut().for_each(|s| *s /= rows as f64);
    for (o, r) in out.chunks_exact_mut(cols).zip(flat.chunks_exact(cols)) {
        for (((o, &v), &mu), s) in o.iter_mut().zip(r).zip(&mean).zip(m2.iter_mut()) {
            let d = v as f64 - mu;
            *s += d * d;
            *o = d as f32;
        }
    }
    let mut delta = vec![0.0f64; cols];
    for j in 0..cols {
        delta[j] = mean[j] - m.mean[j];
        m.mean[j] += delta[j] * w_mean;
        m.m2[j] += m2[j] + delta[j] * delta[j] * w_m2;
    }
    delta
}

/// The first `rows * cols` values of a centred block's buffer as its `[rows, cols]` matrix.
fn rows_view(buf: &[f32], rows: usize, cols: usize) -> Result<ArrayView2<'_, f32>, AnalysisError> {
    buf.get(..rows * cols)
        .and_then(|b| ArrayView2::from_shape((rows, cols), b).ok())
        .ok_or_else(plan_mismatch)
}

/// Column `i` of a `[cols, rows]` flat matrix.
fn column(x: &[f32], i: u32, rows: usize) -> &[f32] {
    let i = i as usize;
    &x[i * rows..(i + 1) * rows]
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
