//! One block of token rows: which positions it keeps, each model's forward to its MLP
//! activations at those positions, and the rotated baseline.

use std::collections::BTreeSet;

use burn::tensor::{Int, Tensor, TensorData};
use seedscope_model::{ForwardOptions, HookPoint, LoadedModel, TokenBatch};

use super::{AnalysisOptions, Run, TokenSet};
use crate::AnalysisError;
use crate::plan::stream;
use crate::rotation::rotation_matrix;

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

    /// The rotation matrices (transposed, `[d_mlp, d_mlp]` per layer) of every model whose
    /// baseline stream is in `used`; none for the others.
    pub(super) fn rotations(&self, used: &[bool]) -> Result<Vec<Vec<Tensor<2>>>, AnalysisError> {
        let (n_layers, d) = self.family.shape()?;
        let device = &self.family.device.device;
        (0..self.family.models.len())
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
                                .filter(|r| r.len() == d * d)
                                .cloned()
                                .ok_or_else(|| {
                                    AnalysisError::Invalid(format!(
                                        "no {d} x {d} rotation given for model {m} layer {l}"
                                    ))
                                })?,
                            None => rotation_matrix(d, self.options.seed, m, l),
                        };
                        Ok(Tensor::<2>::from_data(TensorData::new(r, [d, d]), device).transpose())
                    })
                    .collect()
            })
            .collect()
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

/// `x` with each layer's block multiplied by its rotation: `x_l R_lᵀ`.
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
