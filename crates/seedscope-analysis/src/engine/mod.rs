//! The streaming pass, in stages:
//!
//! - [`Run`] (here): what to analyse and how; the plan; the choice of [`Cpu`] or [`Gpu`]
//!   statistics; checkpoints.
//! - `block`: token blocks, each model's forward to its MLP activations with the masked
//!   positions dropped, and the rotated baseline.
//! - `pass`: one pass over the blocks: its accumulators, histograms and anatomy, resume and
//!   checkpoints, and folding the finished pass into the [`Results`].
//! - `refine`: the two-stage run (all pairs over a sample, then the candidates over all tokens).
//! - `merge`: combining the shards of a sharded run.

mod block;
mod merge;
mod pass;
mod refine;
mod reuse;

pub use block::{NULL_SHIFT, null_order, null_warning};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use seedscope_gpu::GpuContext;
use seedscope_model::{ComputeDevice, LoadedModel};
use serde::{Deserialize, Serialize};

use crate::accum::SavedState;
use crate::anatomy::AnatomySpec;
use crate::compute::{Compute, Cpu, Gpu};
use crate::plan::{KINDS, Kind, Plan, PlanInput, Shape, model_of, plan};
use crate::results::{AnchorResult, Outcome, Progress, Results};
use crate::{AnalysisError, checkpoint};

/// Options of an analysis (recorded in the manifest; a checkpoint resumes only under the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisOptions {
    /// Excess correlation above which a neuron is universal.
    pub threshold: f64,
    /// Seed of the rotation matrices.
    pub seed: u64,
    /// Stop after this many kept tokens.
    pub max_tokens: Option<u64>,
    /// Keep BOS/pad and newline positions (the paper drops them).
    pub keep_all_tokens: bool,
    /// Token rows per block.
    pub block_rows: usize,
    /// Memory budget for activations and accumulators, in bytes.
    pub memory_budget: u64,
    /// Correlation tiles to save for heatmaps: (anchor layer, other layer).
    pub save_tiles: Vec<(usize, usize)>,
    /// Analyse with every model as the anchor.
    pub all_anchors: bool,
    /// Two-stage candidate refinement instead of all pairs over all tokens (none: exhaustive).
    #[serde(default)]
    pub refine: Option<Refine>,
    /// The models computed in f16 (weights and activations; accumulation stays in compensated
    /// f32 / f64). Only where the device has `shader-f16`; the job falls back to f32 elsewhere.
    #[serde(default)]
    pub half: bool,
    /// Accumulate the co-moments with the f32 kernel even where the GPU has cooperative
    /// matrices (which multiply the block-centred activations in f16; `--fp32-co-moments`).
    #[serde(default)]
    pub fp32_co_moments: bool,
    /// The permutation null next to the rotation baseline (`--null permutation`): each anchor
    /// neuron's best correlation with every other model's activations in a permuted token order
    /// ([`null_order`]: each block's kept tokens rotated by a random offset of at least
    /// [`NULL_SHIFT`], drawn from `seed` and the block).
    #[serde(default)]
    pub permutation_null: bool,
}

impl AnalysisOptions {
    /// The kinds of other-model streams a run compares the anchors with.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Real, Kind::Rotated];
        if self.permutation_null {
            kinds.push(Kind::Permuted);
        }
        kinds
    }
}

/// Candidate refinement: all pairs over a sample of the tokens (every s-th row, so that the
/// sample spans the data) keep each anchor neuron's `k`
/// most and `k` least correlated neurons per stream (every other model and its baseline); one
/// more pass over all tokens computes exact correlations of those pairs only. The cost falls
/// from all pairs × all tokens to all pairs × the prefix plus 2k pairs per neuron × all tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refine {
    /// Kept tokens of the first stage (rows spread evenly over the data, up to this many).
    pub prefix_tokens: u64,
    /// Candidates kept at each end (best and worst).
    pub k: usize,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            seed: 0,
            max_tokens: None,
            keep_all_tokens: false,
            block_rows: 32,
            memory_budget: 4 << 30,
            save_tiles: Vec::new(),
            all_anchors: false,
            refine: None,
            half: false,
            fp32_co_moments: false,
            permutation_null: false,
        }
    }
}

/// Token rows to analyse and the ids whose positions are dropped.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// Ids, row-major.
    pub ids: Vec<u32>,
    /// Rows.
    pub n_rows: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Ids whose positions are dropped (BOS/pad, newline), unless `keep_all_tokens`.
    pub drop_ids: Vec<u32>,
}

/// Models compared with each other, on one device: seeds of one architecture, or models of
/// different widths and depths that share a tokenizer.
#[derive(Debug)]
pub struct Family<'a> {
    /// The models; model 0 is the default anchor.
    pub models: &'a [LoadedModel],
    /// Where they run.
    pub device: &'a ComputeDevice,
}

impl Family<'_> {
    /// Every model's shape, in order (at least two models).
    pub fn shapes(&self) -> Result<Vec<Shape>, AnalysisError> {
        if self.models.len() < 2 {
            return Err(AnalysisError::Invalid(
                "universality needs at least two models (an anchor and another seed)".into(),
            ));
        }
        Ok(self.models.iter().map(Shape::of).collect())
    }

    /// The neurons of every stream ([`crate::plan::stream`]): its model's width.
    pub fn stream_widths(&self) -> Result<Vec<usize>, AnalysisError> {
        let shapes = self.shapes()?;
        Ok((0..KINDS * shapes.len())
            .map(|s| shapes[model_of(s)].width())
            .collect())
    }
}

impl Shape {
    /// The MLP shape of `model`.
    pub fn of(model: &LoadedModel) -> Shape {
        Shape {
            n_layers: model.config.n_layers(),
            d_mlp: model.config.d_mlp(),
        }
    }
}

/// File of a shard's pass state in its work directory.
pub fn pass_file(pass: usize) -> String {
    format!("pass-{pass}.safetensors")
}

/// File of the activations a multi-pass run keeps on disk for its later passes (in the work
/// directory; removed when the run ends).
pub const ACTIVATIONS: &str = "activations.bin";

/// File of a shard's prefix-stage results (the candidates) in its work directory.
pub const CANDIDATES: &str = "candidates.safetensors";

/// Directory of a refined run's first (prefix) stage inside its work directory: its
/// checkpoint, kept with the run's own until the bundle is written
/// ([`crate::checkpoint::discard`]).
pub const PREFIX: &str = "prefix";

/// Everything needed to run (and resume) an analysis.
pub struct Run<'a> {
    /// The models.
    pub family: Family<'a>,
    /// The tokens.
    pub tokens: &'a TokenSet,
    /// Options.
    pub options: &'a AnalysisOptions,
    /// A fingerprint of models, data and options; a checkpoint resumes only if it matches.
    pub fingerprint: String,
    /// Where the checkpoint lives; `None`: no checkpoints (the browser has no files), so a
    /// cancelled run just stops.
    pub work_dir: Option<&'a Path>,
    /// Set to stop at the next block boundary, leaving a checkpoint.
    pub cancel: Arc<AtomicBool>,
    /// Seconds between checkpoints.
    pub checkpoint_every: Duration,
    /// Baseline matrices to use instead of the seeded ones, `[model][layer]` each `[d_mlp,
    /// d_mlp]` row-major (e.g. the paper's stored `R`, or a test's fixed matrices).
    pub rotations: Option<Vec<Vec<Vec<f32>>>>,
    /// Features and positions for the anatomy of each anchor (none: skip it).
    pub anatomy: Option<AnatomySpec>,
}

impl Run<'_> {
    /// This run under `options` (another memory budget, while one is fitted): the same
    /// family, data, work directory and cancel flag, no fingerprint.
    pub fn with_options<'b>(&'b self, options: &'b AnalysisOptions) -> Run<'b> {
        Run {
            family: Family {
                models: self.family.models,
                device: self.family.device,
            },
            tokens: self.tokens,
            options,
            fingerprint: String::new(),
            work_dir: self.work_dir,
            cancel: self.cancel.clone(),
            checkpoint_every: self.checkpoint_every,
            rotations: self.rotations.clone(),
            anatomy: self.anatomy.clone(),
        }
    }

    /// The plan for this family, data and budget.
    pub fn plan(&self) -> Result<Plan, AnalysisError> {
        self.plan_for(self.max_binding())
    }

    /// The device's largest binding (none on the CPU).
    fn max_binding(&self) -> u64 {
        self.family.device.max_buffer_bytes.unwrap_or(u64::MAX)
    }

    /// The plan under a device binding limit of `max_binding` bytes (a merge replays the
    /// shards' device's plan).
    pub fn plan_for(&self, max_binding: u64) -> Result<Plan, AnalysisError> {
        self.plan_holding(max_binding, self.options.refine.map(|r| r.k))
    }

    /// The plan of a run that also holds `candidates` best and worst matches per anchor
    /// neuron and stream (refinement's first stage holds what it collects).
    fn plan_holding(
        &self,
        max_binding: u64,
        candidates: Option<usize>,
    ) -> Result<Plan, AnalysisError> {
        plan(&PlanInput {
            shapes: self.family.shapes()?,
            anchors: self.anchors(),
            block_tokens: self.block_tokens(),
            tokens: block::blocks(self.tokens, self.options)
                .iter()
                .map(|b| b.kept)
                .sum(),
            budget: self.options.memory_budget,
            reserved: self.reserved_bytes(candidates)?,
            read_back: candidates.is_some() || !self.options.save_tiles.is_empty(),
            kinds: self.options.kinds(),
            max_binding,
            // Refinement's first stage screens: on the CPU it may hold its rows.
            may_hold_rows: self.on_cpu() && candidates.is_some() && self.options.refine.is_none(),
            on_host: self.on_cpu(),
        })
    }

    /// Whether the statistics run on the host ([`Run::run_on_device`] picks [`Cpu`]).
    fn on_cpu(&self) -> bool {
        self.family.device.statistics_on_host()
    }

    /// Bytes the run holds throughout: the models' weights, the data (token ids and the
    /// anatomy's token features) and, per anchor, its results (matches, histograms,
    /// `candidates` best and worst matches per neuron and stream, the anatomy's accumulators).
    pub fn reserved_bytes(&self, candidates: Option<usize>) -> Result<u64, AnalysisError> {
        let shapes = self.family.shapes()?;
        let others = shapes.len() as u64 - 1;
        let weights: u64 = self.family.models.iter().map(|m| m.weight_bytes()).sum();
        let data = 4 * self.tokens.ids.len() as u64
            + self.anatomy.as_ref().map_or(0, |s| s.features.bytes());
        let streams = self.options.kinds().len() as u64 * others;
        let candidates = candidates.map_or(0, |k| streams * 2 * k as u64 * 8);
        // Matches per stream, the partners of the one-to-one matching (8 bytes per other
        // model), the histogram and the candidates.
        let per_neuron =
            streams * 16 + others * 8 + seedscope_gpu::HIST_BINS as u64 * 4 + candidates;
        let all: u64 = shapes.iter().map(|s| s.width() as u64).sum();
        Ok(weights
            + data
            + self
                .anchors()
                .into_iter()
                .map(|a| {
                    let width = shapes[a].width() as u64;
                    let anatomy = self.anatomy.as_ref().map_or(0, |s| {
                        seedscope_gpu::Anatomy::bytes(
                            width as u32,
                            crate::anatomy::TOP_K as u32,
                            s.n_pos() as u32,
                            s.features.len() as u32,
                        )
                    });
                    // Each other neuron's best anchor neuron: 8 bytes.
                    width * per_neuron + (all - width) * 8 + anatomy
                })
                .sum::<u64>())
    }

    /// Run every pass (resuming from a matching checkpoint in `work_dir`); with
    /// [`AnalysisOptions::refine`], the prefix stage (in `work_dir/prefix`, kept until the
    /// bundle is written)
    /// and then the candidate stage.
    pub fn run(&self, progress: impl FnMut(Progress)) -> Result<Outcome, AnalysisError> {
        pollster::block_on(self.run_async(progress))
    }

    /// [`Run::run`] as a future: GPU reads are awaited, and between blocks the future waits
    /// for the device to finish (in the browser that hands the event loop to the page).
    pub async fn run_async(
        &self,
        mut progress: impl FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        self.run_on_device(None, &mut progress).await
    }

    /// Run shard `index` of `count`: every `count`-th block of the data from `index`, each
    /// pass's accumulators written to `work_dir/pass-{k}.safetensors` in the path-independent
    /// layout instead of being reduced ([`Run::merge`] combines the shards exactly). With
    /// refinement, the prefix stage runs whole in every shard (its candidates are saved to
    /// `work_dir/candidates.safetensors`, so the merge can check the shards agree).
    pub fn run_shard(
        &self,
        index: usize,
        count: usize,
        mut progress: impl FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        if count == 0 || index >= count {
            return Err(AnalysisError::Invalid(format!(
                "shard {index}/{count}: the index must be below the count"
            )));
        }
        pollster::block_on(self.run_on_device(Some((index, count)), &mut progress))
    }

    /// Run on the statistics of the family's device: the kernels (compiled once for the run)
    /// where the models run on wgpu, the host otherwise.
    async fn run_on_device(
        &self,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        let device = self.family.device;
        match (&device.wgpu, &device.adapter) {
            (Some(h), Some(info)) => {
                let cross = device
                    .cross_kernel(self.options.fp32_co_moments)
                    .unwrap_or(h.cross);
                let ctx = GpuContext::new(h.device.clone(), h.queue.clone(), info.clone())
                    .with_cross(cross);
                self.run_with(&Gpu::new(ctx), shard, progress).await
            }
            _ => self.run_with(&Cpu, shard, progress).await,
        }
    }

    /// One stage over all passes of the plan, or the two stages of refinement.
    async fn run_with<C: Compute>(
        &self,
        compute: &C,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        match self.options.refine {
            None => {
                self.run_passes(compute, self.plan()?, None, shard, progress)
                    .await
            }
            Some(refine) => self.run_refined(compute, refine, shard, progress).await,
        }
    }

    /// The anchors: model 0, or every model with `--all-anchors`.
    fn anchors(&self) -> Vec<usize> {
        if self.options.all_anchors {
            (0..self.family.models.len()).collect()
        } else {
            vec![0]
        }
    }

    /// Token positions per block, at most.
    fn block_tokens(&self) -> usize {
        self.options.block_rows * self.tokens.seq_len
    }

    /// The per-anchor results before any pass.
    fn initial_results(&self, shapes: &[Shape]) -> Vec<AnchorResult> {
        self.anchors()
            .into_iter()
            .map(|a| AnchorResult::empty(a, shapes, self.options.permutation_null))
            .collect()
    }

    /// The work directory, or an error saying `what` needs one.
    fn need_dir(&self, what: &str) -> Result<&Path, AnalysisError> {
        self.work_dir.ok_or_else(|| {
            AnalysisError::Invalid(format!(
                "{what} needs a work directory (not available in the browser)"
            ))
        })
    }

    /// Write a checkpoint: the results so far and, inside a pass, its state at `block`.
    fn save(
        &self,
        path: &Path,
        pass: usize,
        block: usize,
        results: &[AnchorResult],
        state: Option<SavedState<'_>>,
    ) -> Result<(), AnalysisError> {
        checkpoint::save(
            path,
            &self.fingerprint,
            checkpoint::Position { pass, block },
            results,
            state.as_ref(),
        )
    }
}

/// The result of a finished run: its token count, shape, per-anchor results and plan.
fn finished(
    n_tokens: u64,
    shapes: Vec<Shape>,
    anchors: Vec<AnchorResult>,
    plan: Plan,
) -> Box<Results> {
    Box::new(Results {
        n_tokens,
        shapes,
        anchors,
        plan,
        cost: Default::default(),
        notes: Vec::new(),
    })
}
