//! `trajectory.json`: universality over training. A series of checkpoints of the same seeds is
//! analysed step by step (`seedscope analyze --steps`), each step into its own bundle; the last
//! step's bundle also carries this file: per step the fraction of universal anchor neurons
//! (overall and per layer), and for every anchor neuron its mean best-match correlation and
//! excess correlation at every step. Neurons are matched across steps by index: an anchor
//! seed's neurons keep their index across its own checkpoints.

use serde::{Deserialize, Serialize};

use super::Bundle;
use crate::AnalysisError;
use crate::bundle::NeuronRow;

/// File name inside the last step's bundle.
pub const TRAJECTORY: &str = "trajectory.json";

/// One analysed step of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// How the command named it (`100`, `final`).
    pub label: String,
    /// The training step, when known (`final` has none).
    pub step: Option<u64>,
    /// Its bundle's directory name, next to the last step's bundle.
    pub bundle: String,
    /// Kept tokens its correlations are over.
    pub n_tokens: u64,
    /// Fraction of the anchor's neurons that are universal at the series' threshold.
    pub fraction_universal: f64,
    /// The same per layer.
    pub per_layer: Vec<f64>,
}

/// Universality over training of one anchor seed against the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The anchor seed's name at the last step.
    pub anchor: String,
    /// Excess correlation above which a neuron counts as universal.
    pub threshold: f64,
    /// Layers.
    pub n_layers: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// The steps, in training order.
    pub steps: Vec<Step>,
    /// `[step][neuron]` (neuron `layer * d_mlp + index`): mean over the other seeds of the
    /// best-match correlation.
    pub mean_corr: Vec<Vec<f32>>,
    /// `[step][neuron]`: excess over the rotation baseline.
    pub excess_corr: Vec<Vec<f32>>,
}

impl Trajectory {
    /// The trajectory of the series `steps`: `(label, step, bundle directory name, bundle)` in
    /// training order. Every step must have the same shape and anchor neurons in order.
    pub fn from_bundles(
        steps: &[(String, Option<u64>, String, Bundle)],
    ) -> Result<Self, AnalysisError> {
        let Some((_, _, last_dir, last)) = steps.last() else {
            return Err(AnalysisError::Invalid(
                "a series needs at least one step".into(),
            ));
        };
        let m = &last.manifest;
        let (n_layers, d_mlp) = (m.n_layers, m.d_mlp);
        let threshold = m.options.threshold;
        let mut out = Self {
            anchor: m.models.first().map(|e| e.name.clone()).unwrap_or_default(),
            threshold,
            n_layers,
            d_mlp,
            steps: Vec::new(),
            mean_corr: Vec::new(),
            excess_corr: Vec::new(),
        };
        for (label, step, dir, bundle) in steps {
            let bm = &bundle.manifest;
            if (bm.n_layers, bm.d_mlp) != (n_layers, d_mlp) {
                return Err(AnalysisError::Invalid(format!(
                    "step {label} ({dir}) has {} layers x {} neurons but step {} ({last_dir}) has \
                     {n_layers} x {d_mlp}: a series must keep the models' shape",
                    bm.n_layers,
                    bm.d_mlp,
                    steps.last().map_or("", |s| s.0.as_str())
                )));
            }
            let rows = anchor_rows(bundle, n_layers * d_mlp).ok_or_else(|| {
                AnalysisError::Invalid(format!(
                    "step {label} ({dir}): neurons.csv lacks the anchor's {} neurons in order",
                    n_layers * d_mlp
                ))
            })?;
            let mut per_layer = vec![0usize; n_layers];
            for r in &rows {
                per_layer[r.layer] += usize::from(r.excess_corr > threshold);
            }
            out.steps.push(Step {
                label: label.clone(),
                step: *step,
                bundle: dir.clone(),
                n_tokens: bm.n_tokens,
                fraction_universal: per_layer.iter().sum::<usize>() as f64 / rows.len() as f64,
                per_layer: per_layer.iter().map(|&u| u as f64 / d_mlp as f64).collect(),
            });
            out.mean_corr
                .push(rows.iter().map(|r| r.mean_corr as f32).collect());
            out.excess_corr
                .push(rows.iter().map(|r| r.excess_corr as f32).collect());
        }
        Ok(out)
    }

    /// Per step, the fraction of the anchor's neurons whose excess correlation is above
    /// `threshold`: overall and per layer.
    pub fn fractions(&self, threshold: f64) -> Vec<(f64, Vec<f64>)> {
        let d = self.d_mlp.max(1);
        self.excess_corr
            .iter()
            .map(|s| {
                let per_layer: Vec<f64> = s
                    .chunks(d)
                    .map(|l| l.iter().filter(|&&e| e as f64 > threshold).count() as f64 / d as f64)
                    .collect();
                let all = per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64;
                (all, per_layer)
            })
            .collect()
    }

    /// The first step at which neuron `i`'s excess correlation is above `threshold`.
    pub fn crossing(&self, i: usize, threshold: f64) -> Option<usize> {
        self.excess_corr
            .iter()
            .position(|s| s.get(i).is_some_and(|&e| e as f64 > threshold))
    }

    /// Read `trajectory.json` (`path` names it in errors).
    pub fn read(bytes: &[u8], path: &std::path::Path) -> Result<Self, AnalysisError> {
        let t: Self = serde_json::from_slice(bytes).map_err(|e| AnalysisError::Corrupt {
            path: path.to_path_buf(),
            message: format!("not a Seedscope trajectory: {e}"),
        })?;
        let width = t.n_layers * t.d_mlp;
        let ok = t.mean_corr.len() == t.steps.len()
            && t.excess_corr.len() == t.steps.len()
            && t.mean_corr
                .iter()
                .chain(&t.excess_corr)
                .all(|s| s.len() == width)
            && t.steps.iter().all(|s| s.per_layer.len() == t.n_layers);
        if !ok {
            return Err(AnalysisError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "{} steps of {} x {} neurons do not match its arrays",
                    t.steps.len(),
                    t.n_layers,
                    t.d_mlp
                ),
            });
        }
        Ok(t)
    }

    /// The trajectory in the bundle directory `bundle`, or `None` when it has none.
    pub fn load(bundle: &std::path::Path) -> Result<Option<Self>, AnalysisError> {
        let path = bundle.join(TRAJECTORY);
        match std::fs::read(&path) {
            Ok(bytes) => Self::read(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AnalysisError::Io { path, source }),
        }
    }

    /// As the file stores it.
    pub fn to_json(&self) -> Result<Vec<u8>, AnalysisError> {
        serde_json::to_vec(self).map_err(|e| AnalysisError::Invalid(format!("trajectory: {e}")))
    }
}

/// The first anchor's rows of `bundle` in neuron order, if it has all `width` of them.
fn anchor_rows(bundle: &Bundle, width: usize) -> Option<Vec<&NeuronRow>> {
    let anchor = bundle.manifest.models.first()?.name.as_str();
    let rows: Vec<&NeuronRow> = bundle
        .neurons
        .iter()
        .filter(|r| r.model == anchor)
        .collect();
    let d = bundle.manifest.d_mlp;
    let in_order = rows
        .iter()
        .enumerate()
        .all(|(k, r)| (r.layer, r.neuron) == (k / d, k % d));
    (rows.len() == width && in_order).then_some(rows)
}
