//! The streaming pass: models forward over token blocks, masked positions dropped, the
//! rotated baseline applied, accumulators updated, checkpoints written, tiles reduced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use web_time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use ndarray::Array2;
use seedscope_model::{ComputeDevice, ForwardOptions, HookPoint, LoadedModel, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::accum::{Accumulator, Block, GpuBlock, SavedState};
use crate::anatomy::{Anatomies, AnatomyResult, AnatomySpec};
use crate::hist::PreHists;
use crate::plan::{Plan, PlanInput, plan, stream};
use crate::rotation::rotation_matrix;
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

/// Best and worst matches of every anchor neuron in one other stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matches {
    /// Maximum correlation over all the other stream's neurons.
    pub max: Vec<f32>,
    /// Its column (`layer * d_mlp + neuron`).
    pub argmax: Vec<u32>,
    /// Minimum correlation.
    pub min: Vec<f32>,
    /// Its column.
    pub argmin: Vec<u32>,
}

impl Matches {
    fn new(n: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; n],
            argmax: vec![0; n],
            min: vec![f32::INFINITY; n],
            argmin: vec![0; n],
        }
    }
}

/// A saved correlation tile: anchor layer × other layer, `[d_mlp, d_mlp]`.
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

    /// Offer one anchor neuron's correlations with columns `b0..b0 + corr.len()`.
    pub fn offer(&mut self, row: usize, b0: usize, corr: &[f32]) {
        let k = self.k;
        let base = row * 2 * k;
        let (top, bottom) = self.val[base..base + 2 * k].split_at_mut(k);
        let (top_c, bottom_c) = self.col[base..base + 2 * k].split_at_mut(k);
        for (j, &v) in corr.iter().enumerate() {
            let c = (b0 + j) as u32;
            if v > top[k - 1] {
                let mut p = k - 1;
                while p > 0 && top[p - 1] < v {
                    top[p] = top[p - 1];
                    top_c[p] = top_c[p - 1];
                    p -= 1;
                }
                top[p] = v;
                top_c[p] = c;
            }
            if v < bottom[k - 1] {
                let mut p = k - 1;
                while p > 0 && bottom[p - 1] > v {
                    bottom[p] = bottom[p - 1];
                    bottom_c[p] = bottom_c[p - 1];
                    p -= 1;
                }
                bottom[p] = v;
                bottom_c[p] = c;
            }
        }
    }

    /// The candidate columns of every neuron, `[n_neurons, 2k]`.
    pub fn columns(&self) -> &[u32] {
        &self.col
    }
}

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
    /// Per anchor neuron mean activation over the kept tokens.
    pub mean: Vec<f64>,
    /// Per anchor neuron variance.
    pub var: Vec<f64>,
    /// Per anchor neuron pre-activation histogram, `[n_layers * d_mlp, HIST_BINS]` counts on the
    /// paper's fixed edges ([`crate::hist`]); counted in the first pass that runs the anchor.
    pub pre_hist: Vec<u32>,
    /// What each anchor neuron responds to ([`crate::anatomy`]); computed in the same pass as
    /// the histograms when the run has an [`AnatomySpec`].
    pub anatomy: Option<AnatomyResult>,
    /// Requested tiles.
    pub tiles: Vec<SavedTile>,
    /// Candidate matches per stream (`2 * other + rotated`), collected by the first stage of
    /// candidate refinement; empty otherwise.
    pub candidates: Vec<Candidates>,
}

/// The result of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Kept tokens.
    pub n_tokens: u64,
    /// Layers.
    pub n_layers: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// One per anchor.
    pub anchors: Vec<AnchorResult>,
    /// The plan that was run.
    pub plan: Plan,
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

/// Seconds spent so far in a pass, by step of the block loop. On a GPU the steps only record
/// and submit work (the host's share) and `wait` is the device finishing it; on the CPU path
/// the steps do the work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockTiming {
    /// The models' forward passes to the MLP activations.
    pub forward: f64,
    /// Pre-activation histograms and the anatomy (top examples, token statistics).
    pub statistics: f64,
    /// The rotation baseline's mixing and the correlation accumulators.
    pub accumulate: f64,
    /// Waiting for the device to finish the block's work.
    pub wait: f64,
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

/// A family of models with the same shape, on one device.
#[derive(Debug)]
pub struct Family<'a> {
    /// The models; model 0 is the default anchor.
    pub models: &'a [LoadedModel],
    /// Where they run.
    pub device: &'a ComputeDevice,
}

impl Family<'_> {
    /// `(n_layers, d_mlp)` shared by every model.
    pub fn shape(&self) -> Result<(usize, usize), AnalysisError> {
        let first = self
            .models
            .first()
            .ok_or_else(|| AnalysisError::Invalid("no models to analyse".into()))?;
        let shape = (first.config.n_layers(), first.config.d_mlp());
        if self.models.len() < 2 {
            return Err(AnalysisError::Invalid(
                "universality needs at least two models (an anchor and another seed)".into(),
            ));
        }
        for m in self.models {
            let s = (m.config.n_layers(), m.config.d_mlp());
            if s != shape {
                return Err(AnalysisError::Invalid(format!(
                    "{} has {} layers of {} neurons, {} has {} of {}: a seed family shares one shape",
                    m.dir.display(),
                    s.0,
                    s.1,
                    first.dir.display(),
                    shape.0,
                    shape.1
                )));
            }
        }
        Ok(shape)
    }
}

/// File of a shard's pass state in its work directory.
pub fn pass_file(pass: usize) -> String {
    format!("pass-{pass}.safetensors")
}

/// File of a shard's prefix-stage results (the candidates) in its work directory.
pub const CANDIDATES: &str = "candidates.safetensors";

/// Results whose histograms a pass reading `used` streams counts: anchors it runs that have
/// none yet (each token is counted once, in the anchor's first pass).
fn hist_anchors(results: &[AnchorResult], used: &[bool]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.pre_hist.is_empty() && used[stream(r.anchor, false)])
        .map(|(i, _)| i)
        .collect()
}

/// Kept positions of rows `[r0, r1)` (indices into the block, row-major), at most `limit`.
fn kept_positions(tokens: &TokenSet, keep_all: bool, r0: usize, r1: usize, limit: u64) -> Vec<i64> {
    let ids = &tokens.ids[r0 * tokens.seq_len..r1 * tokens.seq_len];
    ids.iter()
        .enumerate()
        .filter(|(_, id)| keep_all || !tokens.drop_ids.contains(id))
        .map(|(i, _)| i as i64)
        .take(limit.min(usize::MAX as u64) as usize)
        .collect()
}

/// Blocks of rows and how many tokens each keeps, with `max_tokens` applied.
fn blocks(tokens: &TokenSet, options: &AnalysisOptions) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut left = options.max_tokens.unwrap_or(u64::MAX);
    let rows = options.block_rows.max(1);
    let mut r0 = 0;
    while r0 < tokens.n_rows && left > 0 {
        let r1 = (r0 + rows).min(tokens.n_rows);
        let kept = kept_positions(tokens, options.keep_all_tokens, r0, r1, left).len() as u64;
        if kept > 0 {
            out.push((r0, r1, kept));
        }
        left -= kept;
        r0 = r1;
    }
    out
}

/// One model's post-activations over the kept positions: `[n_kept, n_layers * d_mlp]`, and with
/// `with_pre` its pre-activations in the same layout.
fn activations(
    model: &LoadedModel,
    batch: &TokenBatch,
    kept: &Tensor<1, Int>,
    with_pre: bool,
) -> Result<(Tensor<2>, Option<Tensor<2>>), AnalysisError> {
    let n_layers = model.config.n_layers();
    let mut taps: std::collections::BTreeSet<HookPoint> =
        (0..n_layers).map(HookPoint::post).collect();
    if with_pre {
        taps.extend((0..n_layers).map(HookPoint::pre));
    }
    let options = ForwardOptions {
        taps,
        stop_at_layer: Some(n_layers),
        ..ForwardOptions::default()
    };
    let out = model.forward(batch, &options)?;
    let [b, s] = batch.shape();
    let gather = |hook: fn(usize) -> HookPoint| -> Result<Tensor<2>, AnalysisError> {
        let layers: Vec<Tensor<2>> = (0..n_layers)
            .map(|l| {
                let t = out.taps.get(&hook(l)).cloned().ok_or_else(|| {
                    AnalysisError::Invalid(format!("the forward pass returned no layer {l}"))
                })?;
                let d = t.dims()[2];
                // f16 models: the accumulators read f32.
                let t = if t.dtype() == burn::tensor::DType::F32 {
                    t
                } else {
                    t.cast(burn::tensor::FloatDType::F32)
                };
                Ok(t.reshape([b * s, d]))
            })
            .collect::<Result<_, AnalysisError>>()?;
        Ok(Tensor::cat(layers, 1).select(0, kept.clone()))
    };
    let post = gather(HookPoint::post)?;
    let pre = if with_pre {
        Some(gather(HookPoint::pre)?)
    } else {
        None
    };
    Ok((post, pre))
}

/// The state of a pass in progress: its accumulators and the histograms it is counting.
fn pass_state(
    acc: &Accumulator,
    hists: &PreHists,
    anatomy: Option<&Anatomies>,
) -> Result<SavedState, AnalysisError> {
    Ok(SavedState {
        hists: hists.save()?,
        anatomy: anatomy
            .map(Anatomies::save)
            .transpose()?
            .unwrap_or_default(),
        ..acc.save()?
    })
}

/// `x` with each layer's block multiplied by its rotation: `x_l R_lᵀ`.
fn rotate(x: &Tensor<2>, rotations: &[Tensor<2>], d: usize) -> Tensor<2> {
    let parts = rotations
        .iter()
        .enumerate()
        .map(|(l, rt)| {
            x.clone()
                .slice([0..x.dims()[0], l * d..(l + 1) * d])
                .matmul(rt.clone())
        })
        .collect();
    Tensor::cat(parts, 1)
}

fn to_host(t: Tensor<2>) -> Result<Array2<f32>, AnalysisError> {
    let [r, c] = t.dims();
    let v = t
        .try_into_data()
        .map_err(|e| AnalysisError::Invalid(format!("computing activations: {e}")))?
        .try_into_vec::<f32>()
        .map_err(|e| AnalysisError::Invalid(format!("reading activations: {e:?}")))?;
    Array2::from_shape_vec((r, c), v).map_err(|e| AnalysisError::Invalid(e.to_string()))
}

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
    /// The plan for this family, data and budget.
    pub fn plan(&self) -> Result<Plan, AnalysisError> {
        self.plan_for(self.family.device.max_buffer_bytes.unwrap_or(u64::MAX))
    }

    /// The plan under a device binding limit of `max_binding` bytes (a merge replays the
    /// shards' device's plan).
    pub fn plan_for(&self, max_binding: u64) -> Result<Plan, AnalysisError> {
        let (n_layers, d_mlp) = self.family.shape()?;
        let n = self.family.models.len();
        let block_tokens = self.options.block_rows * self.tokens.seq_len;
        plan(&PlanInput {
            n_models: n,
            anchors: if self.options.all_anchors {
                (0..n).collect()
            } else {
                vec![0]
            },
            n_layers,
            d_mlp,
            block_tokens,
            budget: self.options.memory_budget,
            max_binding,
        })
    }

    /// Run every pass (resuming from a matching checkpoint in `work_dir`); with
    /// [`AnalysisOptions::refine`], the prefix stage (in `work_dir/prefix`, removed at the end)
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
        self.run_inner(None, &mut progress).await
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
        pollster::block_on(self.run_inner(Some((index, count)), &mut progress))
    }

    /// The work directory, or an error saying `what` needs one.
    fn need_dir(&self, what: &str) -> Result<&Path, AnalysisError> {
        self.work_dir.ok_or_else(|| {
            AnalysisError::Invalid(format!(
                "{what} needs a work directory (not available in the browser)"
            ))
        })
    }

    async fn run_inner(
        &self,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        let Some(refine) = self.options.refine else {
            return self.run_stage(self.plan()?, None, shard, progress).await;
        };
        let work_dir = self.need_dir("refinement")?;
        let (n_layers, d_mlp) = self.family.shape()?;
        let width = n_layers * d_mlp;
        let k = refine.k.clamp(1, (width / 2).max(1));
        let prefix_options = AnalysisOptions {
            max_tokens: Some(
                self.options
                    .max_tokens
                    .map_or(refine.prefix_tokens, |m| m.min(refine.prefix_tokens)),
            ),
            refine: None,
            ..self.options.clone()
        };
        // The first stage reads rows spread evenly over the data (every s-th row), not its
        // beginning: data sets ordered by source (documents, books) would otherwise pick
        // candidates from one kind of text.
        let used = blocks(self.tokens, self.options);
        let total: u64 = used.iter().map(|b| b.2).sum();
        let n_rows = used.last().map_or(0, |b| b.1);
        let stride = (total / refine.prefix_tokens.max(1)).max(1) as usize;
        let seq = self.tokens.seq_len;
        let sample = TokenSet {
            ids: (0..n_rows)
                .step_by(stride)
                .flat_map(|r| self.tokens.ids[r * seq..(r + 1) * seq].iter().copied())
                .collect(),
            n_rows: n_rows.div_ceil(stride),
            seq_len: seq,
            drop_ids: self.tokens.drop_ids.clone(),
        };
        let prefix_dir = work_dir.join("prefix");
        std::fs::create_dir_all(&prefix_dir).map_err(|source| AnalysisError::Io {
            path: prefix_dir.clone(),
            source,
        })?;
        let prefix = Run {
            family: Family {
                models: self.family.models,
                device: self.family.device,
            },
            tokens: &sample,
            options: &prefix_options,
            fingerprint: format!("{}/prefix", self.fingerprint),
            work_dir: Some(&prefix_dir),
            cancel: self.cancel.clone(),
            checkpoint_every: self.checkpoint_every,
            rotations: self.rotations.clone(),
            anatomy: None,
        };
        let prefix_plan = prefix.plan()?;
        let n_first = prefix_plan.passes.len();
        let first = match prefix
            .run_stage(prefix_plan, Some(k), None, &mut |p: Progress| {
                progress(Progress {
                    passes: p.passes + 1,
                    ..p
                })
            })
            .await?
        {
            Outcome::Done(r) => r,
            interrupted => return Ok(interrupted),
        };
        let block_tokens = self.options.block_rows * self.tokens.seq_len;
        if shard.is_some() {
            self.save(&work_dir.join(CANDIDATES), 0, 0, &first.anchors, None)?;
        }
        let plan = crate::plan::pair_plan(&first, self.family.models.len(), block_tokens)?;
        let out = self
            .run_stage(plan, None, shard, &mut |p: Progress| {
                progress(Progress {
                    pass: p.pass + n_first,
                    passes: n_first + 1,
                    ..p
                })
            })
            .await?;
        let Outcome::Done(mut results) = out else {
            return Ok(out);
        };
        // Heatmap tiles come from the prefix, the only stage with dense tiles.
        for (r, f) in results.anchors.iter_mut().zip(&first.anchors) {
            r.tiles = f.tiles.clone();
        }
        std::fs::remove_dir_all(&prefix_dir).map_err(|source| AnalysisError::Io {
            path: prefix_dir.clone(),
            source,
        })?;
        Ok(Outcome::Done(results))
    }

    /// Run the passes of `plan` (resuming from a matching checkpoint in `work_dir`); with
    /// `collect = Some(k)`, keep every anchor neuron's `k` best and worst candidates.
    async fn run_stage(
        &self,
        plan: Plan,
        collect: Option<usize>,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        let (n_layers, d_mlp) = self.family.shape()?;
        let n_models = self.family.models.len();
        let width = n_layers * d_mlp;
        let all_blocks = blocks(self.tokens, self.options);
        let total_tokens: u64 = all_blocks.iter().map(|b| b.2).sum();
        let blocks: Vec<(usize, usize, u64)> = match shard {
            Some((i, n)) => all_blocks.into_iter().skip(i).step_by(n).collect(),
            None => all_blocks,
        };
        let tokens_per_pass: u64 = blocks.iter().map(|b| b.2).sum();
        if total_tokens < 2 {
            return Err(AnalysisError::Invalid(format!(
                "only {total_tokens} token(s) remain after dropping BOS/pad and newline \
                 positions: correlations need at least 2"
            )));
        }
        let mut results = self.initial_results(width);
        let ckpt_path = self.work_dir.map(|d| d.join(checkpoint::FILE));
        let mut start = checkpoint::Position::default();
        let mut resumed_state = None;
        if let Some(path) = &ckpt_path
            && let Some(ck) = checkpoint::load(path, &self.fingerprint)?
        {
            start = ck.position;
            results = ck.results;
            resumed_state = ck.accumulators;
        }
        let device = &self.family.device.device;
        // The device's kernels, compiled once for all passes (None: the CPU path).
        let gpu = match (&self.family.device.wgpu, &self.family.device.adapter) {
            (Some(h), Some(info)) => {
                let ctx =
                    seedscope_gpu::GpuContext::new(h.device.clone(), h.queue.clone(), info.clone());
                let kernels = Arc::new(seedscope_gpu::Kernels::new(&ctx));
                Some((ctx, kernels))
            }
            _ => None,
        };
        let widths = vec![width; 2 * n_models];
        for (pass_idx, specs) in plan.passes.iter().enumerate().skip(start.pass) {
            let mut acc = match &gpu {
                Some((ctx, kernels)) => {
                    Accumulator::gpu(ctx.clone(), kernels.clone(), specs.clone(), &widths)?
                }
                None => Accumulator::cpu(specs.clone(), &widths),
            };
            let mut first_block = 0;
            let mut tokens_done = 0;
            let mut restored_hists = None;
            let mut restored_anatomy = None;
            if pass_idx == start.pass
                && let Some(state) = resumed_state.take()
            {
                acc.restore(&state)?;
                first_block = start.block;
                tokens_done = state.count;
                restored_hists = Some(state.hists);
                restored_anatomy = Some(state.anatomy);
            }
            let used = acc.streams();
            // Anchors whose pre-activation histograms this pass counts: those it runs that have
            // none yet (so each token is counted once, in the anchor's first pass).
            let hist_anchors = hist_anchors(&results, &used);
            let mut hists =
                PreHists::new(gpu.as_ref().map(|(c, k)| (c, k)), hist_anchors.len(), width)?;
            if let Some(saved) = &restored_hists {
                hists.restore(saved)?;
            }
            let mut anatomy = match &self.anatomy {
                Some(spec) if !hist_anchors.is_empty() => Some(Anatomies::new(
                    gpu.as_ref().map(|(c, k)| (c, k)),
                    spec,
                    hist_anchors.len(),
                    width,
                )?),
                _ => None,
            };
            if let (Some(a), Some(saved)) = (&mut anatomy, &restored_anatomy) {
                a.restore(saved)?;
            }
            // Rotation matrices (transposed) of the models whose baseline this pass needs.
            let rotations: Vec<Vec<Tensor<2>>> = (0..n_models)
                .map(|m| {
                    if !used[stream(m, true)] {
                        return Ok(Vec::new());
                    }
                    (0..n_layers)
                        .map(|l| {
                            let r = match &self.rotations {
                                Some(given) => given
                                    .get(m)
                                    .and_then(|layers| layers.get(l))
                                    .filter(|r| r.len() == d_mlp * d_mlp)
                                    .cloned()
                                    .ok_or_else(|| {
                                        AnalysisError::Invalid(format!(
                                            "no {d_mlp} x {d_mlp} rotation given for model {m} layer {l}"
                                        ))
                                    })?,
                                None => rotation_matrix(d_mlp, self.options.seed, m, l),
                            };
                            Ok(Tensor::<2>::from_data(TensorData::new(r, [d_mlp, d_mlp]), device).transpose())
                        })
                        .collect::<Result<Vec<_>, AnalysisError>>()
                })
                .collect::<Result<_, _>>()?;
            let mut last_ckpt = Instant::now();
            let mut timing = BlockTiming::default();
            for (bi, &(r0, r1, kept_n)) in blocks.iter().enumerate().skip(first_block) {
                if self.cancel.load(Ordering::SeqCst) {
                    if let Some(path) = &ckpt_path {
                        let state = pass_state(&acc, &hists, anatomy.as_ref())?;
                        self.save(path, pass_idx, bi, &results, Some(state))?;
                    }
                    return Ok(Outcome::Interrupted {
                        checkpoint: ckpt_path.unwrap_or_default(),
                    });
                }
                let batch = TokenBatch::new(
                    self.tokens.ids[r0 * self.tokens.seq_len..r1 * self.tokens.seq_len].to_vec(),
                    r1 - r0,
                    self.tokens.seq_len,
                )?;
                let kept =
                    kept_positions(self.tokens, self.options.keep_all_tokens, r0, r1, kept_n);
                let kept_t = Tensor::<1, Int>::from_data(
                    TensorData::new(kept.clone(), [kept_n as usize]),
                    device,
                );
                let on_gpu = matches!(acc, Accumulator::Gpu { .. });
                let mut streams: Vec<Option<Tensor<2>>> = vec![None; 2 * n_models];
                let mut gpu_streams: Vec<Option<GpuBlock>> =
                    (0..2 * n_models).map(|_| None).collect();
                for m in 0..n_models {
                    if !(used[stream(m, false)] || used[stream(m, true)]) {
                        continue;
                    }
                    let hist = hist_anchors.iter().position(|&i| results[i].anchor == m);
                    let t = Instant::now();
                    let (x, pre) =
                        activations(&self.family.models[m], &batch, &kept_t, hist.is_some())?;
                    timing.forward += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    if let (Some(k), Some(pre)) = (hist, pre) {
                        hists.update(k, pre)?;
                    }
                    if let (Some(k), Some(a)) = (hist, &mut anatomy) {
                        a.update(k, x.clone(), &self.tokens.ids, r0, &kept)?;
                    }
                    timing.statistics += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    if used[stream(m, true)] {
                        streams[stream(m, true)] = Some(rotate(&x, &rotations[m], d_mlp));
                    }
                    if used[stream(m, false)] {
                        streams[stream(m, false)] = Some(x);
                    }
                    if let Some((ctx, _)) = &gpu {
                        // Submit this model's work and, in a browser, let the device finish it
                        // and the page have its event loop before the next model is recorded
                        // (a no-op natively).
                        for s in [stream(m, false), stream(m, true)] {
                            if let Some(x) = streams[s].take() {
                                gpu_streams[s] = Some(GpuBlock::new(x)?);
                            }
                        }
                        timing.accumulate += t.elapsed().as_secs_f64();
                        let t = Instant::now();
                        ctx.settle().await;
                        timing.wait += t.elapsed().as_secs_f64();
                    } else {
                        timing.accumulate += t.elapsed().as_secs_f64();
                    }
                }
                let t = Instant::now();
                let block = if on_gpu {
                    Block::Gpu(gpu_streams)
                } else {
                    Block::Cpu(
                        streams
                            .into_iter()
                            .map(|t| t.map(to_host).transpose())
                            .collect::<Result<_, _>>()?,
                    )
                };
                acc.update(&block)?;
                drop(block);
                timing.accumulate += t.elapsed().as_secs_f64();
                let t = Instant::now();
                if let Some((ctx, _)) = &gpu {
                    ctx.settle().await;
                }
                timing.wait += t.elapsed().as_secs_f64();
                tokens_done += kept_n;
                progress(Progress {
                    pass: pass_idx,
                    passes: plan.passes.len(),
                    tokens: tokens_done,
                    tokens_per_pass,
                    memory_bytes: plan.peak_bytes(),
                    timing,
                });
                if let Some(path) = &ckpt_path
                    && last_ckpt.elapsed() >= self.checkpoint_every
                    && bi + 1 < blocks.len()
                {
                    let state = pass_state(&acc, &hists, anatomy.as_ref())?;
                    self.save(path, pass_idx, bi + 1, &results, Some(state))?;
                    last_ckpt = Instant::now();
                }
            }
            if shard.is_some() {
                // A shard keeps its sums for the merge; its histograms are marked counted so
                // later passes do not count them again (as in a whole run).
                let counts = hists.save()?;
                let state = SavedState {
                    hists: counts.clone(),
                    anatomy: anatomy
                        .as_ref()
                        .map(Anatomies::save)
                        .transpose()?
                        .unwrap_or_default(),
                    ..acc.save_canonical()?
                };
                self.save(
                    &self.need_dir("a shard")?.join(pass_file(pass_idx)),
                    pass_idx,
                    0,
                    &[],
                    Some(state),
                )?;
                for (&i, c) in hist_anchors.iter().zip(counts) {
                    results[i].pre_hist = c;
                }
            } else {
                self.finish_pass(
                    &acc,
                    specs,
                    &mut results,
                    collect,
                    &hist_anchors,
                    &hists,
                    anatomy.as_ref(),
                )
                .await?;
            }
            if let Some(path) = &ckpt_path {
                self.save(path, pass_idx + 1, 0, &results, None)?;
            }
        }
        Ok(Outcome::Done(Box::new(Results {
            n_tokens: tokens_per_pass,
            n_layers,
            d_mlp,
            anchors: results,
            plan,
        })))
    }

    /// The per-anchor results before any pass.
    fn initial_results(&self, width: usize) -> Vec<AnchorResult> {
        let n_models = self.family.models.len();
        let anchors: Vec<usize> = if self.options.all_anchors {
            (0..n_models).collect()
        } else {
            vec![0]
        };
        anchors
            .into_iter()
            .map(|a| {
                let others: Vec<usize> = (0..n_models).filter(|&b| b != a).collect();
                AnchorResult {
                    anchor: a,
                    real: others.iter().map(|_| Matches::new(width)).collect(),
                    baseline: others.iter().map(|_| Matches::new(width)).collect(),
                    others,
                    mean: Vec::new(),
                    var: Vec::new(),
                    pre_hist: Vec::new(),
                    anatomy: None,
                    tiles: Vec::new(),
                    candidates: Vec::new(),
                }
            })
            .collect()
    }

    /// Fold a finished pass into the results: matches (and candidates), then the histograms
    /// and anatomy of the anchors it counted.
    #[allow(clippy::too_many_arguments)]
    async fn finish_pass(
        &self,
        acc: &Accumulator,
        specs: &[crate::accum::TileSpec],
        results: &mut [AnchorResult],
        collect: Option<usize>,
        hist_anchors: &[usize],
        hists: &PreHists,
        anatomy: Option<&Anatomies>,
    ) -> Result<(), AnalysisError> {
        let (_, d_mlp) = self.family.shape()?;
        self.reduce(acc, specs, results, d_mlp, collect).await?;
        for (&i, counts) in hist_anchors.iter().zip(hists.save_async().await?) {
            results[i].pre_hist = counts;
        }
        if let Some(a) = anatomy {
            for (k, &i) in hist_anchors.iter().enumerate() {
                let r = &results[i];
                results[i].anatomy = Some(a.finish(k, &r.mean, &r.var).await?);
            }
        }
        Ok(())
    }

    /// Combine the shards a [`Run::run_shard`] of this same analysis wrote into `dirs` (each a
    /// shard's work directory, checkpoints written under `fingerprints[i]`) into the result of
    /// the whole run: per pass, the shards' sums are merged exactly (Chan's formula in f64)
    /// and reduced on the CPU as a whole run's pass would be.
    pub fn merge(
        &self,
        dirs: &[PathBuf],
        fingerprints: &[String],
        max_binding: u64,
    ) -> Result<Results, AnalysisError> {
        let (n_layers, d_mlp) = self.family.shape()?;
        let width = n_layers * d_mlp;
        let n_models = self.family.models.len();
        if dirs.is_empty() || dirs.len() != fingerprints.len() {
            return Err(AnalysisError::Invalid("no shards to merge".into()));
        }
        let mut first_tiles = None;
        let plan = if self.options.refine.is_some() {
            let mut lists = Vec::new();
            for (d, f) in dirs.iter().zip(fingerprints) {
                let path = d.join(CANDIDATES);
                let ck = checkpoint::load(&path, f)?.ok_or_else(|| {
                    AnalysisError::Invalid(format!("{} is missing", path.display()))
                })?;
                lists.push(ck.results);
            }
            if lists.iter().any(|l| {
                l.iter()
                    .zip(&lists[0])
                    .any(|(a, b)| a.candidates != b.candidates)
            }) {
                return Err(AnalysisError::Invalid(
                    "the shards' prefix stages chose different candidates (different \
                     hardware or backend?): run every shard on the same kind of device"
                        .into(),
                ));
            }
            let anchors = lists.swap_remove(0);
            first_tiles = Some(anchors.iter().map(|a| a.tiles.clone()).collect::<Vec<_>>());
            let first = Results {
                n_tokens: 0,
                n_layers,
                d_mlp,
                anchors,
                plan: self.plan_for(max_binding)?,
            };
            let block_tokens = self.options.block_rows * self.tokens.seq_len;
            crate::plan::pair_plan(&first, n_models, block_tokens)?
        } else {
            self.plan_for(max_binding)?
        };
        let mut results = self.initial_results(width);
        let widths = vec![width; 2 * n_models];
        let mut n_tokens = 0;
        for (pass_idx, specs) in plan.passes.iter().enumerate() {
            let mut states = Vec::new();
            for (d, f) in dirs.iter().zip(fingerprints) {
                let path = d.join(pass_file(pass_idx));
                let state = checkpoint::load(&path, f)?
                    .and_then(|ck| ck.accumulators)
                    .ok_or_else(|| {
                        AnalysisError::Invalid(format!(
                            "{} is missing: the shard did not finish pass {pass_idx}",
                            path.display()
                        ))
                    })?;
                states.push(state);
            }
            let merged = crate::accum::merge_states(specs, &widths, states)?;
            n_tokens = merged.count;
            let mut acc = Accumulator::cpu(specs.clone(), &widths);
            acc.restore(&merged)?;
            let used = acc.streams();
            let hist_anchors = hist_anchors(&results, &used);
            let mut hists = PreHists::new(None, hist_anchors.len(), width)?;
            if !hist_anchors.is_empty() {
                hists.restore(&merged.hists)?;
            }
            let anatomy = match &self.anatomy {
                Some(spec) if !hist_anchors.is_empty() => {
                    let mut a = Anatomies::new(None, spec, hist_anchors.len(), width)?;
                    a.restore(&merged.anatomy)?;
                    Some(a)
                }
                _ => None,
            };
            // CPU accumulators: the future is ready at once.
            pollster::block_on(self.finish_pass(
                &acc,
                specs,
                &mut results,
                None,
                &hist_anchors,
                &hists,
                anatomy.as_ref(),
            ))?;
        }
        if let Some(tiles) = first_tiles {
            for (r, t) in results.iter_mut().zip(tiles) {
                r.tiles = t;
            }
        }
        Ok(Results {
            n_tokens,
            n_layers,
            d_mlp,
            anchors: results,
            plan,
        })
    }

    fn save(
        &self,
        path: &Path,
        pass: usize,
        block: usize,
        results: &[AnchorResult],
        acc: Option<SavedState>,
    ) -> Result<(), AnalysisError> {
        checkpoint::save(
            path,
            &checkpoint::Checkpoint {
                fingerprint: self.fingerprint.clone(),
                position: checkpoint::Position { pass, block },
                results: results.to_vec(),
                accumulators: acc,
            },
        )
    }

    /// Fold a finished pass's tiles into the per-anchor results.
    async fn reduce(
        &self,
        acc: &Accumulator,
        specs: &[crate::accum::TileSpec],
        results: &mut [AnchorResult],
        d: usize,
        collect: Option<usize>,
    ) -> Result<(), AnalysisError> {
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
        for r in results.iter_mut() {
            if r.mean.is_empty() && acc.streams()[stream(r.anchor, false)] {
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
                // A layer pair may be split into row ranges: copy this range into its place.
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
                r.tiles[idx].corr[row0 * d..(row0 + t.a_cols.len()) * d].copy_from_slice(&tile);
            }
        }
        Ok(())
    }
}
