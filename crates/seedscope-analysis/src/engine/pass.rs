//! One stage of a run: the passes of a plan over the token blocks. A pass sets up its
//! accumulators (and, in an anchor's first pass, its histograms and anatomy), streams every
//! block through the models into them, checkpoints as it goes, and at its end folds the
//! tiles into the per-anchor results (a shard saves its sums instead).

use std::sync::atomic::Ordering;

use burn::tensor::Tensor;
use web_time::Instant;

use super::block::{Block, Rows, activations, blocks, permute, rotate};
use super::reuse::{Keep, ModelActs, Store};
use super::{ACTIVATIONS, Run, finished, pass_file};
use crate::AnalysisError;
use crate::accum::{Accumulate, Finish, RotatedLayer, SavedState};
use crate::anatomy::Anatomies;
use crate::checkpoint;
use crate::compute::Compute;
use crate::hist::Histograms;
use crate::plan::{KINDS, Kind, Plan, Reuse, Shape, TileSpec, model_of, stream};
use crate::results::{
    AnchorResult, Candidates, LayerBlock, OneToOne, Outcome, Progress, RunCost, SavedTile, assign,
};

/// The state of one pass: what it accumulates and which anchors it counts histograms and
/// anatomy for (those it runs that have none yet, so each token is counted once).
struct Pass<C: Compute> {
    acc: C::Accumulator,
    /// Indices into the results of the anchors counted in this pass.
    counted: Vec<usize>,
    hists: C::Hists,
    anatomy: Option<Anatomies<C::Anatomy>>,
    /// Streams the accumulators read.
    used: Vec<bool>,
    /// Per model, what this pass computes (or reads): post-activations, the rotated baseline,
    /// pre-activations. With a store to fill, also what the later passes read.
    wants: Keep,
    /// Per model, the baseline's rotations (empty where its baseline is not computed, and
    /// in a pass that reads kept activations instead of running the models).
    rotations: Vec<Vec<Tensor<2>>>,
    /// Kept tokens merged so far.
    tokens: u64,
    /// This pass's forwards, reads of kept activations and time by step of the block loop.
    cost: RunCost,
    /// Why keeping activations for later passes failed (a full disk): they run the models.
    fill_failed: Option<String>,
}

/// Where a pass gets each block's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The models, nothing kept.
    Forward,
    /// The models, keeping what later passes read.
    Fill,
    /// What the filling pass kept.
    Reuse,
}

impl<C: Compute> Pass<C> {
    /// The pass of `specs`, fresh or continued from `resumed`, getting its activations from
    /// `source`; `keep`: what it also computes for later passes; `held_rows = Some(tokens)`:
    /// it holds its rows ([`Plan::holds_rows`]).
    fn new(
        run: &Run<'_>,
        compute: &C,
        (specs, source, held_rows): (&[TileSpec], Source, Option<u64>),
        results: &[AnchorResult],
        resumed: Option<&SavedState<'_>>,
        keep: Option<&Keep>,
    ) -> Result<Self, AnalysisError> {
        let n_models = run.family.models.len();
        let widths = run.family.stream_widths()?;
        let mut acc = compute.accumulator(specs.to_vec(), &widths, held_rows)?;
        let used = acc.streams();
        let counted = counted_anchors(results, &used);
        let counted_widths = anchor_widths(results, &counted, &widths);
        let mut hists = compute.hists(&counted_widths)?;
        let mut anatomy = match &run.anatomy {
            Some(spec) if !counted.is_empty() => Some(compute.anatomies(spec, &counted_widths)?),
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
        let wants: Keep = (0..n_models)
            .map(|m| {
                let k = keep.and_then(|k| k.get(m)).copied().unwrap_or_default();
                let is_counted = counted.iter().any(|&i| results[i].anchor == m);
                [
                    used[stream(m, Kind::Real)] || used[stream(m, Kind::Permuted)] || k[0],
                    used[stream(m, Kind::Rotated)] || k[1],
                    is_counted || k[2],
                ]
            })
            .collect();
        // A layer's rotation is 9.4 M Gaussian draws at GPT-2 small: only for forwards (the
        // passes after the first of a plan read kept activations).
        let rotated: Vec<bool> = (0..KINDS * n_models)
            .map(|s| {
                Kind::of(s) == Kind::Rotated && wants[model_of(s)][1] && source != Source::Reuse
            })
            .collect();
        let rotations = run.rotations(&rotated)?;
        Ok(Self {
            acc,
            counted,
            hists,
            anatomy,
            used,
            wants,
            rotations,
            tokens,
            cost: RunCost::default(),
            fill_failed: None,
        })
    }

    /// Models `group`'s activations over block `bi` from `source`: forwards (and their
    /// rotations), side by side on the device's threads, kept in `store` when filling; or
    /// read back from `store`.
    fn models_acts(
        &mut self,
        run: &Run<'_>,
        group: &[usize],
        (bi, block): (usize, &Block),
        source: Source,
        mut store: Option<&mut Store>,
    ) -> Result<Vec<ModelActs>, AnalysisError> {
        let t = Instant::now();
        if let (Source::Reuse, Some(store)) = (source, store.as_deref_mut()) {
            let device = &run.family.device.device;
            let acts = group
                .iter()
                .map(|&m| store.get(bi, m, self.wants[m], device));
            let acts = acts.collect::<Result<Vec<_>, _>>()?;
            self.cost.reused += group.len() as u64;
            self.cost.reuse_seconds += t.elapsed().as_secs_f64();
            return Ok(acts);
        }
        let (wants, rotations) = (&self.wants, &self.rotations);
        let forward = |m: usize| -> Result<ModelActs, AnalysisError> {
            let want = wants[m];
            let d_mlp = run.family.models[m].config.d_mlp();
            let (post, pre) = activations(&run.family.models[m], block, want[2])?;
            let rotated = want[1].then(|| rotate(&post, &rotations[m], d_mlp));
            Ok(ModelActs {
                post: Some(post),
                rotated,
                pre,
            })
        };
        // A group of one (a GPU's one queue, the browser's one thread) runs on this thread.
        let acts = if group.len() > 1 {
            use rayon::prelude::*;
            group.par_iter().map(|&m| forward(m)).collect::<Vec<_>>()
        } else {
            group.iter().map(|&m| forward(m)).collect()
        };
        let acts = acts.into_iter().collect::<Result<Vec<_>, _>>()?;
        self.cost.forwards += group.len() as u64;
        self.cost.forward_seconds += t.elapsed().as_secs_f64();
        if let (Source::Fill, Some(store), None) = (source, store, &self.fill_failed) {
            for (&m, acts) in group.iter().zip(&acts) {
                if let Err(e) = store.put(bi, m, acts) {
                    self.fill_failed = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(acts)
    }

    /// Every model this pass reads over block `bi`, merged: histograms and anatomy of the
    /// counted anchors, the accumulators.
    async fn merge(
        &mut self,
        run: &Run<'_>,
        compute: &C,
        (bi, block): (usize, &Block),
        results: &[AnchorResult],
        source: Source,
        mut store: Option<&mut Store>,
    ) -> Result<(), AnalysisError> {
        let n_models = run.family.models.len();
        let mut streams: Vec<Option<C::Block>> = (0..KINDS * n_models).map(|_| None).collect();
        let read: Vec<usize> = (0..n_models)
            .filter(|&m| self.wants[m].iter().any(|&w| w))
            .collect();
        for group in read.chunks(run.family.device.forwards_at_once()) {
            let t = Instant::now();
            let acts = self.models_acts(run, group, (bi, block), source, store.as_deref_mut())?;
            self.cost.time.forward += t.elapsed().as_secs_f64();
            for (&m, acts) in group.iter().zip(acts) {
                self.merge_model(
                    (run, compute),
                    (m, acts),
                    (bi, block),
                    results,
                    &mut streams,
                )?;
                // Let the device finish this model's work (in a browser the page gets its
                // event loop back) before the next model is recorded.
                self.settle(compute).await;
            }
        }
        let t = Instant::now();
        self.acc.update(&streams)?;
        drop(streams);
        self.cost.time.accumulate += t.elapsed().as_secs_f64();
        self.settle(compute).await;
        self.tokens += block.rows.kept;
        Ok(())
    }

    /// Wait for the device ([`Compute::settle`]), counting the wait, and take a sample of its
    /// memory into the peaks.
    async fn settle(&mut self, compute: &C) {
        let t = Instant::now();
        compute.settle().await;
        self.cost.time.wait += t.elapsed().as_secs_f64();
        if let Some(sample) = compute.memory() {
            self.cost.device_memory.observe(sample);
        }
    }

    /// Model `m`'s activations over block `bi` into this pass: its histograms and anatomy if
    /// it is a counted anchor, and its streams the accumulators read.
    fn merge_model(
        &mut self,
        (run, compute): (&Run<'_>, &C),
        (m, acts): (usize, ModelActs),
        (bi, block): (usize, &Block),
        results: &[AnchorResult],
        streams: &mut [Option<C::Block>],
    ) -> Result<(), AnalysisError> {
        let [real, rotated, permuted] = Kind::ALL.map(|k| stream(m, k));
        let counted = self.counted.iter().position(|&i| results[i].anchor == m);
        let t = Instant::now();
        let missing =
            |what: &str| AnalysisError::Invalid(format!("model {m} has no {what} for block {bi}"));
        // The real block takes the post-activations over (on the CPU without a copy, the
        // tensor being its only holder) unless the permuted stream still reads them.
        let mut post = acts.post;
        let permute_from = if self.used[permuted] {
            post.clone()
        } else {
            None
        };
        let x = if self.used[real] {
            Some(compute.block(post.take().ok_or_else(|| missing("activations"))?)?)
        } else {
            None
        };
        self.cost.time.forward += t.elapsed().as_secs_f64();
        let t = Instant::now();
        if let Some(k) = counted {
            let pre = acts.pre.ok_or_else(|| missing("pre-activations"))?;
            self.hists.update(k, &compute.block(pre)?)?;
            if let (Some(a), Some(x)) = (&mut self.anatomy, &x) {
                a.update(k, x, &run.tokens.ids, block.rows.r0, &block.kept)?;
            }
        }
        self.cost.time.statistics += t.elapsed().as_secs_f64();
        let t = Instant::now();
        streams[real] = x;
        if self.used[rotated] {
            let r = acts.rotated.ok_or_else(|| missing("rotated baseline"))?;
            streams[rotated] = Some(compute.block(r)?);
        }
        if self.used[permuted] {
            let post = permute_from.ok_or_else(|| missing("activations"))?;
            let p = permute(&post, run.options.seed, block.rows.r0);
            streams[permuted] = Some(compute.block(p)?);
        }
        self.cost.time.accumulate += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The running state, for a checkpoint (accumulators in this path's layout), lent by the
    /// accumulators where they are on the host.
    async fn state(&mut self) -> Result<SavedState<'_>, AnalysisError> {
        let anatomy = anatomy_state(&self.anatomy).await?;
        Ok(SavedState {
            hists: self.hists.counts().await?,
            anatomy,
            ..self.acc.save().await?
        })
    }

    /// The sums a shard keeps for the merge (in the CPU path's layout).
    async fn sums(&self) -> Result<SavedState<'_>, AnalysisError> {
        let anatomy = anatomy_state(&self.anatomy).await?;
        Ok(SavedState {
            hists: self.hists.counts().await?,
            anatomy,
            ..self.acc.save_canonical().await?
        })
    }
}

/// The running anatomy of a pass's counted anchors (none where it counts none), lent where it
/// is on the host. A function of the field alone, so that a checkpoint can borrow it next to
/// the accumulators it borrows mutably.
async fn anatomy_state<D: crate::anatomy::AnatomyDevice>(
    anatomy: &Option<Anatomies<D>>,
) -> Result<Vec<crate::anatomy::AnatomySaved<'_>>, AnalysisError> {
    match anatomy {
        Some(a) => a.save().await,
        None => Ok(Vec::new()),
    }
}

/// Bytes free on the disk of `dir` (none known in the browser, or when the system does not
/// say).
fn free_space(dir: &std::path::Path) -> Option<u64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        fs4::available_space(dir).ok()
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = dir;
        None
    }
}

/// The widths (`widths`: per stream) of the anchors of `results[counted]`.
pub(super) fn anchor_widths(
    results: &[AnchorResult],
    counted: &[usize],
    widths: &[usize],
) -> Vec<usize> {
    counted
        .iter()
        .map(|&i| widths[stream(results[i].anchor, Kind::Real)])
        .collect()
}

/// Results whose histograms a pass reading `used` streams counts: anchors it runs that have
/// none yet (each token is counted once, in the anchor's first pass).
pub(super) fn counted_anchors(results: &[AnchorResult], used: &[bool]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.pre_hist.is_empty() && used[stream(r.anchor, Kind::Real)])
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
        let shapes = self.family.shapes()?;
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
        let mut results = self.initial_results(&shapes);
        let ckpt_path = self.work_dir.map(|d| d.join(checkpoint::FILE));
        let mut start = checkpoint::Position::default();
        let mut ck = match &ckpt_path {
            Some(path) => checkpoint::load(path, &self.fingerprint)?,
            None => None,
        };
        if let Some(ck) = &mut ck {
            start = ck.position();
            results = std::mem::take(&mut ck.results);
        }
        let mut store: Option<Store> = None;
        let mut last_ckpt = Instant::now();
        let mut cost = RunCost::default();
        let mut notes = Vec::new();
        if self.options.permutation_null {
            let least = blocks.iter().map(|b| b.kept).min().unwrap_or(0);
            let widest = shapes.iter().map(Shape::width).max().unwrap_or(0);
            notes.extend(super::null_warning(total_tokens, widest, least));
        }
        if plan.reuse == Reuse::Disk && self.work_dir.is_none() && plan.passes.len() > 1 {
            notes.push(format!(
                "{} passes without a work directory to keep activations in: every pass runs \
                 the models again ({}x the forward passes of one pass)",
                plan.passes.len(),
                plan.passes.len()
            ));
        }
        for (pass_idx, specs) in plan.passes.iter().enumerate().skip(start.pass) {
            // The checkpoint's pass state, lent from the mapped file until the pass has
            // restored it (then the file is let go).
            let resumed = match &ck {
                Some(c) if pass_idx == start.pass => c.accumulators()?,
                _ => None,
            };
            let first_block = if resumed.is_some() { start.block } else { 0 };
            let later = &plan.passes[pass_idx + 1..];
            // The first pass that starts at the first block and has passes after it keeps
            // what they read; those read it instead of running the models.
            let source = if store.as_ref().is_some_and(Store::is_complete) {
                Source::Reuse
            } else if store.is_none() && first_block == 0 && !later.is_empty() {
                store = self.new_store(&plan, specs, later, &results, &mut notes)?;
                if store.is_some() {
                    Source::Fill
                } else {
                    Source::Forward
                }
            } else {
                Source::Forward
            };
            let keep = store.as_ref().map(|s| s.keep().clone());
            let keep = keep.as_ref().filter(|_| source == Source::Fill);
            let held_rows = plan.holds_rows.then_some(tokens_per_pass);
            let mut pass = Pass::new(
                self,
                compute,
                (specs, source, held_rows),
                &results,
                resumed.as_ref(),
                keep,
            )?;
            drop(resumed);
            ck = None;
            for (bi, &rows) in blocks.iter().enumerate().skip(first_block) {
                if self.cancel.load(Ordering::SeqCst) {
                    if let Some(path) = &ckpt_path {
                        self.save(path, pass_idx, bi, &results, Some(pass.state().await?))?;
                    }
                    if let Some(s) = store {
                        s.remove()?;
                    }
                    return Ok(Outcome::Interrupted {
                        checkpoint: ckpt_path.unwrap_or_default(),
                    });
                }
                let block = self.block(rows)?;
                pass.merge(
                    self,
                    compute,
                    (bi, &block),
                    &results,
                    source,
                    store.as_mut(),
                )
                .await?;
                progress(Progress {
                    pass: pass_idx,
                    passes: plan.passes.len(),
                    tokens: pass.tokens,
                    tokens_per_pass,
                    memory_bytes: plan.peak_bytes(),
                    timing: pass.cost.time,
                });
                if let Some(path) = &ckpt_path
                    && last_ckpt.elapsed() >= self.checkpoint_every
                    && bi + 1 < blocks.len()
                {
                    let t = Instant::now();
                    self.save(path, pass_idx, bi + 1, &results, Some(pass.state().await?))?;
                    pass.cost.checkpoint_seconds += t.elapsed().as_secs_f64();
                    last_ckpt = Instant::now();
                }
            }
            cost += pass.cost;
            if source == Source::Fill {
                match pass.fill_failed.take() {
                    None => {
                        if let Some(s) = &mut store {
                            s.complete();
                            let (from, to) = (pass_idx + 2, plan.passes.len());
                            let later = if from == to {
                                format!("pass {to} reads")
                            } else {
                                format!("passes {from}-{to} read")
                            };
                            notes.push(format!(
                                "{later} the {:.0} MiB of activations pass {} kept {} instead \
                                 of running the models again",
                                s.bytes() as f64 / (1 << 20) as f64,
                                pass_idx + 1,
                                s.place()
                            ));
                        }
                    }
                    Some(why) => {
                        notes.push(format!(
                            "keeping activations for the later passes failed ({why}): they \
                             run the models again"
                        ));
                        if let Some(s) = store.take() {
                            // Best effort: the file may be what filled the disk.
                            let _ = s.remove();
                        }
                    }
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
                let t = Instant::now();
                // Updates' buffers go before finishing adds its own (the reductions, the
                // one-to-one blocks): the 12-layer run peaked there.
                pass.acc.updates_done();
                self.finish_pass(
                    &pass.acc,
                    &mut results,
                    collect,
                    &pass.counted,
                    &pass.hists,
                    pass.anatomy.as_ref(),
                )
                .await?;
                cost.finish_seconds += t.elapsed().as_secs_f64();
            }
            // Between passes as within them, at most one checkpoint per interval (a plan of
            // many short passes would otherwise spend its time writing the results), and
            // after the last (a refined run resumed in its second stage skips the first).
            if let Some(path) = &ckpt_path
                && (last_ckpt.elapsed() >= self.checkpoint_every
                    || pass_idx + 1 == plan.passes.len())
            {
                let t = Instant::now();
                self.save(path, pass_idx + 1, 0, &results, None)?;
                cost.checkpoint_seconds += t.elapsed().as_secs_f64();
                last_ckpt = Instant::now();
            }
        }
        if let Some(s) = store {
            s.remove()?;
        }
        let mut out = finished(tokens_per_pass, shapes, results, plan);
        out.cost = cost;
        out.notes = notes;
        Ok(Outcome::Done(out))
    }

    /// A store for what the passes after `specs` (`later`) read, where the plan keeps
    /// activations: in memory, or in the work directory (none without one).
    fn new_store(
        &self,
        plan: &Plan,
        specs: &[TileSpec],
        later: &[Vec<TileSpec>],
        results: &[AnchorResult],
        notes: &mut Vec<String>,
    ) -> Result<Option<Store>, AnalysisError> {
        let n_models = self.family.models.len();
        let read = crate::accum::used_streams(
            &later.iter().flatten().cloned().collect::<Vec<_>>(),
            KINDS * n_models,
        );
        let counted_now = counted_anchors(
            results,
            &crate::accum::used_streams(specs, KINDS * n_models),
        );
        // Anchors a later pass counts need their pre-activations there.
        let keep: Keep = (0..n_models)
            .map(|m| {
                let counted_later = read[stream(m, Kind::Real)]
                    && results.iter().enumerate().any(|(i, r)| {
                        r.anchor == m && r.pre_hist.is_empty() && !counted_now.contains(&i)
                    });
                // A permuted stream is made from the real activations.
                let post = read[stream(m, Kind::Real)] || read[stream(m, Kind::Permuted)];
                [post, read[stream(m, Kind::Rotated)], counted_later]
            })
            .collect();
        Ok(match (plan.reuse, self.work_dir) {
            (Reuse::Memory, _) => Some(Store::memory(keep)),
            (Reuse::Disk, Some(dir)) => match free_space(dir) {
                // A GiB to spare for the bundle and everything else on that disk.
                Some(free) if plan.reuse_bytes + (1 << 30) > free => {
                    notes.push(format!(
                        "the {} MiB of activations the later passes read do not fit the {} MiB \
                         free in {}: every pass runs the models again ({}x the forward passes \
                         of one pass)",
                        plan.reuse_bytes >> 20,
                        free >> 20,
                        dir.display(),
                        plan.passes.len()
                    ));
                    None
                }
                _ => Some(Store::disk(&dir.join(ACTIVATIONS), keep)?),
            },
            _ => None,
        })
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
    /// anchors' moments, candidates (with `collect`), the tiles asked to be saved, and the
    /// one-to-one matching (each other neuron's best anchor neuron; the same-layer blocks,
    /// assigned once complete: not in refinement's first stage, whose tiles are a sample's).
    /// Where the pass holds a layer's covariance, the real tiles of that layer also give the
    /// layer's rotation baseline ([`crate::plan::derives_baseline`]).
    async fn reduce<A: Accumulate>(
        &self,
        acc: &A,
        results: &mut [AnchorResult],
        collect: Option<usize>,
    ) -> Result<(), AnalysisError> {
        let shapes = self.family.shapes()?;
        let specs = acc.specs();
        let wanted = |k: usize| {
            let t = &specs[k];
            let layers = layers_of(t, &shapes);
            t.pairs.is_none()
                && Kind::of(t.b_stream) == Kind::Real
                && self.options.save_tiles.contains(&layers)
        };
        // Anchor moments, once per anchor.
        let used = acc.streams();
        for r in results.iter_mut() {
            if r.mean.is_empty() && used[stream(r.anchor, Kind::Real)] {
                let mv = acc.mean_var(stream(r.anchor, Kind::Real)).await?;
                r.mean = mv.iter().map(|x| x.0).collect();
                r.var = mv.iter().map(|x| x.1).collect();
            }
        }
        let mut baselines = Baselines::default();
        // Complete layer blocks wait here for their assignment, a few at a time.
        let mut ready = Vec::new();
        // A covariance is read whole, by the derived baselines below. Tiles come one at a
        // time, each written into the buffer of the one before.
        acc.finalize(
            |k| match &specs[k] {
                t if t.is_covariance() => Finish::Skip,
                t if wanted(k)
                    || (collect.is_some() && t.pairs.is_none())
                    || (collect.is_none() && t.assigns(&shapes)) =>
                {
                    Finish::WithTile
                }
                _ => Finish::Extremes,
            },
            async |k, red| {
                let t = &specs[k];
                let derived = if baselines.load(self, acc, t).await? {
                    let ia = baselines.anchor_scales(acc, t).await?;
                    let real = acc.co_moments(k).await?;
                    let red = baselines.reduce(&real, &ia, collect.is_some())?;
                    let rotated = stream(model_of(t.b_stream), Kind::Rotated);
                    Some((
                        TileSpec {
                            b_stream: rotated,
                            ..t.clone()
                        },
                        red,
                    ))
                } else {
                    None
                };
                let spare = fold_tile(results, &mut ready, (&shapes, collect), t, red, wanted(k))?;
                if let Some((t, red)) = derived {
                    fold_tile(results, &mut ready, (&shapes, collect), &t, red, false)?;
                }
                // As many blocks as threads: the assignments run side by side, and no more
                // complete blocks are held than that (48 of 38 MB each at GPT-2 small).
                if ready.len() >= rayon::current_num_threads() {
                    assign_ready(&mut ready, results);
                }
                Ok(spare)
            },
        )
        .await?;
        assign_ready(&mut ready, results);
        Ok(())
    }
}

/// What a pass's derived baselines read while it is reduced: the rotated layer last met (the
/// plan puts a layer's tiles one after another) and each anchor stream's scales.
#[derive(Default)]
struct Baselines {
    layer: Option<((usize, usize), RotatedLayer)>,
    anchors: Vec<(usize, Vec<f64>)>,
}

impl Baselines {
    /// Make the rotated layer of real dense tile `t`'s other columns the current one, where
    /// the pass holds their covariance; false otherwise (the baseline is streamed, or `t` is
    /// not such a tile).
    async fn load<A: Accumulate>(
        &mut self,
        run: &Run<'_>,
        acc: &A,
        t: &TileSpec,
    ) -> Result<bool, AnalysisError> {
        let key = (t.b_stream, t.b_cols.start);
        let covariance = TileSpec::covariance(t.b_stream, t.b_cols.clone());
        let Some(k) = (t.pairs.is_none() && Kind::of(t.b_stream) == Kind::Real)
            .then(|| acc.specs().iter().position(|s| *s == covariance))
            .flatten()
        else {
            return Ok(false);
        };
        if self.layer.as_ref().is_none_or(|(at, _)| *at != key) {
            // The previous layer goes before the next is made (75 MB each at GPT-2 small).
            self.layer = None;
            let m = model_of(t.b_stream);
            let l = run.family.shapes()?[m].layer_of(t.b_cols.start);
            let means: Vec<f64> = acc.mean_var(t.b_stream).await?[t.b_cols.clone()]
                .iter()
                .map(|x| x.0)
                .collect();
            let sigma = acc.co_moments(k).await?;
            let layer = RotatedLayer::new(&run.rotation(m, l)?, &sigma, &means, acc.count())?;
            self.layer = Some((key, layer));
        }
        Ok(true)
    }

    /// The current layer's reduction of the rotated tile ([`RotatedLayer::reduce`]).
    fn reduce(
        &self,
        real: &[f64],
        ia: &[f64],
        with_tile: bool,
    ) -> Result<seedscope_gpu::TileReduction, AnalysisError> {
        let (_, layer) = self
            .layer
            .as_ref()
            .ok_or_else(|| AnalysisError::Invalid("no rotated layer loaded".into()))?;
        layer.reduce(real, ia, with_tile)
    }

    /// The scales `1/sqrt(M2)` of real tile `t`'s anchor columns.
    async fn anchor_scales<A: Accumulate>(
        &mut self,
        acc: &A,
        t: &TileSpec,
    ) -> Result<Vec<f64>, AnalysisError> {
        if !self.anchors.iter().any(|(s, _)| *s == t.a_stream) {
            self.anchors
                .push((t.a_stream, acc.inv_scales(t.a_stream).await?));
        }
        let (_, scales) = self
            .anchors
            .iter()
            .find(|(s, _)| *s == t.a_stream)
            .ok_or_else(|| AnalysisError::Invalid("no anchor scales".into()))?;
        Ok(scales[t.a_cols.clone()].to_vec())
    }
}

/// Fold tile `t`'s reduction `red` into the results of its anchor: best and worst matches of
/// its kind, candidates (with `collect`), the one-to-one offers and complete layer blocks
/// (into `ready`), and with `save` the saved tile. Gives back the buffer of the tile's
/// correlations, if it had them, for the next tile's.
fn fold_tile(
    results: &mut [AnchorResult],
    ready: &mut Vec<Ready>,
    (shapes, collect): (&[Shape], Option<usize>),
    t: &TileSpec,
    red: seedscope_gpu::TileReduction,
    save: bool,
) -> Result<Option<Vec<f32>>, AnalysisError> {
    let (anchor, other, kind) = (
        model_of(t.a_stream),
        model_of(t.b_stream),
        Kind::of(t.b_stream),
    );
    let Some(ri) = results.iter().position(|r| r.anchor == anchor) else {
        return Ok(red.tile);
    };
    let r = &mut results[ri];
    let Some(oi) = r.others.iter().position(|&o| o == other) else {
        return Ok(red.tile);
    };
    if let (Some(k), Some(tile)) = (collect, &red.tile) {
        if r.candidates.is_empty() {
            r.candidates = (0..KINDS * r.others.len())
                .map(|_| Candidates::none(k))
                .collect();
        }
        let n = r.real.first().map_or(0, |m| m.max.len());
        let c = &mut r.candidates[KINDS * oi + kind as usize];
        if c.val.is_empty() {
            *c = Candidates::new(n, k);
        }
        c.offer(t.a_cols.clone(), t.b_cols.start, tile);
    }
    let m = match kind {
        Kind::Real => &mut r.real[oi],
        Kind::Rotated => &mut r.baseline[oi],
        Kind::Permuted => r.null.get_mut(oi).ok_or_else(|| {
            AnalysisError::Invalid("a permuted tile in a run without the null".into())
        })?,
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
    if kind == Kind::Real {
        let o2o = &mut r.one_to_one[oi];
        o2o.offer_columns(
            t.a_cols.start,
            t.b_cols.start,
            &red.col_max,
            &red.col_argmax,
        );
        if let (None, Some(tile)) = (collect, &red.tile)
            && t.assigns(shapes)
        {
            let (sa, sb) = (shapes[anchor], shapes[other]);
            for (block, paired) in fill_layer_blocks(o2o, t, (sa, sb), tile) {
                ready.push(Ready {
                    result: ri,
                    other: oi,
                    da: sa.d_mlp,
                    paired: (paired, sb.d_mlp),
                    block,
                });
            }
        }
    }
    if let (true, Some(tile)) = (save, &red.tile) {
        save_tile(r, t, shapes, tile);
    }
    Ok(red.tile)
}

/// A complete layer block waiting for its one-to-one assignment: the anchor result and the
/// other model (its index among the anchor's others) it belongs to, the anchor's `d_mlp`, the
/// other model's layer and `d_mlp`.
struct Ready {
    result: usize,
    other: usize,
    da: usize,
    paired: (usize, usize),
    block: LayerBlock,
}

/// Assign the `ready` blocks side by side (a 3,072-neuron layer takes seconds, single
/// threaded) and record their partners.
fn assign_ready(ready: &mut Vec<Ready>, results: &mut [AnchorResult]) {
    use rayon::prelude::*;
    let partners: Vec<_> = ready
        .par_iter()
        .map(|r| assign(&r.block.corr, r.da, r.paired.1))
        .collect();
    for (r, partner) in ready.drain(..).zip(partners) {
        results[r.result].one_to_one[r.other].set_partners(&r.block, r.da, r.paired, &partner);
    }
}

/// The (anchor layer, other layer) of a dense tile among models of `shapes`.
fn layers_of(t: &TileSpec, shapes: &[Shape]) -> (usize, usize) {
    (
        shapes[model_of(t.a_stream)].layer_of(t.a_cols.start),
        shapes[model_of(t.b_stream)].layer_of(t.b_cols.start),
    )
}

/// Write a tile's correlations between paired layers ([`Shape::paired_layer`]) into the layer
/// blocks of the assignment: a dense tile's rows and columns, or, of a sparse tile, each anchor
/// row's candidates in its paired layer (the row is then accounted for: the pairs left out stay
/// unknown). `sa`, `sb`: the anchor's and the other model's shapes. Returns the blocks this
/// completed, each with the other model's layer.
fn fill_layer_blocks(
    o2o: &mut OneToOne,
    t: &TileSpec,
    (sa, sb): (Shape, Shape),
    tile: &[f32],
) -> Vec<(LayerBlock, usize)> {
    let (da, db) = (sa.d_mlp, sb.d_mlp);
    match &t.pairs {
        None => {
            let layer = sa.layer_of(t.a_cols.start);
            let paired = sb.layer_of(t.b_cols.start);
            let (row0, col0, nb) = (
                t.a_cols.start - layer * da,
                t.b_cols.start - paired * db,
                t.b_cols.len(),
            );
            o2o.fill_block((layer, da), db, t.a_cols.len() * nb, |block| {
                for (r, row) in tile.chunks_exact(nb).enumerate() {
                    let at = (row0 + r) * db + col0;
                    block[at..at + nb].copy_from_slice(row);
                }
            })
            .map(|b| (b, paired))
            .into_iter()
            .collect()
        }
        Some(pairs) => {
            let k = pairs.len() / t.a_cols.len().max(1);
            let mut done = Vec::new();
            let mut a = t.a_cols.start;
            while a < t.a_cols.end {
                let layer = sa.layer_of(a);
                let paired = sa.paired_layer(layer, &sb);
                let end = t.a_cols.end.min((layer + 1) * da);
                let complete = o2o.fill_block((layer, da), db, (end - a) * db, |block| {
                    for row in a..end {
                        let e0 = (row - t.a_cols.start) * k;
                        for e in e0..e0 + k {
                            let j = pairs[e] as usize;
                            if sb.layer_of(j) == paired {
                                block[(row - layer * da) * db + j - paired * db] = tile[e];
                            }
                        }
                    }
                });
                done.extend(complete.map(|b| (b, paired)));
                a = end;
            }
            done
        }
    }
}

/// Copy a dense tile's rows into the anchor's saved tile of its layer pair (a layer pair may be
/// split into row ranges), `[anchor d_mlp, other d_mlp]`.
fn save_tile(r: &mut AnchorResult, t: &TileSpec, shapes: &[Shape], tile: &[f32]) {
    let other = model_of(t.b_stream);
    let (la, lb) = layers_of(t, shapes);
    let (da, db) = (shapes[r.anchor].d_mlp, shapes[other].d_mlp);
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
                corr: vec![0.0; da * db],
            });
            r.tiles.len() - 1
        }
    };
    let row0 = t.a_cols.start - la * da;
    r.tiles[idx].corr[row0 * db..(row0 + t.a_cols.len()) * db].copy_from_slice(tile);
}
