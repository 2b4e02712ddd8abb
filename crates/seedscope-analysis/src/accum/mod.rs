//! Streaming accumulators of per-neuron moments and cross-model co-moments: [`CpuAccumulator`]
//! (f32 GEMMs of the `gemm` crate, f64 totals) and [`GpuAccumulator`] (the WGSL kernels
//! of `seedscope-gpu`, Kahan-compensated f32 totals), both behind [`Accumulate`]. Each reads its
//! own kind of block, so a pass cannot feed one path's activations to the other.
//!
//! Both paths use the same scheme: every block of tokens is centred on its own means, its
//! centred cross products are one GEMM, and the block is merged into the running totals with
//! Chan et al.'s parallel formula.

mod cpu;
mod gpu;
mod held;
mod rotated;

pub(crate) use cpu::MAX_PRODUCT;
pub use cpu::{CpuAccumulator, CpuMoments};
pub use gpu::{GpuAccumulator, GpuTile};
pub use rotated::RotatedLayer;

use std::borrow::Cow;

use seedscope_gpu::{REL_ZERO_STD, TileReduction};

use crate::AnalysisError;
use crate::plan::TileSpec;

/// What [`Accumulate::finalize`] makes of one tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Nothing: the tile is read whole instead ([`Accumulate::co_moments`], a covariance).
    Skip,
    /// Each anchor row's best and worst matches and each column's best row.
    Extremes,
    /// Those and every correlation of the tile.
    WithTile,
}

/// Saved accumulator state (checkpoints): named f32 or f64 arrays and the row count. The
/// large arrays borrow where they can: a checkpoint of the CPU path is written from the
/// accumulators themselves, so saving one holds no second copy of a pass's sums or rows (a
/// budget that holds every two minutes of a long run, not only between checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState<'a> {
    /// Rows (tokens) merged.
    pub count: u64,
    /// Per stream moments, in the path's own layout.
    pub moments: Vec<Option<Vec<f64>>>,
    /// Per tile accumulators.
    pub tiles: Vec<Cow<'a, [f64]>>,
    /// Per stream its rows so far, in a pass that holds them instead of sums (the CPU path's
    /// [`crate::plan::Plan::holds_rows`]; empty otherwise).
    pub rows: Vec<Option<Cow<'a, [f32]>>>,
    /// Pre-activation histograms being counted in this pass ([`crate::hist`]).
    pub hists: Vec<Vec<u32>>,
    /// Anatomy accumulators being filled in this pass ([`crate::anatomy::Anatomies`]).
    pub anatomy: Vec<crate::anatomy::AnatomySaved<'a>>,
}

/// The accumulators of one pass: moments of the streams its tiles read, and the tiles.
///
/// The reads are `async` because on a GPU they wait for the device (in the browser that hands
/// the event loop back to the page); the futures are awaited where they are made, never sent
/// to another thread, so the trait does not promise `Send` futures.
#[allow(async_fn_in_trait)]
pub trait Accumulate {
    /// One stream's activations for one block of tokens, `[tokens, neurons]`.
    type Block;

    /// The tiles.
    fn specs(&self) -> &[TileSpec];

    /// Which streams this pass needs activations for.
    fn streams(&self) -> Vec<bool>;

    /// Rows merged so far.
    fn count(&self) -> u64;

    /// Merge one block: one entry per stream, present for every stream [`Self::streams`] names,
    /// all with the same rows.
    fn update(&mut self, block: &[Option<Self::Block>]) -> Result<(), AnalysisError>;

    /// Every block is merged: let go of what only [`Self::update`] uses (the CPU path's
    /// centred copies of a block, kept from one block to the next) before the pass is
    /// finished. A pass that holds its rows sums their moments and centres them here, and is
    /// read only after it (updates after it are refused); others take updates after it too
    /// (they allocate again).
    fn updates_done(&mut self) {}

    /// Per-neuron `(mean, variance)` of a stream (population variance over merged rows).
    async fn mean_var(&self, stream: usize) -> Result<Vec<(f64, f64)>, AnalysisError>;

    /// Per-neuron `1/sqrt(M2)` of a stream ([`inv_scale`]: 0 for a constant neuron), what
    /// turns its co-moments into correlations.
    async fn inv_scales(&self, stream: usize) -> Result<Vec<f64>, AnalysisError>;

    /// Reduce each tile as `finish(i)` says (to per-anchor-row best and worst matches, also
    /// with its correlations, or not at all) and hand each reduction to `sink` as it is made,
    /// in tile order, so that one tile's correlations are held at a time. `sink` may give the
    /// correlations' buffer back once it is done with them: the next tile's are written into
    /// it (a 12-layer first stage reduces about a thousand 38 MB tiles, and fresh memory for
    /// each cost more than the reduction).
    async fn finalize(
        &self,
        finish: impl Fn(usize) -> Finish,
        sink: impl AsyncFnMut(usize, TileReduction) -> Result<Option<Vec<f32>>, AnalysisError>,
    ) -> Result<(), AnalysisError>;

    /// Tile `tile`'s co-moments as plain f64 sums of centred products (the layout of
    /// [`Accumulate::save_canonical`]): what a derived baseline ([`RotatedLayer`]) reads.
    async fn co_moments(&self, tile: usize) -> Result<Cow<'_, [f64]>, AnalysisError>;

    /// The running state in this path's layout, for a checkpoint it resumes from: borrowed
    /// from the accumulators where they are on the host (`&mut`: the CPU path first makes
    /// its covariance tiles whole, [`CpuAccumulator`]'s mirror).
    async fn save(&mut self) -> Result<SavedState<'_>, AnalysisError>;

    /// The running state in the CPU path's layout (moments as means then M2, co-moments as
    /// plain f64 sums): what shards write, so any machine can merge them.
    async fn save_canonical(&self) -> Result<SavedState<'_>, AnalysisError>;

    /// Restore a state from [`Accumulate::save`] on the same path and plan.
    fn restore(&mut self, state: &SavedState<'_>) -> Result<(), AnalysisError>;
}

/// Streams a set of tiles reads.
pub(crate) fn used_streams(specs: &[TileSpec], n_streams: usize) -> Vec<bool> {
    let mut used = vec![false; n_streams];
    for t in specs {
        used[t.a_stream] = true;
        used[t.b_stream] = true;
    }
    used
}

fn no_stream() -> AnalysisError {
    AnalysisError::Invalid("a tile reads a stream without moments".into())
}

fn missing_stream() -> AnalysisError {
    AnalysisError::Invalid("a block lacks a stream its tiles need".into())
}

fn plan_mismatch() -> AnalysisError {
    AnalysisError::Invalid("the checkpoint does not match this plan".into())
}

/// `1/sqrt(M2)`, or 0 for a constant neuron (the rule `finalize.wgsl` uses).
pub(crate) fn inv_scale(mean: f64, m2: f64, n: u64) -> f64 {
    let floor = REL_ZERO_STD as f64 * mean;
    if m2 <= 0.0 || m2 <= floor * floor * n as f64 {
        0.0
    } else {
        1.0 / m2.sqrt()
    }
}

/// Per anchor row of a sparse tile: the best and worst of its candidate pairs (columns relative
/// to `b0`, as [`reduce_rows`] gives them); per column of `nb`, the best pair in it; with
/// `tile`, every pair's correlation in pair order, written into that buffer.
fn reduce_pairs(
    acc: &[f64],
    pairs: &[u32],
    (ia, ib): (&[f64], &[f64]),
    b0: usize,
    tile: Option<Vec<f32>>,
) -> TileReduction {
    let k = pairs.len() / ia.len().max(1);
    reduce(ia.len(), (ib.len(), k), tile, |i| {
        (i * k..(i + 1) * k).map(move |e| {
            let j = pairs[e] as usize - b0;
            (j as u32, acc[e] * ia[i] * ib[j])
        })
    })
}

/// Per anchor row of a dense tile of co-moments (f64 sums, or a held pass's f32 product): the
/// best and worst correlation (and with `tile`, the row itself, written into that buffer);
/// per column, the best row.
fn reduce_rows<T: Copy + Into<f64> + Sync>(
    acc: &[T],
    ia: &[f64],
    ib: &[f64],
    tile: Option<Vec<f32>>,
) -> TileReduction {
    let nb = ib.len();
    reduce(ia.len(), (nb, nb), tile, |i| {
        ib.iter()
            .enumerate()
            .map(move |(j, &sb)| (j as u32, acc[i * nb + j].into() * ia[i] * sb))
    })
}

/// Reduce `n` rows, each given as `width` `(column, correlation)` pairs by `row(i)`, to their
/// extremes and each of the `nb` columns to its best row (correlations clamped to [-1, 1];
/// `-2` for a column no row reaches). Rows in parallel, a run of rows per thread (a 12-layer
/// first stage reduces 10⁹ correlations per pass); the runs' column maxima are merged in row
/// order, so a tie goes to the first row, as in one pass. With `tile`, every correlation is
/// written into that buffer, resized to `n * width` (every value is overwritten, so a buffer
/// of an earlier tile of the same size is reused as it is).
fn reduce<I: Iterator<Item = (u32, f64)>>(
    n: usize,
    (nb, width): (usize, usize),
    tile: Option<Vec<f32>>,
    row: impl Fn(usize) -> I + Sync,
) -> TileReduction {
    use rayon::prelude::*;
    let per_run = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let mut tile = tile.map(|mut t| {
        t.resize(n * width, 0.0);
        t
    });
    let runs: Vec<Option<&mut [f32]>> = match tile.as_mut() {
        Some(t) if width > 0 => t.chunks_mut(per_run * width).map(Some).collect(),
        _ => (0..n.div_ceil(per_run)).map(|_| None).collect(),
    };
    let parts: Vec<TileReduction> = runs
        .into_par_iter()
        .enumerate()
        .map(|(r, out)| {
            let rows = r * per_run..((r + 1) * per_run).min(n);
            reduce_run(rows, nb, out, &row)
        })
        .collect();
    let mut r = no_rows_yet(n, nb);
    r.tile = tile;
    for p in parts {
        r.max.extend(p.max);
        r.argmax.extend(p.argmax);
        r.min.extend(p.min);
        r.argmin.extend(p.argmin);
        for ((c, a), (v, i)) in r
            .col_max
            .iter_mut()
            .zip(r.col_argmax.iter_mut())
            .zip(p.col_max.into_iter().zip(p.col_argmax))
        {
            if v > *c {
                *c = v;
                *a = i;
            }
        }
    }
    r
}

/// A reduction with room for `n` rows and no row yet: every one of the `nb` columns at `-2`,
/// no tile.
fn no_rows_yet(n: usize, nb: usize) -> TileReduction {
    TileReduction {
        max: Vec::with_capacity(n),
        argmax: Vec::with_capacity(n),
        min: Vec::with_capacity(n),
        argmin: Vec::with_capacity(n),
        col_max: vec![-2.0; nb],
        col_argmax: vec![0; nb],
        tile: None,
    }
}

/// [`reduce`] of one run of `rows`, writing their correlations into `out` when given (`tile`
/// of the result stays `None`).
fn reduce_run<I: Iterator<Item = (u32, f64)>>(
    rows: std::ops::Range<usize>,
    nb: usize,
    mut out: Option<&mut [f32]>,
    row: impl Fn(usize) -> I,
) -> TileReduction {
    let mut r = no_rows_yet(rows.len(), nb);
    let mut at = 0;
    for i in rows {
        let (mut best, mut bj, mut worst, mut wj) = (-2.0f64, 0u32, 2.0f64, 0u32);
        for (j, corr) in row(i) {
            let corr = corr.clamp(-1.0, 1.0);
            if corr > best {
                best = corr;
                bj = j;
            }
            if corr < worst {
                worst = corr;
                wj = j;
            }
            let c = &mut r.col_max[j as usize];
            if corr as f32 > *c {
                *c = corr as f32;
                r.col_argmax[j as usize] = i as u32;
            }
            if let Some(t) = out.as_deref_mut() {
                t[at] = corr as f32;
                at += 1;
            }
        }
        r.max.push(best as f32);
        r.argmax.push(bj);
        r.min.push(worst as f32);
        r.argmin.push(wj);
    }
    r
}

/// Merge the canonical state ([`Accumulate::save_canonical`]) of another part of the data
/// into `acc`, the state so far (Chan et al.'s parallel formulas in f64): counts add; means
/// move by `δ·n_b/n`; M2 and co-moments add with `δ²·n_a n_b/n` and `δ_a δ_b·n_a n_b/n`;
/// histograms and anatomy counts add, anatomy sums are re-shifted to `acc`'s shift and top
/// activations are merged. `b` is only read: a merge of shards maps each shard's file in
/// turn, so one shard's state is held next to the sums at a time.
pub fn merge_state(
    specs: &[TileSpec],
    widths: &[usize],
    acc: &mut SavedState<'_>,
    b: &SavedState<'_>,
) -> Result<(), AnalysisError> {
    check_state(specs, widths, acc)?;
    check_state(specs, widths, b)?;
    if b.moments
        .iter()
        .map(Option::is_some)
        .ne(acc.moments.iter().map(Option::is_some))
    {
        return Err(shards_differ("different streams".into()));
    }
    let (na, nb) = (acc.count as f64, b.count as f64);
    let n = na + nb;
    if b.count > 0 {
        // Per stream: the mean shift δ = mean_b − mean_a.
        let delta: Vec<Option<Vec<f64>>> = acc
            .moments
            .iter()
            .zip(&b.moments)
            .zip(widths)
            .map(|((ma, mb), &w)| match (ma, mb) {
                (Some(ma), Some(mb)) => Some((0..w).map(|j| mb[j] - ma[j]).collect()),
                _ => None,
            })
            .collect();
        let w_cross = na * nb / n;
        for ((spec, ca), cb) in specs.iter().zip(acc.tiles.iter_mut()).zip(&b.tiles) {
            let ca = ca.to_mut();
            let (Some(da), Some(db)) = (&delta[spec.a_stream], &delta[spec.b_stream]) else {
                return Err(shards_differ("a tile without moments".into()));
            };
            if spec.pairs.is_some() {
                for ((c, &x), [i, j]) in ca.iter_mut().zip(cb.iter()).zip(spec.pair_list()) {
                    *c += x + da[i as usize] * db[j as usize] * w_cross;
                }
            } else {
                let nbc = spec.b_cols.len();
                for (r, i) in spec.a_cols.clone().enumerate() {
                    for (q, j) in spec.b_cols.clone().enumerate() {
                        let e = r * nbc + q;
                        ca[e] += cb[e] + da[i] * db[j] * w_cross;
                    }
                }
            }
        }
        for ((ma, mb), (d, &w)) in acc
            .moments
            .iter_mut()
            .zip(&b.moments)
            .zip(delta.iter().zip(widths))
        {
            let (Some(ma), Some(mb), Some(d)) = (ma, mb, d) else {
                continue;
            };
            for j in 0..w {
                ma[j] += d[j] * nb / n;
                ma[w + j] += mb[w + j] + d[j] * d[j] * w_cross;
            }
        }
        acc.count += b.count;
    }
    if acc.hists.len() != b.hists.len() || acc.anatomy.len() != b.anatomy.len() {
        return Err(shards_differ("different anchors counted".into()));
    }
    for (ha, hb) in acc.hists.iter_mut().zip(&b.hists) {
        if ha.len() != hb.len() {
            return Err(shards_differ("different histograms".into()));
        }
        ha.iter_mut().zip(hb).for_each(|(x, y)| *x += y);
    }
    for (aa, ab) in acc.anatomy.iter_mut().zip(&b.anatomy) {
        crate::anatomy::merge_saved(aa, ab).map_err(shards_differ)?;
    }
    Ok(())
}

/// A shard's state that cannot be merged, and why.
fn shards_differ(why: String) -> AnalysisError {
    AnalysisError::Invalid(format!("shards do not merge: {why}"))
}

/// Whether a saved state has the plan's tiles and streams of `widths`.
fn check_state(
    specs: &[TileSpec],
    widths: &[usize],
    st: &SavedState<'_>,
) -> Result<(), AnalysisError> {
    if st.moments.len() != widths.len() || st.tiles.len() != specs.len() {
        return Err(shards_differ("different plans".into()));
    }
    for (m, &w) in st.moments.iter().zip(widths) {
        if m.as_ref().is_some_and(|m| m.len() != 2 * w) {
            return Err(shards_differ("different widths".into()));
        }
    }
    for (t, spec) in st.tiles.iter().zip(specs) {
        if t.len() != spec.entries() {
            return Err(shards_differ("different tiles".into()));
        }
    }
    Ok(())
}

/// Every reduction of `acc` as `finish` says, kept (`None` for a skipped tile): what tests
/// compare.
#[cfg(test)]
pub(crate) fn finalized<A: Accumulate>(
    acc: &A,
    finish: impl Fn(usize) -> Finish,
) -> Vec<Option<TileReduction>> {
    let mut out: Vec<Option<TileReduction>> = acc.specs().iter().map(|_| None).collect();
    pollster::block_on(acc.finalize(finish, async |k, red| {
        out[k] = Some(red);
        Ok(None)
    }))
    .expect("finalize");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reduction in runs of rows on several threads gives what one pass over the rows in
    /// order gives: extremes per row, the tile, and each column's best row with a tie going
    /// to the first row (rows 1 and 9 tie on column 2, in different runs).
    #[test]
    fn reducing_rows_in_parallel_runs_is_one_pass_in_order() {
        let (n, nb) = (11, 6);
        let acc: Vec<f64> = (0..n * nb)
            .map(|e| match e {
                e if e == nb + 2 || e == 9 * nb + 2 => 0.75,
                e => ((e * 37 % 23) as f64 / 23.0) * 1.6 - 0.8,
            })
            .collect();
        let (ia, ib) = (vec![1.0; n], vec![1.0; nb]);
        let got = reduce_rows(&acc, &ia, &ib, Some(Vec::new()));
        let (mut col_max, mut col_argmax) = (vec![-2.0f32; nb], vec![0u32; nb]);
        for i in 0..n {
            let row = &acc[i * nb..(i + 1) * nb];
            let best = (0..nb).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            let worst = (0..nb).fold(0, |w, j| if row[j] < row[w] { j } else { w });
            assert_eq!((got.max[i], got.argmax[i]), (row[best] as f32, best as u32));
            assert_eq!(
                (got.min[i], got.argmin[i]),
                (row[worst] as f32, worst as u32)
            );
            for (j, &v) in row.iter().enumerate() {
                if v as f32 > col_max[j] {
                    col_max[j] = v as f32;
                    col_argmax[j] = i as u32;
                }
            }
        }
        assert_eq!(got.col_max, col_max);
        assert_eq!(got.col_argmax, col_argmax);
        assert_eq!(got.col_argmax[2], 1, "the tie goes to the first row");
        let tile: Vec<f32> = acc.iter().map(|&v| v as f32).collect();
        assert_eq!(got.tile, Some(tile));
        // Sparse: three pairs per row, the tile in pair order.
        let pairs: Vec<u32> = (0..n * 3).map(|e| ((e * 5) % nb) as u32).collect();
        let sparse: Vec<f64> = (0..n * 3).map(|e| acc[e]).collect();
        let got = reduce_pairs(&sparse, &pairs, (&ia, &ib), 0, Some(vec![7.0; 2]));
        assert_eq!(got.tile.map(|t| t.len()), Some(n * 3));
        for i in 0..n {
            let vals = &sparse[i * 3..i * 3 + 3];
            let best = (0..3).fold(0, |b, e| if vals[e] > vals[b] { e } else { b });
            assert_eq!(got.argmax[i], pairs[i * 3 + best]);
        }
    }
}
