//! `neurons.csv`: one [`NeuronRow`] per anchor neuron. [`COLUMNS`] is the file's schema:
//! each column's name, how a row writes it and how a value reads back, in file order; the
//! writer, the reader and the app's CSV export all use it. After those columns the file has
//! the within-layer percentiles `{stat}_pct` of [`PCT_COLUMNS`], and for the k-th other model
//! of the row's anchor `corr_k` and `match_k`; readers skip columns they do not know.

use crate::AnalysisError;
use crate::features::FeatureSet;
use crate::results::AnchorResult;
use crate::stats::{Ranks, median};
use crate::weights::NeuronWeights;

/// One row of `neurons.csv`.
#[derive(Debug, Clone, PartialEq)]
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
    /// Max over other models of the best correlation under the permutation null
    /// (`--null permutation`); NaN without it.
    pub max_null: f64,
    /// Mean over other models of the best correlation under the permutation null.
    pub mean_null: f64,
    /// `mean_corr - mean_null`.
    pub excess_over_null: f64,
    /// In how many other models the best match (as `max_corr`) has this neuron as its own best
    /// match among all the anchor's neurons; NaN in bundles made before it existed.
    pub mutual_best: f64,
    /// Mean over other models of the correlation with its partner in the maximum-weight
    /// one-to-one assignment of the layer's neurons (refined runs: on the candidate pairs;
    /// NaN where a partner is not among them).
    pub assignment_corr: f64,
    /// Mean post-activation over the kept tokens.
    pub act_mean: f64,
    /// Its variance.
    pub act_var: f64,
    /// Mean pre-activation, from the histogram ([`crate::hist::stats`]); NaN when absent.
    pub mean: f64,
    /// Pre-activation variance, from the histogram.
    pub var: f64,
    /// Pre-activation skew, from the histogram.
    pub skew: f64,
    /// Pre-activation kurtosis (non-excess), from the histogram.
    pub kurt: f64,
    /// Activation frequency: the share of pre-activations from the first non-negative edge's
    /// bin on (the paper's "sparsity").
    pub sparsity: f64,
    /// ‖w_in‖₂ on TransformerLens-processed weights ([`crate::weights`]); NaN when absent.
    pub w_in_norm: f64,
    /// The LayerNorm-folded input bias.
    pub input_bias: f64,
    /// ‖w_out‖₂.
    pub w_out_norm: f64,
    /// cos(w_in, w_out).
    pub in_out_sim: f64,
    /// ‖w_in‖² + ‖w_out‖².
    pub l2_penalty: f64,
    /// Mean over the vocabulary of cos(W_U[:, v], w_out).
    pub vocab_mean: f64,
    /// Its variance.
    pub vocab_var: f64,
    /// Its skew.
    pub vocab_skew: f64,
    /// Its kurtosis (non-excess).
    pub vocab_kurt: f64,
    /// Share of ‖w_out‖ in W_U's near-null space ([`crate::weights::null_dims`]).
    pub null_frac: f64,
    /// The token feature that explains most of the activation's variance
    /// ([`crate::anatomy`]; `prev:` for the previous token); empty when not computed.
    pub best_feature: String,
    /// Its variance explained (the paper's eq. 4).
    pub best_vr: f64,
    /// Mutual information of `activation > 0` with position, nats.
    pub pos_mi: f64,
    /// The family: unigram, alphabet, previous-token, syntax, semantic, position or
    /// unexplained ([`crate::anatomy::family`]); empty when not computed.
    pub family: String,
    /// The largest attention score over later heads ([`crate::attention`]): how strongly the
    /// neuron turns a head off by raising its attention to BOS. NaN in the last layer.
    pub attn_deact: f64,
    /// That head, `L{layer}H{head}`.
    pub attn_deact_head: String,
    /// The smallest score (an activation when negative).
    pub attn_act: f64,
    /// That head.
    pub attn_act_head: String,
}

impl Default for NeuronRow {
    /// A row with no values: numbers NaN, text empty.
    fn default() -> Self {
        Self {
            model: String::new(),
            layer: 0,
            neuron: 0,
            max_corr: f64::NAN,
            mean_corr: f64::NAN,
            min_corr: f64::NAN,
            max_baseline: f64::NAN,
            mean_baseline: f64::NAN,
            min_baseline: f64::NAN,
            excess_corr: f64::NAN,
            is_universal: false,
            max_null: f64::NAN,
            mean_null: f64::NAN,
            excess_over_null: f64::NAN,
            mutual_best: f64::NAN,
            assignment_corr: f64::NAN,
            act_mean: f64::NAN,
            act_var: f64::NAN,
            mean: f64::NAN,
            var: f64::NAN,
            skew: f64::NAN,
            kurt: f64::NAN,
            sparsity: f64::NAN,
            w_in_norm: f64::NAN,
            input_bias: f64::NAN,
            w_out_norm: f64::NAN,
            in_out_sim: f64::NAN,
            l2_penalty: f64::NAN,
            vocab_mean: f64::NAN,
            vocab_var: f64::NAN,
            vocab_skew: f64::NAN,
            vocab_kurt: f64::NAN,
            null_frac: f64::NAN,
            best_feature: String::new(),
            best_vr: f64::NAN,
            pos_mi: f64::NAN,
            family: String::new(),
            attn_deact: f64::NAN,
            attn_deact_head: String::new(),
            attn_act: f64::NAN,
            attn_act_head: String::new(),
        }
    }
}

/// One column of `neurons.csv`.
#[derive(Clone, Copy)]
pub struct Column {
    /// Its header.
    pub name: &'static str,
    /// Whether a file without it is refused (the paper's columns); others default to NaN or
    /// empty (bundles made before they existed).
    pub required: bool,
    /// The row's value as the file writes it.
    pub write: fn(&NeuronRow) -> String,
    /// Parse a value into the row.
    pub read: fn(&mut NeuronRow, &str) -> Result<(), String>,
}

impl std::fmt::Debug for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// How a kind of value is written and read: correlations with 6 decimals, other statistics
/// with 7 significant digits, whole numbers, flags and text as they are.
mod cell {
    pub fn corr(v: f64) -> String {
        format!("{v:.6}")
    }
    pub fn stat(v: f64) -> String {
        format!("{v:.6e}")
    }
    pub fn float(s: &str) -> Result<f64, String> {
        match s.trim() {
            "NaN" | "nan" | "" => Ok(f64::NAN),
            t => t.parse().map_err(|e| format!("`{s}`: {e}")),
        }
    }
    pub fn count(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else {
            format!("{v:.0}")
        }
    }
    pub fn int(s: &str) -> Result<usize, String> {
        s.trim().parse().map_err(|e| format!("`{s}`: {e}"))
    }
    pub fn flag(s: &str) -> Result<bool, String> {
        s.trim().parse().map_err(|e| format!("`{s}`: {e}"))
    }
}

/// A [`Column`] of a [`NeuronRow`] field: `column!(field, required, kind)` with kind `corr` or
/// `stat` (f64), `int` (usize), `flag` (bool) or `text` (String).
macro_rules! column {
    ($name:ident, $required:expr, corr) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| cell::corr(r.$name),
            read: |r, s| Ok(r.$name = cell::float(s)?),
        }
    };
    ($name:ident, $required:expr, stat) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| cell::stat(r.$name),
            read: |r, s| Ok(r.$name = cell::float(s)?),
        }
    };
    ($name:ident, $required:expr, count) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| cell::count(r.$name),
            read: |r, s| Ok(r.$name = cell::float(s)?),
        }
    };
    ($name:ident, $required:expr, int) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| r.$name.to_string(),
            read: |r, s| Ok(r.$name = cell::int(s)?),
        }
    };
    ($name:ident, $required:expr, flag) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| r.$name.to_string(),
            read: |r, s| Ok(r.$name = cell::flag(s)?),
        }
    };
    ($name:ident, $required:expr, text) => {
        Column {
            name: stringify!($name),
            required: $required,
            write: |r| r.$name.clone(),
            read: |r, s| Ok(r.$name = s.to_owned()),
        }
    };
}

/// The columns of `neurons.csv` in file order: the paper's dataframe columns (required), the
/// activation statistics from the histograms, the weight statistics, the anatomy and the
/// attention scores.
pub const COLUMNS: [Column; 41] = [
    column!(model, true, text),
    column!(layer, true, int),
    column!(neuron, true, int),
    column!(max_corr, true, corr),
    column!(mean_corr, true, corr),
    column!(min_corr, true, corr),
    column!(max_baseline, true, corr),
    column!(mean_baseline, true, corr),
    column!(min_baseline, true, corr),
    column!(excess_corr, true, corr),
    column!(is_universal, true, flag),
    column!(max_null, false, corr),
    column!(mean_null, false, corr),
    column!(excess_over_null, false, corr),
    column!(mutual_best, false, count),
    column!(assignment_corr, false, corr),
    column!(act_mean, true, stat),
    column!(act_var, true, stat),
    column!(mean, false, stat),
    column!(var, false, stat),
    column!(skew, false, stat),
    column!(kurt, false, stat),
    column!(sparsity, false, stat),
    column!(w_in_norm, false, stat),
    column!(input_bias, false, stat),
    column!(w_out_norm, false, stat),
    column!(in_out_sim, false, stat),
    column!(l2_penalty, false, stat),
    column!(vocab_mean, false, stat),
    column!(vocab_var, false, stat),
    column!(vocab_skew, false, stat),
    column!(vocab_kurt, false, stat),
    column!(null_frac, false, stat),
    column!(best_feature, false, text),
    column!(best_vr, false, corr),
    column!(pos_mi, false, corr),
    column!(family, false, text),
    column!(attn_deact, false, corr),
    column!(attn_deact_head, false, text),
    column!(attn_act, false, corr),
    column!(attn_act_head, false, text),
];

impl NeuronRow {
    /// The headers of [`COLUMNS`].
    pub fn columns() -> Vec<&'static str> {
        COLUMNS.iter().map(|c| c.name).collect()
    }

    /// The row's values in [`COLUMNS`] order, as `neurons.csv` writes them.
    pub fn fields(&self) -> Vec<String> {
        COLUMNS.iter().map(|c| (c.write)(self)).collect()
    }
}

/// Read the rows of a `neurons.csv` (`path` names it in errors): columns by header name through
/// [`COLUMNS`], unknown columns skipped, a missing required column or a bad value an error.
pub fn read_rows(bytes: &[u8], path: &std::path::Path) -> Result<Vec<NeuronRow>, AnalysisError> {
    let corrupt = |message: String| AnalysisError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| corrupt(e.to_string()))?
        .clone();
    let mut found = Vec::new();
    for c in &COLUMNS {
        match header.iter().position(|h| h == c.name) {
            Some(i) => found.push((i, c)),
            None if c.required => return Err(corrupt(format!("no column `{}`", c.name))),
            None => {}
        }
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| corrupt(e.to_string()))?;
        let mut row = NeuronRow::default();
        for (i, c) in &found {
            let value = record
                .get(*i)
                .ok_or_else(|| corrupt(format!("row {}: no value for `{}`", n + 1, c.name)))?;
            (c.read)(&mut row, value)
                .map_err(|e| corrupt(format!("row {}, column `{}`: {e}", n + 1, c.name)))?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A per-neuron statistic of a row.
pub type Stat = fn(&NeuronRow) -> f64;

/// The statistics whose within-layer percentiles `neurons.csv` carries (`{name}_pct`), as the
/// paper compares universal and other neurons (§4.2, Fig. 3).
pub const PCT_COLUMNS: [(&str, Stat); 8] = [
    ("sparsity", |r| r.sparsity),
    ("mean", |r| r.mean),
    ("skew", |r| r.skew),
    ("kurt", |r| r.kurt),
    ("input_bias", |r| r.input_bias),
    ("in_out_sim", |r| r.in_out_sim),
    ("l2_penalty", |r| r.l2_penalty),
    ("vocab_kurt", |r| r.vocab_kurt),
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
    // Results made without the one-to-one matching (no column ever reduced) have none.
    let one_to_one_known = !r.one_to_one.is_empty()
        && r.one_to_one
            .iter()
            .all(|o| o.back_max.iter().any(|&v| v > -2.0));
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
            let (max_null, mean_null) = if r.null.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                let null: Vec<f64> = r.null.iter().map(|m| m.max[i] as f64).collect();
                let (max, mean, _) = stats(&null);
                (max, mean)
            };
            let (mutual_best, assignment_corr) = if one_to_one_known {
                one_to_one(r, i)
            } else {
                (f64::NAN, f64::NAN)
            };
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
                    max_null,
                    mean_null,
                    excess_over_null: mean_corr - mean_null,
                    mutual_best,
                    assignment_corr,
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

/// Anchor neuron `i`'s one-to-one columns: in how many other models its best match's own best
/// match is `i`, and its mean correlation with its assigned partners (NaN if any is unknown).
fn one_to_one(r: &AnchorResult, i: usize) -> (f64, f64) {
    let mut mutual = 0;
    let mut sum = 0.0;
    for (m, o) in r.real.iter().zip(&r.one_to_one) {
        let j = m.argmax[i] as usize;
        if o.back_argmax.get(j) == Some(&(i as u32)) && m.max[i] > f32::NEG_INFINITY {
            mutual += 1;
        }
        sum += o.partner_corr.get(i).copied().unwrap_or(f32::NAN) as f64;
    }
    let n = r.one_to_one.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    (mutual as f64, sum / n as f64)
}

/// Per row, the [`PCT_COLUMNS`] percentiles within its layer (scipy's `percentileofscore(kind=
/// 'rank')`, values sorted once per layer and column).
pub fn layer_percentiles(rows: &[&NeuronRow]) -> Vec<Vec<f64>> {
    let mut out = vec![vec![f64::NAN; PCT_COLUMNS.len()]; rows.len()];
    let n_layers = rows.iter().map(|r| r.layer + 1).max().unwrap_or(0);
    for l in 0..n_layers {
        let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].layer == l).collect();
        for (c, (_, f)) in PCT_COLUMNS.iter().enumerate() {
            let ranks = Ranks::new(&idx.iter().map(|&i| f(rows[i])).collect::<Vec<_>>());
            for &i in &idx {
                out[i][c] = ranks.percentile(f(rows[i]));
            }
        }
    }
    out
}

/// How one-to-one the matches of an anchor's `rows` are, at `threshold`: of the neurons whose
/// excess correlation is above it, and of all, how many are mutual best matches in each of the
/// `n_others` other models; `None` for a bundle without the `mutual_best` column.
pub fn mutual_counts(rows: &[&NeuronRow], threshold: f64, n_others: usize) -> Option<MutualCounts> {
    if rows.iter().all(|r| r.mutual_best.is_nan()) {
        return None;
    }
    let mut c = MutualCounts::default();
    for r in rows {
        let universal = r.excess_corr > threshold;
        let mutual = r.mutual_best >= n_others as f64;
        c.universal += usize::from(universal);
        c.universal_mutual += usize::from(universal && mutual);
        c.neurons += 1;
        c.mutual += usize::from(mutual);
    }
    Some(c)
}

/// What [`mutual_counts`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MutualCounts {
    /// Universal neurons.
    pub universal: usize,
    /// Of them, mutual best matches in every other model.
    pub universal_mutual: usize,
    /// Neurons.
    pub neurons: usize,
    /// Of them, mutual best matches in every other model.
    pub mutual: usize,
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
            let v: Vec<f64> = universal
                .iter()
                .filter_map(|&i| pcts.get(i).and_then(|p| p.get(c)).copied())
                .collect();
            let m = median(&v);
            (*name, (!m.is_nan()).then_some(m))
        })
        .collect();
    (medians, universal.len())
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

    /// A row with every column set to a distinct value.
    fn full_row() -> NeuronRow {
        NeuronRow {
            model: "seed-a".into(),
            layer: 1,
            neuron: 41,
            max_corr: 0.9,
            mean_corr: 0.8,
            min_corr: 0.7,
            max_baseline: 0.4,
            mean_baseline: 0.3,
            min_baseline: 0.2,
            excess_corr: 0.5,
            is_universal: true,
            max_null: 0.3,
            mean_null: 0.25,
            excess_over_null: 0.55,
            mutual_best: 2.0,
            assignment_corr: 0.75,
            act_mean: 1.25,
            act_var: 2.5,
            mean: -0.5,
            var: 3.0,
            skew: 1.5,
            kurt: 7.0,
            sparsity: 0.05,
            w_in_norm: 4.0,
            input_bias: -1.0,
            w_out_norm: 2.0,
            in_out_sim: -0.25,
            l2_penalty: 20.0,
            vocab_mean: 0.001,
            vocab_var: 0.002,
            vocab_skew: 0.75,
            vocab_kurt: 12.0,
            null_frac: 0.125,
            best_feature: "prev:the".into(),
            best_vr: 0.625,
            pos_mi: 0.0625,
            family: "previous-token".into(),
            attn_deact: 0.375,
            attn_deact_head: "L1H2".into(),
            attn_act: -0.5,
            attn_act_head: "L1H0".into(),
        }
    }

    #[test]
    fn rows_read_back_as_written_through_one_schema() {
        let row = full_row();
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = NeuronRow::columns();
        header.push("corr_0");
        w.write_record(&header).expect("header");
        let mut rec = row.fields();
        rec.push("0.8".into());
        w.write_record(&rec).expect("row");
        let bytes = w.into_inner().expect("csv");
        let back = read_rows(&bytes, std::path::Path::new("neurons.csv")).expect("read");
        assert_eq!(back, vec![row]);
    }

    #[test]
    fn optional_columns_default_and_required_ones_are_named() {
        let bytes = b"model,layer,neuron,max_corr,mean_corr,min_corr,max_baseline,mean_baseline,\
min_baseline,excess_corr,is_universal,act_mean,act_var\nseed-a,0,3,1,1,1,0,0,0,1,true,0,1\n";
        let rows = read_rows(bytes, std::path::Path::new("neurons.csv")).expect("read");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].sparsity.is_nan() && rows[0].family.is_empty());
        let e = read_rows(
            b"model,layer\nseed-a,0\n",
            std::path::Path::new("x/neurons.csv"),
        )
        .expect_err("missing columns");
        assert!(e.to_string().contains("x/neurons.csv") && e.to_string().contains("neuron"));
        let e = read_rows(
            &String::from_utf8_lossy(bytes)
                .replace(",3,", ",three,")
                .into_bytes(),
            std::path::Path::new("neurons.csv"),
        )
        .expect_err("bad value");
        assert!(e.to_string().contains("column `neuron`"), "{e}");
    }
}
