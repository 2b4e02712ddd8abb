//! The CPU accumulator: block-centred f32 GEMMs (the `gemm` crate, threaded) merged into f64
//! totals, or, in a pass that holds its rows ([`HeldRows`]), one GEMM per tile at its end.

use std::borrow::Cow;
use std::ops::Range;

use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;
use seedscope_gpu::TileReduction;

use super::held::HeldRows;
use super::{
    Accumulate, Finish, SavedState, inv_scale, missing_stream, no_stream, plan_mismatch,
    reduce_pairs, reduce_rows, used_streams,
};
use crate::AnalysisError;
use crate::plan::TileSpec;
use seedscope_model::matmul::{grams_upper, matmul, mirror_upper};

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
    /// What the pass keeps of its blocks.
    totals: Totals,
    count: u64,
    /// Buffers kept from one update to the next (fresh ones cost the kernel a page clear each
    /// time: a tenth of an update at 4,096 × 1,024): each stream's centred block and one tile's
    /// f32 product.
    scratch: Scratch,
    /// Whether the covariance tiles' sums below the diagonal lag behind those above it: an
    /// update merges a block's Gram matrix on and above the diagonal only
    /// ([`grams_upper`]), and [`Accumulate::updates_done`] mirrors the sums once.
    lower_stale: bool,
}

/// What a [`CpuAccumulator`] keeps of the blocks it has merged.
#[derive(Debug)]
enum Totals {
    /// Every tile's co-moments: `[a_len, b_len]` per dense tile, one per pair for a sparse one.
    Sums(Vec<Vec<f64>>),
    /// The rows themselves, multiplied at the end of the pass.
    Rows(HeldRows),
}

/// Reused per-update buffers of a [`CpuAccumulator`].
#[derive(Debug, Default)]
struct Scratch {
    /// Every stream that dense tiles read, centred side by side: `[rows, Σ widths]`
    /// row-major, so tiles of several streams next to each other are one GEMM ([`rectangles`]).
    centred: Vec<f32>,
    /// Per stream that sparse tiles read: its centred block in [`Layout::Chunked`].
    columns: Vec<Vec<f32>>,
    /// One GEMM's f32 product (a [`Rect`], or one covariance tile).
    product: Vec<f32>,
}

impl CpuAccumulator {
    /// Zeroed accumulators for `specs`; `widths[s]` is stream `s`'s column count.
    pub fn new(specs: Vec<TileSpec>, widths: &[usize]) -> Self {
        let sums = specs.iter().map(|t| vec![0.0; t.entries()]).collect();
        Self::with_totals(specs, widths, Totals::Sums(sums))
    }

    /// Accumulators for `specs` (dense tiles) that hold the rows of every block, about
    /// `expected` of them, and multiply each tile once when the pass ends ([`HeldRows`]).
    pub fn holding_rows(specs: Vec<TileSpec>, widths: &[usize], expected: u64) -> Self {
        let used = used_streams(&specs, widths.len());
        let held = HeldRows::new(&used, widths, expected);
        Self::with_totals(specs, widths, Totals::Rows(held))
    }

    /// The accumulators a saved state of sums describes, for `specs` and `widths` as
    /// [`CpuAccumulator::new`]: the state's owned arrays become the tiles as they are. A merge
    /// of shards builds its sums once; restoring them into zeroed accumulators would hold
    /// two copies of a pass's sums at once.
    pub fn from_saved(
        specs: Vec<TileSpec>,
        widths: &[usize],
        state: SavedState<'_>,
    ) -> Result<Self, AnalysisError> {
        let fits = |(t, s): (&TileSpec, &Cow<'_, [f64]>)| t.entries() == s.len();
        if !state.rows.is_empty()
            || state.tiles.len() != specs.len()
            || !specs.iter().zip(&state.tiles).all(fits)
        {
            return Err(plan_mismatch());
        }
        let sums = state.tiles.into_iter().map(Cow::into_owned).collect();
        let mut acc = Self::with_totals(specs, widths, Totals::Sums(sums));
        restore_moments(&mut acc.moments, &state.moments)?;
        acc.count = state.count;
        Ok(acc)
    }

    fn with_totals(specs: Vec<TileSpec>, widths: &[usize], totals: Totals) -> Self {
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
            totals,
            specs,
            count: 0,
            scratch: Scratch::default(),
            lower_stale: false,
        }
    }

    /// Tile `k`'s sums (in a pass that keeps sums), whole: a covariance tile's mirrored where
    /// its lower triangle lags ([`CpuAccumulator::lower_stale`]).
    fn sums(&self, k: usize) -> Result<Cow<'_, [f64]>, AnalysisError> {
        let Totals::Sums(tiles) = &self.totals else {
            return Err(plan_mismatch());
        };
        let (t, sums) = (self.specs.get(k), tiles.get(k));
        let (Some(t), Some(sums)) = (t, sums) else {
            return Err(plan_mismatch());
        };
        if self.lower_stale && t.is_covariance() {
            let mut whole = sums.clone();
            mirror_upper(&mut whole, t.a_cols.len());
            return Ok(Cow::Owned(whole));
        }
        Ok(Cow::Borrowed(sums))
    }

    /// Make every covariance tile whole where its lower triangle lags: one mirror for all the
    /// updates since the last.
    fn mirror_lower(&mut self) {
        if let (Totals::Sums(tiles), true) = (&mut self.totals, self.lower_stale) {
            tiles
                .par_iter_mut()
                .zip(&self.specs)
                .filter(|(_, t)| t.is_covariance())
                .for_each(|(sums, t)| mirror_upper(sums, t.a_cols.len()));
            self.lower_stale = false;
        }
    }

    /// Every stream's moments as a checkpoint saves them: means, then M2.
    fn saved_moments(&self) -> Vec<Option<Vec<f64>>> {
        self.moments
            .iter()
            .map(|m| m.as_ref().map(|m| [m.mean.clone(), m.m2.clone()].concat()))
            .collect()
    }

    /// An error unless the moments are complete (held rows are summed when the pass ends).
    fn ready(&self) -> Result<(), AnalysisError> {
        match &self.totals {
            Totals::Rows(h) if !h.is_centred() => Err(AnalysisError::Invalid(
                "a pass that holds its rows is read before its updates are done".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The inverse scales `1/sqrt(M2)` of columns `cols` of stream `s`.
    fn scales(&self, s: usize, cols: std::ops::Range<usize>) -> Result<Vec<f64>, AnalysisError> {
        self.ready()?;
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
        let tiles = match &mut self.totals {
            Totals::Sums(tiles) => tiles,
            Totals::Rows(held) => {
                self.count += held.append(block)? as u64;
                return Ok(());
            }
        };
        let (w_mean, w_cross) = seedscope_gpu::merge_weights(self.count, rows as u64);
        let Scratch {
            centred,
            columns,
            product,
        } = &mut self.scratch;
        let n_streams = self.moments.len();
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
        // Where each stream that dense tiles read starts in the centred block.
        let mut offset = vec![0; n_streams];
        let mut width = 0;
        for (s, x) in block.iter().enumerate() {
            if let (true, Some(x)) = (dense[s], x) {
                offset[s] = width;
                width += x.ncols();
            }
        }
        // Each read stream centred on its block means straight into the layout its tiles
        // read (both when both read it), with each column's mean shift. A stream only sparse
        // tiles read has no rows: they would double its memory (the refined second stage
        // reads every stream this way).
        let mut shifts: Vec<Option<Vec<f64>>> = Vec::with_capacity(n_streams);
        for (s, (m, x)) in self.moments.iter_mut().zip(block).enumerate() {
            shifts.push(match (m, x) {
                (Some(m), Some(x)) => {
                    let weights = (w_mean, w_cross);
                    Some(if dense[s] {
                        let at = Layout::Rows {
                            width,
                            offset: offset[s],
                        };
                        let d = center_block(x.view(), m, weights, at, centred);
                        if sparse[s] {
                            let rows = rows_view(centred, rows, width)?;
                            let cols = offset[s]..offset[s] + x.ncols();
                            chunk_rows(rows.slice(s![.., cols]), &mut columns[s]);
                        }
                        d
                    } else {
                        center_block(x.view(), m, weights, Layout::Chunked, &mut columns[s])
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
        let centred = rows_view(centred, rows, width)?;
        // Each dense tile's columns in the centred block: products, and covariances.
        let mut products = Vec::new();
        let mut covariances = Vec::new();
        for (k, t) in self.specs.iter().enumerate() {
            let (Some(_), Some(_)) = (&shifts[t.a_stream], &shifts[t.b_stream]) else {
                return Err(missing_stream());
            };
            if t.pairs.is_some() || t.a_cols.is_empty() || t.b_cols.is_empty() {
                continue;
            }
            if !dense[t.a_stream] || !dense[t.b_stream] {
                return Err(missing_stream());
            }
            let global = |s: usize, c: &Range<usize>| offset[s] + c.start..offset[s] + c.end;
            let a = global(t.a_stream, &t.a_cols);
            if t.is_covariance() {
                covariances.push((k, a));
            } else {
                products.push((k, a, global(t.b_stream, &t.b_cols)));
            }
        }
        let full = |s: usize| -> &[f64] { shifts[s].as_deref().unwrap_or_default() };
        let shift = |s: usize, c: &Range<usize>| -> &[f64] { &full(s)[c.clone()] };
        for (t, acc) in self.specs.iter().zip(tiles.iter_mut()) {
            let Some(pairs) = &t.pairs else {
                continue;
            };
            let (Some(xa), Some(xb)) = (columns[t.a_stream], columns[t.b_stream]) else {
                return Err(missing_stream());
            };
            add_pairs(
                acc,
                t,
                pairs,
                (xa, xb),
                (full(t.a_stream), full(t.b_stream)),
                w_cross,
            );
        }
        // Dense tiles side by side are one GEMM; each adds its part of the product.
        let cap = products
            .iter()
            .map(|(_, a, b)| a.len() * b.len())
            .fold(MAX_PRODUCT, usize::max);
        for r in rectangles(&products, cap) {
            let (na, nb) = (r.a.len(), r.b.len());
            grow(product, na * nb);
            matmul(
                centred.slice(s![.., r.a.clone()]).t(),
                centred.slice(s![.., r.b.clone()]),
                &mut product[..na * nb],
            );
            for (k, a, b) in r.tiles {
                let t = &self.specs[k];
                let part = Part {
                    product: &product[..na * nb],
                    stride: nb,
                    at: (a.start - r.a.start, b.start - r.b.start),
                };
                let shifts = (shift(t.a_stream, &t.a_cols), shift(t.b_stream, &t.b_cols));
                merge(&mut tiles[k], part, shifts, w_cross);
            }
        }
        // Covariances side by side, every band of each Gram matrix one task ([`grams`]).
        for group in batches(covariances, MAX_PRODUCT) {
            let total: usize = group.iter().map(|(_, a)| a.len() * a.len()).sum();
            grow(product, total);
            let mut outs = Vec::with_capacity(group.len());
            let mut rest = &mut product[..total];
            for (_, a) in &group {
                let (out, tail) = rest.split_at_mut(a.len() * a.len());
                outs.push((centred.slice(s![.., a.clone()]), out));
                rest = tail;
            }
            grams_upper(&mut outs);
            let mut at = 0;
            for (k, a) in group {
                let (t, n) = (&self.specs[k], a.len());
                let d = shift(t.a_stream, &t.a_cols);
                merge_upper(&mut tiles[k], &product[at..at + n * n], d, w_cross);
                at += n * n;
                self.lower_stale = true;
            }
        }
        self.count += rows as u64;
        Ok(())
    }

    fn updates_done(&mut self) {
        self.scratch = Scratch::default();
        match &mut self.totals {
            Totals::Rows(held) => held.finish(&mut self.moments),
            Totals::Sums(_) => self.mirror_lower(),
        }
    }

    async fn inv_scales(&self, stream: usize) -> Result<Vec<f64>, AnalysisError> {
        let width = self.moments[stream].as_ref().map_or(0, |m| m.mean.len());
        self.scales(stream, 0..width)
    }

    async fn mean_var(&self, stream: usize) -> Result<Vec<(f64, f64)>, AnalysisError> {
        self.ready()?;
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
        mut sink: impl AsyncFnMut(usize, TileReduction) -> Result<Option<Vec<f32>>, AnalysisError>,
    ) -> Result<(), AnalysisError> {
        let mut spare = Vec::new();
        // A held pass's products, one tile at a time.
        let mut product = Vec::new();
        for (k, t) in self.specs.iter().enumerate() {
            let tile = match finish(k) {
                Finish::Skip => continue,
                Finish::Extremes => None,
                Finish::WithTile => Some(std::mem::take(&mut spare)),
            };
            let ia = self.scales(t.a_stream, t.a_cols.clone())?;
            let ib = self.scales(t.b_stream, t.b_cols.clone())?;
            let red = match (&self.totals, &t.pairs) {
                (Totals::Sums(tiles), Some(p)) => {
                    reduce_pairs(&tiles[k], p, (&ia, &ib), t.b_cols.start, tile)
                }
                (Totals::Sums(_), None) => reduce_rows(&self.sums(k)?, &ia, &ib, tile),
                (Totals::Rows(held), _) => {
                    held.product(t, &mut product)?;
                    reduce_rows(&product, &ia, &ib, tile)
                }
            };
            if let Some(back) = sink(k, red).await? {
                spare = back;
            }
        }
        Ok(())
    }

    async fn co_moments(&self, tile: usize) -> Result<Cow<'_, [f64]>, AnalysisError> {
        match &self.totals {
            Totals::Sums(_) => self.sums(tile),
            Totals::Rows(held) => {
                let t = self.specs.get(tile).ok_or_else(plan_mismatch)?;
                let mut product = Vec::new();
                held.product(t, &mut product)?;
                Ok(Cow::Owned(product.into_iter().map(f64::from).collect()))
            }
        }
    }

    async fn save(&mut self) -> Result<SavedState<'_>, AnalysisError> {
        // Whole covariance tiles, so the sums can be lent as they are (the mirror is the one
        // `updates_done` makes; later updates merge above the diagonal again).
        self.mirror_lower();
        let (tiles, rows) = match &self.totals {
            Totals::Sums(tiles) => (
                tiles.iter().map(|t| Cow::Borrowed(&t[..])).collect(),
                Vec::new(),
            ),
            Totals::Rows(held) => (Vec::new(), held.saved()?),
        };
        Ok(SavedState {
            count: self.count,
            moments: self.saved_moments(),
            tiles,
            rows,
            hists: Vec::new(),
            anatomy: Vec::new(),
        })
    }

    async fn save_canonical(&self) -> Result<SavedState<'_>, AnalysisError> {
        let held = match &self.totals {
            Totals::Rows(held) => held,
            Totals::Sums(tiles) => {
                return Ok(SavedState {
                    count: self.count,
                    moments: self.saved_moments(),
                    tiles: (0..tiles.len())
                        .map(|k| self.sums(k))
                        .collect::<Result<_, _>>()?,
                    rows: Vec::new(),
                    hists: Vec::new(),
                    anatomy: Vec::new(),
                });
            }
        };
        // The sums the rows make: their moments and every tile's co-moments.
        let mut held = held.clone();
        let mut moments = self.moments.clone();
        held.finish(&mut moments);
        let mut tiles = Vec::with_capacity(self.specs.len());
        let mut product = Vec::new();
        for t in &self.specs {
            held.product(t, &mut product)?;
            tiles.push(Cow::Owned(product.iter().map(|&v| f64::from(v)).collect()));
        }
        Ok(SavedState {
            count: self.count,
            moments: moments
                .into_iter()
                .map(|m| m.map(|m| [m.mean, m.m2].concat()))
                .collect(),
            tiles,
            rows: Vec::new(),
            hists: Vec::new(),
            anatomy: Vec::new(),
        })
    }

    fn restore(&mut self, state: &SavedState<'_>) -> Result<(), AnalysisError> {
        match &mut self.totals {
            Totals::Rows(held) if state.tiles.is_empty() => {
                if state.moments.len() != self.moments.len() {
                    return Err(plan_mismatch());
                }
                held.restore(&state.rows, state.count)?;
            }
            Totals::Sums(tiles) if state.rows.is_empty() && same_lengths(tiles, &state.tiles) => {
                restore_moments(&mut self.moments, &state.moments)?;
                for (t, s) in tiles.iter_mut().zip(&state.tiles) {
                    t.copy_from_slice(s);
                }
            }
            _ => return Err(plan_mismatch()),
        }
        // Saved states are whole: `save` mirrors before it lends the sums.
        self.lower_stale = false;
        self.count = state.count;
        Ok(())
    }
}

/// Whether saved tiles have the lengths of `tiles`, one for one.
fn same_lengths(tiles: &[Vec<f64>], saved: &[Cow<'_, [f64]>]) -> bool {
    tiles.len() == saved.len() && tiles.iter().zip(saved).all(|(t, s)| t.len() == s.len())
}

/// Every stream's moments from a saved state's (means, then M2).
fn restore_moments(
    moments: &mut [Option<CpuMoments>],
    saved: &[Option<Vec<f64>>],
) -> Result<(), AnalysisError> {
    if saved.len() != moments.len() {
        return Err(plan_mismatch());
    }
    for (m, s) in moments.iter_mut().zip(saved) {
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
    Ok(())
}

/// How a centred block is laid out in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Row-major, `width` values a row, the block's columns from `offset` (the dense tiles'
    /// GEMMs read every stream's block side by side).
    Rows { width: usize, offset: usize },
    /// Chunks of [`ROW_CHUNK`] rows, each `[cols, ROW_CHUNK]` (column by column, so a sparse
    /// pair's part of a chunk is one contiguous slice), the last padded with zeros, which add
    /// nothing to a dot product.
    Chunked,
}

impl Layout {
    /// Values a buffer holding a `[rows, cols]` block in this layout takes.
    fn len(self, rows: usize, cols: usize) -> usize {
        match self {
            Layout::Rows { width, .. } => rows * width,
            Layout::Chunked => rows.div_ceil(ROW_CHUNK) * cols * ROW_CHUNK,
        }
    }

    /// Values of the buffer that [`PART`] rows of a block of `cols` columns span.
    fn part(self, cols: usize) -> usize {
        match self {
            Layout::Rows { width, .. } => PART * width,
            Layout::Chunked => PART * cols,
        }
    }
}

/// The largest product (f32 values) one GEMM of several dense tiles writes, or one batch of
/// covariances ([`batches`]), unless one tile alone is larger: 1,024 anchor neurons by 4,096
/// (16 MiB). The embedded family's sixteen
/// 512 × 512 tiles of a block are one such GEMM, which the `gemm` crate runs 10–40 % faster
/// than the sixteen on two AVX2 cores; GPT-2-width tiles (3,072 × 3,072) are GEMMs of their
/// own, already large enough.
pub(crate) const MAX_PRODUCT: usize = 1 << 22;

/// A dense tile in the centred block: its index in the pass's specs, its anchor columns and
/// its other columns.
type DenseTile = (usize, Range<usize>, Range<usize>);

/// Dense tiles multiplied as one GEMM: anchor columns `a` by other columns `b` of the centred
/// block, covered exactly by `tiles`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rect {
    a: Range<usize>,
    b: Range<usize>,
    tiles: Vec<DenseTile>,
}

/// Group dense tiles of the centred block into
/// rectangles that they cover exactly, none of more than `cap` entries unless one tile is:
/// first the tiles with the same anchor columns whose other columns follow each other, then
/// those runs with the same other columns whose anchor columns follow each other.
fn rectangles(tiles: &[DenseTile], cap: usize) -> Vec<Rect> {
    let mut sorted = tiles.to_vec();
    sorted.sort_by_key(|(_, a, b)| (a.start, a.end, b.start, b.end));
    let mut runs: Vec<Rect> = Vec::new();
    for tile in sorted {
        let (_, a, b) = &tile;
        match runs.last_mut() {
            Some(r)
                if r.a == *a && r.b.end == b.start && a.len() * (r.b.len() + b.len()) <= cap =>
            {
                r.b.end = b.end;
                r.tiles.push(tile);
            }
            _ => runs.push(Rect {
                a: a.clone(),
                b: b.clone(),
                tiles: vec![tile],
            }),
        }
    }
    runs.sort_by_key(|r| (r.b.start, r.b.end, r.a.start));
    let mut out: Vec<Rect> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(o)
                if o.b == r.b
                    && o.a.end == r.a.start
                    && (o.a.len() + r.a.len()) * o.b.len() <= cap =>
            {
                o.a.end = r.a.end;
                o.tiles.extend(r.tiles);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Chan's merge of one block into a sparse tile's co-moments: each candidate pair's dot
/// product over the centred chunks `(xa, xb)` plus the cross term of the mean shifts
/// `(da, db)` (every column of each stream). Pair `e` is (anchor column `a_cols.start + e /
/// per_row`, `pairs[e]`). The anchor columns are split over the cores, whole rows of pairs
/// each (the same sums for any split), and taken chunk by chunk of rows, so that the columns
/// the pairs pick at random come from the cache, not from memory ([`PairDots`]).
fn add_pairs(
    acc: &mut [f64],
    t: &TileSpec,
    pairs: &[u32],
    (xa, xb): (&[f32], &[f32]),
    (da, db): (&[f64], &[f64]),
    w_cross: f64,
) {
    let n_rows = t.a_cols.len();
    // The plan gives every anchor column the same number of pairs (none: nothing to add).
    let per_row = pairs.len() / n_rows.max(1);
    if per_row == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = n_rows.div_ceil(threads);
    let stride = rows_per_task * per_row;
    acc.par_chunks_mut(stride)
        .zip(pairs.par_chunks(stride))
        .enumerate()
        .for_each(|(n, (acc, pairs))| {
            let a0 = t.a_cols.start + n * rows_per_task;
            pulp::Arch::new().dispatch(PairDots {
                acc,
                pairs,
                per_row,
                a0,
                x: (xa, xb),
                widths: (da.len(), db.len()),
            });
            for (row, (acc, pairs)) in acc
                .chunks_mut(per_row)
                .zip(pairs.chunks(per_row))
                .enumerate()
            {
                let dai = da[a0 + row] * w_cross;
                for (c, &j) in acc.iter_mut().zip(pairs) {
                    *c += dai * db[j as usize];
                }
            }
        });
}

/// One task's share of [`add_pairs`]: for every chunk of rows, the dot product of anchor
/// column `a0 + e / per_row` with other column `pairs[e]`, added to `acc[e]` (f32 within a
/// chunk, f64 across chunks). Each anchor column is read once for four candidates, with a
/// fused multiply-add per lane where the CPU has one (pulp picks AVX2 or AVX-512 at run time).
struct PairDots<'a> {
    acc: &'a mut [f64],
    pairs: &'a [u32],
    per_row: usize,
    a0: usize,
    /// The two streams' chunked centred blocks.
    x: (&'a [f32], &'a [f32]),
    /// Their column counts.
    widths: (usize, usize),
}

impl pulp::WithSimd for PairDots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let PairDots {
            acc,
            pairs,
            per_row,
            a0,
            x: (xa, xb),
            widths: (wa, wb),
        } = self;
        let dot = |a: &[f32], b: &[f32]| -> f32 {
            let (ah, at) = S::as_simd_f32s(a);
            let (bh, bt) = S::as_simd_f32s(b);
            let mut s = simd.splat_f32s(0.0);
            for (&x, &y) in ah.iter().zip(bh) {
                s = simd.mul_add_e_f32s(x, y, s);
            }
            simd.reduce_sum_f32s(s) + at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>()
        };
        let chunks = xa
            .chunks_exact(wa * ROW_CHUNK)
            .zip(xb.chunks_exact(wb * ROW_CHUNK));
        for (ca, cb) in chunks {
            for (row, (acc, js)) in acc
                .chunks_mut(per_row)
                .zip(pairs.chunks(per_row))
                .enumerate()
            {
                let a = column(ca, a0 + row);
                let (ah, at) = S::as_simd_f32s(a);
                let mut quads = acc.chunks_exact_mut(4).zip(js.chunks_exact(4));
                for (c, j) in &mut quads {
                    let b = [0, 1, 2, 3].map(|q| S::as_simd_f32s(column(cb, j[q] as usize)));
                    let bh = b.map(|(h, _)| &h[..ah.len()]);
                    let mut s = [simd.splat_f32s(0.0); 4];
                    for (k, &x) in ah.iter().enumerate() {
                        for q in 0..4 {
                            s[q] = simd.mul_add_e_f32s(x, bh[q][k], s[q]);
                        }
                    }
                    for q in 0..4 {
                        let tail: f32 = at.iter().zip(b[q].1).map(|(x, y)| x * y).sum();
                        c[q] += (simd.reduce_sum_f32s(s[q]) + tail) as f64;
                    }
                }
                let rest = acc.len() / 4 * 4;
                for (c, &j) in acc[rest..].iter_mut().zip(&js[rest..]) {
                    *c += dot(a, column(cb, j as usize)) as f64;
                }
            }
        }
    }
}

/// Covariance tiles `(index, columns)` in runs of at most `cap` products' values together
/// (one over `cap` alone is a run of its own), in order.
fn batches(covariances: Vec<(usize, Range<usize>)>, cap: usize) -> Vec<Vec<(usize, Range<usize>)>> {
    let mut out: Vec<Vec<(usize, Range<usize>)>> = Vec::new();
    let mut used = usize::MAX;
    for (k, a) in covariances {
        let n = a.len() * a.len();
        if used.saturating_add(n) > cap {
            out.push(Vec::new());
            used = 0;
        }
        used += n;
        if let Some(run) = out.last_mut() {
            run.push((k, a));
        }
    }
    out
}

/// One tile's part of a GEMM's row-major product: its first row and column there.
struct Part<'a> {
    product: &'a [f32],
    /// Columns of the product.
    stride: usize,
    /// The tile's first row and column in it.
    at: (usize, usize),
}

/// Chan's merge of one block into a tile's f64 co-moments: its centred product plus the
/// cross term of the mean shifts `(da, db)`, rows on rayon.
fn merge(acc: &mut [f64], part: Part<'_>, (da, db): (&[f64], &[f64]), w_cross: f64) {
    let nb = db.len();
    if nb == 0 {
        return;
    }
    let (i0, j0) = part.at;
    acc.par_chunks_exact_mut(nb)
        .zip(da)
        .enumerate()
        .for_each(|(i, (row, &dai))| {
            let dai = dai * w_cross;
            let grow = &part.product[(i0 + i) * part.stride + j0..][..nb];
            for ((c, &gv), &dbj) in row.iter_mut().zip(grow).zip(db) {
                *c += gv as f64 + dai * dbj;
            }
        });
}

/// [`merge`] of a covariance tile's block (`gram`: `[n, n]`, valid on and above the diagonal,
/// [`grams_upper`]) into its sums on and above the diagonal only, `d` the mean shifts.
fn merge_upper(acc: &mut [f64], gram: &[f32], d: &[f64], w_cross: f64) {
    let n = d.len();
    acc.par_chunks_exact_mut(n.max(1))
        .zip(gram.par_chunks_exact(n.max(1)))
        .enumerate()
        .for_each(|(i, (row, g))| {
            let di = d[i] * w_cross;
            for ((c, &gv), &dj) in row[i..].iter_mut().zip(&g[i..]).zip(&d[i..]) {
                *c += gv as f64 + di * dj;
            }
        });
}

/// Rows per part of a block's centring: the parts are reduced in parallel and their sums added
/// in order, so the totals do not depend on the thread count. A multiple of [`ROW_CHUNK`], so
/// a part is whole chunks of a [`Layout::Chunked`] buffer too.
pub(super) const PART: usize = 4 * ROW_CHUNK;

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
    grow(out, len);
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
    let outs = out[..len].par_chunks_mut(layout.part(cols));
    let m2 = sum_parts(outs.zip(flat.par_chunks(PART * cols)).map(|(o, part)| {
        let mut m2 = vec![0.0f64; cols];
        for (r, row) in part.chunks_exact(cols).enumerate() {
            let deltas = row.iter().zip(mean).map(|(&v, &mu)| v as f64 - mu);
            match layout {
                Layout::Rows { width, offset } => {
                    let o = &mut o[r * width + offset..][..cols];
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
pub(super) fn sum_parts(parts: impl IndexedParallelIterator<Item = Vec<f64>>) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = parts.collect();
    let total = parts.into_iter().reduce(|mut total, part| {
        total.iter_mut().zip(&part).for_each(|(t, &v)| *t += v);
        total
    });
    total.unwrap_or_default()
}

/// `buf` at least `len` values long. A scratch buffer that grows is allocated anew after the
/// old one is freed (its values are overwritten by every block), so the two are never held
/// at once, as `Vec::resize` would while it copies.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        *buf = Vec::new();
        buf.resize(len, 0.0);
    }
}

/// A centred `[rows, cols]` block's rows copied into [`Layout::Chunked`] (for a stream both
/// kinds of tile read), parts of [`PART`] rows in parallel.
fn chunk_rows(x: ArrayView2<'_, f32>, out: &mut Vec<f32>) {
    let (rows, cols) = x.dim();
    let len = Layout::Chunked.len(rows, cols);
    grow(out, len);
    if cols == 0 {
        return; // Nothing to copy (and no chunks of zero length to split into).
    }
    let parts = out[..len].par_chunks_mut(PART * cols).enumerate();
    parts.for_each(|(p, o)| {
        for r in p * PART..((p + 1) * PART).min(rows) {
            let at = r - p * PART;
            let chunk = &mut o[(at / ROW_CHUNK) * cols * ROW_CHUNK..];
            for (j, &v) in x.row(r).iter().enumerate() {
                chunk[j * ROW_CHUNK + at % ROW_CHUNK] = v;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::accum::finalized;

    /// Blocks of `lengths` rows, stream `s`'s column `c` at row `r` being `value(s, c, r)`,
    /// into `acc`; the rows fed.
    fn feed(
        acc: &mut CpuAccumulator,
        widths: &[usize],
        lengths: &[usize],
        value: impl Fn(usize, usize, usize) -> f32,
    ) -> usize {
        let mut r0 = 0;
        for &n in lengths {
            acc.update(&block(widths, r0..r0 + n, &value))
                .expect("update");
            r0 += n;
        }
        r0
    }

    /// Every stream's rows `rows` of `value(s, c, r)`.
    fn block(
        widths: &[usize],
        rows: Range<usize>,
        value: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<Option<Array2<f32>>> {
        widths
            .iter()
            .enumerate()
            .map(|(s, &w)| {
                let at = |(r, c)| value(s, c, rows.start + r);
                Some(Array2::from_shape_fn((rows.len(), w), at))
            })
            .collect()
    }

    /// A sink that gives each tile's buffer back gets the next tile written into it, and the
    /// same correlations as one that keeps every tile: tiles that shrink and grow (a smaller
    /// tile into a larger buffer, a larger one into a smaller), dense and sparse, and a tile
    /// without correlations between them.
    #[test]
    fn tiles_written_into_an_earlier_tiles_buffer_are_the_same_tiles() {
        let widths = [6, 9, 5];
        let specs = vec![
            TileSpec::dense(0, 0..6, 1, 0..9),
            TileSpec::dense(0, 2..4, 2, 0..5),
            TileSpec::dense(0, 0..6, 2, 0..5),
            TileSpec {
                pairs: Some(Arc::new(vec![1, 4, 0, 3, 2, 2])),
                ..TileSpec::dense(0, 1..4, 1, 0..9)
            },
            TileSpec::dense(0, 0..6, 1, 0..9),
        ];
        let mut acc = CpuAccumulator::new(specs.clone(), &widths);
        feed(&mut acc, &widths, &[40, 23], |s, c, r| {
            ((r * 31 + c * 17 + s * 7) % 13) as f32 - 0.3 * c as f32
        });
        let finish = |k: usize| match k {
            2 => Finish::Extremes,
            _ => Finish::WithTile,
        };
        let kept = finalized(&acc, finish);
        // The sink keeps each reduction and gives back a copy of its correlations, which the
        // next tile with correlations is written over.
        let mut reused = Vec::new();
        pollster::block_on(acc.finalize(finish, async |k, red| {
            let back = red.tile.clone();
            reused.push((k, red));
            Ok(back)
        }))
        .expect("finalize");
        assert_eq!(reused.len(), specs.len());
        for (k, red) in reused {
            assert_eq!(Some(red), kept[k], "tile {k}");
        }
        assert_eq!(kept[2].as_ref().map(|r| r.tile.is_none()), Some(true));
    }

    /// Sparse pairs come out as the exact correlation, over blocks that grow and shrink (the
    /// kept chunked buffers hold a longer block's values past a shorter one's end, and each
    /// block ends inside a chunk), for a stream only sparse tiles read (2) and streams both
    /// read (0, 1), with one to six candidates per anchor column.
    #[test]
    fn sparse_pairs_over_blocks_of_any_length_are_the_exact_correlations() {
        let widths = [5, 7, 6];
        let pairs = Arc::new(vec![0, 3, 5, 1, 2, 4, 5, 0, 1, 5, 4, 2, 3, 4, 1]);
        // Six candidates a row (a group of four and two more), anchor columns from 1.
        let wide: Arc<Vec<u32>> = Arc::new((0..18).map(|e| (e * 5 % 7) as u32).collect());
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
            TileSpec {
                pairs: Some(wide.clone()),
                ..TileSpec::dense(0, 1..4, 1, 0..7)
            },
        ];
        let mut acc = CpuAccumulator::new(specs, &widths);
        let lengths = [100, 30, 140, 64, 1];
        // Columns with means far from zero and different scales (the centring matters).
        let value = |s: usize, c: usize, r: usize| -> f32 {
            let t = (r * 7919 + c * 104_729 + s * 1_299_709) % 1000;
            (t as f32 / 1000.0 - 0.5) * (1.0 + c as f32) + 3.0 * s as f32 + c as f32
        };
        let total = feed(&mut acc, &widths, &lengths, value);
        let out: Vec<_> = finalized(&acc, |_| Finish::WithTile)
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
        let six: Vec<_> = wide
            .iter()
            .enumerate()
            .map(|(e, &b)| (0, 1 + e / 6, 1, b as usize))
            .collect();
        check(out[3].tile.as_deref().expect("sparse tile"), &six);
    }

    /// Tiles of two anchor chunks by two streams' layers, which [`rectangles`] makes one GEMM
    /// (and, under a smaller cap, several), and covariance tiles, come out as the exact
    /// correlations and covariances: the covariances (merged above the diagonal only) whole
    /// before the updates are done, saved and restored, and after them.
    #[test]
    fn dense_tiles_in_one_gemm_are_the_exact_correlations() {
        let widths = [6, 8, 5];
        let mut specs = Vec::new();
        for b in [1, 2] {
            for lb in [0..widths[b] / 2, widths[b] / 2..widths[b]] {
                for a in [0..2, 2..6] {
                    specs.push(TileSpec::dense(0, a, b, lb.clone()));
                }
            }
        }
        specs.push(TileSpec::covariance(1, 4..8));
        specs.push(TileSpec::covariance(2, 0..2));
        let value = |s: usize, c: usize, r: usize| -> f32 {
            let t = (r * 7919 + c * 104_729 + s * 1_299_709) % 1000;
            (t as f32 / 1000.0 - 0.5) * (1.0 + c as f32) + 5.0 * s as f32 - c as f32
        };
        // Saved after two blocks (the save makes the covariances whole and lends them),
        // restored into fresh accumulators, and both given a third block (merged above the
        // diagonal again).
        let mut acc = CpuAccumulator::new(specs.clone(), &widths);
        let r1 = feed(&mut acc, &widths, &[50, 130], value);
        let mut restored = CpuAccumulator::new(specs.clone(), &widths);
        restored
            .restore(&pollster::block_on(acc.save()).expect("save"))
            .expect("restore");
        let last = block(&widths, r1..r1 + 7, value);
        acc.update(&last).expect("update");
        restored.update(&last).expect("update");
        let r0 = r1 + 7;
        let column =
            |s: usize, c: usize| (0..r0).map(|r| value(s, c, r) as f64).collect::<Vec<_>>();
        let out = finalized(&acc, |_| Finish::WithTile);
        for (t, got) in specs.iter().zip(&out) {
            let tile = got.as_ref().and_then(|g| g.tile.as_deref()).expect("tile");
            let pairs = t
                .a_cols
                .clone()
                .flat_map(|a| t.b_cols.clone().map(move |b| (a, b)));
            for (&got, (a, b)) in tile.iter().zip(pairs) {
                let exact = crate::stats::pearson(&column(t.a_stream, a), &column(t.b_stream, b));
                assert!(
                    (got as f64 - exact).abs() < 1e-5,
                    "{t:?}: column {a} with {b}: {got} vs {exact}"
                );
            }
        }
        // The covariances' co-moments against the exact centred sums of products: as the
        // updates left them, continued from a saved state, and once the updates are done.
        let lazy: Vec<Vec<f64>> = [specs.len() - 2, specs.len() - 1]
            .iter()
            .map(|&k| {
                pollster::block_on(acc.co_moments(k))
                    .expect("co-moments")
                    .into_owned()
            })
            .collect();
        acc.updates_done();
        for (i, k) in [specs.len() - 2, specs.len() - 1].into_iter().enumerate() {
            let t = &specs[k];
            let c = pollster::block_on(acc.co_moments(k)).expect("co-moments");
            assert_eq!(c.as_ref(), &lazy[i][..], "{t:?}: mirrored in place");
            let saved = pollster::block_on(restored.co_moments(k)).expect("co-moments");
            assert_eq!(saved.as_ref(), &lazy[i][..], "{t:?}: restored");
            let pairs = t
                .a_cols
                .clone()
                .flat_map(|a| t.b_cols.clone().map(move |b| (a, b)));
            for (&got, (a, b)) in c.iter().zip(pairs) {
                let (x, y) = (column(t.a_stream, a), column(t.b_stream, b));
                let (mx, my) = (
                    x.iter().sum::<f64>() / r0 as f64,
                    y.iter().sum::<f64>() / r0 as f64,
                );
                let exact: f64 = x.iter().zip(&y).map(|(u, v)| (u - mx) * (v - my)).sum();
                assert!(
                    (got - exact).abs() < 1e-6 * exact.abs().max(1.0),
                    "{t:?}: {got} vs {exact}"
                );
            }
        }
    }

    /// A pass that holds its rows gives the correlations, moments and co-moments that sums
    /// merged block by block give (to f32 products' precision), also when it is saved after
    /// its first blocks and restored into fresh accumulators; it is read only once its
    /// updates are done, and takes no block after that.
    #[test]
    fn held_rows_are_the_sums_of_their_blocks() {
        let widths = [6, 8, 5];
        let specs = vec![
            TileSpec::dense(0, 0..3, 1, 0..4),
            TileSpec::dense(0, 3..6, 1, 4..8),
            TileSpec::dense(0, 0..6, 2, 0..5),
        ];
        let value = |s: usize, c: usize, r: usize| -> f32 {
            let t = (r * 7919 + c * 104_729 + s * 1_299_709) % 1000;
            (t as f32 / 1000.0 - 0.5) * (1.0 + c as f32) + 40.0 * s as f32 - c as f32
        };
        let mut sums = CpuAccumulator::new(specs.clone(), &widths);
        let total = feed(&mut sums, &widths, &[50, 130, 7], value) as u64;
        // Held: the first two blocks, saved and restored into fresh accumulators, then the last.
        let mut first = CpuAccumulator::holding_rows(specs.clone(), &widths, total);
        feed(&mut first, &widths, &[50, 130], value);
        assert!(
            pollster::block_on(first.mean_var(0)).is_err(),
            "read too early"
        );
        let saved = pollster::block_on(first.save()).expect("save");
        assert!(saved.tiles.is_empty() && saved.rows.iter().flatten().count() == 3);
        let mut held = CpuAccumulator::holding_rows(specs.clone(), &widths, total);
        held.restore(&saved).expect("restore");
        let value_from = |s: usize, c: usize, r: usize| value(s, c, r + 180);
        feed(&mut held, &widths, &[7], value_from);
        assert_eq!(held.count(), total);
        let canonical = pollster::block_on(held.save_canonical()).expect("canonical");
        let exact = pollster::block_on(sums.save_canonical()).expect("sums");
        for (got, want) in canonical.tiles.iter().zip(&exact.tiles) {
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
        held.updates_done();
        for s in 0..3 {
            let (h, e) =
                pollster::block_on(async { (held.mean_var(s).await, sums.mean_var(s).await) });
            for ((hm, hv), (em, ev)) in h.expect("held").into_iter().zip(e.expect("sums")) {
                assert!((hm - em).abs() < 1e-9 * em.abs().max(1.0), "{hm} vs {em}");
                assert!((hv - ev).abs() < 1e-9 * ev.abs().max(1.0), "{hv} vs {ev}");
            }
        }
        let want = finalized(&sums, |_| Finish::WithTile);
        let got = finalized(&held, |_| Finish::WithTile);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let (g, w) = (g.as_ref().expect("held tile"), w.as_ref().expect("tile"));
            let (gt, wt) = (
                g.tile.as_deref().expect("held"),
                w.tile.as_deref().expect("sums"),
            );
            for (a, b) in gt.iter().zip(wt) {
                assert!((a - b).abs() < 1e-5, "tile {k}: {a} vs {b}");
            }
            assert_eq!((&g.argmax, &g.argmin), (&w.argmax, &w.argmin), "tile {k}");
        }
        let c = pollster::block_on(held.co_moments(2)).expect("co-moments");
        for (g, w) in c.iter().zip(exact.tiles[2].iter()) {
            assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{g} vs {w}");
        }
        let late = held.update(&block(&widths, 0..3, value));
        assert!(late.is_err(), "a block after the rows were centred");
    }

    /// Tiles side by side become one rectangle, those that do not fit together or would pass
    /// the cap stay apart, and every tile is in exactly one rectangle.
    #[test]
    fn rectangles_cover_each_tile_once() {
        // Two anchor chunks by three other layers, then a tile apart from them.
        let mut tiles = Vec::new();
        for (j, b) in [(0, 10..20), (1, 20..30), (2, 30..40)] {
            for (i, a) in [(0, 0..4), (1, 4..8)] {
                tiles.push((3 * i + j, a, b.clone()));
            }
        }
        tiles.push((6, 0..4, 50..60));
        let all = rectangles(&tiles, usize::MAX);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!((all[0].a.clone(), all[0].b.clone()), (0..8, 10..40));
        assert_eq!((all[1].a.clone(), all[1].b.clone()), (0..4, 50..60));
        // A cap of 100 entries: runs of two layers for each anchor chunk, and the third
        // layer's two tiles stacked.
        let capped = rectangles(&tiles, 100);
        assert!(
            capped.iter().all(|r| r.a.len() * r.b.len() <= 100),
            "{capped:?}"
        );
        assert_eq!(capped.len(), 4, "{capped:?}");
        assert_eq!((capped[2].a.clone(), capped[2].b.clone()), (0..8, 30..40));
        for all in [all, capped] {
            let mut seen: Vec<usize> = all
                .iter()
                .flat_map(|r| r.tiles.iter().map(|t| t.0))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
            for r in &all {
                let inside = |(_, a, b): &DenseTile| {
                    r.a.start <= a.start
                        && a.end <= r.a.end
                        && r.b.start <= b.start
                        && b.end <= r.b.end
                };
                assert!(r.tiles.iter().all(inside), "{r:?} has a tile outside it");
                let area: usize = r.tiles.iter().map(|(_, a, b)| a.len() * b.len()).sum();
                assert_eq!(area, r.a.len() * r.b.len(), "{r:?} is not covered exactly");
            }
        }
    }
}
