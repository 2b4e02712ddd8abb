//! Per-neuron weight statistics of the paper (§4, `weights.py:compute_neuron_statistics` and the
//! vocabulary cosine moments) on TransformerLens-processed weights
//! ([`seedscope_model::ProcessedWeights`]): input and output norms, the folded input bias,
//! cos(w_in, w_out), the weight-decay penalty, and the moments of cos(W_U[:, v], w_out) over the
//! vocabulary with the tokens at both ends.
//!
//! The vocabulary projection (cosines of every `w_out` with every unembedding column, a
//! `d_mlp × d_model × vocab` GEMM per layer) is nearly all of the work: 14 TFLOP for five
//! GPT-2-small seeds. [`Projection`] says where it runs: on the host (the `gemm` crate), or on
//! the run's GPU through Burn's matmul, reading each block's cosines back for the moments and
//! ends, which stay on the host in f64.

use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array2, ArrayView2};
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel, ProcessedWeights};

use crate::AnalysisError;
use seedscope_model::matmul::{gram, matmul};

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
/// rows), one basis vector per row: the eigenvectors of W_Uᵀ W_U with the `null_dims(d_model)`
/// smallest eigenvalues.
pub fn null_space(w_u: &[f64], vocab: usize, d: usize) -> Result<Array2<f64>, AnalysisError> {
    let u = ndarray::ArrayView2::from_shape((vocab, d), w_u).map_err(|_| {
        AnalysisError::Invalid(format!(
            "the unembedding has {} values, not {vocab} x {d}",
            w_u.len()
        ))
    })?;
    let mut g = vec![0.0f64; d * d];
    gram(u, &mut g);
    let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(d, d, &g));
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let k = null_dims(d).min(d);
    Ok(Array2::from_shape_fn((k, d), |(e, i)| {
        eig.eigenvectors[(i, order[e])]
    }))
}

/// The rows of a row-major `[rows, d]` matrix scaled to unit length, in f32 (for the cosine
/// GEMM).
fn unit_rows(x: &[f64], d: usize) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((x.len() / d.max(1), d));
    for (row, o) in x.chunks_exact(d.max(1)).zip(out.rows_mut()) {
        let n = norm(row).max(f64::MIN_POSITIVE);
        for (o, v) in o.into_iter().zip(row) {
            *o = (v / n) as f32;
        }
    }
    out
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

/// Where the vocabulary projection runs.
#[derive(Debug, Clone)]
pub enum Projection {
    /// On the host: the `gemm` crate on rayon's threads.
    Host,
    /// On a wgpu device through Burn's matmul. The unembedding goes up once per model, in
    /// chunks of the vocabulary no larger than `max_buffer_bytes` (the adapter's largest
    /// binding, `None`: no limit), and each block of neurons' cosines comes back.
    Device {
        /// The Burn device (the run's: Burn and the kernels share it).
        device: Device,
        /// The largest buffer one tensor may take.
        max_buffer_bytes: Option<u64>,
    },
}

impl Projection {
    /// The projection for a run on `device`: its GPU when it is a hardware one; the host on the
    /// CPU path and on a software adapter (lavapipe's GEMM is about 100 times slower than the
    /// host's).
    pub fn for_run(device: &ComputeDevice) -> Self {
        if device.is_software_adapter() {
            Self::Host
        } else {
            Self::on(device).unwrap_or(Self::Host)
        }
    }

    /// The projection on `device`'s GPU, software adapters included; `None` on the CPU path.
    pub fn on(device: &ComputeDevice) -> Option<Self> {
        (device.kind != BackendKind::Cpu).then(|| Self::Device {
            device: device.device.clone(),
            max_buffer_bytes: device.max_buffer_bytes,
        })
    }

    /// Neurons whose cosines are computed (and held on the host) at once: 1,024 (206 MB at
    /// GPT-2's vocabulary). Fewer, larger products: on a device fewer reads, on the host fewer
    /// passes of the `gemm` crate over the unembedding (with 256 the 12-layer family's
    /// statistics took 53.0 s against 47.9 s).
    const BLOCK: usize = 1024;

    /// `u`'s unit rows (`[vocab, d_model]`) where this projection reads them.
    fn unembedding(&self, u: Array2<f32>) -> Result<Unembedding, AnalysisError> {
        let Self::Device {
            device,
            max_buffer_bytes,
        } = self
        else {
            return Ok(Unembedding::Host(u));
        };
        let (vocab, d) = u.dim();
        // A chunk of the vocabulary, and its cosines with a block of neurons, each within the
        // largest buffer.
        let widest = d.max(Self::BLOCK).max(1) as u64 * 4;
        let cols = max_buffer_bytes.map_or(vocab as u64, |b| (b / widest).min(vocab as u64));
        if cols == 0 {
            return Err(AnalysisError::Invalid(format!(
                "the vocabulary projection: the GPU's largest buffer ({} bytes) holds less than \
                 one unembedding column of {d} values and one cosine per neuron of a block; \
                 run with --backend cpu",
                max_buffer_bytes.unwrap_or(0)
            )));
        }
        let values = u.into_raw_vec_and_offset().0;
        let chunks = (0..vocab)
            .step_by(cols as usize)
            .map(|v0| {
                let v1 = (v0 + cols as usize).min(vocab);
                let rows = TensorData::new(values[v0 * d..v1 * d].to_vec(), [v1 - v0, d]);
                (v0, Tensor::<2>::from_data(rows, device))
            })
            .collect();
        Ok(Unembedding::Device {
            device: device.clone(),
            vocab,
            chunks,
        })
    }
}

/// The unembedding's unit rows where the projection reads them.
enum Unembedding {
    Host(Array2<f32>),
    Device {
        device: Device,
        vocab: usize,
        /// Each chunk's first token and its rows, `[tokens, d_model]`.
        chunks: Vec<(usize, Tensor<2>)>,
    },
}

impl Unembedding {
    /// `cos = w uᵀ`: `w` a block of unit `w_out` rows `[n, d_model]`, `cos` row-major
    /// `[n, vocab]`.
    fn cosines(&self, w: Array2<f32>, cos: &mut [f32]) -> Result<(), AnalysisError> {
        match self {
            Self::Host(u) => matmul(w.view(), u.t(), cos),
            Self::Device {
                device,
                vocab,
                chunks,
            } => {
                let (n, d) = w.dim();
                let w = Tensor::<2>::from_data(
                    TensorData::new(w.into_raw_vec_and_offset().0, [n, d]),
                    device,
                );
                for (v0, u) in chunks {
                    let width = u.dims()[0];
                    let part = w
                        .clone()
                        .matmul(u.clone().transpose())
                        .try_into_data()
                        .map_err(|e| {
                            AnalysisError::Invalid(format!(
                                "the vocabulary projection on the GPU: {e}"
                            ))
                        })?
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| {
                            AnalysisError::Invalid(format!(
                                "the vocabulary projection on the GPU: {e:?}"
                            ))
                        })?;
                    for (row, got) in cos.chunks_exact_mut(*vocab).zip(part.chunks_exact(width)) {
                        row[*v0..v0 + width].copy_from_slice(got);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Bytes the statistics of `model` hold at their peak beyond the loaded models (the models'
/// statistics are made one at a time): its processed f64 weights
/// ([`LoadedModel::processed_weights`]), together with either the f32 copy of every parameter
/// they are made from and one f64 tensor being converted, or [`weight_stats`]'s own buffers
/// (W_U's unit rows, one block of cosines and its neurons' unit rows, W_Uᵀ W_U and its
/// eigenvectors, the neurons' coordinates in the null space) and the statistics themselves.
pub fn stats_bytes(model: &LoadedModel) -> u64 {
    use burn::module::Module;
    let c = &model.config;
    let (d, n, layers, vocab) = (
        c.d_model() as u64,
        c.d_mlp() as u64,
        c.n_layers() as u64,
        c.vocab_size() as u64,
    );
    let processed = 8 * (vocab * d + layers * (2 * n * d + n + d * d));
    let making = 4 * model.model.num_params() as u64 + 8 * vocab * d;
    let block = (Projection::BLOCK as u64).min(n);
    let k = null_dims(d as usize) as u64;
    let stats = 4 * vocab * d + 4 * block * (vocab + d) + 3 * 8 * d * d + 8 * n * k;
    let rows = layers * n * (std::mem::size_of::<NeuronWeights>() as u64 + 8 * VOCAB_ENDS as u64);
    processed + making.max(stats + rows)
}

/// Statistics of every neuron, `layer * d_mlp + neuron` order, with the vocabulary projection
/// where `projection` says. The cosines are computed in blocks of neurons (an f32 GEMM against
/// the normalised unembedding), moments in f64, the neurons of a block in parallel.
pub fn weight_stats(
    p: &ProcessedWeights,
    projection: &Projection,
) -> Result<Vec<NeuronWeights>, AnalysisError> {
    use rayon::prelude::*;
    let (d, vocab) = (p.d_model, p.vocab);
    check_shapes(p)?;
    // Unit rows of W_U, [vocab, d_model] (the GEMM reads it transposed).
    let u = projection.unembedding(unit_rows(&p.w_u, d))?;
    let null = null_space(&p.w_u, vocab, d)?;
    let k = null.nrows();
    let mut in_null = vec![0.0f64; p.d_mlp * k];
    let mut out = Vec::with_capacity(p.layers.len() * p.d_mlp);
    let block = Projection::BLOCK;
    // One block's cosines, kept from block to block (a fresh 206 MB each time costs the kernel
    // a page clear).
    let mut cos = vec![0.0f32; block.min(p.d_mlp) * vocab];
    for layer in &p.layers {
        // Each neuron's w_out in the null space's basis: [d_mlp, k].
        let w_out = ArrayView2::from_shape((p.d_mlp, d), &layer.w_out[..])
            .map_err(|e| AnalysisError::Invalid(format!("W_out: {e}")))?;
        matmul(w_out, null.t(), &mut in_null);
        for j0 in (0..p.d_mlp).step_by(block) {
            let j1 = (j0 + block).min(p.d_mlp);
            let w = unit_rows(&layer.w_out[j0 * d..j1 * d], d);
            let cos = &mut cos[..(j1 - j0) * vocab];
            u.cosines(w, cos)?;
            let cos = &*cos;
            let mut block = Vec::new();
            (j0..j1)
                .into_par_iter()
                .map(|j| {
                    let row = &cos[(j - j0) * vocab..(j - j0 + 1) * vocab];
                    neuron(layer, j, d, row, &in_null[j * k..(j + 1) * k])
                })
                .collect_into_vec(&mut block);
            out.extend(block);
        }
    }
    Ok(out)
}

/// One neuron's statistics from its weights, its cosines with the vocabulary and its `w_out`'s
/// coordinates in W_U's near-null space.
fn neuron(
    layer: &seedscope_model::ProcessedMlp,
    j: usize,
    d: usize,
    cos: &[f32],
    in_null: &[f64],
) -> NeuronWeights {
    let w_in = &layer.w_in[j * d..(j + 1) * d];
    let w_out = &layer.w_out[j * d..(j + 1) * d];
    let (n_in, n_out) = (norm(w_in), norm(w_out));
    let in_null: f64 = in_null.iter().map(|c| c * c).sum();
    let dot: f64 = w_in.iter().zip(w_out).map(|(a, b)| a * b).sum();
    let vocab = crate::stats::moments(cos);
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
    // `total_cmp` as an integer order, so a chunk's extreme is a vectorised max; the bottom
    // end is the top of the negated keys.
    let key = |c: f32| {
        let bits = c.to_bits() as i32;
        let total = bits ^ (((bits >> 31) as u32) >> 1) as i32;
        if top { total } else { !total }
    };
    for (n, chunk) in cos.chunks(SKIM).enumerate() {
        // Once the ends are full, a chunk with nothing beyond the last kept is skipped whole.
        if kept.len() == k
            && let Some(&(last, _)) = kept.last()
            && chunk.iter().map(|&c| key(c)).fold(i32::MIN, i32::max) <= key(last)
        {
            continue;
        }
        for (id, &c) in (n * SKIM..).zip(chunk) {
            // Ids come in ascending order, so a tie never displaces what is kept.
            if kept.len() == k && kept.last().is_some_and(|&(w, _)| c.total_cmp(&w) != beyond) {
                continue;
            }
            let at = kept.partition_point(|&(x, _)| x.total_cmp(&c) != beyond.reverse());
            kept.insert(at, (c, id as u32));
            kept.truncate(k);
        }
    }
    kept.into_iter().map(|(_, id)| id).collect()
}

/// Cosines [`ends`] checks at once against the last kept before looking at each.
const SKIM: usize = 64;

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

    /// Weights of `layers` layers of `d_mlp` neurons, residual width `d`, from a hash.
    fn weights(d: usize, d_mlp: usize, vocab: usize, layers: usize) -> ProcessedWeights {
        let value = |i: usize, salt: u64| {
            let h = (i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            h as f64 / (1u64 << 24) as f64 - 0.5
        };
        ProcessedWeights {
            d_model: d,
            d_mlp,
            vocab,
            layers: (0..layers as u64)
                .map(|l| seedscope_model::ProcessedMlp {
                    w_in: (0..d_mlp * d).map(|i| value(i, 3 * l + 1)).collect(),
                    b_in: (0..d_mlp).map(|i| value(i, 3 * l + 2)).collect(),
                    w_out: (0..d_mlp * d).map(|i| value(i, 3 * l + 3)).collect(),
                })
                .collect(),
            w_u: (0..vocab * d).map(|i| value(i, 99)).collect(),
            n_head: 1,
            w_q: vec![],
        }
    }

    /// The projection on a Burn device (Flex here; the GPU in `tests/weight_stats.rs`), in
    /// chunks of the vocabulary when the buffer limit says so, gives the host's statistics.
    #[test]
    fn a_device_projection_in_vocabulary_chunks_gives_the_hosts_statistics() {
        let cpu = ComputeDevice::open(BackendKind::Cpu).expect("the CPU backend");
        let p = weights(24, 1100, 700, 2);
        let host = weight_stats(&p, &Projection::Host).expect("on the host");
        for limit in [None, Some(1024 * 4 * 300)] {
            let device = Projection::Device {
                device: cpu.device.clone(),
                max_buffer_bytes: limit,
            };
            let got = weight_stats(&p, &device).expect("on the device");
            assert_eq!(got.len(), host.len());
            for (g, h) in got.iter().zip(&host) {
                for (a, b) in [
                    (g.vocab_mean, h.vocab_mean),
                    (g.vocab_var, h.vocab_var),
                    (g.vocab_skew, h.vocab_skew),
                    (g.vocab_kurt, h.vocab_kurt),
                ] {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{a} vs {b} ({limit:?})"
                    );
                }
                assert_eq!(g.vocab_top, h.vocab_top, "{limit:?}");
                assert_eq!(g.vocab_bottom, h.vocab_bottom, "{limit:?}");
                assert_eq!(g.null_frac, h.null_frac);
            }
        }
    }

    #[test]
    fn a_buffer_too_small_for_one_column_is_a_clear_error() {
        let cpu = ComputeDevice::open(BackendKind::Cpu).expect("the CPU backend");
        let device = Projection::Device {
            device: cpu.device,
            max_buffer_bytes: Some(1000),
        };
        let e = weight_stats(&weights(8, 4, 50, 1), &device)
            .expect_err("1,000 bytes hold no column")
            .to_string();
        assert!(
            e.contains("largest buffer (1000 bytes)") && e.contains("--backend cpu"),
            "{e}"
        );
    }

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

    #[test]
    fn skipping_whole_chunks_keeps_total_order_with_signed_zeros_infinities_and_nans() {
        // Extremes late and early, across chunk boundaries, and values whose order only
        // total_cmp defines (−0 < +0, NaNs at both ends).
        let mut cos: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
            .collect();
        for (i, v) in [
            (3, -0.0),
            (64, 0.0),
            (127, f32::INFINITY),
            (128, f32::NEG_INFINITY),
            (500, f32::NAN),
            (501, -f32::NAN),
            (999, 0.75),
            (640, -0.75),
        ] {
            cos[i] = v;
        }
        for top in [true, false] {
            assert_eq!(ends(&cos, top), sorted_ends(&cos, top), "top = {top}");
        }
    }
}
