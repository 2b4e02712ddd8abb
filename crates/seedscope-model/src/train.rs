//! Training a GPT-2 from scratch: deterministic initialisation and data order from a seed,
//! AdamW with warm-up then cosine decay, gradient clipping, no dropout, and checkpoints from
//! which an interrupted run resumes to exactly the weights of an uninterrupted one.
//!
//! Parameters live under their Hugging Face names from the first step: the random
//! initialisation is written as an in-memory checkpoint and loaded through the same loader as
//! any Hugging Face model, so a checkpoint and the final output are ordinary `model.safetensors`
//! files, and the optimizer state (keyed by parameter ids derived from those names) finds its
//! parameters again after a reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::config::{Activation, Gpt2Config, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::{LoadOptions, Transformer};
use crate::weights::Checkpoint;
use crate::{ForwardOptions, TokenBatch};

/// Shape and optimisation settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Blocks.
    pub n_layer: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width (neurons per layer).
    pub n_inner: usize,
    /// Context length: rows are `n_ctx` tokens, each predicting the next.
    pub n_ctx: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay to it).
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay, on weight matrices and embeddings (not on biases and
    /// LayerNorm parameters).
    pub weight_decay: f32,
    /// AdamW β₂ (β₁ is 0.9).
    pub beta_2: f32,
    /// Clip the global gradient norm (all parameters together) to this.
    pub grad_clip: f32,
    /// Write a checkpoint every this many steps.
    pub checkpoint_every: usize,
}

impl TrainConfig {
    /// Named presets: `tiny` (the embedded seed family) and `ci` (a two-minute smoke run).
    pub fn preset(name: &str) -> Option<Self> {
        let tiny = Self {
            n_layer: 2,
            n_embd: 128,
            n_head: 4,
            n_inner: 512,
            n_ctx: 128,
            batch_size: 16,
            steps: 1600,
            warmup_steps: 100,
            lr: 1e-2,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta_2: 0.95,
            grad_clip: 1.0,
            checkpoint_every: 250,
        };
        match name {
            "tiny" => Some(tiny),
            "ci" => Some(Self {
                n_layer: 2,
                n_embd: 32,
                n_head: 2,
                n_inner: 128,
                n_ctx: 32,
                batch_size: 8,
                steps: 40,
                warmup_steps: 5,
                checkpoint_every: 10,
                ..tiny
            }),
            _ => None,
        }
    }

    /// The Hugging Face config of the model this trains.
    pub fn gpt2_config(&self, vocab_size: usize) -> Gpt2Config {
        Gpt2Config {
            vocab_size,
            n_positions: self.n_ctx,
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_inner: Some(self.n_inner),
            activation: Activation::GeluTanh,
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
        }
    }

    /// Learning rate at `step`: linear warm-up to `lr`, then cosine decay to
    /// `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.steps - self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ModelError::Input(format!("training config: {m}")));
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad("n_embd must be divisible by n_head");
        }
        if self.steps == 0 || self.batch_size == 0 || self.n_ctx < 2 {
            return bad("steps, batch_size must be positive and n_ctx at least 2");
        }
        if self.warmup_steps > self.steps || self.checkpoint_every == 0 {
            return bad("warmup_steps must not exceed steps; checkpoint_every must be positive");
        }
        Ok(())
    }
}

/// GPT-2's initialisation, as `GPT2PreTrainedModel._init_weights` does it: N(0, 0.02) for
/// embeddings and projections, N(0, 0.02 / sqrt(2 n_layer)) for the residual-writing `c_proj`
/// weights, zero biases, unit LayerNorm gains. Deterministic in `seed`.
pub fn gpt2_random_init(config: &Gpt2Config, seed: u64) -> Checkpoint {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    let mut normal = |name: String, shape: Vec<usize>, std: f64, rng: &mut Xoshiro256PlusPlus| {
        let dist = Normal::new(0.0f64, std).unwrap_or_else(|_| unreachable!("std is positive"));
        let n = shape.iter().product();
        let values = (0..n).map(|_| dist.sample(rng) as f32).collect();
        tensors.push((name, values, shape));
    };
    let (d, d_mlp, vocab) = (config.n_embd, config.d_mlp(), config.vocab_size);
    let resid_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
    normal(
        "transformer.wte.weight".into(),
        vec![vocab, d],
        0.02,
        &mut rng,
    );
    normal(
        "transformer.wpe.weight".into(),
        vec![config.n_positions, d],
        0.02,
        &mut rng,
    );
    for i in 0..config.n_layer {
        let h = format!("transformer.h.{i}");
        normal(
            format!("{h}.attn.c_attn.weight"),
            vec![d, 3 * d],
            0.02,
            &mut rng,
        );
        normal(
            format!("{h}.attn.c_proj.weight"),
            vec![d, d],
            resid_std,
            &mut rng,
        );
        normal(
            format!("{h}.mlp.c_fc.weight"),
            vec![d, d_mlp],
            0.02,
            &mut rng,
        );
        normal(
            format!("{h}.mlp.c_proj.weight"),
            vec![d_mlp, d],
            resid_std,
            &mut rng,
        );
    }
    let mut constant = |name: String, n: usize, value: f32| {
        tensors.push((name, vec![value; n], vec![n]));
    };
    for i in 0..config.n_layer {
        let h = format!("transformer.h.{i}");
        constant(format!("{h}.attn.c_attn.bias"), 3 * d, 0.0);
        constant(format!("{h}.attn.c_proj.bias"), d, 0.0);
        constant(format!("{h}.mlp.c_fc.bias"), d_mlp, 0.0);
        constant(format!("{h}.mlp.c_proj.bias"), d, 0.0);
        for ln in ["ln_1", "ln_2"] {
            constant(format!("{h}.{ln}.weight"), d, 1.0);
            constant(format!("{h}.{ln}.bias"), d, 0.0);
        }
    }
    constant("transformer.ln_f.weight".into(), d, 1.0);
    constant("transformer.ln_f.bias".into(), d, 0.0);
    Checkpoint::from_tensors(Path::new("<random init>"), tensors)
}

/// Training rows: the token stream cut into windows of `n_ctx + 1` tokens (inputs and the next
/// token as target), visited in a fresh permutation each epoch, determined by the seed.
pub struct TrainData {
    rows: Vec<u32>,
    width: usize,
    n_rows: usize,
    seed: u64,
}

impl TrainData {
    /// Cut `stream` into non-overlapping windows of `n_ctx + 1` tokens.
    pub fn new(stream: &[u32], n_ctx: usize, seed: u64) -> Result<Self> {
        let width = n_ctx + 1;
        let n_rows = stream.len() / width;
        if n_rows == 0 {
            return Err(ModelError::Input(format!(
                "{} training tokens make no window of {width}",
                stream.len()
            )));
        }
        Ok(Self {
            rows: stream[..n_rows * width].to_vec(),
            width,
            n_rows,
            seed,
        })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.n_rows
    }

    /// Whether there are no windows (never true for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.n_rows == 0
    }

    fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut order: Vec<usize> = (0..self.n_rows).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        order
    }

    /// The windows of `step` (`batch_size` of them), as one `[batch, n_ctx + 1]` batch.
    pub fn batch(&self, step: usize, batch_size: usize) -> TokenBatch {
        let mut ids = Vec::with_capacity(batch_size * self.width);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for k in 0..batch_size {
            let global = step * batch_size + k;
            let (epoch, index) = (global / self.n_rows, global % self.n_rows);
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((epoch, self.permutation(epoch)));
            }
            let row = cached.as_ref().map_or(0, |(_, order)| order[index]);
            ids.extend_from_slice(&self.rows[row * self.width..(row + 1) * self.width]);
        }
        TokenBatch::new(ids, batch_size, self.width)
            .unwrap_or_else(|_| unreachable!("batch of whole windows"))
    }
}

/// Mean next-token cross-entropy (nats) of a model over `[batch, seq]` tokens.
pub fn next_token_loss(model: &Transformer, tokens: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq] = tokens.dims();
    let inputs = tokens.clone().narrow(1, 0, seq - 1);
    let targets = tokens.narrow(1, 1, seq - 1).reshape([batch * (seq - 1)]);
    let logits = model
        .forward(inputs, &ForwardOptions::logits())
        .logits
        .unwrap_or_else(|| unreachable!("logits requested"));
    let vocab = logits.dims()[2];
    let loss = CrossEntropyLossConfig::new().init(&logits.device());
    loss.forward(logits.reshape([batch * (seq - 1), vocab]), targets)
}

/// Progress of a run, reported after each step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Steps done.
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Training loss of this step.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Tokens per step.
    pub tokens: usize,
}

/// What `train` leaves in its output directory besides the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// The seed of initialisation and data order.
    pub seed: u64,
    /// The configuration, so a resume with other settings is refused.
    pub config: TrainConfig,
    /// Training loss after each completed step.
    pub losses: Vec<f32>,
}

const CHECKPOINT_DIR: &str = "checkpoint";

/// One training run: what to train, from which seed, where, on what.
#[derive(Debug, Clone, Copy)]
pub struct TrainJob<'a> {
    /// Shape and optimisation.
    pub config: &'a TrainConfig,
    /// Vocabulary size of the tokenizer.
    pub vocab_size: usize,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Output directory.
    pub out: &'a Path,
    /// Device to train on (autodiff is added).
    pub device: &'a Device,
    /// Stop after this many steps in this call, leaving a checkpoint.
    pub stop_after: Option<usize>,
    /// Training steps whose weights are also kept as Hugging Face directories
    /// `out/checkpoint-{step}` (`config.json`, `model.safetensors`): a series to analyse over
    /// training (`seedscope analyze --steps`).
    pub save_steps: &'a [usize],
}

/// The directory [`train`] keeps the weights of training step `step` in, under `out`.
pub fn step_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Train a GPT-2 on `data` from seed `seed` into `out` (a Hugging Face directory:
/// `config.json`, `model.safetensors`; the caller adds `tokenizer.json`).
///
/// Every `checkpoint_every` steps the weights, the optimizer state and the losses are written
/// to `out/checkpoint` (atomically: a new directory renamed into place); a run started on an
/// `out` holding a checkpoint resumes from it and ends with the same weights as a run that was
/// never interrupted. `stop_after` ends the run early after that many steps in this call
/// (leaving a checkpoint), which is how interruption is tested.
pub fn train(
    job: &TrainJob,
    data: &TrainData,
    mut report: impl FnMut(StepReport),
) -> Result<TrainState> {
    let TrainJob {
        config,
        vocab_size,
        seed,
        out,
        device,
        stop_after,
        save_steps,
    } = *job;
    config.validate()?;
    let hf = ModelConfig::Gpt2(config.gpt2_config(vocab_size));
    let io = |path: PathBuf| move |source: std::io::Error| ModelError::Io { path, source };
    std::fs::create_dir_all(out).map_err(io(out.to_path_buf()))?;
    let train_device = device.clone().autodiff();
    let load = LoadOptions::default();
    let checkpoint_dir = out.join(CHECKPOINT_DIR);
    let resuming = checkpoint_dir.join("state.json").is_file();
    let (mut model, mut state) = if resuming {
        let state = read_state(&checkpoint_dir.join("state.json"))?;
        if state.config != *config || state.seed != seed {
            return Err(ModelError::Input(format!(
                "{}: holds a run with another seed or config; remove it or use another --out",
                checkpoint_dir.display()
            )));
        }
        let weights = Checkpoint::open_safetensors(&checkpoint_dir.join("model.safetensors"))?;
        let model = Transformer::load(&hf, &weights, &train_device, &load)?;
        (model, state)
    } else {
        let init = gpt2_random_init(&config.gpt2_config(vocab_size), seed);
        let model = Transformer::load(&hf, &init, &train_device, &load)?;
        let state = TrainState {
            step: 0,
            seed,
            config: config.clone(),
            losses: Vec::new(),
        };
        (model, state)
    };

    let mut optim = optimizer(&model, config);
    if resuming {
        let optim_path = checkpoint_dir.join("optimizer.bpk");
        optim = optim
            .load(&optim_path)
            .map_err(|e| ModelError::CorruptWeights {
                path: optim_path.clone(),
                message: format!("optimizer state: {e:?}"),
            })?;
    }

    let tokens_per_step = config.batch_size * config.n_ctx;
    let mut done_here = 0;
    while state.step < config.steps {
        if stop_after.is_some_and(|n| done_here >= n) {
            break;
        }
        let batch = data.batch(state.step, config.batch_size);
        let loss = next_token_loss(&model, batch.to_tensor(&train_device));
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, config.grad_clip)?;
        let lr = config.lr_at(state.step);
        model = optim.step(lr, model, grads);
        let loss_value = loss
            .try_into_scalar::<f32>()
            .map_err(|e| ModelError::Input(format!("training step {}: {e}", state.step)))?;
        if !loss_value.is_finite() {
            return Err(ModelError::Input(format!(
                "training diverged at step {} (loss {loss_value}); lower the learning rate",
                state.step
            )));
        }
        state.losses.push(loss_value);
        state.step += 1;
        done_here += 1;
        report(StepReport {
            step: state.step,
            steps: config.steps,
            loss: loss_value,
            lr,
            tokens: tokens_per_step,
        });
        if save_steps.contains(&state.step) {
            write_hf_dir(&step_dir(out, state.step), &model, config, vocab_size)?;
        }
        let stopping = stop_after.is_some_and(|n| done_here >= n);
        if stopping || state.step % config.checkpoint_every == 0 || state.step == config.steps {
            write_checkpoint(&checkpoint_dir, &model, &optim, &state)?;
        }
    }
    if state.step < config.steps {
        return Ok(state);
    }
    write_hf_dir(out, &model, config, vocab_size)?;
    Ok(state)
}

/// `model`'s weights and config as a Hugging Face directory `dir`.
fn write_hf_dir(
    dir: &Path,
    model: &Transformer,
    config: &TrainConfig,
    vocab_size: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tensors = model.named_tensors()?;
    crate::weights::write_safetensors(&dir.join("model.safetensors"), &tensors, HashMap::new())?;
    write_json(
        &dir.join("config.json"),
        &hf_config_json(&config.gpt2_config(vocab_size)),
    )
}

/// AdamW with decoupled weight decay on matrices only, as GPT-2 recipes do: LayerNorm gains,
/// biases and the other 1-D parameters form a group without it. Parameter ids follow the
/// Hugging Face names, so the group is the same for the random initialisation and a checkpoint.
fn optimizer(model: &Transformer, config: &TrainConfig) -> burn::optim::ModuleOptimizer {
    let adamw = AdamWConfig::new()
        .with_beta_2(config.beta_2)
        .with_epsilon(1e-8);
    let mut vectors = VectorIds(Vec::new());
    model.visit(&mut vectors);
    adamw
        .clone()
        .with_weight_decay(config.weight_decay)
        .init()
        .with_group(
            ParamGroup::from_ids(vectors.0),
            adamw.with_weight_decay(0.0).build(),
            None,
        )
}

/// Collects the ids of a module's 1-D float parameters.
struct VectorIds(Vec<ParamId>);

impl ModuleVisitor for VectorIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 1 {
            self.0.push(param.id);
        }
    }
}

/// The sum of squares of every parameter's gradient (a lazy scalar tensor).
struct SumOfSquares<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SumOfSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squares = grad.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(sum) => sum + squares,
                None => squares,
            });
        }
    }
}

/// Scales every parameter's gradient by one factor.
struct ScaleGradients<'a> {
    grads: &'a mut GradientsParams,
    scale: f32,
}

impl ModuleVisitor for ScaleGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.scale));
        }
    }
}

/// Clip the gradients by their global L2 norm, as `torch.nn.utils.clip_grad_norm_` does:
/// when the norm of all gradients together exceeds `max_norm`, every gradient is scaled by
/// `max_norm / norm`. (Burn's `GradientClipping::Norm` clips each parameter by its own norm,
/// which changes the direction of the update.)
fn clip_global_norm(model: &Transformer, grads: &mut GradientsParams, max_norm: f32) -> Result<()> {
    let mut squares = SumOfSquares { grads, sum: None };
    model.visit(&mut squares);
    let Some(sum) = squares.sum else {
        return Ok(());
    };
    let norm = sum
        .try_into_scalar::<f32>()
        .map_err(|e| ModelError::Input(format!("gradient norm: {e}")))?
        .sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        model.visit(&mut ScaleGradients { grads, scale });
    }
    Ok(())
}

fn write_checkpoint(
    dir: &Path,
    model: &Transformer,
    optim: &burn::optim::ModuleOptimizer,
    state: &TrainState,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| ModelError::Io { path, source }
    };
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    crate::weights::write_safetensors(
        &tmp.join("model.safetensors"),
        &model.named_tensors()?,
        HashMap::new(),
    )?;
    let optim_path = tmp.join("optimizer.bpk");
    optim.save(&optim_path).map_err(|e| ModelError::Io {
        path: optim_path.clone(),
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    write_json(&tmp.join("state.json"), state)?;
    crate::atomic::replace_dir(&tmp, dir)
}

fn read_state(path: &Path) -> Result<TrainState> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: format!("training state: {e}"),
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    crate::atomic::write_file_atomic(path, text.as_bytes())
}

/// `config.json` as transformers writes it for `GPT2LMHeadModel`.
pub fn hf_config_json(c: &Gpt2Config) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.n_positions,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.n_inner,
        "activation_function": c.activation.hf_name(),
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "scale_attn_weights": c.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": c.reorder_and_upcast_attn,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    })
}

/// Mean next-token loss (nats) over `[n, seq]` evaluation rows, in batches.
pub fn eval_loss(
    model: &Transformer,
    rows: &TokenBatch,
    device: &Device,
    batch: usize,
) -> Result<f64> {
    let [n, _] = rows.shape();
    let mut total = 0.0;
    for start in (0..n).step_by(batch.max(1)) {
        let chunk = rows.rows(start, batch.max(1));
        let rows_here = chunk.shape()[0];
        let loss = next_token_loss(model, chunk.to_tensor(device))
            .try_into_scalar::<f32>()
            .map_err(|e| ModelError::Input(format!("evaluation: {e}")))?;
        total += f64::from(loss) * rows_here as f64;
    }
    Ok(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKind, ComputeDevice};

    /// The `ci` preset's model, on the CPU with autodiff (as the optimizer needs).
    fn tiny_model() -> (TrainConfig, Transformer) {
        let device = ComputeDevice::open(BackendKind::Cpu)
            .expect("cpu")
            .device
            .autodiff();
        let config = TrainConfig::preset("ci").expect("ci preset");
        let gpt2 = config.gpt2_config(64);
        let init = gpt2_random_init(&gpt2, 3);
        let hf = ModelConfig::Gpt2(gpt2);
        let model = Transformer::load(&hf, &init, &device, &LoadOptions::default()).expect("load");
        (config, model)
    }

    /// A gradient for every parameter: zeros, or the constant `k + 1` for the k-th parameter
    /// (so the parameters' norms differ and the direction of the whole update is known).
    struct MakeGrads(GradientsParams, Option<f32>);

    impl ModuleVisitor for MakeGrads {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = match self.1.as_mut() {
                Some(k) => {
                    *k += 1.0;
                    param.val().ones_like().mul_scalar(*k)
                }
                None => param.val().zeros_like(),
            };
            self.0.register(param.id, grad);
        }
    }

    /// Every parameter's gradient, in visiting order.
    struct ReadGrads<'a>(&'a GradientsParams, Vec<Vec<f32>>);

    impl ModuleVisitor for ReadGrads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = self.0.get::<D>(param.id).expect("a gradient");
            self.1
                .push(grad.into_data().try_to_vec::<f32>().expect("f32"));
        }
    }

    fn read(model: &Transformer, grads: &GradientsParams) -> Vec<Vec<f32>> {
        let mut read = ReadGrads(grads, Vec::new());
        model.visit(&mut read);
        read.1
    }

    fn norm(grads: &[Vec<f32>]) -> f64 {
        let squares: f64 = grads.iter().flatten().map(|&x| f64::from(x).powi(2)).sum();
        squares.sqrt()
    }

    #[test]
    fn clipping_scales_all_gradients_by_one_factor_to_the_global_norm() {
        let (_, model) = tiny_model();
        let mut grads = MakeGrads(GradientsParams::new(), Some(0.0));
        model.visit(&mut grads);
        let mut grads = grads.0;
        let before = read(&model, &grads);
        assert!(norm(&before) > 10.0, "the test gradients exceed the limit");

        clip_global_norm(&model, &mut grads, 1.0).expect("clip");
        let after = read(&model, &grads);
        assert!(
            (norm(&after) - 1.0).abs() < 1e-4,
            "global norm {}",
            norm(&after)
        );
        let factor = f64::from(after[0][0]) / f64::from(before[0][0]);
        for (x, y) in before.iter().flatten().zip(after.iter().flatten()) {
            let ratio = f64::from(*y) / f64::from(*x);
            assert!(
                (ratio - factor).abs() < 1e-5 * factor,
                "{ratio} vs {factor}"
            );
        }
        // Under the limit, nothing changes.
        clip_global_norm(&model, &mut grads, 2.0).expect("clip");
        assert_eq!(read(&model, &grads), after);
    }

    #[test]
    fn weight_decay_shrinks_matrices_and_leaves_vectors() {
        let (mut config, model) = tiny_model();
        config.weight_decay = 0.5;
        let before = model.named_tensors().expect("tensors");
        // Zero gradients: Adam's own update is zero, what changes is the decay alone.
        let mut grads = MakeGrads(GradientsParams::new(), None);
        model.visit(&mut grads);
        let lr = 0.1;
        let model = optimizer(&model, &config).step(lr, model, grads.0);
        let after = model.named_tensors().expect("tensors");
        let mut matrices = 0;
        for ((name, b, shape), (_, a, _)) in before.iter().zip(&after) {
            let expected = if shape.len() >= 2 {
                matrices += 1;
                1.0 - lr as f32 * config.weight_decay
            } else {
                1.0
            };
            for (x, y) in b.iter().zip(a) {
                assert!(
                    (x * expected - y).abs() <= 1e-6 * x.abs().max(1.0),
                    "{name}: {x} → {y}"
                );
            }
        }
        assert!(matrices >= 6, "the model has weight matrices");
    }
}
