//! Per-neuron weight statistics of the paper (§4, `weights.py:compute_neuron_statistics` and the
//! vocabulary cosine moments) on TransformerLens-processed weights
//! ([`seedscope_model::ProcessedWeights`]): input and output norms, the folded input bias,
//! cos(w_in, w_out), the weight-decay penalty, and the moments of cos(W_U[:, v], w_out) over the
//! vocabulary with the tokens at both ends.

use ndarray::Array2;
use seedscope_model::ProcessedWeights;

use crate::AnalysisError;

/// Tokens kept at each end of a neuron's vocabulary projection.
pub const VOCAB_ENDS: usize = 10;

/// One neuron's weight statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronWeights {
    /// ‖w_in‖₂.
    pub w_in_norm: f64,
    /// The folded input bias.
    pub input_bias: f64,
    /// ‖w_out‖₂.
    pub w_out_norm: f64,
    /// cos(w_in, w_out).
    pub in_out_sim: f64,
    /// ‖w_in‖² + ‖w_out‖².
    pub l2_penalty: f64,
    /// Mean over the vocabulary of cos(W_U[:, v], w_out).
    pub vocab_mean: f64,
    /// Its population variance.
    pub vocab_var: f64,
    /// Its skew.
    pub vocab_skew: f64,
    /// Its kurtosis (non-excess: a Gaussian gives 3).
    pub vocab_kurt: f64,
    /// The tokens with the largest cosine, largest first.
    pub vocab_top: Vec<u32>,
    /// The tokens with the smallest cosine, smallest first.
    pub vocab_bottom: Vec<u32>,
    /// ‖P w_out‖ / ‖w_out‖ with P the projection onto W_U's near-null space (the bottom
    /// [`null_dims`] right singular directions): large for entropy-neuron candidates, which
    /// change the final LayerNorm scale without changing the logits' order (§5.2).
    pub null_frac: f64,
}

/// Dimensions of W_U's near-null space for a residual width `d_model`: the bottom 5 % of its
/// singular directions, plus the one direction that the centred unembedding maps to zero
/// (all-ones; centred writing weights never use it).
pub fn null_dims(d_model: usize) -> usize {
    (d_model / 20).max(1) + 1
}

/// An orthonormal basis `[k, d_model]` of W_U's near-null space (`w_u`: `[vocab, d_model]`
/// rows): the eigenvectors of W_Uᵀ W_U with the `null_dims(d_model)` smallest eigenvalues.
pub fn null_space(w_u: &[f64], vocab: usize, d: usize) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let u = ndarray::ArrayView2::from_shape((vocab, d), w_u).map_err(|_| {
        AnalysisError::Invalid(format!(
            "the unembedding has {} values, not {vocab} x {d}",
            w_u.len()
        ))
    })?;
    let g = u.t().dot(&u);
    let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_fn(d, d, |i, j| g[[i, j]]));
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    Ok(order
        .into_iter()
        .take(null_dims(d).min(d))
        .map(|c| eig.eigenvectors.column(c).iter().copied().collect())
        .collect())
}

/// Every array of `p` has the length its shape says (the statistics index them freely).
pub(crate) fn check_shapes(p: &ProcessedWeights) -> Result<(), AnalysisError> {
    let bad = |what: String| Err(AnalysisError::Invalid(format!("processed weights: {what}")));
    let (d, n) = (p.d_model, p.d_mlp);
    if p.w_u.len() != p.vocab * d {
        return bad(format!(
            "W_U has {} values, not {} x {d}",
            p.w_u.len(),
            p.vocab
        ));
    }
    for (l, layer) in p.layers.iter().enumerate() {
        if layer.w_in.len() != n * d || layer.w_out.len() != n * d || layer.b_in.len() != n {
            return bad(format!(
                "layer {l} has {} / {} / {} values in W_in / W_out / b_in, not {n} x {d}",
                layer.w_in.len(),
                layer.w_out.len(),
                layer.b_in.len()
            ));
        }
    }
    Ok(())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Statistics of every neuron, `layer * d_mlp + neuron` order. The cosines are computed in
/// blocks of neurons (an f32 GEMM against the normalised unembedding), moments in f64, the
/// neurons of a block in parallel.
pub fn weight_stats(p: &ProcessedWeights) -> Result<Vec<NeuronWeights>, AnalysisError> {
    use rayon::prelude::*;
    let (d, vocab) = (p.d_model, p.vocab);
    check_shapes(p)?;
    // Unit columns of W_U, as [d_model, vocab].
    let mut u = Array2::<f32>::zeros((d, vocab));
    for v in 0..vocab {
        let row = &p.w_u[v * d..(v + 1) * d];
        let n = norm(row).max(f64::MIN_POSITIVE);
        for (k, x) in row.iter().enumerate() {
            u[[k, v]] = (x / n) as f32;
        }
    }
    let null = null_space(&p.w_u, vocab, d)?;
    let mut out = Vec::with_capacity(p.layers.len() * p.d_mlp);
    const BLOCK: usize = 256;
    for layer in &p.layers {
        for j0 in (0..p.d_mlp).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(p.d_mlp);
            let mut w = Array2::<f32>::zeros((j1 - j0, d));
            for j in j0..j1 {
                let row = &layer.w_out[j * d..(j + 1) * d];
                let n = norm(row).max(f64::MIN_POSITIVE);
                for (k, x) in row.iter().enumerate() {
                    w[[j - j0, k]] = (x / n) as f32;
                }
            }
            let cos = w.dot(&u);
            let cos = cos
                .as_slice()
                .ok_or_else(|| AnalysisError::Invalid("a non-contiguous GEMM result".into()))?;
            let mut block = Vec::new();
            (j0..j1)
                .into_par_iter()
                .map(|j| {
                    let row = &cos[(j - j0) * vocab..(j - j0 + 1) * vocab];
                    neuron(layer, j, d, row, &null)
                })
                .collect_into_vec(&mut block);
            out.extend(block);
        }
    }
    Ok(out)
}

fn neuron(
    layer: &seedscope_model::ProcessedMlp,
    j: usize,
    d: usize,
    cos: &[f32],
    null: &[Vec<f64>],
) -> NeuronWeights {
    let w_in = &layer.w_in[j * d..(j + 1) * d];
    let w_out = &layer.w_out[j * d..(j + 1) * d];
    let (n_in, n_out) = (norm(w_in), norm(w_out));
    let in_null: f64 = null
        .iter()
        .map(|e| e.iter().zip(w_out).map(|(a, b)| a * b).sum::<f64>().powi(2))
        .sum();
    let dot: f64 = w_in.iter().zip(w_out).map(|(a, b)| a * b).sum();
    let vocab = crate::stats::weighted_moments(cos.iter().map(|&c| (c as f64, 1.0)));
    NeuronWeights {
        w_in_norm: n_in,
        input_bias: layer.b_in[j],
        w_out_norm: n_out,
        in_out_sim: dot / (n_in * n_out),
        l2_penalty: n_in * n_in + n_out * n_out,
        vocab_mean: vocab.mean,
        vocab_var: vocab.var,
        vocab_skew: vocab.skew,
        vocab_kurt: vocab.kurt,
        vocab_top: ends(cos, true),
        vocab_bottom: ends(cos, false),
        null_frac: in_null.sqrt() / n_out.max(f64::MIN_POSITIVE),
    }
}

/// The [`VOCAB_ENDS`] tokens with the largest cosine (`top`, largest first) or the smallest
/// (smallest first); ties go to the lower token id. One pass keeping the ends in order (most
/// tokens are rejected by one comparison), not a sort of the vocabulary.
fn ends(cos: &[f32], top: bool) -> Vec<u32> {
    use std::cmp::Ordering;
    let beyond = if top {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let k = VOCAB_ENDS.min(cos.len());
    let mut kept: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (id, &c) in cos.iter().enumerate() {
        // Ids come in ascending order, so a tie never displaces what is kept.
        if kept.len() == k && kept.last().is_some_and(|&(w, _)| c.total_cmp(&w) != beyond) {
            continue;
        }
        let at = kept.partition_point(|&(x, _)| x.total_cmp(&c) != beyond.reverse());
        kept.insert(at, (c, id as u32));
        kept.truncate(k);
    }
    kept.into_iter().map(|(_, id)| id).collect()
}

/// The functional role the paper reads off a neuron's vocabulary projection (§5): prediction
/// (`vocab_kurt > 10`, positive skew: it boosts a few tokens), suppression (`vocab_kurt > 10`,
/// negative skew), partition (`vocab_var > 0.005`: it shifts most tokens, one group up and the
/// other down), else none.
pub fn vocab_role(vocab_kurt: f64, vocab_skew: f64, vocab_var: f64) -> Option<&'static str> {
    if vocab_kurt > 10.0 && vocab_skew > 0.0 {
        Some("prediction")
    } else if vocab_kurt > 10.0 && vocab_skew < 0.0 {
        Some("suppression")
    } else if vocab_var > 0.005 {
        Some("partition")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ends by a full sort: descending (ascending for the bottom), ties to the lower id.
    fn sorted_ends(cos: &[f32], top: bool) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..cos.len() as u32).collect();
        ids.sort_by(|&a, &b| {
            let (x, y) = (cos[a as usize], cos[b as usize]);
            let o = if top {
                y.total_cmp(&x)
            } else {
                x.total_cmp(&y)
            };
            o.then(a.cmp(&b))
        });
        ids.truncate(VOCAB_ENDS);
        ids
    }

    #[test]
    fn the_ends_are_those_of_a_full_sort_and_hold_no_more_than_they_keep() {
        for n in [3usize, 10, 11, 1000, 50257] {
            // Few distinct values (a multiplicative hash of the id), so ties are everywhere.
            let cos: Vec<f32> = (0..n)
                .map(|i| ((i as u64 * 2_654_435_761) >> 9) % 20)
                .map(|v| v as f32 / 19.0 - 0.5)
                .collect();
            for top in [true, false] {
                let e = ends(&cos, top);
                assert_eq!(e, sorted_ends(&cos, top), "n = {n}, top = {top}");
                // A neuron's row keeps 10 ids, not the vocabulary's worth of capacity (that
                // was 2.4 GB for a GPT-2-small-width layer pair).
                assert!(e.capacity() <= 4 * VOCAB_ENDS, "capacity {}", e.capacity());
            }
        }
    }
}
