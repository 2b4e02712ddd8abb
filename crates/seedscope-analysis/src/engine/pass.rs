//! One stage of a run: the passes of a plan over the token blocks. A pass sets up its
//! accumulators (and, in an anchor's first pass, its histograms and anatomy), streams every
//! block through the models into them, checkpoints as it goes, and at its end folds the
//! tiles into the per-anchor results (a shard saves its sums instead).

use std::sync::atomic::Ordering;

use burn::tensor::Tensor;
use web_time::Instant;

use super::block::{Block, Rows, activations, blocks, rotate};
use super::{Run, finished, pass_file};
use crate::AnalysisError;
use crate::accum::{Accumulate, SavedState};
use crate::anatomy::Anatomies;
use crate::checkpoint;
use crate::compute::Compute;
use crate::hist::Histograms;
use crate::plan::{Plan, TileSpec, stream};
use crate::results::{AnchorResult, BlockTiming, Candidates, Outcome, Progress, SavedTile};

/// The state of one pass: what it accumulates and which anchors it counts histograms and
/// anatomy for (those it runs that have none yet, so each token is counted once).
struct Pass<C: Compute> {
    acc: C::Accumulator,
    /// Indices into the results of the anchors counted in this pass.
    counted: Vec<usize>,
    hists: C::Hists,
    anatomy: Option<Anatomies<C::Anatomy>>,
    /// Streams the pass reads.
    used: Vec<bool>,
    /// Per model, the baseline's rotations (empty where its baseline is not used).
    rotations: Vec<Vec<Tensor<2>>>,
    /// Kept tokens merged so far.
    tokens: u64,
    timing: BlockTiming,
}

impl<C: Compute> Pass<C> {
    /// The pass of `specs`, fresh or continued from `resumed`.
    fn new(
        run: &Run<'_>,
        compute: &C,
        specs: &[TileSpec],
        results: &[AnchorResult],
        resumed: Option<&SavedState>,
    ) -> Result<Self, AnalysisError> {
        let (n_layers, d_mlp) = run.family.shape()?;
        let width = n_layers * d_mlp;
        let widths = vec![width; 2 * run.family.models.len()];
        let mut acc = compute.accumulator(specs.to_vec(), &widths)?;
        let used = acc.streams();
        let counted = counted_anchors(results, &used);
        let mut hists = compute.hists(counted.len(), width)?;
        let mut anatomy = match &run.anatomy {
            Some(spec) if !counted.is_empty() => {
                Some(compute.anatomies(spec, counted.len(), width)?)
            }
            _ => None,
        };
        let mut tokens = 0;
        if let Some(state) = resumed {
            acc.restore(state)?;
            hists.restore(&state.hists)?;
            if let Some(a) = &mut anatomy {
                a.restore(&state.anatomy)?;
            }
            tokens = state.count;
        }
        let rotations = run.rotations(&used)?;
        Ok(Self {
            acc,
            counted,
            hists,
            anatomy,
            used,
            rotations,
            tokens,
            timing: BlockTiming::default(),
        })
    }

    /// Run every model this pass reads over `block` and merge the block: histograms and
    /// anatomy of the counted anchors, the rotated baselines, the accumulators.
    async fn merge(
        &mut self,
        run: &Run<'_>,
        compute: &C,
        block: &Block,
        results: &[AnchorResult],
    ) -> Result<(), AnalysisError> {
        let n_models = run.family.models.len();
        let d_mlp = run.family.shape()?.1;
        let mut streams: Vec<Option<C::Block>> = (0..2 * n_models).map(|_| None).collect();
        for m in 0..n_models {
            let (real, rotated) = (stream(m, false), stream(m, true));
            if !(self.used[real] || self.used[rotated]) {
                continue;
            }
            let counted = self.counted.iter().position(|&i| results[i].anchor == m);
            let t = Instant::now();
            let (x, pre) = activations(&run.family.models[m], block, counted.is_some())?;
            // The baseline mixes the activations as a Burn tensor; the statistics read blocks.
            let rot_input = self.used[rotated].then(|| x.clone());
            let x = if self.used[real] {
                Some(compute.block(x)?)
            } else {
                None
            };
            self.timing.forward += t.elapsed().as_secs_f64();
            let t = Instant::now();
            if let Some(k) = counted {
                if let Some(pre) = pre {
                    self.hists.update(k, &compute.block(pre)?)?;
                }
                if let (Some(a), Some(x)) = (&mut self.anatomy, &x) {
                    a.update(k, x, &run.tokens.ids, block.rows.r0, &block.kept)?;
                }
            }
            self.timing.statistics += t.elapsed().as_secs_f64();
            let t = Instant::now();
            streams[real] = x;
            streams[rotated] = rot_input
                .map(|x| compute.block(rotate(&x, &self.rotations[m], d_mlp)))
                .transpose()?;
            self.timing.accumulate += t.elapsed().as_secs_f64();
            // Let the device finish this model's work (in a browser the page gets its event
            // loop back) before the next model is recorded.
            let t = Instant::now();
            compute.settle().await;
            self.timing.wait += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        self.acc.update(&streams)?;
        drop(streams);
        self.timing.accumulate += t.elapsed().as_secs_f64();
        let t = Instant::now();
        compute.settle().await;
        self.timing.wait += t.elapsed().as_secs_f64();
        self.tokens += block.rows.kept;
        Ok(())
    }

    /// The running state, for a checkpoint (accumulators in this path's layout).
    async fn state(&self) -> Result<SavedState, AnalysisError> {
        Ok(SavedState {
            hists: self.hists.counts().await?,
            anatomy: self.anatomy_state().await?,
            ..self.acc.save().await?
        })
    }

    /// The sums a shard keeps for the merge (in the CPU path's layout).
    async fn sums(&self) -> Result<SavedState, AnalysisError> {
        Ok(SavedState {
            hists: self.hists.counts().await?,
            anatomy: self.anatomy_state().await?,
            ..self.acc.save_canonical().await?
        })
    }

    async fn anatomy_state(&self) -> Result<Vec<crate::anatomy::AnatomySaved>, AnalysisError> {
        match &self.anatomy {
            Some(a) => a.save().await,
            None => Ok(Vec::new()),
        }
    }
}

/// Results whose histograms a pass reading `used` streams counts: anchors it runs that have
/// none yet (each token is counted once, in the anchor's first pass).
pub(super) fn counted_anchors(results: &[AnchorResult], used: &[bool]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.pre_hist.is_empty() && used[stream(r.anchor, false)])
        .map(|(i, _)| i)
        .collect()
}

impl Run<'_> {
    /// Run the passes of `plan` (resuming from a matching checkpoint in `work_dir`); with
    /// `collect = Some(k)`, keep every anchor neuron's `k` best and worst candidates; with
    /// `shard = Some((i, n))`, every `n`-th block from the `i`-th, each pass's sums saved.
    pub(super) async fn run_passes<C: Compute>(
        &self,
        compute: &C,
        plan: Plan,
        collect: Option<usize>,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        let shape = self.family.shape()?;
        let all_blocks = blocks(self.tokens, self.options);
        let total_tokens: u64 = all_blocks.iter().map(|b| b.kept).sum();
        if total_tokens < 2 {
            return Err(AnalysisError::Invalid(format!(
                "only {total_tokens} token(s) remain after dropping BOS/pad and newline \
                 positions: correlations need at least 2"
            )));
        }
        let blocks: Vec<Rows> = match shard {
            Some((i, n)) => all_blocks.into_iter().skip(i).step_by(n).collect(),
            None => all_blocks,
        };
        let tokens_per_pass: u64 = blocks.iter().map(|b| b.kept).sum();
        let mut results = self.initial_results(shape.0 * shape.1);
        let ckpt_path = self.work_dir.map(|d| d.join(checkpoint::FILE));
        let mut start = checkpoint::Position::default();
        let mut resumed = None;
        if let Some(path) = &ckpt_path
            && let Some(ck) = checkpoint::load(path, &self.fingerprint)?
        {
            start = ck.position;
            results = ck.results;
            resumed = ck.accumulators;
        }
        for (pass_idx, specs) in plan.passes.iter().enumerate().skip(start.pass) {
            let resumed = resumed.take().filter(|_| pass_idx == start.pass);
            let first_block = if resumed.is_some() { start.block } else { 0 };
            let mut pass = Pass::new(self, compute, specs, &results, resumed.as_ref())?;
            let mut last_ckpt = Instant::now();
            for (bi, &rows) in blocks.iter().enumerate().skip(first_block) {
                if self.cancel.load(Ordering::SeqCst) {
                    if let Some(path) = &ckpt_path {
                        self.save(path, pass_idx, bi, &results, Some(pass.state().await?))?;
                    }
                    return Ok(Outcome::Interrupted {
                        checkpoint: ckpt_path.unwrap_or_default(),
                    });
                }
                pass.merge(self, compute, &self.block(rows)?, &results)
                    .await?;
                progress(Progress {
                    pass: pass_idx,
                    passes: plan.passes.len(),
                    tokens: pass.tokens,
                    tokens_per_pass,
                    memory_bytes: plan.peak_bytes(),
                    timing: pass.timing,
                });
                if let Some(path) = &ckpt_path
                    && last_ckpt.elapsed() >= self.checkpoint_every
                    && bi + 1 < blocks.len()
                {
                    self.save(path, pass_idx, bi + 1, &results, Some(pass.state().await?))?;
                    last_ckpt = Instant::now();
                }
            }
            if shard.is_some() {
                // A shard keeps its sums for the merge; its histograms are marked counted so
                // later passes do not count them again (as in a whole run).
                let sums = pass.sums().await?;
                for (&i, c) in pass.counted.iter().zip(&sums.hists) {
                    results[i].pre_hist = c.clone();
                }
                let dir = self.need_dir("a shard")?;
                self.save(&dir.join(pass_file(pass_idx)), pass_idx, 0, &[], Some(sums))?;
            } else {
                self.finish_pass(
                    &pass.acc,
                    &mut results,
                    collect,
                    &pass.counted,
                    &pass.hists,
                    pass.anatomy.as_ref(),
                )
                .await?;
            }
            if let Some(path) = &ckpt_path {
                self.save(path, pass_idx + 1, 0, &results, None)?;
            }
        }
        Ok(Outcome::Done(finished(
            tokens_per_pass,
            shape,
            results,
            plan,
        )))
    }

    /// Fold a finished pass into the results: matches (and candidates), then the histograms
    /// and anatomy of the anchors it counted.
    pub(super) async fn finish_pass<
        A: Accumulate,
        H: Histograms,
        D: crate::anatomy::AnatomyDevice,
    >(
        &self,
        acc: &A,
        results: &mut [AnchorResult],
        collect: Option<usize>,
        counted: &[usize],
        hists: &H,
        anatomy: Option<&Anatomies<D>>,
    ) -> Result<(), AnalysisError> {
        self.reduce(acc, results, collect).await?;
        for (&i, counts) in counted.iter().zip(hists.counts().await?) {
            results[i].pre_hist = counts;
        }
        if let Some(a) = anatomy {
            for (k, &i) in counted.iter().enumerate() {
                let r = &results[i];
                results[i].anatomy = Some(a.finish(k, &r.mean, &r.var).await?);
            }
        }
        Ok(())
    }

    /// Fold a finished pass's tiles into the per-anchor results: best and worst matches, the
    /// anchors' moments, candidates (with `collect`) and the tiles asked to be saved.
    async fn reduce<A: Accumulate>(
        &self,
        acc: &A,
        results: &mut [AnchorResult],
        collect: Option<usize>,
    ) -> Result<(), AnalysisError> {
        let d = self.family.shape()?.1;
        let specs = acc.specs();
        let wanted = |k: usize| {
            let t = &specs[k];
            t.pairs.is_none()
                && t.b_stream.is_multiple_of(2)
                && self
                    .options
                    .save_tiles
                    .contains(&(t.a_cols.start / d, t.b_cols.start / d))
        };
        let reductions = acc
            .finalize(|k| wanted(k) || (collect.is_some() && specs[k].pairs.is_none()))
            .await?;
        // Anchor moments, once per anchor.
        let used = acc.streams();
        for r in results.iter_mut() {
            if r.mean.is_empty() && used[stream(r.anchor, false)] {
                let mv = acc.mean_var(stream(r.anchor, false)).await?;
                r.mean = mv.iter().map(|x| x.0).collect();
                r.var = mv.iter().map(|x| x.1).collect();
            }
        }
        for (k, (t, red)) in specs.iter().zip(reductions).enumerate() {
            let (anchor, other, rotated) = (t.a_stream / 2, t.b_stream / 2, t.b_stream % 2 == 1);
            let Some(r) = results.iter_mut().find(|r| r.anchor == anchor) else {
                continue;
            };
            let Some(oi) = r.others.iter().position(|&o| o == other) else {
                continue;
            };
            if let (Some(k), Some(tile)) = (collect, &red.tile) {
                if r.candidates.is_empty() {
                    let n = r.real.first().map_or(0, |m| m.max.len());
                    r.candidates = (0..2 * r.others.len())
                        .map(|_| Candidates::new(n, k))
                        .collect();
                }
                let c = &mut r.candidates[2 * oi + usize::from(rotated)];
                let nb = t.b_cols.len();
                for (i, col) in t.a_cols.clone().enumerate() {
                    c.offer(col, t.b_cols.start, &tile[i * nb..(i + 1) * nb]);
                }
            }
            let m = if rotated {
                &mut r.baseline[oi]
            } else {
                &mut r.real[oi]
            };
            for (i, col) in t.a_cols.clone().enumerate() {
                if red.max[i] > m.max[col] {
                    m.max[col] = red.max[i];
                    m.argmax[col] = t.b_cols.start as u32 + red.argmax[i];
                }
                if red.min[i] < m.min[col] {
                    m.min[col] = red.min[i];
                    m.argmin[col] = t.b_cols.start as u32 + red.argmin[i];
                }
            }
            if let (true, Some(tile)) = (wanted(k), red.tile) {
                save_tile(r, other, t, d, &tile);
            }
        }
        Ok(())
    }
}

/// Copy a dense tile's rows into the anchor's saved tile of its layer pair (a layer pair may be
/// split into row ranges).
fn save_tile(r: &mut AnchorResult, other: usize, t: &TileSpec, d: usize, tile: &[f32]) {
    let (la, lb) = (t.a_cols.start / d, t.b_cols.start / d);
    let key = (other, la, lb);
    let idx = match r
        .tiles
        .iter()
        .position(|s| (s.other, s.layer_a, s.layer_b) == key)
    {
        Some(i) => i,
        None => {
            r.tiles.push(SavedTile {
                other,
                layer_a: la,
                layer_b: lb,
                corr: vec![0.0; d * d],
            });
            r.tiles.len() - 1
        }
    };
    let row0 = t.a_cols.start - la * d;
    r.tiles[idx].corr[row0 * d..(row0 + t.a_cols.len()) * d].copy_from_slice(tile);
}
