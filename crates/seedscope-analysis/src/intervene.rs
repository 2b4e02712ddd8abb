//! The paper's entropy-neuron experiment (§5.2): fix one neuron's post-activation to each of a
//! list of values at every position and measure, over the bundle's data, the final LayerNorm
//! scale, the next-token entropy, the loss and the true token's reciprocal rank; the same for
//! baseline neurons sampled as the paper does (last two layers, `l2_penalty` at most its 90th
//! percentile, `vocab_var` at least its 10th). Results go to `interventions.json` in the bundle,
//! rewritten atomically after each neuron, so an interrupted run resumes with the neurons it
//! has not done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use seedscope_model::{
    BackendKind, ComputeDevice, ForwardOptions, LoadedModel, NeuronPatch, TokenBatch,
};
use serde::{Deserialize, Serialize};

use crate::AnalysisError;
use crate::bundle::{Bundle, NeuronRow};
use crate::engine::TokenSet;
use crate::job::{AnalysisRequest, DataSource, load_tokens};

/// File in the bundle.
pub const FILE: &str = "interventions.json";

/// The paper's fixed values (−0.17 is about GELU's minimum).
pub const DEFAULT_VALUES: [f32; 8] = [-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterventionRequest {
    /// Neurons `(layer, neuron)` of the anchor; empty: the entropy-neuron candidate (largest
    /// `‖w_out‖ · null_frac` in the last two layers) and its most antipodal neuron there.
    pub neurons: Vec<(usize, usize)>,
    /// Values written into `hook_post`.
    pub values: Vec<f32>,
    /// Baseline neurons to sample.
    pub baseline: usize,
    /// Seed of the baseline sample.
    pub seed: u64,
    /// Use at most this many rows' worth of tokens.
    pub max_tokens: u64,
}

impl Default for InterventionRequest {
    fn default() -> Self {
        Self {
            neurons: Vec::new(),
            values: DEFAULT_VALUES.to_vec(),
            baseline: 20,
            seed: 0,
            max_tokens: 8192,
        }
    }
}

/// Means over the valid tokens (positions with a next token whose token is not BOS).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// `ln_final.hook_scale`.
    pub scale: f64,
    /// Next-token entropy, nats.
    pub entropy: f64,
    /// Cross-entropy of the true next token.
    pub loss: f64,
    /// `1 / (rank + 1)` of the true next token (rank 0 = top).
    pub reciprocal_rank: f64,
}

/// One neuron's curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Layer.
    pub layer: usize,
    /// Neuron.
    pub neuron: usize,
    /// A baseline neuron.
    pub baseline: bool,
    /// One per value.
    pub metrics: Vec<Metrics>,
}

/// `interventions.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interventions {
    /// The request with the neurons resolved.
    pub request: InterventionRequest,
    /// The anchor model.
    pub model: String,
    /// Valid tokens averaged over.
    pub n_tokens: u64,
    /// Without intervention.
    pub nominal: Metrics,
    /// Done so far (targets first, then the baseline).
    pub curves: Vec<Curve>,
    /// The baseline neurons, in order.
    pub baseline_neurons: Vec<(usize, usize)>,
}

impl Interventions {
    /// Read a bundle's interventions, if it has any.
    pub fn read(bundle: &Path) -> Result<Option<Self>, AnalysisError> {
        crate::bundle::read_json(&bundle.join(FILE))
    }
}

/// Progress: curves done of all.
#[derive(Debug, Clone, Copy)]
pub struct InterventionProgress {
    /// Forward passes done.
    pub done: usize,
    /// Forward passes in all.
    pub total: usize,
}

/// The bundle's token rows again, from its manifest's data source (checked against its hash).
pub fn bundle_tokens(bundle: &Bundle, anchor: &LoadedModel) -> Result<TokenSet, AnalysisError> {
    let m = &bundle.manifest;
    let src = PathBuf::from(&m.data_source);
    let name = src.to_string_lossy();
    let data = if name.ends_with(".npy") {
        DataSource::Tokens(src.clone())
    } else if [".jsonl", ".json", ".jsonl.zst", ".json.zst", ".zst"]
        .iter()
        .any(|s| name.ends_with(s))
    {
        DataSource::Dataset(src.clone())
    } else {
        DataSource::Text(src.clone())
    };
    let req = AnalysisRequest {
        data,
        seq_len: Some(m.data_shape[1]),
        keep_all_tokens: m.options.keep_all_tokens,
        max_tokens: m.options.max_tokens,
        data_seed: m.data_seed,
        ..AnalysisRequest::default()
    };
    let (tokens, _) = load_tokens(&req, anchor)?;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for id in &tokens.ids {
        h.update(id.to_le_bytes());
    }
    if format!("{:x}", h.finalize()) != m.data_sha256 {
        return Err(AnalysisError::Invalid(format!(
            "{}: the data changed since the bundle was made (its token hash differs)",
            src.display()
        )));
    }
    Ok(tokens)
}

/// Per-token sums of the four metrics over one batch's valid positions.
fn batch_sums(
    model: &LoadedModel,
    ids: &[u32],
    rows: usize,
    seq: usize,
    bos: Option<u32>,
    patches: Vec<NeuronPatch>,
) -> Result<(Metrics, u64), AnalysisError> {
    let batch = TokenBatch::new(ids.to_vec(), rows, seq)?;
    let out = model.forward(
        &batch,
        &ForwardOptions {
            logits: true,
            ln_final_scale: true,
            patches,
            ..ForwardOptions::default()
        },
    )?;
    let logits = out
        .logits
        .ok_or_else(|| AnalysisError::Invalid("the model returned no logits".into()))?;
    let scale = out
        .ln_final_scale
        .ok_or_else(|| AnalysisError::Invalid("the model returned no LayerNorm scale".into()))?;
    let [b, s, v] = logits.dims();
    let logits = logits.slice([0..b, 0..s - 1, 0..v]);
    let device = logits.device();
    let next: Vec<i64> = (0..b)
        .flat_map(|r| (1..s).map(move |p| ids[r * s + p] as i64))
        .collect();
    let next = Tensor::<3, Int>::from_data(TensorData::new(next, [b, s - 1, 1]), &device);
    let lsm = log_softmax(logits.clone(), 2);
    let entropy = -(lsm.clone().exp() * lsm.clone()).sum_dim(2);
    let loss = -lsm.gather(2, next.clone());
    let target = logits.clone().gather(2, next);
    let rank = logits
        .greater(target.expand([b, s - 1, v]))
        .float()
        .sum_dim(2);
    let host = |t: Tensor<3>| -> Result<Vec<f32>, AnalysisError> {
        t.try_into_data()
            .map_err(|e| AnalysisError::Invalid(format!("reading metrics: {e}")))?
            .try_into_vec::<f32>()
            .map_err(|e| AnalysisError::Invalid(format!("reading metrics: {e:?}")))
    };
    let (entropy, loss, rank) = (host(entropy)?, host(loss)?, host(rank)?);
    let scale = host(scale.slice([0..b, 0..s - 1]).reshape([b, s - 1, 1]))?;
    let mut sums = Metrics::default();
    let mut n = 0u64;
    for r in 0..b {
        for p in 0..s - 1 {
            if bos == Some(ids[r * s + p]) {
                continue;
            }
            let i = r * (s - 1) + p;
            sums.scale += scale[i] as f64;
            sums.entropy += entropy[i] as f64;
            sums.loss += loss[i] as f64;
            sums.reciprocal_rank += 1.0 / (rank[i] as f64 + 1.0);
            n += 1;
        }
    }
    Ok((sums, n))
}

/// The means of the metrics over `tokens` (its first rows up to `max_tokens`) with `patches`.
pub fn measure(
    model: &LoadedModel,
    tokens: &TokenSet,
    max_tokens: u64,
    bos: Option<u32>,
    patches: &[NeuronPatch],
) -> Result<(Metrics, u64), AnalysisError> {
    let seq = tokens.seq_len;
    let rows = ((max_tokens as usize).div_ceil(seq)).clamp(1, tokens.n_rows);
    // Rows per forward: logits of at most ~256 MB.
    let per = ((256usize << 20) / (seq * model.config.vocab_size() * 4).max(1)).clamp(1, 64);
    let mut total = Metrics::default();
    let mut n = 0;
    for r0 in (0..rows).step_by(per) {
        let r1 = (r0 + per).min(rows);
        let (s, k) = batch_sums(
            model,
            &tokens.ids[r0 * seq..r1 * seq],
            r1 - r0,
            seq,
            bos,
            patches.to_vec(),
        )?;
        total.scale += s.scale;
        total.entropy += s.entropy;
        total.loss += s.loss;
        total.reciprocal_rank += s.reciprocal_rank;
        n += k;
    }
    let d = n.max(1) as f64;
    Ok((
        Metrics {
            scale: total.scale / d,
            entropy: total.entropy / d,
            loss: total.loss / d,
            reciprocal_rank: total.reciprocal_rank / d,
        },
        n,
    ))
}

/// The paper's baseline sample: neurons of the last two layers with `l2_penalty` at most its
/// 90th percentile and `vocab_var` at least its 10th (over those layers), minus `exclude`.
pub fn baseline_neurons(
    rows: &[&NeuronRow],
    n_layers: usize,
    count: usize,
    seed: u64,
    exclude: &[(usize, usize)],
) -> Vec<(usize, usize)> {
    let last: Vec<&&NeuronRow> = rows.iter().filter(|r| r.layer + 2 >= n_layers).collect();
    let pct = |f: fn(&NeuronRow) -> f64, q: f64| {
        let v: Vec<f64> = last.iter().map(|r| f(r)).collect();
        crate::stats::quantile(&v, q)
    };
    let (l2_max, var_min) = (pct(|r| r.l2_penalty, 0.9), pct(|r| r.vocab_var, 0.1));
    let mut pool: Vec<(usize, usize)> = last
        .iter()
        .filter(|r| {
            // Comparisons with NaN are false: without weight statistics every neuron qualifies.
            let outside = r.l2_penalty > l2_max || r.vocab_var < var_min;
            !(outside || exclude.contains(&(r.layer, r.neuron)))
        })
        .map(|r| (r.layer, r.neuron))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    pool.truncate(count);
    pool
}

/// The default targets: the entropy-neuron candidate of the last two layers (largest
/// `‖w_out‖ · null_frac`) and the neuron there whose `w_out` points most against it.
fn default_targets(
    model: &LoadedModel,
    n_layers: usize,
    device: &ComputeDevice,
) -> Result<Vec<(usize, usize)>, AnalysisError> {
    let p = model.processed_weights()?;
    let w = crate::weights::weight_stats(&p, &crate::weights::Projection::for_run(device))?;
    let (d, dm) = (p.d_model, p.d_mlp);
    let first = n_layers.saturating_sub(2) * dm;
    let best = (first..w.len())
        .max_by(|&a, &b| {
            (w[a].w_out_norm * w[a].null_frac).total_cmp(&(w[b].w_out_norm * w[b].null_frac))
        })
        .ok_or_else(|| AnalysisError::Invalid("the model has no neurons".into()))?;
    let out = |n: usize| &p.layers[n / dm].w_out[(n % dm) * d..(n % dm + 1) * d];
    let cos = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (n(a) * n(b)).max(f64::MIN_POSITIVE)
    };
    let anti = (first..w.len())
        .filter(|&n| n != best)
        .min_by(|&a, &b| cos(out(a), out(best)).total_cmp(&cos(out(b), out(best))));
    Ok(std::iter::once(best)
        .chain(anti)
        .map(|n| (n / dm, n % dm))
        .collect())
}

/// A bundle with its anchor model loaded on `backend`, its token rows rebuilt, and the device.
pub(crate) fn open_anchor(
    bundle_dir: &Path,
    backend: BackendKind,
) -> Result<(Bundle, LoadedModel, TokenSet, ComputeDevice), AnalysisError> {
    let bundle = Bundle::read(bundle_dir)?;
    let entry = bundle
        .manifest
        .models
        .first()
        .ok_or_else(|| AnalysisError::Invalid("the bundle names no models".into()))?;
    let device = ComputeDevice::open(backend).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    let model = LoadedModel::load_on(
        Path::new(&entry.path),
        &device,
        burn::tensor::FloatDType::F32,
    )?;
    let tokens = bundle_tokens(&bundle, &model)?;
    Ok((bundle, model, tokens, device))
}

/// Run the interventions on `bundle`'s anchor over its data (resuming a matching
/// `interventions.json`), writing the file after each neuron.
pub fn run_interventions(
    bundle_dir: &Path,
    request: &InterventionRequest,
    backend: BackendKind,
    cancel: Arc<AtomicBool>,
    mut progress: impl FnMut(InterventionProgress),
) -> Result<Interventions, AnalysisError> {
    let (bundle, model, tokens, device) = open_anchor(bundle_dir, backend)?;
    let m = &bundle.manifest;
    let entry = &m.models[0];
    let bos = crate::job::tokenizer_bos(&model);
    let n_layers = m.n_layers;
    for &(l, n) in &request.neurons {
        if l >= n_layers || n >= m.d_mlp {
            return Err(AnalysisError::Invalid(format!(
                "neuron L{l}.{n} is outside the model ({n_layers} layers of {} neurons)",
                m.d_mlp
            )));
        }
    }
    let mut req = request.clone();
    if req.neurons.is_empty() {
        req.neurons = default_targets(&model, n_layers, &device)?;
    }
    let rows: Vec<&NeuronRow> = bundle
        .neurons
        .iter()
        .filter(|r| r.model == entry.name)
        .collect();
    let baseline = baseline_neurons(&rows, n_layers, req.baseline, req.seed, &req.neurons);
    let all: Vec<((usize, usize), bool)> = req
        .neurons
        .iter()
        .map(|&t| (t, false))
        .chain(baseline.iter().map(|&b| (b, true)))
        .collect();
    let mut result = match Interventions::read(bundle_dir)? {
        Some(prev) if prev.request == req && prev.baseline_neurons == baseline => prev,
        _ => {
            let (nominal, n_tokens) = measure(&model, &tokens, req.max_tokens, bos, &[])?;
            Interventions {
                request: req.clone(),
                model: entry.name.clone(),
                n_tokens,
                nominal,
                curves: Vec::new(),
                baseline_neurons: baseline.clone(),
            }
        }
    };
    let total = all.len() * req.values.len();
    for (i, &((layer, neuron), is_base)) in all.iter().enumerate().skip(result.curves.len()) {
        let mut metrics = Vec::new();
        for (k, &value) in req.values.iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                return Ok(result);
            }
            let patch = NeuronPatch {
                layer,
                neuron,
                value,
            };
            metrics.push(measure(&model, &tokens, req.max_tokens, bos, &[patch])?.0);
            progress(InterventionProgress {
                done: i * req.values.len() + k + 1,
                total,
            });
        }
        result.curves.push(Curve {
            layer,
            neuron,
            baseline: is_base,
            metrics,
        });
        let json = serde_json::to_vec_pretty(&result)
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        seedscope_model::write_file_atomic(&bundle_dir.join(FILE), &json)?;
    }
    Ok(result)
}
