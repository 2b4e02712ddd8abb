//! Result bundles: a directory with `manifest.json`, `neurons.csv`, `correlation.safetensors`
//! and (when asked) `tiles.safetensors`. A bundle is assembled in `<OUT>.partial/` (which also
//! holds the run's checkpoint) and renamed into place only when complete, so a crash never
//! leaves a half bundle that looks whole.
//!
//! `neurons.csv` has one row per anchor neuron with the paper's dataframe columns: `model`,
//! `layer`, `neuron`, `max_corr`, `mean_corr`, `min_corr` (max/mean/min over the other models
//! of the neuron's best correlation), `max_baseline`, `mean_baseline`, `min_baseline` (the same
//! for the rotated baseline), `excess_corr` (= mean_corr − mean_baseline), `is_universal`
//! (excess_corr > threshold), then `act_mean`, `act_var` (post-activation over the kept
//! tokens), the weight statistics of [`crate::weights`] (`w_in_norm`, `input_bias`, `w_out_norm`,
//! `in_out_sim`, `l2_penalty`, `vocab_mean`, `vocab_var`, `vocab_skew`, `vocab_kurt`), the
//! within-layer percentiles `{stat}_pct` of [`PCT_COLUMNS`], and for the k-th other model of the row's anchor (manifest order, the anchor skipped)
//! `corr_k` and `match_k` (its best match, `layer.neuron`).
//!
//! `correlation.safetensors` (anchor = model 0): `max_corr`, `max_corr_layer`,
//! `max_corr_neuron`, `min_corr` (the most negative correlation), `baseline_max_corr`, each
//! `[n_other, n_layers, d_mlp]`; `excess_corr` and `is_universal` `[n_layers, d_mlp]`;
//! `layer_match_fraction` `[n_layers, n_layers]` (row: anchor layer, column: layer of the best
//! match, averaged over the other models; the paper's Fig. 2c) and
//! `layer_match_fraction_per_model` `[n_other, n_layers, n_layers]`; `vocab_top` and
//! `vocab_bottom` `[n_layers, d_mlp, 10]` (i32 token ids at both ends of each neuron's
//! vocabulary projection cos(W_U, w_out)). With `--all-anchors` the
//! same tensors for anchor `m` are prefixed `anchor{m}/`.
//!
//! `histograms.safetensors`: per anchor model (tensor named after it) u32 counts
//! `[n_layers, d_mlp, 257]` of pre-activations on the edges `linspace(-10, 15, 256)` (metadata
//! `edges`); `neurons.csv`'s `mean`, `var`, `skew`, `kurt`, `sparsity` come from them.
//!
//! `tiles.safetensors`: f16 correlations `[d_mlp, d_mlp]` named `{anchor}/{other}/L{a}-L{b}`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use safetensors::tensor::Dtype;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};

use crate::AnalysisError;
use crate::engine::{AnchorResult, Results, TokenSet};
use crate::features::FeatureSet;
use crate::weights::{NeuronWeights, VOCAB_ENDS};

/// Files of a bundle.
pub const MANIFEST: &str = "manifest.json";
/// One row per anchor neuron.
pub const NEURONS: &str = "neurons.csv";
/// Per-neuron correlation tensors.
pub const CORRELATION: &str = "correlation.safetensors";
/// Saved correlation tiles.
pub const TILES: &str = "tiles.safetensors";
/// Pre-activation histograms per anchor.
pub const HISTOGRAMS: &str = "histograms.safetensors";
/// Examples, best features, top tokens and position information per anchor neuron.
pub const ANATOMY: &str = "anatomy.safetensors";
/// Histograms of the attention (de)activation scores per anchor.
pub const ATTENTION: &str = "attention.safetensors";
/// A copy of the anchor's tokenizer, so token strings show where the models are not (the
/// browser, another machine).
pub const TOKENIZER: &str = "tokenizer.json";

/// Where a bundle's files are read from: its directory, or files held in memory (in the
/// browser: fetched from a URL, picked or dropped, or made by an analysis run there).
#[derive(Debug, Clone)]
pub enum BundleSource {
    /// A bundle directory.
    Dir(PathBuf),
    /// Files by name; `label` names the bundle in messages (a URL, a folder's name).
    Memory {
        /// The bundle's name.
        label: String,
        /// Its files.
        files: std::sync::Arc<BundleFiles>,
    },
}

impl BundleSource {
    /// File `name` as messages name it.
    pub fn path(&self, name: &str) -> PathBuf {
        match self {
            Self::Dir(dir) => dir.join(name),
            Self::Memory { label, .. } => PathBuf::from(format!("{label}/{name}")),
        }
    }

    /// The bundle as messages name it: the directory, or the label.
    pub fn display(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Memory { label, .. } => label.clone(),
        }
    }

    /// File `name`'s bytes; `None` when the bundle has no such file.
    pub fn read(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>, AnalysisError> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(Cow::Owned(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(AnalysisError::Io { path, source }),
                }
            }
            Self::Memory { files, .. } => Ok(files.get(name).map(|b| Cow::Borrowed(b.as_slice()))),
        }
    }

    /// File `name`'s bytes, or an error naming it when it is missing.
    pub fn require(&self, name: &str) -> Result<Cow<'_, [u8]>, AnalysisError> {
        self.read(name)?.ok_or_else(|| AnalysisError::Io {
            path: self.path(name),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file in the bundle"),
        })
    }

    /// File `name`'s length in bytes; `None` when the bundle has no such file.
    pub fn len(&self, name: &str) -> Result<Option<u64>, AnalysisError> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::metadata(&path) {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(AnalysisError::Io { path, source }),
                }
            }
            Self::Memory { files, .. } => Ok(files.get(name).map(|b| b.len() as u64)),
        }
    }

    /// `len` bytes of file `name` from byte `start` (from a directory only those are read).
    pub fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Vec<u8>, AnalysisError> {
        let path = self.path(name);
        let short = |message: String| AnalysisError::Corrupt {
            path: path.clone(),
            message,
        };
        match self {
            Self::Dir(_) => {
                use std::io::{Read, Seek, SeekFrom};
                let io = |source| AnalysisError::Io {
                    path: path.clone(),
                    source,
                };
                let mut f = std::fs::File::open(&path).map_err(io)?;
                f.seek(SeekFrom::Start(start)).map_err(io)?;
                let mut out = vec![0u8; len];
                f.read_exact(&mut out)
                    .map_err(|e| short(format!("bytes {start}..+{len}: {e}")))?;
                Ok(out)
            }
            Self::Memory { .. } => {
                let bytes = self.require(name)?;
                usize::try_from(start)
                    .ok()
                    .and_then(|s| bytes.get(s..s.checked_add(len)?))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        short(format!(
                            "bytes {start}..+{len} past its end ({})",
                            bytes.len()
                        ))
                    })
            }
        }
    }
}

/// The working directory of a bundle being made: `<out>.partial`.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// One row of `neurons.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronRow {
    /// Anchor model name.
    pub model: String,
    /// Layer.
    pub layer: usize,
    /// Neuron within the layer.
    pub neuron: usize,
    /// Max over other models of the best correlation.
    pub max_corr: f64,
    /// Mean over other models of the best correlation.
    pub mean_corr: f64,
    /// Min over other models of the best correlation.
    pub min_corr: f64,
    /// Max over other models of the best baseline correlation.
    pub max_baseline: f64,
    /// Mean over other models of the best baseline correlation.
    pub mean_baseline: f64,
    /// Min over other models of the best baseline correlation.
    pub min_baseline: f64,
    /// `mean_corr - mean_baseline`.
    pub excess_corr: f64,
    /// `excess_corr > threshold`.
    pub is_universal: bool,
    /// Mean post-activation over the kept tokens.
    pub act_mean: f64,
    /// Its variance.
    pub act_var: f64,
    /// Mean pre-activation, from the histogram ([`crate::hist::stats`]); NaN when absent.
    #[serde(default = "nan")]
    pub mean: f64,
    /// Pre-activation variance, from the histogram.
    #[serde(default = "nan")]
    pub var: f64,
    /// Pre-activation skew, from the histogram.
    #[serde(default = "nan")]
    pub skew: f64,
    /// Pre-activation kurtosis (non-excess), from the histogram.
    #[serde(default = "nan")]
    pub kurt: f64,
    /// Activation frequency: the share of pre-activations from the first non-negative edge's
    /// bin on (the paper's "sparsity").
    #[serde(default = "nan")]
    pub sparsity: f64,
    /// ‖w_in‖₂ on TransformerLens-processed weights ([`crate::weights`]); NaN when absent.
    #[serde(default = "nan")]
    pub w_in_norm: f64,
    /// The LayerNorm-folded input bias.
    #[serde(default = "nan")]
    pub input_bias: f64,
    /// ‖w_out‖₂.
    #[serde(default = "nan")]
    pub w_out_norm: f64,
    /// cos(w_in, w_out).
    #[serde(default = "nan")]
    pub in_out_sim: f64,
    /// ‖w_in‖² + ‖w_out‖².
    #[serde(default = "nan")]
    pub l2_penalty: f64,
    /// Mean over the vocabulary of cos(W_U[:, v], w_out).
    #[serde(default = "nan")]
    pub vocab_mean: f64,
    /// Its variance.
    #[serde(default = "nan")]
    pub vocab_var: f64,
    /// Its skew.
    #[serde(default = "nan")]
    pub vocab_skew: f64,
    /// Its kurtosis (non-excess).
    #[serde(default = "nan")]
    pub vocab_kurt: f64,
    /// Share of ‖w_out‖ in W_U's near-null space ([`crate::weights::null_dims`]).
    #[serde(default = "nan")]
    pub null_frac: f64,
    /// The token feature that explains most of the activation's variance
    /// ([`crate::anatomy`]; `prev:` for the previous token); empty when not computed.
    #[serde(default)]
    pub best_feature: String,
    /// Its variance explained (the paper's eq. 4).
    #[serde(default = "nan")]
    pub best_vr: f64,
    /// Mutual information of `activation > 0` with position, nats.
    #[serde(default = "nan")]
    pub pos_mi: f64,
    /// The family: unigram, alphabet, previous-token, syntax, semantic, position or
    /// unexplained ([`crate::anatomy::family`]); empty when not computed.
    #[serde(default)]
    pub family: String,
    /// The largest attention score over later heads ([`crate::attention`]): how strongly the
    /// neuron turns a head off by raising its attention to BOS. NaN in the last layer.
    #[serde(default = "nan")]
    pub attn_deact: f64,
    /// That head, `L{layer}H{head}`.
    #[serde(default)]
    pub attn_deact_head: String,
    /// The smallest score (an activation when negative).
    #[serde(default = "nan")]
    pub attn_act: f64,
    /// That head.
    #[serde(default)]
    pub attn_act_head: String,
}

fn nan() -> f64 {
    f64::NAN
}

impl NeuronRow {
    /// The column names of [`NeuronRow::fields`], in `neurons.csv` order.
    pub fn columns() -> Vec<&'static str> {
        [
            "model",
            "layer",
            "neuron",
            "max_corr",
            "mean_corr",
            "min_corr",
            "max_baseline",
            "mean_baseline",
            "min_baseline",
            "excess_corr",
            "is_universal",
            "act_mean",
            "act_var",
        ]
        .into_iter()
        .chain(HIST_COLUMNS)
        .chain(WEIGHT_COLUMNS)
        .chain(ANATOMY_COLUMNS)
        .collect()
    }

    /// The row's values as `neurons.csv` writes them (correlations with 6 decimals, other
    /// statistics with 7 significant digits).
    pub fn fields(&self) -> Vec<String> {
        let mut rec = vec![
            self.model.clone(),
            self.layer.to_string(),
            self.neuron.to_string(),
        ];
        for v in [
            self.max_corr,
            self.mean_corr,
            self.min_corr,
            self.max_baseline,
            self.mean_baseline,
            self.min_baseline,
            self.excess_corr,
        ] {
            rec.push(format!("{v:.6}"));
        }
        rec.push(self.is_universal.to_string());
        for v in [
            self.act_mean,
            self.act_var,
            self.mean,
            self.var,
            self.skew,
            self.kurt,
            self.sparsity,
            self.w_in_norm,
            self.input_bias,
            self.w_out_norm,
            self.in_out_sim,
            self.l2_penalty,
            self.vocab_mean,
            self.vocab_var,
            self.vocab_skew,
            self.vocab_kurt,
            self.null_frac,
        ] {
            rec.push(format!("{v:.6e}"));
        }
        rec.push(self.best_feature.clone());
        rec.push(format!("{:.6}", self.best_vr));
        rec.push(format!("{:.6}", self.pos_mi));
        rec.push(self.family.clone());
        rec.push(format!("{:.6}", self.attn_deact));
        rec.push(self.attn_deact_head.clone());
        rec.push(format!("{:.6}", self.attn_act));
        rec.push(self.attn_act_head.clone());
        rec
    }
}

/// The activation-statistic columns of `neurons.csv`, in order (from the histograms).
pub const HIST_COLUMNS: [&str; 5] = ["mean", "var", "skew", "kurt", "sparsity"];

/// The weight-statistic columns of `neurons.csv`, in order.
pub const WEIGHT_COLUMNS: [&str; 10] = [
    "w_in_norm",
    "input_bias",
    "w_out_norm",
    "in_out_sim",
    "l2_penalty",
    "vocab_mean",
    "vocab_var",
    "vocab_skew",
    "vocab_kurt",
    "null_frac",
];

/// The anatomy columns of `neurons.csv`, in order ([`crate::anatomy`]).
pub const ANATOMY_COLUMNS: [&str; 8] = [
    "best_feature",
    "best_vr",
    "pos_mi",
    "family",
    "attn_deact",
    "attn_deact_head",
    "attn_act",
    "attn_act_head",
];

/// What an anchor's rows draw from besides the streaming pass, each when computed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowExtras<'a> {
    /// The anchor's weight statistics (`layer * d_mlp + neuron` order).
    pub weights: Option<&'a [NeuronWeights]>,
    /// The run's token features, which name the anatomy's best features.
    pub features: Option<&'a FeatureSet>,
    /// The anchor's attention (de)activation scores.
    pub attention: Option<&'a crate::attention::AttentionScores>,
}

/// Per-neuron aggregates of one anchor's results.
pub fn neuron_rows(
    r: &AnchorResult,
    names: &[String],
    d_mlp: usize,
    threshold: f64,
    extras: &RowExtras<'_>,
) -> Vec<(NeuronRow, Vec<(f32, u32)>)> {
    let (weights, features) = (extras.weights, extras.features);
    let width = r.real.first().map_or(0, |m| m.max.len());
    let n_other = r.others.len().max(1) as f64;
    (0..width)
        .map(|i| {
            let corr: Vec<f64> = r.real.iter().map(|m| m.max[i] as f64).collect();
            let base: Vec<f64> = r.baseline.iter().map(|m| m.max[i] as f64).collect();
            let stats = |v: &[f64]| {
                (
                    v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    v.iter().sum::<f64>() / n_other,
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                )
            };
            let (max_corr, mean_corr, min_corr) = stats(&corr);
            let (max_baseline, mean_baseline, min_baseline) = stats(&base);
            let excess = mean_corr - mean_baseline;
            let w = weights.and_then(|w| w.get(i));
            let bins = seedscope_gpu::HIST_BINS;
            let h = r
                .pre_hist
                .get(i * bins..(i + 1) * bins)
                .map(crate::hist::stats);
            let hv = |f: fn(&crate::hist::HistStats) -> f64| h.as_ref().map_or(f64::NAN, f);
            let wv = |f: fn(&NeuronWeights) -> f64| w.map_or(f64::NAN, f);
            // (score, head) of the strongest deactivation (max) or activation (min).
            let att = |max: bool| -> (f64, String) {
                match extras.attention {
                    Some(a) => {
                        let (v, h) = if max {
                            (a.max[i], a.max_head[i])
                        } else {
                            (a.min[i], a.min_head[i])
                        };
                        if h == u32::MAX {
                            return (f64::NAN, String::new());
                        }
                        let h = h as usize;
                        (v as f64, format!("L{}H{}", h / a.n_head, h % a.n_head))
                    }
                    None => (f64::NAN, String::new()),
                }
            };
            let (deact, deact_head) = att(true);
            let (act, act_head) = att(false);
            let nb = crate::anatomy::BEST_FEATURES;
            let best = r.anatomy.as_ref().and_then(|a| {
                let f = *a.best_feature.get(i * nb)?;
                Some((f, a.best_vr[i * nb]))
            });
            let pos_mi = r.anatomy.as_ref().and_then(|a| a.pos_mi.get(i).copied());
            let (best_feature, family) = match (features, r.anatomy.as_ref()) {
                (Some(fs), Some(_)) => (
                    best.and_then(|(f, _)| fs.features.get(f as usize))
                        .map_or(String::new(), |f| f.name.clone()),
                    crate::anatomy::family(fs, best, pos_mi.unwrap_or(0.0)).to_string(),
                ),
                _ => (String::new(), String::new()),
            };
            (
                NeuronRow {
                    model: names[r.anchor].clone(),
                    layer: i / d_mlp,
                    neuron: i % d_mlp,
                    max_corr,
                    mean_corr,
                    min_corr,
                    max_baseline,
                    mean_baseline,
                    min_baseline,
                    excess_corr: excess,
                    // NaN counts as not universal, as in the paper.
                    is_universal: excess > threshold,
                    act_mean: r.mean.get(i).copied().unwrap_or(f64::NAN),
                    act_var: r.var.get(i).copied().unwrap_or(f64::NAN),
                    mean: hv(|h| h.mean),
                    var: hv(|h| h.var),
                    skew: hv(|h| h.skew),
                    kurt: hv(|h| h.kurt),
                    sparsity: hv(|h| h.sparsity),
                    w_in_norm: wv(|w| w.w_in_norm),
                    input_bias: wv(|w| w.input_bias),
                    w_out_norm: wv(|w| w.w_out_norm),
                    in_out_sim: wv(|w| w.in_out_sim),
                    l2_penalty: wv(|w| w.l2_penalty),
                    vocab_mean: wv(|w| w.vocab_mean),
                    vocab_var: wv(|w| w.vocab_var),
                    vocab_skew: wv(|w| w.vocab_skew),
                    vocab_kurt: wv(|w| w.vocab_kurt),
                    null_frac: wv(|w| w.null_frac),
                    best_feature,
                    best_vr: best.map_or(f64::NAN, |b| b.1 as f64),
                    pos_mi: pos_mi.map_or(f64::NAN, f64::from),
                    family,
                    attn_deact: deact,
                    attn_deact_head: deact_head,
                    attn_act: act,
                    attn_act_head: act_head,
                },
                r.real.iter().map(|m| (m.max[i], m.argmax[i])).collect(),
            )
        })
        .collect()
}

/// The fraction of universal neurons overall and per layer, from `(layer, is_universal)` pairs.
pub fn universal_fractions(
    neurons: impl IntoIterator<Item = (usize, bool)>,
    n_layers: usize,
) -> (f64, Vec<f64>) {
    let mut counts = vec![(0usize, 0usize); n_layers];
    for (layer, universal) in neurons {
        if let Some(c) = counts.get_mut(layer) {
            c.0 += usize::from(universal);
            c.1 += 1;
        }
    }
    let (u, t) = counts.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    (
        u as f64 / t.max(1) as f64,
        counts
            .iter()
            .map(|(u, t)| *u as f64 / (*t).max(1) as f64)
            .collect(),
    )
}

/// A per-neuron statistic of a row.
pub type Column = fn(&NeuronRow) -> f64;

/// The statistics whose within-layer percentiles `neurons.csv` carries (`{name}_pct`), as the
/// paper compares universal and other neurons (§4.2, Fig. 3).
pub const PCT_COLUMNS: [(&str, Column); 8] = [
    ("sparsity", |r| r.sparsity),
    ("mean", |r| r.mean),
    ("skew", |r| r.skew),
    ("kurt", |r| r.kurt),
    ("input_bias", |r| r.input_bias),
    ("in_out_sim", |r| r.in_out_sim),
    ("l2_penalty", |r| r.l2_penalty),
    ("vocab_kurt", |r| r.vocab_kurt),
];

/// `q`-quantile (0..=1) of the finite `v` by linear interpolation (numpy's default); NaN if
/// there are none.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    if i + 1 < s.len() {
        s[i] + (s[i + 1] - s[i]) * f
    } else {
        s[i]
    }
}

/// Pearson correlation of paired values (NaN with fewer than two, or no spread).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Read JSON result `path` of a bundle; `None` when it does not exist yet.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, AnalysisError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AnalysisError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AnalysisError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The percentile (0-100) of `value` among `values` as `scipy.stats.percentileofscore(kind=
/// 'rank')`: with `left` values below and `right` at most `value`, `(left + right + [right >
/// left]) · 50 / n`. NaNs are left out (and a NaN value gives NaN).
pub fn percentile_of_score(values: &[f64], value: f64) -> f64 {
    if value.is_nan() {
        return f64::NAN;
    }
    let (mut left, mut right, mut n) = (0usize, 0usize, 0usize);
    for &v in values.iter().filter(|v| !v.is_nan()) {
        n += 1;
        left += usize::from(v < value);
        right += usize::from(v <= value);
    }
    (left + right + usize::from(right > left)) as f64 * 50.0 / n.max(1) as f64
}

/// Per row, the [`PCT_COLUMNS`] percentiles within its layer (sorted once per layer and column).
pub fn layer_percentiles(rows: &[&NeuronRow]) -> Vec<Vec<f64>> {
    let mut out = vec![vec![f64::NAN; PCT_COLUMNS.len()]; rows.len()];
    let n_layers = rows.iter().map(|r| r.layer + 1).max().unwrap_or(0);
    for l in 0..n_layers {
        let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].layer == l).collect();
        for (c, (_, f)) in PCT_COLUMNS.iter().enumerate() {
            let mut sorted: Vec<f64> = idx
                .iter()
                .map(|&i| f(rows[i]))
                .filter(|v| !v.is_nan())
                .collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len().max(1) as f64;
            for &i in &idx {
                let v = f(rows[i]);
                if v.is_nan() {
                    continue;
                }
                let left = sorted.partition_point(|&x| x < v);
                let right = sorted.partition_point(|&x| x <= v);
                out[i][c] = (left + right + usize::from(right > left)) as f64 * 50.0 / n;
            }
        }
    }
    out
}

/// Fig. 3 in numbers: for each of [`PCT_COLUMNS`], the median within-layer percentile
/// (`pcts`, as [`layer_percentiles`] gives them for `rows`) over the rows whose excess
/// correlation is above `threshold`; `None` where no such row has the statistic. Also the
/// number of those rows.
pub fn universal_medians(
    rows: &[&NeuronRow],
    pcts: &[Vec<f64>],
    threshold: f64,
) -> (Vec<(&'static str, Option<f64>)>, usize) {
    let universal: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].excess_corr > threshold)
        .collect();
    let medians = PCT_COLUMNS
        .iter()
        .enumerate()
        .map(|(c, (name, _))| {
            let mut v: Vec<f64> = universal
                .iter()
                .filter_map(|&i| pcts.get(i).and_then(|p| p.get(c)).copied())
                .filter(|p| !p.is_nan())
                .collect();
            v.sort_by(f64::total_cmp);
            let median = match v.len() {
                0 => None,
                n if n % 2 == 1 => Some(v[n / 2]),
                n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            };
            (*name, median)
        })
        .collect();
    (medians, universal.len())
}

/// `[n_layers, n_layers]` fractions of each anchor layer's neurons whose best match in `other`
/// lies in each layer.
fn layer_match(argmax: &[u32], n_layers: usize, d: usize) -> Vec<f32> {
    let mut f = vec![0.0f32; n_layers * n_layers];
    for (i, &j) in argmax.iter().enumerate() {
        let (la, lb) = (i / d, j as usize / d);
        if lb < n_layers {
            f[la * n_layers + lb] += 1.0 / d as f32;
        }
    }
    f
}

/// What a manifest records about a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    /// Short name (directory name).
    pub name: String,
    /// The directory.
    pub path: String,
    /// Every file with its sha256.
    pub files: Vec<(String, String)>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Seedscope's version.
    pub seedscope_version: String,
    /// The command line that made it.
    pub command: Vec<String>,
    /// The models; the first is the anchor.
    pub models: Vec<ModelEntry>,
    /// Where the tokens came from.
    pub data_source: String,
    /// sha256 of the token ids (u32 little-endian, row-major).
    pub data_sha256: String,
    /// Token rows and their length.
    pub data_shape: [usize; 2],
    /// Ids whose positions were dropped.
    pub dropped_ids: Vec<u32>,
    /// Seed of the row sample of JSON Lines data.
    #[serde(default)]
    pub data_seed: u64,
    /// Kept tokens the correlations are over.
    pub n_tokens: u64,
    /// Layers and neurons per layer.
    pub n_layers: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// The options (threshold, rotation seed, budget, ...).
    pub options: crate::AnalysisOptions,
    /// The baseline.
    pub baseline: String,
    /// Where it ran.
    pub device: String,
    /// Passes over the data and the estimated peak accumulation memory.
    pub passes: usize,
    /// Bytes.
    pub peak_memory_bytes: u64,
    /// Wall-clock seconds of the run (this invocation).
    pub seconds: f64,
    /// Fraction of anchor neurons that are universal (anchor model 0).
    pub fraction_universal: f64,
    /// Per layer.
    pub fraction_universal_per_layer: Vec<f64>,
}

fn view<'a>(
    name: &str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &'a [u8],
) -> Result<(String, TensorView<'a>), AnalysisError> {
    TensorView::new(dtype, shape, bytes)
        .map(|v| (name.to_owned(), v))
        .map_err(|e| AnalysisError::Invalid(format!("bundle tensor {name}: {e}")))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), AnalysisError> {
    std::fs::write(path, bytes).map_err(|source| AnalysisError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The files of a bundle by name, in memory.
pub type BundleFiles = BTreeMap<String, Vec<u8>>;

/// Write bundle `files` into `out` atomically (assembled in [`partial_dir`], whose checkpoint
/// is removed, then renamed over any previous bundle).
pub fn write_bundle_files(out: &Path, files: &BundleFiles) -> Result<(), AnalysisError> {
    let dir = partial_dir(out);
    std::fs::create_dir_all(&dir).map_err(|source| AnalysisError::Io {
        path: dir.clone(),
        source,
    })?;
    // Optional files a previous attempt may have left in the partial directory.
    for name in [
        TILES,
        HISTOGRAMS,
        ANATOMY,
        ATTENTION,
        TOKENIZER,
        crate::checkpoint::FILE,
    ] {
        if !files.contains_key(name) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    for (name, bytes) in files {
        write(&dir.join(name), bytes)?;
    }
    swap_into_place(&dir, out)
}

/// The files of the bundle for `results`, in memory: what the browser keeps and what
/// [`write_bundle_files`] writes. `weights[a]`: the weight statistics of anchor `a` (same
/// order as `results.anchors`), when computed; `tokenizer`: the anchor's `tokenizer.json`.
pub fn bundle_files(
    results: &Results,
    names: &[String],
    manifest: &Manifest,
    weights: &[Option<Vec<NeuronWeights>>],
    attention: &[Option<crate::attention::AttentionScores>],
    data: Option<(&FeatureSet, &TokenSet)>,
    tokenizer: Option<&[u8]>,
) -> Result<BundleFiles, AnalysisError> {
    let mut files = BundleFiles::new();
    if let Some(t) = tokenizer {
        files.insert(TOKENIZER.into(), t.to_vec());
    }
    let (l, d) = (results.n_layers, results.d_mlp);
    let threshold = manifest.options.threshold;
    // neurons.csv
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| AnalysisError::Invalid(format!("writing neurons.csv: {e}"));
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (ai, r) in results.anchors.iter().enumerate() {
        let stats = weights.get(ai).and_then(|w| w.as_deref());
        let extras = RowExtras {
            weights: stats,
            features: data.map(|d| d.0),
            attention: attention.get(ai).and_then(Option::as_ref),
        };
        let rows = neuron_rows(r, names, d, threshold, &extras);
        if ai == 0 {
            let mut header: Vec<String> =
                NeuronRow::columns().iter().map(|s| s.to_string()).collect();
            header.extend(PCT_COLUMNS.iter().map(|(n, _)| format!("{n}_pct")));
            for k in 0..r.others.len() {
                header.push(format!("corr_{k}"));
                header.push(format!("match_{k}"));
            }
            w.write_record(&header).map_err(csv_err)?;
        }
        let pcts = layer_percentiles(&rows.iter().map(|(r, _)| r).collect::<Vec<_>>());
        for ((row, per), pct) in rows.iter().zip(&pcts) {
            let mut rec = row.fields();
            for p in pct {
                rec.push(format!("{p:.4}"));
            }
            for (c, j) in per {
                rec.push(format!("{c:.6}"));
                rec.push(format!("{}.{}", *j as usize / d, *j as usize % d));
            }
            w.write_record(&rec).map_err(csv_err)?;
        }
        let prefix = if ai == 0 {
            String::new()
        } else {
            format!("anchor{}/", r.anchor)
        };
        let n_o = r.others.len();
        let cat_f32 = |f: &dyn Fn(&crate::engine::Matches) -> Vec<f32>,
                       list: &[crate::engine::Matches]|
         -> Vec<u8> {
            list.iter()
                .flat_map(f)
                .flat_map(|x| x.to_le_bytes())
                .collect()
        };
        let shape = vec![n_o, l, d];
        tensors.push((
            format!("{prefix}max_corr"),
            Dtype::F32,
            shape.clone(),
            cat_f32(&|m| m.max.clone(), &r.real),
        ));
        tensors.push((
            format!("{prefix}min_corr"),
            Dtype::F32,
            shape.clone(),
            cat_f32(&|m| m.min.clone(), &r.real),
        ));
        tensors.push((
            format!("{prefix}baseline_max_corr"),
            Dtype::F32,
            shape.clone(),
            cat_f32(&|m| m.max.clone(), &r.baseline),
        ));
        let idx = |f: &dyn Fn(u32) -> u32| -> Vec<u8> {
            r.real
                .iter()
                .flat_map(|m| m.argmax.iter().map(|&j| f(j)))
                .flat_map(|x| (x as i32).to_le_bytes())
                .collect()
        };
        tensors.push((
            format!("{prefix}max_corr_layer"),
            Dtype::I32,
            shape.clone(),
            idx(&|j| j / d as u32),
        ));
        tensors.push((
            format!("{prefix}max_corr_neuron"),
            Dtype::I32,
            shape.clone(),
            idx(&|j| j % d as u32),
        ));
        tensors.push((
            format!("{prefix}excess_corr"),
            Dtype::F32,
            vec![l, d],
            rows.iter()
                .flat_map(|(row, _)| (row.excess_corr as f32).to_le_bytes())
                .collect(),
        ));
        tensors.push((
            format!("{prefix}is_universal"),
            Dtype::U8,
            vec![l, d],
            rows.iter()
                .map(|(row, _)| u8::from(row.is_universal))
                .collect(),
        ));
        let per_model: Vec<Vec<f32>> = r
            .real
            .iter()
            .map(|m| layer_match(&m.argmax, l, d))
            .collect();
        let mut mean = vec![0.0f32; l * l];
        for f in &per_model {
            for (m, v) in mean.iter_mut().zip(f) {
                *m += v / n_o as f32;
            }
        }
        tensors.push((
            format!("{prefix}layer_match_fraction"),
            Dtype::F32,
            vec![l, l],
            mean.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
        if let Some(stats) = stats {
            let ends = |f: fn(&NeuronWeights) -> &Vec<u32>| -> Vec<u8> {
                stats
                    .iter()
                    .flat_map(|n| {
                        (0..VOCAB_ENDS).map(move |k| f(n).get(k).map_or(-1, |&t| t as i32))
                    })
                    .flat_map(|t| t.to_le_bytes())
                    .collect()
            };
            tensors.push((
                format!("{prefix}vocab_top"),
                Dtype::I32,
                vec![l, d, VOCAB_ENDS],
                ends(|n| &n.vocab_top),
            ));
            tensors.push((
                format!("{prefix}vocab_bottom"),
                Dtype::I32,
                vec![l, d, VOCAB_ENDS],
                ends(|n| &n.vocab_bottom),
            ));
        }
        tensors.push((
            format!("{prefix}layer_match_fraction_per_model"),
            Dtype::F32,
            vec![n_o, l, l],
            per_model
                .iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ));
    }
    let csv_bytes = w
        .into_inner()
        .map_err(|e| AnalysisError::Invalid(format!("writing neurons.csv: {e}")))?;
    files.insert(NEURONS.into(), csv_bytes);
    let views = tensors
        .iter()
        .map(|(n, dt, s, b)| view(n, *dt, s.clone(), b))
        .collect::<Result<Vec<_>, _>>()?;
    let info = HashMap::from([("format".to_owned(), "seedscope-correlation-v1".to_owned())]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    files.insert(CORRELATION.into(), bytes);
    write_anatomy(&mut files, results, data, l, d)?;
    write_attention(&mut files, results, names, attention)?;
    // Tiles, f16.
    let mut tile_tensors = Vec::new();
    for r in &results.anchors {
        for t in &r.tiles {
            let bytes: Vec<u8> = t
                .corr
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            tile_tensors.push((
                format!(
                    "{}/{}/L{}-L{}",
                    names[r.anchor], names[t.other], t.layer_a, t.layer_b
                ),
                bytes,
            ));
        }
    }
    // Pre-activation histograms, u32 [n_layers, d_mlp, HIST_BINS] per anchor.
    let hist_tensors: Vec<(String, &[u32])> = results
        .anchors
        .iter()
        .filter(|r| !r.pre_hist.is_empty())
        .map(|r| (names[r.anchor].clone(), r.pre_hist.as_slice()))
        .collect();
    if !hist_tensors.is_empty() {
        let bytes: Vec<Vec<u8>> = hist_tensors
            .iter()
            .map(|(_, h)| h.iter().flat_map(|c| c.to_le_bytes()).collect())
            .collect();
        let views = hist_tensors
            .iter()
            .zip(&bytes)
            .map(|((n, _), b)| view(n, Dtype::U32, vec![l, d, seedscope_gpu::HIST_BINS], b))
            .collect::<Result<Vec<_>, _>>()?;
        let edges = serde_json::to_string(&crate::hist::edges())
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        let info = HashMap::from([("edges".to_owned(), edges)]);
        let out = safetensors::serialize(views, Some(info))
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        files.insert(HISTOGRAMS.into(), out);
    }
    if !tile_tensors.is_empty() {
        let views = tile_tensors
            .iter()
            .map(|(n, b)| view(n, Dtype::F16, vec![d, d], b))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        files.insert(TILES.into(), bytes);
    }
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    files.insert(MANIFEST.into(), json);
    Ok(files)
}

/// Rename the finished directory `dir` to `out`, replacing a previous `out` only once the new
/// one is in place.
pub fn swap_into_place(dir: &Path, out: &Path) -> Result<(), AnalysisError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AnalysisError::Io { path, source }
    };
    let old = out.with_file_name(format!(
        "{}.old-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    std::fs::rename(dir, out).map_err(io(out))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// `attention.safetensors`: per anchor (tensor names prefixed with its model name) `hist` and
/// `hist_baseline`, u64 counts of all (neuron, later head) attention scores and of the Gaussian
/// baseline's over [`crate::attention::SCORE_RANGE`] in [`crate::attention::SCORE_BINS`] bins.
fn write_attention(
    files: &mut BundleFiles,
    results: &Results,
    names: &[String],
    attention: &[Option<crate::attention::AttentionScores>],
) -> Result<(), AnalysisError> {
    let mut tensors: Vec<(String, Vec<u8>)> = Vec::new();
    for (r, a) in results.anchors.iter().zip(attention) {
        if let Some(a) = a {
            for (n, h) in [("hist", &a.hist), ("hist_baseline", &a.hist_baseline)] {
                tensors.push((
                    format!("{}/{n}", names[r.anchor]),
                    h.iter().flat_map(|c| c.to_le_bytes()).collect(),
                ));
            }
        }
    }
    if tensors.is_empty() {
        return Ok(());
    }
    let views = tensors
        .iter()
        .map(|(n, b)| view(n, Dtype::U64, vec![crate::attention::SCORE_BINS], b))
        .collect::<Result<Vec<_>, _>>()?;
    let (lo, hi) = crate::attention::SCORE_RANGE;
    let info = HashMap::from([("range".to_owned(), format!("[{lo}, {hi}]"))]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    files.insert(ATTENTION.into(), bytes);
    Ok(())
}

/// Tokens of context kept before and after each max-activating example (the paper's 50 / 10).
pub const CONTEXT: (usize, usize) = (50, 10);

/// `anatomy.safetensors`: per anchor (prefixed `anchor{m}/` after the first) the examples
/// `top_val` `[l, d, k]` f32, `top_index` `[l, d, k]` i64 (`row * seq_len + position`, −1 where
/// none) and `windows` `[l, d, k, 61]` i32 token ids (50 before, the token, 10 after, within its
/// row; −1 outside); `best_feature` `[l, d, 3]` i32 with `best_vr` f32; `top_token` `[l, d, 10]`
/// i32 with `top_token_mean` f32; `pos_mi` `[l, d]` f32. Metadata `features`: the feature list
/// (JSON), `context`: `[50, 10]`.
fn write_anatomy(
    files: &mut BundleFiles,
    results: &Results,
    data: Option<(&FeatureSet, &TokenSet)>,
    l: usize,
    d: usize,
) -> Result<(), AnalysisError> {
    let Some((features, tokens)) = data else {
        return Ok(());
    };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let le_i32 =
        |v: &mut dyn Iterator<Item = i32>| -> Vec<u8> { v.flat_map(|x| x.to_le_bytes()).collect() };
    let le_f32 = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (before, after) = CONTEXT;
    let win = before + 1 + after;
    for (ai, r) in results.anchors.iter().enumerate() {
        let Some(a) = &r.anatomy else { continue };
        let prefix = if ai == 0 {
            String::new()
        } else {
            format!("anchor{}/", r.anchor)
        };
        let k = a.k;
        let nb = crate::anatomy::BEST_FEATURES;
        let nt = crate::anatomy::TOP_TOKENS;
        tensors.push((
            format!("{prefix}top_val"),
            Dtype::F32,
            vec![l, d, k],
            le_f32(&a.top_val),
        ));
        let idx: Vec<u8> = a
            .top_idx
            .iter()
            .map(|&i| if i == u32::MAX { -1i64 } else { i as i64 })
            .flat_map(|x| x.to_le_bytes())
            .collect();
        tensors.push((format!("{prefix}top_index"), Dtype::I64, vec![l, d, k], idx));
        let seq = tokens.seq_len;
        let windows = le_i32(&mut a.top_idx.iter().flat_map(|&g| {
            (0..win).map(move |j| {
                if g == u32::MAX {
                    return -1;
                }
                let (row, pos) = (g as usize / seq, g as usize % seq);
                let p = pos as i64 + j as i64 - before as i64;
                if p < 0 || p >= seq as i64 {
                    -1
                } else {
                    tokens
                        .ids
                        .get(row * seq + p as usize)
                        .map_or(-1, |&t| t as i32)
                }
            })
        }));
        tensors.push((
            format!("{prefix}windows"),
            Dtype::I32,
            vec![l, d, k, win],
            windows,
        ));
        tensors.push((
            format!("{prefix}best_feature"),
            Dtype::I32,
            vec![l, d, nb],
            le_i32(
                &mut a
                    .best_feature
                    .iter()
                    .map(|&f| if f == u32::MAX { -1 } else { f as i32 }),
            ),
        ));
        tensors.push((
            format!("{prefix}best_vr"),
            Dtype::F32,
            vec![l, d, nb],
            le_f32(&a.best_vr),
        ));
        tensors.push((
            format!("{prefix}top_token"),
            Dtype::I32,
            vec![l, d, nt],
            le_i32(
                &mut a
                    .top_token
                    .iter()
                    .map(|&t| if t == u32::MAX { -1 } else { t as i32 }),
            ),
        ));
        tensors.push((
            format!("{prefix}top_token_mean"),
            Dtype::F32,
            vec![l, d, nt],
            le_f32(&a.top_token_mean),
        ));
        tensors.push((
            format!("{prefix}pos_mi"),
            Dtype::F32,
            vec![l, d],
            le_f32(&a.pos_mi),
        ));
    }
    if tensors.is_empty() {
        return Ok(());
    }
    let views = tensors
        .iter()
        .map(|(n, dt, s, b)| view(n, *dt, s.clone(), b))
        .collect::<Result<Vec<_>, _>>()?;
    let info = HashMap::from([
        (
            "features".to_owned(),
            serde_json::to_string(&features.features)
                .map_err(|e| AnalysisError::Invalid(e.to_string()))?,
        ),
        ("context".to_owned(), format!("[{before}, {after}]")),
    ]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    files.insert(ANATOMY.into(), bytes);
    Ok(())
}

/// Tensor `name` of `st` as `len` values of `T` (stored as `dtype`), or an error naming `path`.
pub fn read_tensor<T: bytemuck::Pod>(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    path: &Path,
    len: usize,
    dtype: Dtype,
) -> Result<Vec<T>, AnalysisError> {
    let corrupt = |message: String| AnalysisError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let t = st
        .tensor(name)
        .map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
    if t.dtype() != dtype || t.data().len() != len * std::mem::size_of::<T>() {
        return Err(corrupt(format!(
            "tensor {name} is {:?} {:?}, expected {len} {dtype:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(bytemuck::pod_collect_to_vec::<u8, T>(t.data()))
}

/// One anchor's part of `anatomy.safetensors`, read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomyFile {
    /// The run's features (ids index this).
    pub features: Vec<crate::features::Feature>,
    /// Tokens before and after each example in `windows`.
    pub context: (usize, usize),
    /// Examples per neuron.
    pub k: usize,
    /// `[width, k]` example activations, descending.
    pub top_val: Vec<f32>,
    /// `[width, k, before + 1 + after]` token ids around each example (−1 outside its row).
    pub windows: Vec<i32>,
    /// `[width, BEST_FEATURES]` best feature ids (−1: none).
    pub best_feature: Vec<i32>,
    /// Their variance explained.
    pub best_vr: Vec<f32>,
    /// `[width, TOP_TOKENS]` tokens with the highest mean activation (−1: none).
    pub top_token: Vec<i32>,
    /// Their means.
    pub top_token_mean: Vec<f32>,
    /// `[width]` mutual information with position.
    pub pos_mi: Vec<f32>,
}

impl AnatomyFile {
    /// Tokens per example window.
    pub fn window(&self) -> usize {
        self.context.0 + 1 + self.context.1
    }

    /// Read anchor `anchor`'s anatomy (`width` neurons) from bundle `dir`; `None` when the
    /// bundle has none (made before it existed, or without it). Without `examples` the example
    /// values and windows (most of the file) are left empty.
    pub fn read(
        dir: &Path,
        anchor: usize,
        width: usize,
        examples: bool,
    ) -> Result<Option<Self>, AnalysisError> {
        Self::read_from(
            &BundleSource::Dir(dir.to_path_buf()),
            anchor,
            width,
            examples,
        )
    }

    /// [`AnatomyFile::read`] from any [`BundleSource`].
    pub fn read_from(
        source: &BundleSource,
        anchor: usize,
        width: usize,
        examples: bool,
    ) -> Result<Option<Self>, AnalysisError> {
        let path = source.path(ANATOMY);
        let Some(bytes) = source.read(ANATOMY)? else {
            return Ok(None);
        };
        let corrupt = |message: String| AnalysisError::Corrupt {
            path: path.clone(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let features: Vec<crate::features::Feature> = meta
            .get("features")
            .ok_or_else(|| corrupt("no features metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| corrupt(format!("features: {e}"))))?;
        let context: (usize, usize) = meta
            .get("context")
            .ok_or_else(|| corrupt("no context metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| corrupt(format!("context: {e}"))))?;
        let prefix = if anchor == 0 {
            String::new()
        } else {
            format!("anchor{anchor}/")
        };
        let name = |n: &str| format!("{prefix}{n}");
        let k = st
            .tensor(&name("top_val"))
            .map_err(|e| corrupt(format!("tensor {}: {e}", name("top_val"))))?
            .shape()
            .last()
            .copied()
            .unwrap_or(0);
        let win = context.0 + 1 + context.1;
        let (nb, nt) = (crate::anatomy::BEST_FEATURES, crate::anatomy::TOP_TOKENS);
        let out = Self {
            top_val: if examples {
                read_tensor(&st, &name("top_val"), &path, width * k, Dtype::F32)?
            } else {
                Vec::new()
            },
            windows: if examples {
                read_tensor(&st, &name("windows"), &path, width * k * win, Dtype::I32)?
            } else {
                Vec::new()
            },
            best_feature: read_tensor(&st, &name("best_feature"), &path, width * nb, Dtype::I32)?,
            best_vr: read_tensor(&st, &name("best_vr"), &path, width * nb, Dtype::F32)?,
            top_token: read_tensor(&st, &name("top_token"), &path, width * nt, Dtype::I32)?,
            top_token_mean: read_tensor(
                &st,
                &name("top_token_mean"),
                &path,
                width * nt,
                Dtype::F32,
            )?,
            pos_mi: read_tensor(&st, &name("pos_mi"), &path, width, Dtype::F32)?,
            features,
            context,
            k,
        };
        if let Some(f) = out
            .best_feature
            .iter()
            .find(|&&f| f >= out.features.len() as i32)
        {
            return Err(corrupt(format!(
                "best feature {f} of {} features",
                out.features.len()
            )));
        }
        Ok(Some(out))
    }
}

/// A bundle read back.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its neurons (all anchors).
    pub neurons: Vec<NeuronRow>,
}

impl Bundle {
    /// Read `manifest.json` and `neurons.csv` of the bundle at `dir`.
    pub fn read(dir: &Path) -> Result<Self, AnalysisError> {
        Self::read_from(&BundleSource::Dir(dir.to_path_buf()))
    }

    /// Read `manifest.json` and `neurons.csv` from any [`BundleSource`].
    pub fn read_from(source: &BundleSource) -> Result<Self, AnalysisError> {
        let mpath = source.path(MANIFEST);
        let bytes = source.require(MANIFEST)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| AnalysisError::Corrupt {
                path: mpath.clone(),
                message: format!("not a Seedscope manifest: {e}"),
            })?;
        let npath = source.path(NEURONS);
        let csv_bytes = source.require(NEURONS)?;
        let mut reader = csv::Reader::from_reader(&csv_bytes[..]);
        let neurons = reader
            .deserialize::<NeuronRow>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AnalysisError::Corrupt {
                path: npath.clone(),
                message: e.to_string(),
            })?;
        Ok(Self { manifest, neurons })
    }

    /// Per anchor model: `(name, per layer (universal, total))`.
    pub fn universal_by_layer(&self) -> Vec<(String, Vec<(usize, usize)>)> {
        let mut out: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
        for n in &self.neurons {
            let pos = match out.iter().position(|(m, _)| *m == n.model) {
                Some(p) => p,
                None => {
                    out.push((n.model.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            let layers = &mut out[pos].1;
            if layers.len() <= n.layer {
                layers.resize(n.layer + 1, (0, 0));
            }
            layers[n.layer].0 += usize::from(n.is_universal);
            layers[n.layer].1 += 1;
        }
        out
    }

    /// The summary table `seedscope summary` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let m = &self.manifest;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} models, {} tokens, {} layers x {} neurons, threshold {} (excess correlation over the rotation baseline)",
            m.models.len(),
            m.n_tokens,
            m.n_layers,
            m.d_mlp,
            m.options.threshold
        );
        for (model, layers) in self.universal_by_layer() {
            let (u, t) = layers.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            let _ = writeln!(
                s,
                "\nanchor {model}\n{:>6} {:>9} {:>9} {:>9}",
                "layer", "neurons", "universal", "percent"
            );
            for (l, (u, t)) in layers.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{l:>6} {t:>9} {u:>9} {:>8.2}%",
                    100.0 * *u as f64 / (*t).max(1) as f64
                );
            }
            let _ = writeln!(
                s,
                "{:>6} {t:>9} {u:>9} {:>8.2}%",
                "all",
                100.0 * u as f64 / t.max(1) as f64
            );
            let rows: Vec<&NeuronRow> = self.neurons.iter().filter(|r| r.model == model).collect();
            let pcts = layer_percentiles(&rows);
            let (medians, n) = universal_medians(&rows, &pcts, m.options.threshold);
            let shown: Vec<String> = medians
                .iter()
                .filter_map(|(name, v)| v.map(|v| format!("{name} {v:.0}")))
                .collect();
            if n > 0 && !shown.is_empty() {
                let _ = writeln!(
                    s,
                    "universal neurons' median percentile within their layer (50 = typical): {}",
                    shown.join(", ")
                );
            }
            let families = family_counts(&rows);
            if !families.is_empty() {
                let shown: Vec<String> = families
                    .iter()
                    .map(|(f, all, univ)| format!("{f} {all} ({univ} universal)"))
                    .collect();
                let _ = writeln!(s, "families: {}", shown.join(", "));
            }
        }
        s
    }
}

/// Per family (alphabetical): neurons and universal neurons among `rows`; empty when the rows
/// have no families (bundles made before the anatomy).
pub fn family_counts(rows: &[&NeuronRow]) -> Vec<(String, usize, usize)> {
    let mut out: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for r in rows.iter().filter(|r| !r.family.is_empty()) {
        let e = out.entry(r.family.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.is_universal);
    }
    out.into_iter()
        .map(|(f, (a, u))| (f.to_string(), a, u))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_scipys_rank_kind() {
        // scipy.stats.percentileofscore([1, 2, 3, 4], x, kind='rank') for x = 0.5, 3, 9, 2.5.
        let v = [1.0, 2.0, 3.0, 4.0, f64::NAN];
        assert_eq!(percentile_of_score(&v, 0.5), 0.0);
        assert_eq!(percentile_of_score(&v, 3.0), 75.0);
        assert_eq!(percentile_of_score(&v, 9.0), 100.0);
        assert_eq!(percentile_of_score(&v, 2.5), 50.0);
        // Ties average their ranks: [1, 2, 2, 3] at 2 gives 62.5.
        assert_eq!(percentile_of_score(&[1.0, 2.0, 2.0, 3.0], 2.0), 62.5);
        assert!(percentile_of_score(&v, f64::NAN).is_nan());
    }
}
