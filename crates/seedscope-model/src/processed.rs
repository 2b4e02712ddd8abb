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
use crate::matmul::transpose;

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
            centre_columns(&mut q, d_model);
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
            d_mlp = match (n.torch, &s_in[..]) {
                (true, &[rows, _]) | (false, &[_, rows]) => rows,
                _ => 0,
            };
            let sizes = [w_in.len(), w_out.len(), b_in.len(), g.len(), b.len()];
            if d_mlp == 0 || sizes != [d_mlp * d_model, d_mlp * d_model, d_mlp, d_model, d_model] {
                return Err(ModelError::Input(format!(
                    "{}: layer {i}'s MLP has {s_in:?} input weights and {sizes:?} values in \
                     W_in / W_out / b_in / LN weight / LN bias, not {d_model} x d_mlp",
                    self.dir.display()
                )));
            }
            // Row j = neuron j's weights over d_model (Conv1D stores the input weights, and a
            // torch Linear the output weights, the other way round).
            let mut pw_in = if n.torch {
                w_in
            } else {
                transpose(&w_in, d_model, d_mlp)
            };
            let mut pw_out = if n.torch {
                transpose(&w_out, d_model, d_mlp)
            } else {
                w_out
            };
            let mut pb_in = b_in;
            for (row, pb) in pw_in.chunks_exact_mut(d_model).zip(&mut pb_in) {
                for ((r, &g), &b) in row.iter_mut().zip(&g).zip(&b) {
                    *pb += *r * b;
                    *r *= g;
                }
                centre(row);
            }
            pw_out.chunks_exact_mut(d_model).for_each(centre);
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
        centre_columns(&mut w_u, d_model);
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

/// Centre each column of a `[rows, cols]` row-major matrix (each column's sum in row order,
/// as a column-by-column loop adds it, but reading rows, not strided columns).
fn centre_columns(x: &mut [f64], cols: usize) {
    let rows = x.len() / cols.max(1);
    let mut mean = vec![0.0; cols];
    for row in x.chunks_exact(cols) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
    for row in x.chunks_exact_mut(cols) {
        row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
    }
}

fn centre(row: &mut [f64]) {
    let mean = row.iter().sum::<f64>() / row.len().max(1) as f64;
    for x in row {
        *x -= mean;
    }
}
