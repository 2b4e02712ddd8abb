//! TransformerLens's weight processing for the MLP neurons and the unembedding, as the paper's
//! weight statistics assume (`fold_ln`, `center_writing_weights`, `center_unembed`; see
//! ../shared/PAPER.md on weight preprocessing):
//!
//! - fold the MLP's LayerNorm into its input weights (`W_in·diag(γ)`, `b_in + W_in·β`), then
//!   centre each neuron's input weights over d_model;
//! - centre each neuron's output weights over d_model;
//! - fold the final LayerNorm's scale into the unembedding, centre each token's column over
//!   d_model, then centre each d_model row over the vocabulary.
//!
//! Computed in f64 from the model's own tensors (so GPT-2 and GPT-NeoX checkpoints of any
//! format give the same result as the Hugging Face weights they came from).

use std::collections::HashMap;

use crate::LoadedModel;
use crate::error::{ModelError, Result};

/// One layer's processed MLP weights, one row per neuron.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedMlp {
    /// Input weights `[d_mlp, d_model]` (TransformerLens's `W_in` transposed).
    pub w_in: Vec<f64>,
    /// Input bias after folding, `[d_mlp]`.
    pub b_in: Vec<f64>,
    /// Output weights `[d_mlp, d_model]`.
    pub w_out: Vec<f64>,
}

/// Processed weights of a model's neurons and its unembedding.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedWeights {
    /// Residual width.
    pub d_model: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// One per layer.
    pub layers: Vec<ProcessedMlp>,
    /// Unembedding `[vocab, d_model]` (TransformerLens's `W_U` transposed: one row per token).
    pub w_u: Vec<f64>,
    /// Attention heads per layer.
    pub n_head: usize,
    /// Per layer the query weights `[d_model, n_head * d_head]` (column `h * d_head + j` is
    /// head h's j-th query dimension) with the attention LayerNorm's scale folded in and
    /// centred over d_model, as TransformerLens's `W_Q` after `fold_ln`.
    pub w_q: Vec<Vec<f64>>,
}

/// Where a model keeps what the processing needs, in Hugging Face names.
struct Names {
    w_in: String,
    b_in: String,
    w_out: String,
    ln_w: String,
    ln_b: String,
    /// Whether the MLP weights are in torch `[out, in]` layout (else Conv1D `[in, out]`).
    torch: bool,
}

impl LoadedModel {
    /// TransformerLens-processed MLP and unembedding weights (f64).
    pub fn processed_weights(&self) -> Result<ProcessedWeights> {
        let named = self.model.named_tensors()?;
        let map: HashMap<&str, (&Vec<f32>, &Vec<usize>)> =
            named.iter().map(|(n, v, s)| (n.as_str(), (v, s))).collect();
        let get = |name: &str| -> Result<(Vec<f64>, Vec<usize>)> {
            map.get(name)
                .map(|(v, s)| (v.iter().map(|&x| x as f64).collect(), (*s).clone()))
                .ok_or_else(|| {
                    ModelError::Input(format!(
                        "{}: the model has no tensor `{name}` for the weight statistics",
                        self.dir.display()
                    ))
                })
        };
        let gpt2 = map.contains_key("transformer.h.0.mlp.c_fc.weight");
        let n_layers = self.config.n_layers();
        let names = |i: usize| {
            if gpt2 {
                let h = format!("transformer.h.{i}");
                Names {
                    w_in: format!("{h}.mlp.c_fc.weight"),
                    b_in: format!("{h}.mlp.c_fc.bias"),
                    w_out: format!("{h}.mlp.c_proj.weight"),
                    ln_w: format!("{h}.ln_2.weight"),
                    ln_b: format!("{h}.ln_2.bias"),
                    torch: false,
                }
            } else {
                let h = format!("gpt_neox.layers.{i}");
                Names {
                    w_in: format!("{h}.mlp.dense_h_to_4h.weight"),
                    b_in: format!("{h}.mlp.dense_h_to_4h.bias"),
                    w_out: format!("{h}.mlp.dense_4h_to_h.weight"),
                    ln_w: format!("{h}.post_attention_layernorm.weight"),
                    ln_b: format!("{h}.post_attention_layernorm.bias"),
                    torch: true,
                }
            }
        };
        let (w_u_raw, u_shape) = get(if gpt2 {
            "transformer.wte.weight"
        } else {
            "embed_out.weight"
        })?;
        let (g_f, _) = get(if gpt2 {
            "transformer.ln_f.weight"
        } else {
            "gpt_neox.final_layer_norm.weight"
        })?;
        let (vocab, d_model) = match u_shape[..] {
            [v, d] => (v, d),
            _ => {
                return Err(ModelError::Input(format!(
                    "{}: unembedding of shape {u_shape:?}",
                    self.dir.display()
                )));
            }
        };
        let n_head = match &self.config {
            crate::ModelConfig::Gpt2(c) => c.n_head,
            crate::ModelConfig::NeoX(c) => c.num_attention_heads,
        };
        let d_head = d_model / n_head.max(1);
        let mut w_q = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (qkv, ln) = if gpt2 {
                let h = format!("transformer.h.{i}");
                (
                    format!("{h}.attn.c_attn.weight"),
                    format!("{h}.ln_1.weight"),
                )
            } else {
                let h = format!("gpt_neox.layers.{i}");
                (
                    format!("{h}.attention.query_key_value.weight"),
                    format!("{h}.input_layernorm.weight"),
                )
            };
            let (w, _) = get(&qkv)?;
            let (g, _) = get(&ln)?;
            let mut q = vec![0.0; d_model * d_model];
            for h in 0..n_head {
                for j in 0..d_head {
                    let col = h * d_head + j;
                    for k in 0..d_model {
                        // GPT-2's Conv1D is [in, 3 d] with q first; NeoX's Linear is [3 d, in]
                        // with rows per head interleaved [q | k | v].
                        let raw = if gpt2 {
                            w[k * 3 * d_model + col]
                        } else {
                            w[(h * 3 * d_head + j) * d_model + k]
                        };
                        q[k * d_model + col] = raw * g[k];
                    }
                }
            }
            for col in 0..d_model {
                let mean = (0..d_model).map(|k| q[k * d_model + col]).sum::<f64>() / d_model as f64;
                for k in 0..d_model {
                    q[k * d_model + col] -= mean;
                }
            }
            w_q.push(q);
        }
        let mut layers = Vec::with_capacity(n_layers);
        let mut d_mlp = 0;
        for i in 0..n_layers {
            let n = names(i);
            let (w_in, s_in) = get(&n.w_in)?;
            let (b_in, _) = get(&n.b_in)?;
            let (w_out, _) = get(&n.w_out)?;
            let (g, _) = get(&n.ln_w)?;
            let (b, _) = get(&n.ln_b)?;
            d_mlp = if n.torch { s_in[0] } else { s_in[1] };
            // Row j = neuron j's input weights over d_model.
            let at_in = |j: usize, k: usize| {
                if n.torch {
                    w_in[j * d_model + k]
                } else {
                    w_in[k * d_mlp + j]
                }
            };
            let at_out = |j: usize, k: usize| {
                if n.torch {
                    w_out[k * d_mlp + j]
                } else {
                    w_out[j * d_model + k]
                }
            };
            let mut pw_in = vec![0.0; d_mlp * d_model];
            let mut pb_in = b_in.clone();
            let mut pw_out = vec![0.0; d_mlp * d_model];
            for j in 0..d_mlp {
                let row = &mut pw_in[j * d_model..(j + 1) * d_model];
                for (k, r) in row.iter_mut().enumerate() {
                    let w = at_in(j, k);
                    pb_in[j] += w * b[k];
                    *r = w * g[k];
                }
                centre(row);
                let out = &mut pw_out[j * d_model..(j + 1) * d_model];
                for (k, o) in out.iter_mut().enumerate() {
                    *o = at_out(j, k);
                }
                centre(out);
            }
            layers.push(ProcessedMlp {
                w_in: pw_in,
                b_in: pb_in,
                w_out: pw_out,
            });
        }
        // Unembedding: scale by the final LayerNorm, centre each token over d_model, then each
        // d_model coordinate over the vocabulary.
        let mut w_u = w_u_raw;
        for row in w_u.chunks_exact_mut(d_model) {
            for (x, g) in row.iter_mut().zip(&g_f) {
                *x *= g;
            }
            centre(row);
        }
        for k in 0..d_model {
            let mean = (0..vocab).map(|v| w_u[v * d_model + k]).sum::<f64>() / vocab as f64;
            for v in 0..vocab {
                w_u[v * d_model + k] -= mean;
            }
        }
        Ok(ProcessedWeights {
            d_model,
            d_mlp,
            vocab,
            layers,
            w_u,
            n_head,
            w_q,
        })
    }
}

fn centre(row: &mut [f64]) {
    let mean = row.iter().sum::<f64>() / row.len().max(1) as f64;
    for x in row {
        *x -= mean;
    }
}
