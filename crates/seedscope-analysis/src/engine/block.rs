//! One block of token rows: which positions it keeps, each model's forward to its MLP
//! activations at those positions, and the rotated baseline.

use std::collections::BTreeSet;

use burn::tensor::{Int, Tensor, TensorData};
use seedscope_model::{ForwardOptions, HookPoint, LoadedModel, TokenBatch};

use super::{AnalysisOptions, Run, TokenSet};
use crate::AnalysisError;
use crate::plan::{Kind, stream};
use crate::rotation::rotation_matrix;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_null_order_moves_every_token_and_keeps_them_all() {
        for n in [1, 2, 3, 31, 64, 65, 200, 1000] {
            let order = null_order(n, 7, 40);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n as i64).collect::<Vec<_>>(), "{n}");
            let least = NULL_SHIFT.min(n / 2);
            for (i, &t) in order.iter().enumerate() {
                let d = i.abs_diff(t as usize);
                assert!(d.min(n - d) >= least, "{n}: token {t} at {i}");
            }
            assert_eq!(order, null_order(n, 7, 40), "the same draw");
        }
        assert_ne!(null_order(1000, 7, 40), null_order(1000, 7, 41));
        assert_ne!(null_order(1000, 7, 40), null_order(1000, 8, 40));
    }
}

/// Rows `[r0, r1)` of the token set and how many positions they keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rows {
    /// First row.
    pub r0: usize,
    /// One past the last row.
    pub r1: usize,
    /// Kept positions (with the token budget applied).
    pub kept: u64,
}

/// Kept positions of rows `[r0, r1)` (indices into the block, row-major), at most `limit`.
pub(super) fn kept_positions(
    tokens: &TokenSet,
    keep_all: bool,
    r0: usize,
    r1: usize,
    limit: u64,
) -> Vec<i64> {
    let ids = &tokens.ids[r0 * tokens.seq_len..r1 * tokens.seq_len];
    ids.iter()
        .enumerate()
        .filter(|(_, id)| keep_all || !tokens.drop_ids.contains(id))
        .map(|(i, _)| i as i64)
        .take(limit.min(usize::MAX as u64) as usize)
        .collect()
}

/// Blocks of rows and how many tokens each keeps, with `max_tokens` applied.
pub(super) fn blocks(tokens: &TokenSet, options: &AnalysisOptions) -> Vec<Rows> {
    let mut out = Vec::new();
    let mut left = options.max_tokens.unwrap_or(u64::MAX);
    let rows = options.block_rows.max(1);
    let mut r0 = 0;
    while r0 < tokens.n_rows && left > 0 {
        let r1 = (r0 + rows).min(tokens.n_rows);
        let kept = kept_positions(tokens, options.keep_all_tokens, r0, r1, left).len() as u64;
        if kept > 0 {
            out.push(Rows { r0, r1, kept });
        }
        left -= kept;
        r0 = r1;
    }
    out
}

/// A block ready for the models: the token batch and its kept positions (as indices and as a
/// tensor on the models' device, for the gather).
pub(super) struct Block {
    /// The rows.
    pub rows: Rows,
    /// The token ids.
    pub batch: TokenBatch,
    /// Kept positions, row-major indices into the block.
    pub kept: Vec<i64>,
    kept_t: Tensor<1, Int>,
}

impl Run<'_> {
    /// The block of `rows`.
    pub(super) fn block(&self, rows: Rows) -> Result<Block, AnalysisError> {
        let seq = self.tokens.seq_len;
        let batch = TokenBatch::new(
            self.tokens.ids[rows.r0 * seq..rows.r1 * seq].to_vec(),
            rows.r1 - rows.r0,
            seq,
        )?;
        let kept = kept_positions(
            self.tokens,
            self.options.keep_all_tokens,
            rows.r0,
            rows.r1,
            rows.kept,
        );
        let kept_t = Tensor::<1, Int>::from_data(
            TensorData::new(kept.clone(), [kept.len()]),
            &self.family.device.device,
        );
        Ok(Block {
            rows,
            batch,
            kept,
            kept_t,
        })
    }

    /// The rotation matrices (transposed, `[d_mlp, d_mlp]` per layer, the model's own `d_mlp`)
    /// of every model whose baseline stream is in `used`; none for the others. The layers'
    /// draws run side by side (48 layers of 9.4 M draws each for five GPT-2-small seeds).
    pub(super) fn rotations(&self, used: &[bool]) -> Result<Vec<Vec<Tensor<2>>>, AnalysisError> {
        use rayon::prelude::*;
        let shapes = self.family.shapes()?;
        let device = &self.family.device.device;
        let layers: Vec<(usize, usize)> = (0..self.family.models.len())
            .filter(|&m| used[stream(m, Kind::Rotated)])
            .flat_map(|m| (0..shapes[m].n_layers).map(move |l| (m, l)))
            .collect();
        // Rᵀ laid out row-major, not a transposed view of R: the GEMM packs the right-hand
        // side in every product, and from a view it gathers it a column at a time (at GPT-2
        // width and 256-row blocks, 183-196 GFLOP/s against 261-280 from a dense Rᵀ, two cores).
        let drawn = layers
            .par_iter()
            .map(|&(m, l)| {
                let d = shapes[m].d_mlp;
                Ok(seedscope_model::matmul::transpose(
                    &self.rotation(m, l)?,
                    d,
                    d,
                ))
            })
            .collect::<Result<Vec<_>, AnalysisError>>()?;
        let mut out: Vec<Vec<Tensor<2>>> = vec![Vec::new(); self.family.models.len()];
        for ((m, _), rt) in layers.into_iter().zip(drawn) {
            let d = shapes[m].d_mlp;
            out[m].push(Tensor::<2>::from_data(TensorData::new(rt, [d, d]), device));
        }
        Ok(out)
    }

    /// The rotation of model `m`'s layer `l`, `[d_mlp, d_mlp]` row-major: the one given, or
    /// the seeded one.
    pub(super) fn rotation(&self, m: usize, l: usize) -> Result<Vec<f32>, AnalysisError> {
        let d = self.family.shapes()?[m].d_mlp;
        match &self.rotations {
            Some(given) => given
                .get(m)
                .and_then(|layers| layers.get(l))
                .filter(|r| r.len() == d * d)
                .cloned()
                .ok_or_else(|| {
                    AnalysisError::Invalid(format!(
                        "no {d} x {d} rotation given for model {m} layer {l}"
                    ))
                }),
            None => Ok(rotation_matrix(d, self.options.seed, m, l)),
        }
    }
}

/// Model `model`'s post-activations over the block's kept positions, `[n_kept, n_layers *
/// d_mlp]` (layers side by side), and with `with_pre` its pre-activations in the same layout.
pub(super) fn activations(
    model: &LoadedModel,
    block: &Block,
    with_pre: bool,
) -> Result<(Tensor<2>, Option<Tensor<2>>), AnalysisError> {
    let n_layers = model.config.n_layers();
    let mut taps: BTreeSet<HookPoint> = (0..n_layers).map(HookPoint::post).collect();
    if with_pre {
        taps.extend((0..n_layers).map(HookPoint::pre));
    }
    let options = ForwardOptions {
        taps,
        stop_at_layer: Some(n_layers),
        ..ForwardOptions::default()
    };
    let out = model.forward(&block.batch, &options)?;
    let [b, s] = block.batch.shape();
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
        Ok(Tensor::cat(layers, 1).select(0, block.kept_t.clone()))
    };
    let post = gather(HookPoint::post)?;
    let pre = if with_pre {
        Some(gather(HookPoint::pre)?)
    } else {
        None
    };
    Ok((post, pre))
}

/// The least shift of the permutation null, in kept tokens (a block with fewer than twice as
/// many shifts by half its tokens).
pub const NULL_SHIFT: usize = 32;

/// splitmix64: the permutation null's generator (easy to replay in numpy).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The permutation null's order of a block's `n` kept tokens: a circular block permutation,
/// the tokens rotated by `offset`, so the block's two pieces swap places and every token moves
/// at least [`NULL_SHIFT`] places (circularly) while the text within each piece keeps its
/// order. `offset` is uniform in `[s, n - s]` (`s = min(NULL_SHIFT, n / 2)`), drawn as
/// `s + splitmix64(splitmix64(seed ^ 0x4E554C4C) ^ r0) % (n - 2s + 1)` from the block's first
/// row `r0`: every pass, shard and resume draws the same. Token `i` of the permuted block is
/// token `order[i] = (i + offset) % n` of the block.
pub fn null_order(n: usize, seed: u64, r0: usize) -> Vec<i64> {
    if n < 2 {
        return (0..n as i64).collect();
    }
    let s = NULL_SHIFT.min(n / 2);
    let span = (n - 2 * s + 1) as u64;
    let offset = s + (splitmix64(splitmix64(seed ^ 0x4E55_4C4C) ^ r0 as u64) % span) as usize;
    (0..n).map(|i| ((i + offset) % n) as i64).collect()
}

/// Why a permutation null over `tokens` kept tokens of `width`-neuron models, in blocks of at
/// least `least_block` kept tokens, says little, if it does: when chance alone reaches a
/// correlation of 0.25 (about `sqrt(2 ln(width) / tokens)` for the best of `width`), or when
/// blocks are too short to shift every token by [`NULL_SHIFT`].
pub fn null_warning(tokens: u64, width: usize, least_block: u64) -> Option<String> {
    let chance = (2.0 * (width.max(2) as f64).ln() / tokens.max(1) as f64).sqrt();
    if chance > 0.25 {
        return Some(format!(
            "the permutation null over {tokens} kept tokens: chance alone reaches a best \
             correlation of about {chance:.2} among {width} neurons, too few tokens for it to \
             separate much (at least {} for 0.25)",
            (32.0 * (width.max(2) as f64).ln()).ceil()
        ));
    }
    if least_block < 2 * NULL_SHIFT as u64 {
        return Some(format!(
            "the permutation null: a block keeps only {least_block} tokens, so its tokens move \
             by {} instead of {NULL_SHIFT} (raise --batch-size)",
            least_block / 2
        ));
    }
    None
}

/// `x`'s rows in the permutation null's order for a block starting at row `r0`.
pub(super) fn permute(x: &Tensor<2>, seed: u64, r0: usize) -> Tensor<2> {
    let n = x.dims()[0];
    let order =
        Tensor::<1, Int>::from_data(TensorData::new(null_order(n, seed, r0), [n]), &x.device());
    x.clone().select(0, order)
}

/// `x` with each layer's block multiplied by its rotation: `x_l R_lᵀ` (`rotations`: each
/// layer's `R_lᵀ`, [`Run::rotations`]).
pub(super) fn rotate(x: &Tensor<2>, rotations: &[Tensor<2>], d: usize) -> Tensor<2> {
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
