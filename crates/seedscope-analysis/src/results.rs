//! What a run produces: per anchor neuron its best and worst matches in every other stream,
//! its moments, histograms and anatomy, the requested tiles and (refinement's first stage) its
//! candidates; and what a running pass reports. These types are read by the checkpoint, the
//! plan of the refined stage and the bundle writer, so they depend on nothing but the plan.

use std::path::PathBuf;

use crate::anatomy::AnatomyResult;
use crate::plan::{Plan, Shape};
use seedscope_gpu::twin::insert_ranked;

/// Best and worst matches of every anchor neuron in one other stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matches {
    /// Maximum correlation over all the other stream's neurons.
    pub max: Vec<f32>,
    /// Its column in the other model (`layer * d_mlp + neuron`, the other model's `d_mlp`).
    pub argmax: Vec<u32>,
    /// Minimum correlation.
    pub min: Vec<f32>,
    /// Its column.
    pub argmin: Vec<u32>,
}

impl Matches {
    /// No matches yet for `n` neurons.
    pub fn new(n: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; n],
            argmax: vec![0; n],
            min: vec![f32::INFINITY; n],
            argmin: vec![0; n],
        }
    }
}

/// How an anchor model's neurons pair one-to-one with another model's (real activations):
/// each other neuron's own best match among the anchor's neurons (for mutual best matches),
/// and each anchor neuron's partner in the maximum-weight one-to-one assignment between the
/// two models' neurons of the same layer (of paired layers, [`Shape::paired_layer`], when the
/// depths differ; with fewer neurons on the other side some anchor neurons have none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OneToOne {
    /// Per neuron of the other model: its best correlation with any anchor neuron.
    pub back_max: Vec<f32>,
    /// That anchor neuron (`layer * d_mlp + neuron`).
    pub back_argmax: Vec<u32>,
    /// Per anchor neuron: its partner in the other model (the other model's column, in the
    /// paired layer), `u32::MAX` until its layer is assigned (or where it has none).
    pub partner: Vec<u32>,
    /// Their correlation; NaN until assigned, or when refinement did not keep the pair.
    pub partner_corr: Vec<f32>,
    /// Same-layer correlation blocks still being filled by the pass's tiles.
    pub pending: Vec<LayerBlock>,
}

impl OneToOne {
    /// Nothing known yet between `anchor` neurons and `other` neurons.
    pub fn new(anchor: usize, other: usize) -> Self {
        Self {
            back_max: vec![-2.0; other],
            back_argmax: vec![0; other],
            partner: vec![u32::MAX; anchor],
            partner_corr: vec![f32::NAN; anchor],
            pending: Vec::new(),
        }
    }

    /// Fold in a tile's column maxima: columns `b0..` reached from anchor rows `a0..`.
    pub fn offer_columns(&mut self, a0: usize, b0: usize, col_max: &[f32], col_argmax: &[u32]) {
        for (j, (&v, &i)) in col_max.iter().zip(col_argmax).enumerate() {
            if v > self.back_max[b0 + j] {
                self.back_max[b0 + j] = v;
                self.back_argmax[b0 + j] = (a0 + i as usize) as u32;
            }
        }
    }

    /// Write correlations into the block of anchor layer `layer` (`[da, db]` with the other
    /// model's layer it pairs with, created on first use) through `fill`, which accounts for
    /// `entries` of its `da * db` and returns nothing. A block that is then complete leaves
    /// [`Self::pending`] and comes back, to be assigned ([`assign`], [`Self::set_partners`]):
    /// the caller solves several at once.
    pub fn fill_block(
        &mut self,
        (layer, da): (usize, usize),
        db: usize,
        entries: usize,
        fill: impl FnOnce(&mut [f32]),
    ) -> Option<LayerBlock> {
        let at = match self.pending.iter().position(|b| b.layer == layer) {
            Some(at) => at,
            None => {
                self.pending.push(LayerBlock {
                    layer,
                    corr: vec![f32::NAN; da * db],
                    filled: 0,
                });
                self.pending.len() - 1
            }
        };
        let block = &mut self.pending[at];
        fill(&mut block.corr);
        block.filled += entries;
        (block.filled >= da * db).then(|| self.pending.swap_remove(at))
    }

    /// Record the assignment of a complete block of anchor layer `block.layer` (`da` rows)
    /// with the other model's layer `paired` (`db` columns): each row's column, from
    /// [`assign`].
    pub fn set_partners(
        &mut self,
        block: &LayerBlock,
        da: usize,
        (paired, db): (usize, usize),
        partner: &[Option<usize>],
    ) {
        for (i, j) in partner.iter().enumerate() {
            let Some(j) = *j else { continue };
            self.partner[block.layer * da + i] = (paired * db + j) as u32;
            self.partner_corr[block.layer * da + i] = block.corr[i * db + j];
        }
    }
}

/// The maximum-weight one-to-one assignment of a `[da, db]` correlation block's rows to its
/// columns (as scipy's `linear_sum_assignment(maximize=True)`; with more rows than columns some
/// rows get none); unknown (NaN) entries weigh less than any correlation. Returns each row's
/// column.
///
/// A block that knows at most an eighth of its entries (a refined run's, which knows each
/// anchor neuron's candidates) is solved over its known entries alone; a denser one over each
/// row's and each column's largest entries first, then priced against the whole block
/// (`assign_dense`).
pub fn assign(corr: &[f32], da: usize, db: usize) -> Vec<Option<usize>> {
    let known = corr.iter().filter(|c| !c.is_nan()).count();
    if known * 8 <= da * db {
        assign_sparse(corr, da, db)
    } else {
        assign_dense(corr, da, db)
    }
}

/// What an unknown entry weighs in the assignment: less than any correlation.
const UNKNOWN: f64 = -3.0;

/// An entry's weight in the matching: its correlation less [`UNKNOWN`], so every known entry
/// weighs more than none.
fn weight(c: f32) -> Option<f64> {
    (!c.is_nan()).then(|| f64::from(c) - UNKNOWN)
}

/// [`assign`] over the known entries. Every complete assignment is a matching of known entries
/// plus pairs of unknown ones, so its total is the matching's total with `-UNKNOWN` added to
/// each known entry, plus `UNKNOWN` times `min(da, db)`: the best matching under those weights
/// (all positive) completed with the rows and columns it leaves free, in order, is the best
/// assignment.
fn assign_sparse(corr: &[f32], da: usize, db: usize) -> Vec<Option<usize>> {
    let known = crate::matching::SparseRows::from_dense(corr, da, db, weight);
    complete(crate::matching::max_weight_matching(&known).partner, db)
}

/// Entries of each row and of each column a dense block's assignment starts from: their
/// largest.
const FIRST_ENTRIES: usize = 8;

/// Entries a row takes in per round where entries outside the graph beat its prices: those
/// that beat them most.
const MORE_ENTRIES: usize = 16;

/// [`assign`] over a whole block, by pricing: the best matching over each row's and each
/// column's [`FIRST_ENTRIES`] largest entries, then every other known entry checked against
/// that matching's dual prices. Entries that could improve it join the graph (up to
/// [`MORE_ENTRIES`] a row) and it is solved again, until none can; the matching is then the
/// best over the whole block (linear-programming duality), and completed as in
/// [`assign_sparse`]. Once the graph would pass a quarter of the block, the whole block is
/// solved as [`assign_sparse`] does. A correlation block's assignment lies among its rows' and columns'
/// largest entries but for a few, so this is a few sparse solves over a few per cent of the
/// block, where a dense solver (scipy's and `lsap`'s shortest augmenting paths) walks every
/// column at every step.
fn assign_dense(corr: &[f32], da: usize, db: usize) -> Vec<Option<usize>> {
    assign_priced(corr, da, db, FIRST_ENTRIES).0
}

/// [`assign_dense`], starting from each row's and each column's `first` largest entries; also
/// the rounds it took (sparse solves over part of the block).
fn assign_priced(corr: &[f32], da: usize, db: usize, first: usize) -> (Vec<Option<usize>>, usize) {
    let rows = || corr.chunks_exact(db.max(1)).take(da);
    let mut chosen = largest_entries(corr, da, db, first);
    for round in 1.. {
        let mut graph = crate::matching::SparseRows {
            cols: db,
            start: vec![0],
            ..Default::default()
        };
        for (row, cols) in rows().zip(&chosen) {
            for &j in cols {
                graph.col.push(j);
                graph
                    .weight
                    .push(weight(row[j as usize]).expect("a known entry"));
            }
            graph.start.push(graph.col.len());
        }
        graph.start.resize(da + 1, graph.col.len());
        let matching = crate::matching::max_weight_matching(&graph);
        let mut added = false;
        for (i, (row, cols)) in rows().zip(&mut chosen).enumerate() {
            let mut better: Vec<(f64, u32)> = row
                .iter()
                .enumerate()
                .filter_map(|(j, &c)| {
                    let by = matching.improvement(i, j, weight(c)?)?;
                    cols.binary_search(&(j as u32))
                        .is_err()
                        .then_some((by, j as u32))
                })
                .collect();
            if better.len() > MORE_ENTRIES {
                // Among equal excesses each row prefers the columns from its own index on, so
                // rows that tie (a block of equal values) spread over the columns rather than
                // all taking the same few each round.
                let from_own = |j: u32| (j as usize + db - i % db) % db;
                better.select_nth_unstable_by(MORE_ENTRIES, |a, b| {
                    b.0.total_cmp(&a.0).then(from_own(a.1).cmp(&from_own(b.1)))
                });
                better.truncate(MORE_ENTRIES);
            }
            if !better.is_empty() {
                cols.extend(better.into_iter().map(|(_, j)| j));
                cols.sort_unstable();
                added = true;
            }
        }
        if !added {
            return (complete(matching.partner, db), round);
        }
        // Past a quarter of the block, pricing saves nothing: the whole block is the graph.
        if chosen.iter().map(Vec::len).sum::<usize>() * 4 > da * db {
            return (assign_sparse(corr, da, db), round);
        }
    }
    unreachable!("the rounds only end by returning")
}

/// The columns of each row's `k` largest known entries and of each column's, as each row's
/// columns in order: one pass over the block.
fn largest_entries(corr: &[f32], da: usize, db: usize, k: usize) -> Vec<Vec<u32>> {
    let desc = |a: f32, b: f32| a > b;
    let (mut col_val, mut col_row) = (vec![f32::NEG_INFINITY; db * k], vec![u32::MAX; db * k]);
    let (mut row_val, mut row_col) = (vec![f32::NEG_INFINITY; k], vec![u32::MAX; k]);
    let mut chosen: Vec<Vec<u32>> = Vec::with_capacity(da);
    for (i, row) in corr.chunks_exact(db.max(1)).take(da).enumerate() {
        row_val.fill(f32::NEG_INFINITY);
        row_col.fill(u32::MAX);
        for (j, &c) in row.iter().enumerate() {
            insert_ranked(&mut row_val, &mut row_col, c, j as u32, desc);
            let at = j * k..(j + 1) * k;
            insert_ranked(
                &mut col_val[at.clone()],
                &mut col_row[at],
                c,
                i as u32,
                desc,
            );
        }
        chosen.push(row_col.iter().copied().filter(|&j| j != u32::MAX).collect());
    }
    for (j, best) in col_row.chunks_exact(k.max(1)).enumerate() {
        for &i in best.iter().filter(|&&i| i != u32::MAX) {
            chosen[i as usize].push(j as u32);
        }
    }
    for cols in &mut chosen {
        cols.sort_unstable();
        cols.dedup();
    }
    chosen
}

/// A matching completed into an assignment: the rows it leaves free take the columns it leaves
/// free, in order (as many as the smaller side has free).
fn complete(mut partner: Vec<Option<usize>>, db: usize) -> Vec<Option<usize>> {
    let mut used = vec![false; db];
    for j in partner.iter().flatten() {
        used[*j] = true;
    }
    let free = (0..db).filter(|&j| !used[j]);
    for (p, j) in partner.iter_mut().filter(|p| p.is_none()).zip(free) {
        *p = Some(j);
    }
    partner
}

/// One anchor layer's correlations with the other model's paired layer, `[d_mlp of the anchor,
/// d_mlp of the other]` row-major, NaN where not (yet) known.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerBlock {
    /// The anchor layer.
    pub layer: usize,
    /// Correlations.
    pub corr: Vec<f32>,
    /// Entries accounted for so far (a sparse tile accounts for a whole row).
    pub filled: usize,
}

/// A saved correlation tile: anchor layer × other layer, `[anchor d_mlp, other d_mlp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedTile {
    /// The other model.
    pub other: usize,
    /// Anchor layer.
    pub layer_a: usize,
    /// Other layer.
    pub layer_b: usize,
    /// Correlations, row-major.
    pub corr: Vec<f32>,
}

/// Each anchor neuron's candidate matches in one stream: `[n_neurons, 2k]`, the `k` highest
/// correlations (descending) then the `k` lowest (ascending), with their columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Candidates kept at each end.
    pub k: usize,
    /// Correlations.
    pub val: Vec<f32>,
    /// Columns in the other stream.
    pub col: Vec<u32>,
}

impl Candidates {
    /// No list at all (a stream the run does not compare).
    pub fn none(k: usize) -> Self {
        Self {
            k,
            val: Vec::new(),
            col: Vec::new(),
        }
    }

    /// No candidates yet for `n` neurons.
    pub fn new(n: usize, k: usize) -> Self {
        let mut val = Vec::with_capacity(n * 2 * k);
        for _ in 0..n {
            val.extend(std::iter::repeat_n(f32::NEG_INFINITY, k));
            val.extend(std::iter::repeat_n(f32::INFINITY, k));
        }
        Self {
            k,
            val,
            col: vec![u32::MAX; n * 2 * k],
        }
    }

    /// Offer the correlations of anchor neurons `rows` (a tile's rows, `[rows.len(), nb]`
    /// row-major) with columns `b0..b0 + nb`; rows in parallel (a 12-layer first stage offers
    /// 10⁹ correlations per pass).
    pub fn offer(&mut self, rows: std::ops::Range<usize>, b0: usize, tile: &[f32]) {
        use rayon::prelude::*;
        let (k, n) = (self.k, rows.len());
        let nb = tile.len() / n.max(1);
        if k == 0 || nb == 0 {
            return;
        }
        let span = rows.start * 2 * k..rows.end * 2 * k;
        self.val[span.clone()]
            .par_chunks_mut(2 * k)
            .zip(self.col[span].par_chunks_mut(2 * k))
            .zip(tile.par_chunks(nb))
            .for_each(|((val, col), corr)| {
                let (top, bottom) = val.split_at_mut(k);
                let (top_c, bottom_c) = col.split_at_mut(k);
                for (n, chunk) in corr.chunks(SKIM).enumerate() {
                    // Once both lists are full, most chunks hold nothing beyond either last
                    // kept value: one vectorised pass over the chunk rejects them whole.
                    let (hi, lo) = chunk
                        .iter()
                        .fold((f32::NEG_INFINITY, f32::INFINITY), |m, &v| {
                            (if v > m.0 { v } else { m.0 }, if v < m.1 { v } else { m.1 })
                        });
                    if hi <= top[k - 1] && lo >= bottom[k - 1] {
                        continue;
                    }
                    for (j, &v) in (n * SKIM..).zip(chunk) {
                        let c = (b0 + j) as u32;
                        insert_ranked(top, top_c, v, c, |x, y| x > y);
                        insert_ranked(bottom, bottom_c, v, c, |x, y| x < y);
                    }
                }
            });
    }
}

/// Correlations [`Candidates::offer`] checks at once against both lists' last values.
const SKIM: usize = 64;

/// Everything computed for one anchor model.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorResult {
    /// The anchor model.
    pub anchor: usize,
    /// The other models, in order.
    pub others: Vec<usize>,
    /// Matches in each other model.
    pub real: Vec<Matches>,
    /// Matches in each other model's rotated baseline.
    pub baseline: Vec<Matches>,
    /// Matches in each other model's permutation null (empty without `--null permutation`).
    pub null: Vec<Matches>,
    /// Per anchor neuron mean activation over the kept tokens.
    pub mean: Vec<f64>,
    /// Per anchor neuron variance.
    pub var: Vec<f64>,
    /// Per anchor neuron pre-activation histogram, `[width, HIST_BINS]` counts on the
    /// paper's fixed edges ([`crate::hist`]); counted in the first pass that runs the anchor.
    pub pre_hist: Vec<u32>,
    /// What each anchor neuron responds to ([`crate::anatomy`]); computed in the same pass as
    /// the histograms when the run has an [`crate::anatomy::AnatomySpec`].
    pub anatomy: Option<AnatomyResult>,
    /// Requested tiles.
    pub tiles: Vec<SavedTile>,
    /// Candidate matches per stream (`KINDS * other + kind`; an empty list for a kind the run
    /// does not compare), collected by the first stage of candidate refinement; empty
    /// otherwise.
    pub candidates: Vec<Candidates>,
    /// One-to-one matching with each other model, in order.
    pub one_to_one: Vec<OneToOne>,
}

impl AnchorResult {
    /// Nothing computed yet for anchor `anchor` of models of `shapes` (with `null`, room for
    /// the permutation null's matches).
    pub fn empty(anchor: usize, shapes: &[Shape], null: bool) -> Self {
        let width = shapes[anchor].width();
        let others: Vec<usize> = (0..shapes.len()).filter(|&b| b != anchor).collect();
        Self {
            anchor,
            real: others.iter().map(|_| Matches::new(width)).collect(),
            baseline: others.iter().map(|_| Matches::new(width)).collect(),
            null: if null {
                others.iter().map(|_| Matches::new(width)).collect()
            } else {
                Vec::new()
            },
            one_to_one: others
                .iter()
                .map(|&b| OneToOne::new(width, shapes[b].width()))
                .collect(),
            others,
            mean: Vec::new(),
            var: Vec::new(),
            pre_hist: Vec::new(),
            anatomy: None,
            tiles: Vec::new(),
            candidates: Vec::new(),
        }
    }
}

/// The result of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Kept tokens.
    pub n_tokens: u64,
    /// Every model's shape.
    pub shapes: Vec<Shape>,
    /// One per anchor.
    pub anchors: Vec<AnchorResult>,
    /// The plan that was run.
    pub plan: Plan,
    /// What it cost in forward passes.
    pub cost: RunCost,
    /// What the run has to say about how it ran (activations recomputed, a disk that filled).
    pub notes: Vec<String>,
}

/// What a run cost: the models' forward passes, and the reads of reused activations that
/// replaced the rest; where the passes' time went; the weight statistics after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunCost {
    /// Forward passes run (one model over one block).
    pub forwards: u64,
    /// Seconds in them (on a GPU: recording them; the device's share is in the waits).
    pub forward_seconds: f64,
    /// Reads of one model's reused activations for one block, each instead of a forward.
    pub reused: u64,
    /// Seconds in those reads.
    pub reuse_seconds: f64,
    /// The block loop's time by step, summed over every pass of every stage (bundles made
    /// before it was recorded read zeros).
    #[serde(default)]
    pub time: BlockTiming,
    /// Seconds turning each pass's accumulators into results: correlations, best matches,
    /// candidates, and the one-to-one assignment of each completed layer pair.
    #[serde(default)]
    pub finish_seconds: f64,
    /// Seconds writing checkpoints.
    #[serde(default)]
    pub checkpoint_seconds: f64,
    /// Seconds in every model's weight statistics and the anchors' attention scores, after
    /// the passes.
    #[serde(default)]
    pub weights_seconds: f64,
    /// The GPU's memory at its peak over the block loops, from wgpu's allocator report
    /// (zeros on the CPU path, where the backend makes no report, and in older bundles).
    #[serde(default)]
    pub device_memory: DeviceMemory,
}

/// Peaks of a device's memory, sampled after each model's block and after each block's
/// co-moment update (wgpu's allocator report; see `seedscope_gpu::GpuContext::memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceMemory {
    /// Bytes of live buffers at the largest sample.
    pub peak_allocated_bytes: u64,
    /// Bytes of the memory blocks the buffers are carved from, at the largest sample.
    pub peak_reserved_bytes: u64,
}

impl DeviceMemory {
    /// Take one sample `(allocated, reserved)` into the peaks.
    pub fn observe(&mut self, (allocated, reserved): (u64, u64)) {
        self.peak_allocated_bytes = self.peak_allocated_bytes.max(allocated);
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(reserved);
    }
}

impl std::ops::AddAssign for RunCost {
    fn add_assign(&mut self, o: Self) {
        self.forwards += o.forwards;
        self.forward_seconds += o.forward_seconds;
        self.reused += o.reused;
        self.reuse_seconds += o.reuse_seconds;
        self.time += o.time;
        self.finish_seconds += o.finish_seconds;
        self.checkpoint_seconds += o.checkpoint_seconds;
        self.weights_seconds += o.weights_seconds;
        self.device_memory.observe((
            o.device_memory.peak_allocated_bytes,
            o.device_memory.peak_reserved_bytes,
        ));
    }
}

/// Progress of a run, for bars and logs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Current pass (0-based) and their number.
    pub pass: usize,
    /// Passes.
    pub passes: usize,
    /// Kept tokens done in this pass.
    pub tokens: u64,
    /// Kept tokens per pass.
    pub tokens_per_pass: u64,
    /// Estimated peak memory of the accumulation.
    pub memory_bytes: u64,
    /// Where this pass's time went so far.
    pub timing: BlockTiming,
}

impl Progress {
    /// Kept tokens processed over all passes so far.
    pub fn done(&self) -> u64 {
        self.tokens_per_pass * self.pass as u64 + self.tokens
    }

    /// Kept tokens over all passes.
    pub fn total(&self) -> u64 {
        self.tokens_per_pass * self.passes as u64
    }
}

/// Seconds spent so far in a pass, by step of the block loop. On a GPU the steps only record
/// and submit work (the host's share) and `wait` is the device finishing it; on the CPU path
/// the steps do the work.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockTiming {
    /// The models' forward passes to the MLP activations with the rotation baseline's mixing
    /// (or the reads of activations kept from an earlier pass).
    pub forward: f64,
    /// Pre-activation histograms and the anatomy (top examples, token statistics).
    pub statistics: f64,
    /// The correlation accumulators: the streams made ready and the co-moment updates.
    pub accumulate: f64,
    /// Waiting for the device to finish the block's work.
    pub wait: f64,
}

impl std::ops::AddAssign for BlockTiming {
    fn add_assign(&mut self, o: Self) {
        self.forward += o.forward;
        self.statistics += o.statistics;
        self.accumulate += o.accumulate;
        self.wait += o.wait;
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// All passes done.
    Done(Box<Results>),
    /// Cancelled; a checkpoint was written to resume from.
    Interrupted {
        /// Where.
        checkpoint: PathBuf,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Uniform values in [0, 1) from a 64-bit linear congruential generator seeded with `seed`
    /// (the tests' random blocks).
    pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        }
    }

    /// The largest total weight over every one-to-one assignment of rows to columns (unknown
    /// entries weigh -3), by trying every injection of the smaller side into the larger.
    fn best_total(corr: &[f32], da: usize, db: usize) -> f64 {
        fn go(used: &mut [bool], i: usize, w: &dyn Fn(usize, usize) -> f64, m: usize) -> f64 {
            if i == m {
                return 0.0;
            }
            let mut best = f64::NEG_INFINITY;
            for j in 0..used.len() {
                if !used[j] {
                    used[j] = true;
                    best = best.max(w(i, j) + go(used, i + 1, w, m));
                    used[j] = false;
                }
            }
            best
        }
        let w = |i: usize, j: usize| {
            let c = corr[i * db + j];
            if c.is_nan() { -3.0 } else { f64::from(c) }
        };
        if da <= db {
            go(&mut vec![false; db], 0, &w, da)
        } else {
            go(&mut vec![false; da], 0, &|j, i| w(i, j), db)
        }
    }

    #[test]
    fn the_assignment_is_optimal_one_to_one_and_rectangular_either_way() {
        let mut next = uniform(7);
        for (da, db) in [
            (1, 1),
            (3, 3),
            (6, 6),
            (4, 7),
            (7, 4),
            (5, 1),
            (1, 5),
            (6, 5),
        ] {
            for unknown in [0.0, 0.3, 0.9, 1.0] {
                let corr: Vec<f32> = (0..da * db)
                    .map(|_| {
                        let v = next();
                        if next() < unknown {
                            f32::NAN
                        } else {
                            (2.0 * v - 1.0) as f32
                        }
                    })
                    .collect();
                for (solver, got) in [
                    ("dense", assign_dense(&corr, da, db)),
                    // From one entry per row and column, most of these small blocks grow past
                    // a quarter and are solved whole.
                    ("priced from 1", assign_priced(&corr, da, db, 1).0),
                    ("sparse", assign_sparse(&corr, da, db)),
                ] {
                    assert_eq!(got.len(), da, "{solver}");
                    let mut cols: Vec<usize> = got.iter().flatten().copied().collect();
                    assert_eq!(cols.len(), da.min(db), "{da} x {db}: {got:?}");
                    let total: f64 = got
                        .iter()
                        .enumerate()
                        .filter_map(|(i, j)| j.map(|j| corr[i * db + j]))
                        .map(|c| if c.is_nan() { -3.0 } else { f64::from(c) })
                        .sum();
                    cols.sort_unstable();
                    cols.dedup();
                    assert_eq!(
                        cols.len(),
                        da.min(db),
                        "{da} x {db}: a column twice in {got:?}"
                    );
                    let best = best_total(&corr, da, db);
                    assert!(
                        (total - best).abs() < 1e-9,
                        "{solver}, {da} x {db}, unknown {unknown}: {total} vs {best}"
                    );
                }
            }
        }
    }

    /// Offered tile by tile, the lists are each row's `k` highest and `k` lowest correlations
    /// over every column, an equal value after those already listed, NaN never: what sorting
    /// the whole row gives. Rows long enough that most chunks are skimmed past.
    #[test]
    fn candidates_are_the_ends_of_each_row_over_every_tile() {
        let mut uniform = uniform(5);
        let mut next = || uniform() as f32;
        let (n, k, tiles, nb) = (5, 4, 3, 700);
        // Coarse values: many ties.
        let corr: Vec<f32> = (0..n * tiles * nb)
            .map(|e| {
                let v = (next() * 200.0).round() / 100.0 - 1.0;
                if e % 97 == 0 { f32::NAN } else { v }
            })
            .collect();
        let width = tiles * nb;
        let mut c = Candidates::new(n, k);
        for t in 0..tiles {
            let tile: Vec<f32> = (0..n)
                .flat_map(|i| corr[i * width + t * nb..i * width + (t + 1) * nb].to_vec())
                .collect();
            c.offer(0..n, t * nb, &tile);
        }
        for i in 0..n {
            let mut row: Vec<(f32, u32)> = (0..width)
                .map(|j| (corr[i * width + j], j as u32))
                .filter(|p| !p.0.is_nan())
                .collect();
            row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top: Vec<(f32, u32)> = row[..k].to_vec();
            row.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let bottom: Vec<(f32, u32)> = row[..k].to_vec();
            let got = |r: std::ops::Range<usize>| -> Vec<(f32, u32)> {
                r.map(|e| (c.val[i * 2 * k + e], c.col[i * 2 * k + e]))
                    .collect()
            };
            assert_eq!(got(0..k), top, "row {i}: top");
            assert_eq!(got(k..2 * k), bottom, "row {i}: bottom");
        }
    }

    /// `lsap`'s assignment (scipy's algorithm over every entry), NaN weighing [`UNKNOWN`].
    fn lsap_assignment(corr: &[f32], da: usize, db: usize) -> Vec<Option<usize>> {
        let cost: Vec<f64> = corr
            .iter()
            .map(|&c| if c.is_nan() { UNKNOWN } else { f64::from(c) })
            .collect();
        let (rows, cols) = lsap::solve(da, db, &cost, true).expect("lsap solves");
        let mut partner = vec![None; da];
        for (r, c) in rows.into_iter().zip(cols) {
            partner[r] = Some(c);
        }
        partner
    }

    /// The total correlation of an assignment, NaN weighing [`UNKNOWN`].
    fn assigned_total(corr: &[f32], db: usize, got: &[Option<usize>]) -> f64 {
        got.iter()
            .enumerate()
            .filter_map(|(i, j)| j.map(|j| corr[i * db + j]))
            .map(|c| if c.is_nan() { UNKNOWN } else { f64::from(c) })
            .sum()
    }

    /// On dense blocks too large to try every assignment, the priced solver's total is
    /// `lsap`'s: correlation-like blocks (a shared factor per row and column, so rows compete
    /// for the same strong columns, and some planted twins), uniform noise (where the optimum
    /// reaches far down the rows), dead neurons (NaN rows and columns), ties, rectangular
    /// either way. Each is one `[da, db]` block.
    #[test]
    fn the_priced_dense_assignment_totals_what_lsap_does() {
        let mut next = uniform(17);
        for (da, db, case) in [
            (300, 300, "factors"),
            (240, 310, "factors"),
            (310, 240, "factors"),
            (300, 300, "noise"),
            (200, 260, "noise"),
            (300, 300, "dead"),
            (260, 200, "dead"),
            (300, 300, "ties"),
            (300, 300, "equal"),
        ] {
            let row_f: Vec<f64> = (0..da).map(|_| next()).collect();
            let col_f: Vec<f64> = (0..db).map(|_| next()).collect();
            let corr: Vec<f32> = (0..da * db)
                .map(|e| {
                    let (i, j) = (e / db, e % db);
                    let v = next();
                    match case {
                        "factors" if i % 7 == 0 && j == (i * 13) % db => 0.9,
                        "factors" => (0.6 * row_f[i] * col_f[j] + 0.2 * v - 0.1) as f32,
                        "dead" if i % 11 == 3 || j % 13 == 5 => f32::NAN,
                        "ties" => ((v * 8.0).floor() / 8.0) as f32,
                        "equal" => 0.5,
                        _ => (2.0 * v - 1.0) as f32,
                    }
                })
                .collect();
            let reference = lsap_assignment(&corr, da, db);
            // From one entry per row the prices must bring in most of the optimum.
            for first in [FIRST_ENTRIES, 1] {
                let (priced, rounds) = assign_priced(&corr, da, db, first);
                // Rows that tie spread over the columns: a block of equal values is solved in
                // a round or two, not a round per 16 columns.
                if case == "equal" {
                    assert!(rounds <= 3, "equal values from {first}: {rounds} rounds");
                }
                let mut cols: Vec<usize> = priced.iter().flatten().copied().collect();
                cols.sort_unstable();
                cols.dedup();
                assert_eq!(cols.len(), da.min(db), "{case} {da} x {db}: a column twice");
                let (p, r) = (
                    assigned_total(&corr, db, &priced),
                    assigned_total(&corr, db, &reference),
                );
                assert!(
                    (p - r).abs() < 1e-9,
                    "{case} {da} x {db} from {first}: priced {p}, lsap {r}"
                );
            }
        }
    }

    /// On blocks too large to try every assignment, shaped like a refined run's (each row knows
    /// a few entries, many rows compete for the same columns, rectangular either way), the
    /// sparse solver's total is the dense one's.
    #[test]
    fn the_sparse_assignment_totals_what_the_dense_one_does() {
        let mut next = uniform(3);
        let total = assigned_total;
        for (da, db, per_row, spread) in [
            (300, 300, 8, 300),
            (300, 300, 8, 20),
            (200, 260, 5, 60),
            (260, 200, 5, 60),
            (250, 250, 1, 250),
        ] {
            let mut corr = vec![f32::NAN; da * db];
            for i in 0..da {
                for _ in 0..per_row {
                    // Columns near the row's own, within `spread`: few rows can share a
                    // column when it is wide, many when it is narrow.
                    let j = (i * db / da + (next() * spread as f64) as usize) % db;
                    corr[i * db + j] = (2.0 * next() - 1.0) as f32;
                }
            }
            let dense = lsap_assignment(&corr, da, db);
            let sparse = assign_sparse(&corr, da, db);
            let (d, s) = (total(&corr, db, &dense), total(&corr, db, &sparse));
            assert!((d - s).abs() < 1e-9, "{da} x {db}: dense {d}, sparse {s}");
            assert_eq!(sparse.iter().flatten().count(), da.min(db));
        }
    }
}
