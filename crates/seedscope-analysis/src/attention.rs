//! Attention (de)activation scores (the paper's §5.3): how much a neuron's output direction
//! moves a later head's attention towards BOS,
//! `h_n = ŵ_outᵀ W_Q[A,h] k_BOS[A,h] / √d_head`, for every neuron in layer Q and every head h
//! of every later layer A > Q. ŵ_out is the unit-normalised processed output weight, W_Q the
//! processed query weights and k_BOS the key of BOS at layer A (from running the model on BOS
//! alone). Positive: firing raises attention to BOS, which turns the head off (deactivation).
//! The baseline replaces the output weights with unit-normalised Gaussian vectors.

use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use seedscope_model::{ForwardOptions, LoadedModel, ProcessedWeights, TokenBatch};

use crate::AnalysisError;

/// Histogram range of the scores (the notebook's signed ±12.5).
pub const SCORE_RANGE: (f64, f64) = (-12.5, 12.5);
/// Histogram bins over [`SCORE_RANGE`].
pub const SCORE_BINS: usize = 100;

/// Per neuron the strongest deactivation and activation head, and score histograms.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionScores {
    /// Heads per layer.
    pub n_head: usize,
    /// `[width]` the largest score over later heads (NaN in the last layer: none later).
    pub max: Vec<f32>,
    /// Its head, `layer * n_head + head`.
    pub max_head: Vec<u32>,
    /// `[width]` the smallest score.
    pub min: Vec<f32>,
    /// Its head.
    pub min_head: Vec<u32>,
    /// Counts of all (neuron, later head) scores over [`SCORE_RANGE`] (ends clamped).
    pub hist: Vec<u64>,
    /// The same for the Gaussian baseline.
    pub hist_baseline: Vec<u64>,
}

fn bin(v: f64) -> usize {
    let (lo, hi) = SCORE_RANGE;
    (((v - lo) / (hi - lo) * SCORE_BINS as f64).floor().max(0.0) as usize).min(SCORE_BINS - 1)
}

/// The key of token `bos` at position 0 in every layer: `[n_layers][n_head * d_head]`.
pub fn bos_keys(model: &LoadedModel, bos: u32) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let out = model.forward(
        &TokenBatch::new(vec![bos], 1, 1)?,
        &ForwardOptions {
            keys: true,
            ..ForwardOptions::default()
        },
    )?;
    out.keys
        .into_iter()
        .map(|k| {
            let v = k
                .try_into_data()
                .map_err(|e| AnalysisError::Invalid(format!("BOS keys: {e}")))?
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| AnalysisError::Invalid(format!("BOS keys: {e:?}")))?;
            Ok(v.into_iter().map(f64::from).collect())
        })
        .collect()
}

/// Scores of every neuron of `p` against every later head, with BOS keys `keys`
/// ([`bos_keys`]) and a baseline of Gaussian directions drawn from `seed`.
pub fn attention_scores(
    p: &ProcessedWeights,
    keys: &[Vec<f64>],
    seed: u64,
) -> Result<AttentionScores, AnalysisError> {
    let (d, dm, nh) = (p.d_model, p.d_mlp, p.n_head.max(1));
    let dh = d / nh;
    let n_layers = p.layers.len();
    crate::weights::check_shapes(p)?;
    let bad = |what: String| AnalysisError::Invalid(format!("attention scores: {what}"));
    if d == 0 || d % nh != 0 {
        return Err(bad(format!("{nh} heads do not divide d_model {d}")));
    }
    if keys.len() != n_layers || keys.iter().any(|k| k.len() != d) {
        return Err(bad(format!(
            "{} BOS keys of lengths {:?} for {n_layers} layers of {d}",
            keys.len(),
            keys.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    if p.w_q.len() != n_layers || p.w_q.iter().any(|w| w.len() != d * d) {
        return Err(bad(format!(
            "query weights for {} layers, expected {n_layers} of {d} x {d}",
            p.w_q.len()
        )));
    }
    // u[A*nh + h] = W_Q[A] restricted to head h, times k_BOS[A, h], / sqrt(d_head): [d, L*nh].
    let mut u = Array2::<f64>::zeros((d, n_layers * nh));
    for (a, (wq, k)) in p.w_q.iter().zip(keys).enumerate() {
        for h in 0..nh {
            for i in 0..d {
                let s: f64 = (0..dh)
                    .map(|j| wq[i * d + h * dh + j] * k[h * dh + j])
                    .sum();
                u[[i, a * nh + h]] = s / (dh as f64).sqrt();
            }
        }
    }
    let width = n_layers * dm;
    let mut out = AttentionScores {
        n_head: nh,
        max: vec![f32::NAN; width],
        max_head: vec![u32::MAX; width],
        min: vec![f32::NAN; width],
        min_head: vec![u32::MAX; width],
        hist: vec![0; SCORE_BINS],
        hist_baseline: vec![0; SCORE_BINS],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (q, layer) in p.layers.iter().enumerate() {
        let unit = |row: &[f64]| {
            let n = row
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            row.iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let w: Vec<f64> = layer.w_out.chunks_exact(d).flat_map(unit).collect();
        let w = Array2::from_shape_vec((dm, d), w).map_err(|e| bad(format!("W_out: {e}")))?;
        let g: Vec<f64> = (0..dm * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect::<Vec<f64>>()
            .chunks_exact(d)
            .flat_map(unit)
            .collect();
        let g = Array2::from_shape_vec((dm, d), g).map_err(|e| bad(format!("baseline: {e}")))?;
        let later = (q + 1) * nh..n_layers * nh;
        if later.is_empty() {
            continue;
        }
        let cols = u.slice(ndarray::s![.., later.clone()]);
        let s = w.dot(&cols);
        let sb = g.dot(&cols);
        for j in 0..dm {
            let n = q * dm + j;
            for (c, &v) in s.row(j).iter().enumerate() {
                out.hist[bin(v)] += 1;
                let head = (later.start + c) as u32;
                if out.max[n].is_nan() || v as f32 > out.max[n] {
                    out.max[n] = v as f32;
                    out.max_head[n] = head;
                }
                if out.min[n].is_nan() || (v as f32) < out.min[n] {
                    out.min[n] = v as f32;
                    out.min_head[n] = head;
                }
            }
            for &v in sb.row(j) {
                out.hist_baseline[bin(v)] += 1;
            }
        }
    }
    Ok(out)
}
