//! GPT-2 and GPT-NeoX forward passes with MLP taps.
//!
//! Both architectures share the [`Mlp`] (where the taps and neuron patches live) and the
//! causal self-attention core; they differ in how attention is projected and positioned
//! (learned positions vs partial rotary) and in the residual wiring (sequential vs parallel).
//! References: `transformers/models/gpt2/modeling_gpt2.py` and
//! `transformers/models/gpt_neox/modeling_gpt_neox.py` (4.46).

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::config::{Activation, Gpt2Config, ModelConfig, NeoXConfig};
use crate::error::{ModelError, Result};
use crate::fused::{causal_attention, gelu_tanh, linear_rows};
use crate::hooks::{ForwardOptions, HookPoint, NeuronPatch};
use crate::weights::{Checkpoint, NamedTensors};

/// How to build a model from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Parameter and compute dtype (f32 by default, as transformers upcasts fp16 files).
    pub dtype: FloatDType,
    /// Largest buffer the device can bind (`None`: no limit, the CPU). Vocabulary matrices
    /// larger than this are split into row chunks.
    pub max_tensor_bytes: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: FloatDType::F32,
            max_tensor_bytes: None,
        }
    }
}

/// What a forward pass returns: the requested taps and, if asked, the logits.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[batch, seq, d_mlp]` for every requested hook point.
    pub taps: BTreeMap<HookPoint, Tensor<3>>,
    /// `[batch, seq, vocab]` when logits were requested.
    pub logits: Option<Tensor<3>>,
    /// Per layer `[batch, n_head, seq, d_head]` attention keys, when requested.
    pub keys: Vec<Tensor<4>>,
    /// `[batch, seq]` scale of the final LayerNorm, `sqrt(var(x) + eps)`, when requested.
    pub ln_final_scale: Option<Tensor<2>>,
    /// The head of a [`crate::QueryAblation`], when requested.
    pub head_probe: Option<HeadProbe>,
}

/// One head with and without a neuron's contribution on its query path, each `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct HeadProbe {
    /// The neuron's post-activation.
    pub activation: Tensor<2>,
    /// Attention to position 0, unmodified.
    pub bos_attention: Tensor<2>,
    /// Attention to position 0 with the neuron removed from the query's input.
    pub bos_attention_ablated: Tensor<2>,
    /// ‖z‖ of the head (its output before `W_O`), unmodified.
    pub z_norm: Tensor<2>,
    /// ‖z‖ with the neuron removed from the query's input.
    pub z_norm_ablated: Tensor<2>,
}

/// Head `h`'s attention to position 0 and output norm from per-head `q`, `k`, `v`.
fn head_stats(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    h: usize,
) -> (Tensor<2>, Tensor<2>) {
    let [b, _, s, _] = q.dims();
    let pick = |t: Tensor<4>| t.narrow(1, h, 1);
    let (q, k, v) = (pick(q), pick(k), pick(v));
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let mask = causal_mask(s, &scores.device()).expand([b, 1, s, s]);
    let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    let bos = probs.clone().narrow(3, 0, 1).reshape([b, s]);
    let z = probs.matmul(v);
    let norm = (z.clone() * z).sum_dim(3).sqrt().reshape([b, s]);
    (bos, norm)
}

/// What a forward pass records besides the residual stream, shared by both architectures:
/// taps, attention keys and the probe of a [`crate::QueryAblation`].
struct Recorder<'a> {
    options: &'a ForwardOptions,
    taps: BTreeMap<HookPoint, Tensor<3>>,
    keys: Vec<Tensor<4>>,
    /// The ablated neuron's activation `[b, s]` and residual contribution `act · w_out`.
    contribution: Option<(Tensor<2>, Tensor<3>)>,
    head_probe: Option<HeadProbe>,
}

impl<'a> Recorder<'a> {
    fn new(options: &'a ForwardOptions) -> Self {
        Self {
            options,
            taps: BTreeMap::new(),
            keys: Vec::new(),
            contribution: None,
            head_probe: None,
        }
    }

    /// A block's attention inputs `qkv` from the residual stream `x`: keep the keys, and at the
    /// ablation's layer probe its head against the query `query(x - contribution)`.
    fn attention(
        &mut self,
        layer: usize,
        x: &Tensor<3>,
        (q, k, v): &(Tensor<4>, Tensor<4>, Tensor<4>),
        scale: f64,
        query: impl Fn(Tensor<3>) -> Tensor<4>,
    ) {
        if let (Some(a), Some((act, c))) = (&self.options.query_ablation, &self.contribution)
            && a.attn_layer == layer
        {
            let q_ablated = query(x.clone() - c.clone());
            let (bos, zn) = head_stats(q.clone(), k.clone(), v.clone(), scale, a.head);
            let (bos_a, zn_a) = head_stats(q_ablated, k.clone(), v.clone(), scale, a.head);
            self.head_probe = Some(HeadProbe {
                activation: act.clone(),
                bos_attention: bos,
                bos_attention_ablated: bos_a,
                z_norm: zn,
                z_norm_ablated: zn_a,
            });
        }
        if self.options.keys {
            self.keys.push(k.clone());
        }
    }

    /// After a block's MLP: at the ablation's neuron layer, its activation and contribution.
    fn mlp_done(&mut self, layer: usize, mlp: &Mlp) {
        let Some(a) = self.options.query_ablation else {
            return;
        };
        if a.neuron_layer != layer {
            return;
        }
        if let Some(post) = self.taps.get(&HookPoint::post(layer)) {
            let [b, s, _] = post.dims();
            let act = post.clone().narrow(2, a.neuron, 1);
            let w = mlp.w_out.weight.val();
            let d = w.dims()[1];
            let row = w.narrow(0, a.neuron, 1).reshape([1, 1, d]);
            self.contribution = Some((act.clone().reshape([b, s]), act * row));
        }
    }

    /// The output, with the final norm's scale and the logits (`unembed(norm(x))`) when the
    /// whole model ran and they were asked for.
    fn finish(
        self,
        x: Tensor<3>,
        full: bool,
        eps: f64,
        unembed: impl FnOnce(Tensor<3>) -> Tensor<3>,
    ) -> ForwardOutput {
        let ln_final_scale =
            (full && self.options.ln_final_scale).then(|| ln_scale(x.clone(), eps));
        let logits = (full && self.options.logits).then(|| unembed(x));
        ForwardOutput {
            taps: self.taps,
            logits,
            keys: self.keys,
            ln_final_scale,
            head_probe: self.head_probe,
        }
    }
}

/// `sqrt(mean((x - mean x)^2) + eps)` over the last dimension: what a LayerNorm divides by.
fn ln_scale(x: Tensor<3>, eps: f64) -> Tensor<2> {
    let [b, s, _] = x.dims();
    let c = x.clone() - x.mean_dim(2);
    (c.clone() * c)
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .reshape([b, s])
}

/// The MLP of one block: `W_out · act(W_in · x + b_in) + b_out`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `W_in`, `[d_model, d_mlp]` (GPT-2 `c_fc`, NeoX `dense_h_to_4h`).
    pub w_in: Linear,
    /// `W_out`, `[d_mlp, d_model]` (GPT-2 `c_proj`, NeoX `dense_4h_to_h`).
    pub w_out: Linear,
    #[module(skip)]
    activation: Activation,
}

impl Mlp {
    /// The neuron activations of `x` (patched as `options` says), recording the taps it asks
    /// for; [`Mlp::output`] of them is the MLP's contribution to the residual stream.
    fn activate(
        &self,
        x: Tensor<3>,
        layer: usize,
        options: &ForwardOptions,
        taps: &mut BTreeMap<HookPoint, Tensor<3>>,
    ) -> Tensor<3> {
        let pre = project(&self.w_in, x);
        let mut post = match self.activation {
            Activation::GeluTanh => gelu_tanh(pre.clone()),
            Activation::GeluErf => gelu(pre.clone()),
            Activation::Relu => relu(pre.clone()),
        };
        let patches: Vec<&NeuronPatch> = options
            .patches
            .iter()
            .filter(|p| p.layer == layer)
            .collect();
        if !patches.is_empty() {
            post = patch_neurons(post, &patches);
        }
        if options.taps.contains(&HookPoint::pre(layer)) {
            taps.insert(HookPoint::pre(layer), pre);
        }
        if options.taps.contains(&HookPoint::post(layer)) {
            taps.insert(HookPoint::post(layer), post.clone());
        }
        post
    }

    /// `W_out` of the activations: what the MLP adds to the residual stream.
    fn output(&self, post: Tensor<3>) -> Tensor<3> {
        project(&self.w_out, post)
    }
}

/// `l(x)` for `x` of `[batch, seq, d_in]`, computed as one `[batch * seq, d_in]` product.
/// Burn keeps a batched product when `seq` is a multiple of 32, and its CPU backend then runs
/// each batch's GEMM on one thread, every thread packing the whole weight: at GPT-2 small's
/// width and 4 × 128 tokens, folding halved the forward's share of time in `gemm`'s packing
/// (12 % → 6 % of `perf` samples). With a bias, the product is [`linear_rows`], on the CPU one
/// GEMM added into the bias.
fn project(l: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, seq, d_in] = x.dims();
    let rows = x.reshape([batch * seq, d_in]);
    let y = match &l.bias {
        Some(bias) => linear_rows(rows, l.weight.val(), bias.val()),
        None => l.forward(rows),
    };
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}

/// `post * (1 - mask) + values`, with `mask` and `values` non-zero only at patched neurons.
fn patch_neurons(post: Tensor<3>, patches: &[&NeuronPatch]) -> Tensor<3> {
    let d_mlp = post.dims()[2];
    let device = post.device();
    let mut keep = vec![1.0f32; d_mlp];
    let mut values = vec![0.0f32; d_mlp];
    for p in patches {
        keep[p.neuron] = 0.0;
        values[p.neuron] = p.value;
    }
    let dtype = post.dtype();
    let keep = Tensor::<1>::from_data(TensorData::new(keep, [d_mlp]), (&device, dtype));
    let values = Tensor::<1>::from_data(TensorData::new(values, [d_mlp]), (&device, dtype));
    post * keep.reshape([1, 1, d_mlp]) + values.reshape([1, 1, d_mlp])
}

/// `[1, 1, seq, seq]`, true above the diagonal (the future, to be masked).
fn causal_mask(seq: usize, device: &Device) -> Tensor<4, Bool> {
    let idx = Tensor::<1, Int>::arange(0..seq as i64, device);
    let rows = idx.clone().reshape([seq, 1]);
    let cols = idx.reshape([1, seq]);
    cols.greater(rows).reshape([1, 1, seq, seq])
}

/// A `[vocab, d]` matrix (token embedding or unembedding) stored as row chunks, so that no
/// single buffer exceeds a device's storage-binding limit (GPT-2's 154 MB embedding is over
/// WebGPU's default 128 MiB and lavapipe's). One chunk when it fits.
#[derive(Module, Debug)]
pub struct VocabMatrix {
    /// Row blocks `[rows_per_chunk, d]`, the last one possibly shorter.
    pub chunks: Vec<Param<Tensor<2>>>,
    #[module(skip)]
    rows_per_chunk: usize,
}

impl VocabMatrix {
    /// Build from host rows `[vocab, d]` (row-major), in chunks of at most `rows_per_chunk`
    /// rows, each uploaded on its own so no buffer of the whole matrix is ever created. One
    /// chunk takes `values` as they are (a copy of GPT-2's 154 MB embedding was over a quarter
    /// of loading a 12-layer model on the CPU, most of it the kernel clearing the fresh pages).
    pub fn from_rows(
        name: &str,
        values: Vec<f32>,
        [vocab, d]: [usize; 2],
        rows_per_chunk: usize,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let rows_per_chunk = rows_per_chunk.clamp(1, vocab.max(1));
        let chunk = |i: usize, rows: Vec<f32>| {
            let n = rows.len() / d.max(1);
            let data = TensorData::new(rows, [n, d]);
            named_param(
                &format!("{name}#{i}"),
                Tensor::from_data(data, (device, dtype)),
            )
        };
        let chunks = if values.len() <= rows_per_chunk * d {
            vec![chunk(0, values)]
        } else {
            values
                .chunks(rows_per_chunk * d)
                .enumerate()
                .map(|(i, rows)| chunk(i, rows.to_vec()))
                .collect()
        };
        Self {
            chunks,
            rows_per_chunk,
        }
    }

    /// Rows for token ids `[batch, seq]`: `[batch, seq, d]`.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        if let [only] = self.chunks.as_slice() {
            return embedding(only.val(), tokens);
        }
        let mut sum: Option<Tensor<3>> = None;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let weight = chunk.val();
            let rows = weight.dims()[0];
            let local = tokens.clone().sub_scalar((i * self.rows_per_chunk) as i64);
            let inside = local
                .clone()
                .greater_equal_elem(0)
                .bool_and(local.clone().lower_elem(rows as i64));
            let picked = embedding(weight, local.clamp(0, rows as i64 - 1));
            let dtype = picked.dtype();
            let part = picked * inside.float().cast(dtype).unsqueeze_dim::<3>(2);
            sum = Some(match sum {
                Some(acc) => acc + part,
                None => part,
            });
        }
        sum.unwrap_or_else(|| embedding(self.chunks[0].val(), tokens))
    }

    /// `x · Mᵀ`: `[batch, seq, d]` to `[batch, seq, vocab]`.
    pub fn unembed(&self, x: Tensor<3>) -> Tensor<3> {
        let parts: Vec<Tensor<3>> = self
            .chunks
            .iter()
            .map(|c| linear(x.clone(), c.val().transpose(), None))
            .collect();
        Tensor::cat(parts, 2)
    }
}

/// One GPT-2 block: `x + attn(ln_1 x)`, then `x + mlp(ln_2 x)`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// `ln_1`.
    pub ln_1: LayerNorm,
    /// `attn.c_attn`: fused query, key and value projection, `[d, 3d]`.
    pub c_attn: Linear,
    /// `attn.c_proj`.
    pub c_proj: Linear,
    /// `ln_2`.
    pub ln_2: LayerNorm,
    /// `mlp`.
    pub mlp: Mlp,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    attn_scale: f64,
}

impl Gpt2Block {
    /// Queries, keys and values `[batch, n_head, seq, d_head]` of a normalised input: strided
    /// views of the projection (reshaped while contiguous, then narrowed; narrowed first, a
    /// reshape copies, as Burn Flex did for a tenth of the CPU forward).
    fn qkv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, seq, d] = x.dims();
        let head_dim = d / self.n_head;
        let qkv = project(&self.c_attn, x).reshape([batch, seq, 3 * self.n_head, head_dim]);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * self.n_head, self.n_head)
                .swap_dims(1, 2)
        };
        (split(0), split(1), split(2))
    }
}

/// GPT-2 with a tied unembedding.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `wte`, also the unembedding.
    pub wte: VocabMatrix,
    /// Learned positions `wpe`.
    pub wpe: Embedding,
    /// The blocks `h.{i}`.
    pub blocks: Vec<Gpt2Block>,
    /// Final norm `ln_f`.
    pub ln_f: LayerNorm,
    #[module(skip)]
    ln_eps: f64,
}

impl Gpt2 {
    fn forward(&self, tokens: Tensor<2, Int>, options: &ForwardOptions) -> ForwardOutput {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let mut x = self.wte.embed(tokens) + self.wpe.forward(positions);
        let mut rec = Recorder::new(options);
        let run = options.layers_to_run(self.blocks.len());
        let full = wants_full(options, run, self.blocks.len());
        for (layer, block) in self.blocks.iter().take(run).enumerate() {
            let qkv = block.qkv(block.ln_1.forward(x.clone()));
            rec.attention(layer, &x, &qkv, block.attn_scale, |x| {
                block.qkv(block.ln_1.forward(x)).0
            });
            let (q, k, v) = qkv;
            x = x + project(&block.c_proj, causal_attention(q, k, v, block.attn_scale));
            let post =
                block
                    .mlp
                    .activate(block.ln_2.forward(x.clone()), layer, options, &mut rec.taps);
            rec.mlp_done(layer, &block.mlp);
            if reads_residual(full, layer, run) {
                x = x + block.mlp.output(post);
            }
        }
        rec.finish(x, full, self.ln_eps, |x| {
            self.wte.unembed(self.ln_f.forward(x))
        })
    }
}

/// Whether the final norm runs: logits or its scale asked for, every block run.
fn wants_full(options: &ForwardOptions, run: usize, n_layers: usize) -> bool {
    (options.logits || options.ln_final_scale) && options.stop_at_layer.is_none() && run == n_layers
}

/// Whether anything reads the residual stream after block `layer` of the `run` that run: a
/// later block, or the final norm (`full`). After the last block only the final norm does, so
/// without it the last MLP's `W_out` (a sixth of a 2-layer model's flops) is not computed.
fn reads_residual(full: bool, layer: usize, run: usize) -> bool {
    full || layer + 1 < run
}

/// One GPT-NeoX block with partial rotary attention.
#[derive(Module, Debug)]
pub struct NeoXBlock {
    /// `input_layernorm`.
    pub input_layernorm: LayerNorm,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: LayerNorm,
    /// `attention.query_key_value`, per-head interleaved `[q | k | v]`.
    pub query_key_value: Linear,
    /// `attention.dense`.
    pub dense: Linear,
    /// `mlp`.
    pub mlp: Mlp,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    rotary_ndims: usize,
    #[module(skip)]
    rotary_base: f64,
    #[module(skip)]
    parallel_residual: bool,
}

impl NeoXBlock {
    /// Queries and keys (rotated) and values `[batch, n_head, seq, d_head]` of a normalised
    /// input.
    fn qkv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, seq, d] = x.dims();
        let head_dim = d / self.n_head;
        let qkv = project(&self.query_key_value, x)
            .reshape([batch, seq, self.n_head, 3 * head_dim])
            .swap_dims(1, 2);
        let part = |i: usize| qkv.clone().narrow(3, i * head_dim, head_dim);
        let (cos, sin) = rotary_tables(
            seq,
            self.rotary_ndims,
            self.rotary_base,
            &qkv.device(),
            qkv.dtype(),
        );
        let q = self.rotate(part(0), &cos, &sin);
        let k = self.rotate(part(1), &cos, &sin);
        (q, k, part(2))
    }

    /// `1 / sqrt(d_head)`.
    fn scale(&self) -> f64 {
        let d = self.dense.weight.val().dims()[0];
        1.0 / ((d / self.n_head) as f64).sqrt()
    }

    /// Apply rotary embedding to the first `rotary_ndims` dimensions of each head.
    fn rotate(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let rot = self.rotary_ndims;
        if rot == 0 {
            return x;
        }
        let head_dim = x.dims()[3];
        let x_rot = x.clone().narrow(3, 0, rot);
        let half = rot / 2;
        let rotated_half = Tensor::cat(
            vec![
                x_rot.clone().narrow(3, half, half).neg(),
                x_rot.clone().narrow(3, 0, half),
            ],
            3,
        );
        let x_rot = x_rot * cos.clone() + rotated_half * sin.clone();
        if rot == head_dim {
            x_rot
        } else {
            Tensor::cat(vec![x_rot, x.narrow(3, rot, head_dim - rot)], 3)
        }
    }
}

/// `cos` and `sin` of `[1, 1, seq, rot]` for positions `0..seq`, as GPT-NeoX builds them
/// (`emb = cat(freqs, freqs)`).
fn rotary_tables(
    seq: usize,
    rot: usize,
    base: f64,
    device: &Device,
    dtype: DType,
) -> (Tensor<4>, Tensor<4>) {
    let half = rot / 2;
    let mut cos = Vec::with_capacity(seq * rot);
    let mut sin = Vec::with_capacity(seq * rot);
    for pos in 0..seq {
        for i in 0..rot {
            let inv_freq = 1.0 / base.powf((2 * (i % half.max(1))) as f64 / rot as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let table =
        |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, seq, rot]), (device, dtype));
    (table(cos), table(sin))
}

/// GPT-NeoX / Pythia with an untied `embed_out`.
#[derive(Module, Debug)]
pub struct NeoX {
    /// `gpt_neox.embed_in`.
    pub embed_in: VocabMatrix,
    /// `gpt_neox.layers.{i}`.
    pub blocks: Vec<NeoXBlock>,
    /// `gpt_neox.final_layer_norm`.
    pub final_layer_norm: LayerNorm,
    /// `embed_out.weight`, `[vocab, d]`.
    pub embed_out: VocabMatrix,
    #[module(skip)]
    ln_eps: f64,
}

impl NeoX {
    fn forward(&self, tokens: Tensor<2, Int>, options: &ForwardOptions) -> ForwardOutput {
        let mut x = self.embed_in.embed(tokens);
        let mut rec = Recorder::new(options);
        let run = options.layers_to_run(self.blocks.len());
        let full = wants_full(options, run, self.blocks.len());
        for (layer, block) in self.blocks.iter().take(run).enumerate() {
            let qkv = block.qkv(block.input_layernorm.forward(x.clone()));
            rec.attention(layer, &x, &qkv, block.scale(), |x| {
                block.qkv(block.input_layernorm.forward(x)).0
            });
            let (q, k, v) = qkv;
            let attn = project(&block.dense, causal_attention(q, k, v, block.scale()));
            // A parallel block's MLP reads the block's input, a sequential one's the input
            // plus the attention; both add their output to the latter.
            let input = x;
            x = input.clone() + attn;
            let mlp_in = if block.parallel_residual {
                input
            } else {
                x.clone()
            };
            let post = block.mlp.activate(
                block.post_attention_layernorm.forward(mlp_in),
                layer,
                options,
                &mut rec.taps,
            );
            rec.mlp_done(layer, &block.mlp);
            if reads_residual(full, layer, run) {
                x = x + block.mlp.output(post);
            }
        }
        rec.finish(x, full, self.ln_eps, |x| {
            self.embed_out.unembed(self.final_layer_norm.forward(x))
        })
    }
}

/// A loaded model of either architecture.
#[derive(Module, Debug)]
pub enum Transformer {
    /// GPT-2.
    Gpt2(Gpt2),
    /// GPT-NeoX / Pythia.
    NeoX(NeoX),
}

impl Transformer {
    /// Run the model on `[batch, seq]` token ids.
    ///
    /// Only the blocks needed for the requested taps (or `stop_at_layer`) run, and only the
    /// requested taps are kept.
    pub fn forward(&self, tokens: Tensor<2, Int>, options: &ForwardOptions) -> ForwardOutput {
        match self {
            Self::Gpt2(m) => m.forward(tokens, options),
            Self::NeoX(m) => m.forward(tokens, options),
        }
    }

    /// Check `options` and a token batch of `[batch, seq]` against the configuration, so that
    /// a bad request is an error rather than a panic inside the forward pass.
    pub fn check_request(
        config: &ModelConfig,
        shape: [usize; 2],
        options: &ForwardOptions,
    ) -> Result<()> {
        let n_layers = config.n_layers();
        let [batch, seq] = shape;
        if batch == 0 || seq == 0 {
            return Err(ModelError::Input(format!("empty token batch {shape:?}")));
        }
        let max = config.max_positions();
        if seq > max {
            return Err(ModelError::Input(format!(
                "sequences of {seq} tokens exceed the model's {max} positions"
            )));
        }
        let run = options.layers_to_run(n_layers);
        if let Some(h) = options.taps.iter().find(|h| h.layer >= run) {
            return Err(ModelError::Input(format!(
                "tap {h} lies beyond the {run} blocks that run (the model has {n_layers})"
            )));
        }
        if (options.logits || options.ln_final_scale) && options.stop_at_layer.is_some() {
            return Err(ModelError::Input(
                "logits and the final LayerNorm scale need the full model; drop stop_at_layer"
                    .into(),
            ));
        }
        if let Some(a) = &options.query_ablation {
            let heads = match config {
                crate::ModelConfig::Gpt2(c) => c.n_head,
                crate::ModelConfig::NeoX(c) => c.num_attention_heads,
            };
            if a.neuron_layer >= a.attn_layer
                || a.attn_layer >= n_layers
                || a.neuron >= config.d_mlp()
                || a.head >= heads
            {
                return Err(ModelError::Input(format!(
                    "path ablation of neuron L{}.{} on head L{}H{}: the neuron must exist and \
                     come before the head ({n_layers} layers of {} neurons, {heads} heads)",
                    a.neuron_layer,
                    a.neuron,
                    a.attn_layer,
                    a.head,
                    config.d_mlp()
                )));
            }
            if !options.taps.contains(&HookPoint::post(a.neuron_layer)) {
                return Err(ModelError::Input(format!(
                    "path ablation needs the tap {}",
                    HookPoint::post(a.neuron_layer)
                )));
            }
        }
        for p in &options.patches {
            if p.layer >= n_layers || p.neuron >= config.d_mlp() {
                return Err(ModelError::Input(format!(
                    "patch of neuron L{}N{} is outside the model ({n_layers} layers of {} neurons)",
                    p.layer,
                    p.neuron,
                    config.d_mlp()
                )));
            }
        }
        Ok(())
    }

    /// Build the model from a checkpoint, by the Hugging Face parameter names, with its
    /// parameters (and so its computation) in `options.dtype` whatever the checkpoint stores.
    pub fn load(
        config: &ModelConfig,
        checkpoint: &Checkpoint,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        match config {
            ModelConfig::Gpt2(c) => load_gpt2(c, checkpoint, device, options).map(Self::Gpt2),
            ModelConfig::NeoX(c) => load_neox(c, checkpoint, device, options).map(Self::NeoX),
        }
    }
}

impl Transformer {
    /// The parameters under their Hugging Face names (a `GPT2LMHeadModel` /
    /// `GPTNeoXForCausalLM` state dict, f32), ready to save as `model.safetensors`.
    pub fn named_tensors(&self) -> Result<NamedTensors> {
        let mut out = NamedTensors::new();
        match self {
            Self::Gpt2(m) => {
                let p = "transformer.";
                push_vocab(&mut out, &format!("{p}wte.weight"), &m.wte)?;
                push(&mut out, format!("{p}wpe.weight"), m.wpe.weight.val())?;
                for (i, b) in m.blocks.iter().enumerate() {
                    let h = format!("{p}h.{i}");
                    push_ln(&mut out, &format!("{h}.ln_1"), &b.ln_1)?;
                    push_linear(&mut out, &format!("{h}.attn.c_attn"), &b.c_attn, false)?;
                    push_linear(&mut out, &format!("{h}.attn.c_proj"), &b.c_proj, false)?;
                    push_ln(&mut out, &format!("{h}.ln_2"), &b.ln_2)?;
                    push_linear(&mut out, &format!("{h}.mlp.c_fc"), &b.mlp.w_in, false)?;
                    push_linear(&mut out, &format!("{h}.mlp.c_proj"), &b.mlp.w_out, false)?;
                }
                push_ln(&mut out, &format!("{p}ln_f"), &m.ln_f)?;
            }
            Self::NeoX(m) => {
                let p = "gpt_neox.";
                push_vocab(&mut out, &format!("{p}embed_in.weight"), &m.embed_in)?;
                for (i, b) in m.blocks.iter().enumerate() {
                    let h = format!("{p}layers.{i}");
                    push_ln(
                        &mut out,
                        &format!("{h}.input_layernorm"),
                        &b.input_layernorm,
                    )?;
                    push_ln(
                        &mut out,
                        &format!("{h}.post_attention_layernorm"),
                        &b.post_attention_layernorm,
                    )?;
                    let qkv = format!("{h}.attention.query_key_value");
                    push_linear(&mut out, &qkv, &b.query_key_value, true)?;
                    push_linear(&mut out, &format!("{h}.attention.dense"), &b.dense, true)?;
                    push_linear(
                        &mut out,
                        &format!("{h}.mlp.dense_h_to_4h"),
                        &b.mlp.w_in,
                        true,
                    )?;
                    push_linear(
                        &mut out,
                        &format!("{h}.mlp.dense_4h_to_h"),
                        &b.mlp.w_out,
                        true,
                    )?;
                }
                push_ln(
                    &mut out,
                    &format!("{p}final_layer_norm"),
                    &m.final_layer_norm,
                )?;
                push_vocab(&mut out, "embed_out.weight", &m.embed_out)?;
            }
        }
        Ok(out)
    }
}

fn push<const D: usize>(out: &mut NamedTensors, name: String, tensor: Tensor<D>) -> Result<()> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .cast(FloatDType::F32)
        .try_into_data()
        .map_err(|e| ModelError::Input(format!("reading `{name}` back: {e}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("reading `{name}` back: {e:?}")))?;
    out.push((name, values, shape));
    Ok(())
}

fn push_linear(
    out: &mut NamedTensors,
    name: &str,
    linear: &Linear,
    torch_layout: bool,
) -> Result<()> {
    let weight = linear.weight.val();
    let weight = if torch_layout {
        weight.transpose()
    } else {
        weight
    };
    push(out, format!("{name}.weight"), weight)?;
    match &linear.bias {
        Some(bias) => push(out, format!("{name}.bias"), bias.val()),
        None => Ok(()),
    }
}

fn push_ln(out: &mut NamedTensors, name: &str, ln: &LayerNorm) -> Result<()> {
    push(out, format!("{name}.weight"), ln.gamma.val())?;
    match &ln.beta {
        Some(beta) => push(out, format!("{name}.bias"), beta.val()),
        None => Ok(()),
    }
}

/// The chunks of a vocabulary matrix, read back one at a time and joined on the host (a
/// joined device tensor could exceed the buffer limit the chunks exist for).
fn push_vocab(out: &mut NamedTensors, name: &str, matrix: &VocabMatrix) -> Result<()> {
    let mut parts = NamedTensors::new();
    for chunk in &matrix.chunks {
        push(&mut parts, name.to_owned(), chunk.val())?;
    }
    let rows = parts.iter().map(|(_, _, shape)| shape[0]).sum();
    let width = parts.first().map_or(0, |(_, _, shape)| shape[1]);
    let values = parts.into_iter().flat_map(|(_, v, _)| v).collect();
    out.push((name.to_owned(), values, vec![rows, width]));
    Ok(())
}

/// Looks parameters up by name under a prefix and builds Burn modules from them.
struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    device: &'a Device,
    options: &'a LoadOptions,
    prefix: String,
}

impl Loader<'_> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A trainable parameter whose id derives from its checkpoint name, so that optimizer state
    /// saved in a training checkpoint finds its parameter again after a reload.
    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        let full = self.name(name);
        let tensor = self.tensor_at(&full, shape)?;
        Ok(named_param(&full, tensor))
    }

    /// A tensor by its full checkpoint name, ignoring the prefix.
    fn tensor_at<const D: usize>(&self, full_name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(self.tensor_of(self.checkpoint.f32(full_name, &shape)?, shape))
    }

    /// `values` as a tensor of `shape` on the loader's device, in its dtype.
    fn tensor_of<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(values, shape),
            (self.device, DType::from(self.options.dtype)),
        )
    }

    /// A `Conv1D`-style weight stored `[in, out]` (GPT-2), which is Burn's `Linear` layout.
    fn conv1d(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.param(&format!("{name}.weight"), [d_in, d_out])?,
            bias: Some(self.param(&format!("{name}.bias"), [d_out])?),
        })
    }

    /// A `torch.nn.Linear` weight stored `[out, in]`, transposed into Burn's layout `[in, out]`
    /// and laid out so (not a transposed view: the CPU GEMM would gather it a column at a time
    /// in every product; at 1,024 rows of 3,072 → 768 that ran at 282-304 GFLOP/s against
    /// 410-425 on two cores).
    fn torch_linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let weight_name = self.name(&format!("{name}.weight"));
        let values = self.checkpoint.f32(&weight_name, &[d_out, d_in])?;
        let weight = self.tensor_of(
            crate::matmul::transpose(&values, d_out, d_in),
            [d_in, d_out],
        );
        let bias = if bias {
            Some(self.param(&format!("{name}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(Linear {
            weight: named_param(&weight_name, weight),
            bias,
        })
    }

    fn layer_norm(&self, name: &str, d: usize, epsilon: f64) -> Result<LayerNorm> {
        let mut ln = LayerNormConfig::new(d)
            .with_epsilon(epsilon)
            .init(self.device);
        ln.gamma = self.param(&format!("{name}.weight"), [d])?;
        ln.beta = Some(self.param(&format!("{name}.bias"), [d])?);
        Ok(ln)
    }

    fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding {
            weight: self.param(&format!("{name}.weight"), [n, d])?,
        })
    }

    /// A `[n, d]` vocabulary matrix (by full checkpoint name), chunked under the buffer limit.
    fn vocab(&self, full_name: &str, shape: [usize; 2]) -> Result<VocabMatrix> {
        let values = self.checkpoint.f32(full_name, &shape)?;
        Ok(self.vocab_from(full_name, values, shape))
    }

    fn vocab_from(&self, full_name: &str, values: Vec<f32>, shape: [usize; 2]) -> VocabMatrix {
        let dtype = DType::from(self.options.dtype);
        let row_bytes = (shape[1] * dtype.size()) as u64;
        let rows = self
            .options
            .max_tensor_bytes
            .map_or(usize::MAX, |max| (max / row_bytes.max(1)).max(1) as usize);
        VocabMatrix::from_rows(full_name, values, shape, rows, self.device, dtype)
    }
}

/// The prefix under which a checkpoint keeps the base model (`transformer.` for a saved
/// `GPT2LMHeadModel`, none for a bare `GPT2Model`).
fn detect_prefix(checkpoint: &Checkpoint, prefix: &str, probe: &str) -> String {
    if checkpoint.contains(&format!("{prefix}{probe}")) {
        prefix.to_owned()
    } else {
        String::new()
    }
}

fn load_gpt2(
    c: &Gpt2Config,
    checkpoint: &Checkpoint,
    device: &Device,
    options: &LoadOptions,
) -> Result<Gpt2> {
    let l = Loader {
        checkpoint,
        device,
        options,
        prefix: detect_prefix(checkpoint, "transformer.", "wte.weight"),
    };
    let (d, d_mlp) = (c.n_embd, c.d_mlp());
    let head_dim = d / c.n_head;
    let blocks = (0..c.n_layer)
        .map(|i| {
            let h = format!("h.{i}");
            let mut scale = 1.0;
            if c.scale_attn_weights {
                scale /= (head_dim as f64).sqrt();
            }
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            Ok(Gpt2Block {
                ln_1: l.layer_norm(&format!("{h}.ln_1"), d, c.layer_norm_epsilon)?,
                c_attn: l.conv1d(&format!("{h}.attn.c_attn"), d, 3 * d)?,
                c_proj: l.conv1d(&format!("{h}.attn.c_proj"), d, d)?,
                ln_2: l.layer_norm(&format!("{h}.ln_2"), d, c.layer_norm_epsilon)?,
                mlp: Mlp {
                    w_in: l.conv1d(&format!("{h}.mlp.c_fc"), d, d_mlp)?,
                    w_out: l.conv1d(&format!("{h}.mlp.c_proj"), d_mlp, d)?,
                    activation: c.activation,
                },
                n_head: c.n_head,
                attn_scale: scale,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Gpt2 {
        wte: l.vocab(&l.name("wte.weight"), [c.vocab_size, d])?,
        wpe: l.embedding("wpe", c.n_positions, d)?,
        blocks,
        ln_f: l.layer_norm("ln_f", d, c.layer_norm_epsilon)?,
        ln_eps: c.layer_norm_epsilon,
    })
}

fn load_neox(
    c: &NeoXConfig,
    checkpoint: &Checkpoint,
    device: &Device,
    options: &LoadOptions,
) -> Result<NeoX> {
    let l = Loader {
        checkpoint,
        device,
        options,
        prefix: detect_prefix(checkpoint, "gpt_neox.", "embed_in.weight"),
    };
    let (d, d_mlp) = (c.hidden_size, c.intermediate_size);
    let blocks = (0..c.num_hidden_layers)
        .map(|i| {
            let h = format!("layers.{i}");
            Ok(NeoXBlock {
                input_layernorm: l.layer_norm(
                    &format!("{h}.input_layernorm"),
                    d,
                    c.layer_norm_eps,
                )?,
                post_attention_layernorm: l.layer_norm(
                    &format!("{h}.post_attention_layernorm"),
                    d,
                    c.layer_norm_eps,
                )?,
                query_key_value: l.torch_linear(
                    &format!("{h}.attention.query_key_value"),
                    d,
                    3 * d,
                    c.attention_bias,
                )?,
                dense: l.torch_linear(&format!("{h}.attention.dense"), d, d, c.attention_bias)?,
                mlp: Mlp {
                    w_in: l.torch_linear(&format!("{h}.mlp.dense_h_to_4h"), d, d_mlp, true)?,
                    w_out: l.torch_linear(&format!("{h}.mlp.dense_4h_to_h"), d_mlp, d, true)?,
                    activation: c.activation,
                },
                n_head: c.num_attention_heads,
                rotary_ndims: c.rotary_ndims(),
                rotary_base: c.rotary_emb_base,
                parallel_residual: c.use_parallel_residual,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let shape = [c.vocab_size, d];
    let embed_in_name = l.name("embed_in.weight");
    let embed_in = checkpoint.f32(&embed_in_name, &shape)?;
    // `embed_out` sits outside the `gpt_neox.` prefix; a tied model may omit it.
    let embed_out = if c.tie_word_embeddings && !checkpoint.contains("embed_out.weight") {
        l.vocab_from("embed_out.weight", embed_in.clone(), shape)
    } else {
        l.vocab("embed_out.weight", shape)?
    };
    Ok(NeoX {
        final_layer_norm: l.layer_norm("final_layer_norm", d, c.layer_norm_eps)?,
        embed_in: l.vocab_from(&embed_in_name, embed_in, shape),
        blocks,
        embed_out,
        ln_eps: c.layer_norm_eps,
    })
}

/// A trainable parameter with an id derived from its checkpoint name (FNV-1a), stable across
/// processes: optimizer state is keyed by parameter id.
fn named_param<const D: usize>(name: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Param::initialized(ParamId::from(hash), tensor).set_require_grad(true)
}
