//! The query-only path ablation of the paper's attention-deactivation experiment (§5.3): remove
//! a neuron's contribution `act · w_out` from the residual stream that forms one later head's
//! query (keys and values untouched) and measure how the head's attention to BOS and the norm of
//! its output change, at positions `[seq/4, seq)` of the first 256 tokens of each row (the
//! paper: 64–255). A deactivation neuron raises BOS attention when it fires, so removing it
//! lowers BOS attention and raises the output norm. Results go to `path_ablation.json` in the
//! bundle (one entry per pair, replaced when rerun).

use std::path::Path;

use seedscope_model::{BackendKind, ForwardOptions, HookPoint, QueryAblation, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::AnalysisError;
use crate::bundle::Bundle;
use crate::intervene::open_anchor;

/// File in the bundle.
pub const FILE: &str = "path_ablation.json";
/// Points kept for the scatter plots.
pub const MAX_POINTS: usize = 4000;

/// One (neuron, head) pair's ablation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathAblation {
    /// `(layer, neuron)`.
    pub neuron: (usize, usize),
    /// `(layer, head)`.
    pub head: (usize, usize),
    /// Query positions `[start, end)` measured in each row.
    pub positions: (usize, usize),
    /// Positions measured.
    pub n_tokens: u64,
    /// Mean post-activation of the neuron there.
    pub mean_activation: f64,
    /// Mean attention of the head to position 0.
    pub mean_bos_attention: f64,
    /// The same with the neuron removed from the query path.
    pub mean_bos_attention_ablated: f64,
    /// Mean norm of the head's output `z`.
    pub mean_z_norm: f64,
    /// The same ablated.
    pub mean_z_norm_ablated: f64,
    /// Pearson correlation of the activation with the change in BOS attention (ablated − clean).
    pub corr_activation_bos_change: f64,
    /// … with the change in the output norm.
    pub corr_activation_norm_change: f64,
    /// `(activation, Δ BOS attention, Δ z norm)` for up to [`MAX_POINTS`] positions (evenly
    /// spaced).
    pub points: Vec<(f32, f32, f32)>,
}

/// Parse `L{layer}H{head}`.
fn parse_head(s: &str) -> Option<(usize, usize)> {
    let (l, h) = s.strip_prefix('L')?.split_once('H')?;
    Some((l.parse().ok()?, h.parse().ok()?))
}

/// The default pair: the anchor neuron with the largest deactivation score and that head.
pub fn strongest_pair(bundle: &Bundle) -> Option<((usize, usize), (usize, usize))> {
    let anchor = &bundle.manifest.models.first()?.name;
    bundle
        .neurons
        .iter()
        .filter(|r| &r.model == anchor && r.attn_deact.is_finite())
        .max_by(|a, b| a.attn_deact.total_cmp(&b.attn_deact))
        .and_then(|r| Some(((r.layer, r.neuron), parse_head(&r.attn_deact_head)?)))
}

/// Run the ablation of `neuron` on `head` (default: [`strongest_pair`]) over at most
/// `max_tokens` measured positions of the bundle's data, and store it in the bundle.
pub fn run_path_ablation(
    bundle_dir: &Path,
    pair: Option<((usize, usize), (usize, usize))>,
    max_tokens: u64,
    backend: BackendKind,
) -> Result<PathAblation, AnalysisError> {
    let (bundle, model, tokens, _) = open_anchor(bundle_dir, backend)?;
    let (neuron, head) = match pair.or_else(|| strongest_pair(&bundle)) {
        Some(p) => p,
        None => {
            return Err(AnalysisError::Invalid(format!(
                "{}: no attention scores to choose a pair from (name one, e.g. L0.12:L1H3)",
                bundle_dir.join(crate::bundle::NEURONS).display()
            )));
        }
    };
    let seq = tokens.seq_len.min(256);
    let lo = seq / 4;
    let per_row = (seq - lo) as u64;
    let rows = (max_tokens.div_ceil(per_row.max(1)) as usize).clamp(1, tokens.n_rows);
    let options = ForwardOptions {
        taps: [HookPoint::post(neuron.0)].into_iter().collect(),
        query_ablation: Some(QueryAblation {
            neuron_layer: neuron.0,
            neuron: neuron.1,
            attn_layer: head.0,
            head: head.1,
        }),
        ..ForwardOptions::default()
    };
    let (mut act, mut bos, mut bos_a, mut zn, mut zn_a) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let host = |t: burn::tensor::Tensor<2>| -> Result<Vec<f64>, AnalysisError> {
        Ok(t.try_into_data()
            .map_err(|e| AnalysisError::Invalid(format!("path ablation: {e}")))?
            .try_into_vec::<f32>()
            .map_err(|e| AnalysisError::Invalid(format!("path ablation: {e:?}")))?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    const BATCH: usize = 16;
    for r0 in (0..rows).step_by(BATCH) {
        let r1 = (r0 + BATCH).min(rows);
        let ids: Vec<u32> = (r0..r1)
            .flat_map(|r| {
                tokens.ids[r * tokens.seq_len..r * tokens.seq_len + seq]
                    .iter()
                    .copied()
            })
            .collect();
        let out = model.forward(&TokenBatch::new(ids, r1 - r0, seq)?, &options)?;
        let p = out
            .head_probe
            .ok_or_else(|| AnalysisError::Invalid("the forward pass returned no probe".into()))?;
        let keep = |v: Vec<f64>, into: &mut Vec<f64>| {
            for row in v.chunks_exact(seq) {
                into.extend_from_slice(&row[lo..]);
            }
        };
        keep(host(p.activation)?, &mut act);
        keep(host(p.bos_attention)?, &mut bos);
        keep(host(p.bos_attention_ablated)?, &mut bos_a);
        keep(host(p.z_norm)?, &mut zn);
        keep(host(p.z_norm_ablated)?, &mut zn_a);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let d_bos: Vec<f64> = bos_a.iter().zip(&bos).map(|(a, b)| a - b).collect();
    let d_zn: Vec<f64> = zn_a.iter().zip(&zn).map(|(a, b)| a - b).collect();
    let step = act.len().div_ceil(MAX_POINTS).max(1);
    let result = PathAblation {
        neuron,
        head,
        positions: (lo, seq),
        n_tokens: act.len() as u64,
        mean_activation: mean(&act),
        mean_bos_attention: mean(&bos),
        mean_bos_attention_ablated: mean(&bos_a),
        mean_z_norm: mean(&zn),
        mean_z_norm_ablated: mean(&zn_a),
        corr_activation_bos_change: crate::stats::pearson(&act, &d_bos),
        corr_activation_norm_change: crate::stats::pearson(&act, &d_zn),
        points: (0..act.len())
            .step_by(step)
            .map(|i| (act[i] as f32, d_bos[i] as f32, d_zn[i] as f32))
            .collect(),
    };
    let mut all = read(bundle_dir)?;
    all.retain(|a| (a.neuron, a.head) != (neuron, head));
    all.push(result.clone());
    let json =
        serde_json::to_vec_pretty(&all).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    seedscope_model::write_file_atomic(&bundle_dir.join(FILE), &json)?;
    Ok(result)
}

/// A bundle's path ablations (none yet: empty).
pub fn read(bundle_dir: &Path) -> Result<Vec<PathAblation>, AnalysisError> {
    Ok(crate::bundle::read_json(&bundle_dir.join(FILE))?.unwrap_or_default())
}
