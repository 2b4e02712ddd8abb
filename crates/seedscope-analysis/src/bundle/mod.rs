//! Result bundles: a directory with `manifest.json`, `neurons.csv`, `correlation.safetensors`,
//! `histograms.safetensors`, `anatomy.safetensors`, `attention.safetensors`, `tokenizer.json`
//! and (when asked) `tiles.safetensors`; [`rows`] is `neurons.csv`, [`write`] makes the files,
//! [`BundleSource`] and [`Bundle`] read them. A bundle is assembled in `<OUT>.partial/` (which also
//! holds the run's checkpoint) and renamed into place only when complete, so a crash never
//! leaves a half bundle that looks whole.
//!
//! `neurons.csv` has one row per anchor neuron with the paper's dataframe columns: `model`,
//! `layer`, `neuron`, `max_corr`, `mean_corr`, `min_corr` (max/mean/min over the other models
//! of the neuron's best correlation), `max_baseline`, `mean_baseline`, `min_baseline` (the same
//! for the rotated baseline), `excess_corr` (= mean_corr − mean_baseline), `is_universal`
//! (excess_corr > threshold), `act_mean`, `act_var` (post-activation over the kept tokens),
//! then the histogram statistics, the weight statistics of [`crate::weights`], the anatomy and
//! the attention scores ([`COLUMNS`] is the schema), the within-layer percentiles
//! `{stat}_pct` of [`PCT_COLUMNS`], and for the k-th other model of the row's anchor (manifest
//! order, the anchor skipped) `corr_k` and `match_k` (its best match, `layer.neuron`).
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
//! With every model's weight statistics, `vocab_moments` `[n_models, n_layers, d_mlp, 4]`: the
//! mean, variance, skew and kurtosis of each neuron's vocabulary projection in every model
//! (the anchors' are also in `neurons.csv`), what the report's Fig. 6 draws across seeds.
//!
//! `histograms.safetensors`: per anchor model (tensor named after it) u32 counts
//! `[n_layers, d_mlp, 257]` of pre-activations on the edges `linspace(-10, 15, 256)` (metadata
//! `edges`); `neurons.csv`'s `mean`, `var`, `skew`, `kurt`, `sparsity` come from them.
//!
//! `tiles.safetensors`: f16 correlations `[d_mlp, d_mlp]` named `{anchor}/{other}/L{a}-L{b}`.

mod anatomy_file;
mod index;
pub mod rows;
pub mod trajectory;
pub mod write;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

pub use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

pub use anatomy_file::{AnatomyFile, NO_WINDOW_TOKEN};
pub use index::{Entry, TensorIndex};
pub use rows::{
    COLUMNS, MutualCounts, NeuronRow, PCT_COLUMNS, RowExtras, family_counts, layer_percentiles,
    mutual_counts, neuron_rows, universal_medians,
};
pub use trajectory::{TRAJECTORY, Trajectory};
pub use write::{BundleFiles, CONTEXT, bundle_files, write_bundle_files};

use crate::AnalysisError;
use crate::stats::universal_counts;

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
/// Every model's vocabulary moments in `correlation.safetensors`.
pub const VOCAB_MOMENTS: &str = "vocab_moments";
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

/// What a manifest records about a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    /// Short name (directory name).
    pub name: String,
    /// The directory.
    pub path: String,
    /// Every file with its sha256.
    pub files: Vec<(String, String)>,
    /// Its layers and neurons per layer (absent in bundles made before models of different
    /// shapes could be compared: [`Manifest::shape_of`] then gives the manifest's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<crate::plan::Shape>,
}

/// The manifest's `one_to_one`: how the one-to-one columns were found, on all pairs or (with
/// refinement keeping `k` candidates at each end) on the candidates.
pub fn one_to_one_method(refine_k: Option<usize>) -> String {
    let base = "mutual_best: in how many other models the best match's own best match (over all \
                the anchor's neurons) is this neuron; assignment_corr: mean correlation with the \
                partner in the maximum-weight one-to-one assignment of each layer's neurons \
                (Jonker-Volgenant)";
    match refine_k {
        None => format!("{base}, on all pairs"),
        Some(k) => format!(
            "{base}, on refinement's candidate pairs ({k} best and {k} worst per anchor neuron): \
             pairs outside them weigh less than any correlation, a partner outside them is NaN \
             and so is the mean, and best matches are over the candidates"
        ),
    }
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
    /// The first anchor's layers (other models may differ: [`Manifest::shape_of`]).
    pub n_layers: usize,
    /// The first anchor's neurons per layer.
    pub d_mlp: usize,
    /// The options (threshold, rotation seed, budget, ...).
    pub options: crate::AnalysisOptions,
    /// The baseline.
    pub baseline: String,
    /// The permutation null's draw (`--null permutation`); empty without it.
    #[serde(default)]
    pub null: String,
    /// How `mutual_best` and `assignment_corr` were found (on all pairs, or on refinement's
    /// candidates); empty in bundles made before they existed.
    #[serde(default)]
    pub one_to_one: String,
    /// Where it ran.
    pub device: String,
    /// Passes over the data and the estimated peak accumulation memory.
    pub passes: usize,
    /// Bytes.
    pub peak_memory_bytes: u64,
    /// Wall-clock seconds of the run (this invocation).
    pub seconds: f64,
    /// Forward passes the run made (one model over one block: with activations reused across
    /// passes, each model's once per block and stage) and the reads of kept activations that
    /// replaced the rest.
    #[serde(default)]
    pub cost: crate::RunCost,
    /// Fraction of anchor neurons that are universal (anchor model 0).
    pub fraction_universal: f64,
    /// Per layer.
    pub fraction_universal_per_layer: Vec<f64>,
}

impl Manifest {
    /// Model `m`'s shape (the first anchor's when the manifest does not record it, as in
    /// bundles of one shape made before shapes were recorded per model).
    pub fn shape_of(&self, m: usize) -> crate::plan::Shape {
        self.models
            .get(m)
            .and_then(|e| e.shape)
            .unwrap_or(crate::plan::Shape {
                n_layers: self.n_layers,
                d_mlp: self.d_mlp,
            })
    }

    /// Model `name`'s index, if the bundle has it.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|e| e.name == name)
    }

    /// Whether every model has the first anchor's shape.
    pub fn one_shape(&self) -> bool {
        (0..self.models.len()).all(|m| self.shape_of(m) == self.shape_of(0))
    }

    /// The models' shapes in words ([`crate::plan::shapes_in_words`]).
    pub fn shapes_in_words(&self) -> String {
        let names: Vec<String> = self.models.iter().map(|e| e.name.clone()).collect();
        let shapes: Vec<_> = (0..names.len()).map(|m| self.shape_of(m)).collect();
        crate::plan::shapes_in_words(&names, &shapes)
    }
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
        let neurons = rows::read_rows(&source.require(NEURONS)?, &source.path(NEURONS))?;
        Ok(Self { manifest, neurons })
    }

    /// What `seedscope summary` reports, as data.
    pub fn summary_data(&self) -> Summary {
        let m = &self.manifest;
        let mut anchors: Vec<&str> = Vec::new();
        for n in &self.neurons {
            if !anchors.contains(&n.model.as_str()) {
                anchors.push(&n.model);
            }
        }
        Summary {
            models: m.models.iter().map(|e| e.name.clone()).collect(),
            n_tokens: m.n_tokens,
            n_layers: m.n_layers,
            d_mlp: m.d_mlp,
            threshold: m.options.threshold,
            anchors: anchors
                .into_iter()
                .map(|model| {
                    let rows: Vec<&NeuronRow> =
                        self.neurons.iter().filter(|r| r.model == model).collect();
                    let mut universal: Vec<&&NeuronRow> =
                        rows.iter().filter(|r| r.is_universal).collect();
                    universal.sort_by(|a, b| b.excess_corr.total_cmp(&a.excess_corr));
                    let pcts = layer_percentiles(&rows);
                    let (medians, _) = universal_medians(&rows, &pcts, m.options.threshold);
                    AnchorSummary {
                        model: model.to_string(),
                        per_layer: universal_counts(
                            rows.iter().map(|r| (r.layer, r.is_universal)),
                            m.model_index(model)
                                .map_or(m.n_layers, |i| m.shape_of(i).n_layers),
                        ),
                        universal: universal
                            .iter()
                            .map(|r| UniversalNeuron {
                                neuron: format!("L{}.{}", r.layer, r.neuron),
                                excess_corr: r.excess_corr,
                                family: r.family.clone(),
                            })
                            .collect(),
                        medians: medians
                            .into_iter()
                            .filter_map(|(name, v)| Some((name.to_string(), v?)))
                            .collect(),
                        families: family_counts(&rows),
                        one_to_one: mutual_counts(
                            &rows,
                            m.options.threshold,
                            m.models.len().saturating_sub(1),
                        ),
                        permutation_null: rows.iter().any(|r| !r.mean_null.is_nan()).then(|| {
                            let means: Vec<f64> = rows.iter().map(|r| r.mean_null).collect();
                            (
                                rows.iter()
                                    .filter(|r| r.excess_over_null > m.options.threshold)
                                    .count(),
                                crate::stats::median(&means),
                            )
                        }),
                    }
                })
                .collect(),
        }
    }

    /// The summary table `seedscope summary` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let d = self.summary_data();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} models, {} tokens, {}, threshold {} (excess correlation over the rotation baseline)",
            d.models.len(),
            d.n_tokens,
            self.manifest.shapes_in_words(),
            d.threshold
        );
        for a in &d.anchors {
            let (u, t) = a
                .per_layer
                .iter()
                .fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
            let _ = writeln!(
                s,
                "\nanchor {}\n{:>6} {:>9} {:>9} {:>9}",
                a.model, "layer", "neurons", "universal", "percent"
            );
            for (l, (u, t)) in a.per_layer.iter().enumerate() {
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
            if !a.universal.is_empty() && !a.medians.is_empty() {
                let shown: Vec<String> = a
                    .medians
                    .iter()
                    .map(|(name, v)| format!("{name} {v:.0}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "universal neurons' median percentile within their layer (50 = typical): {}",
                    shown.join(", ")
                );
            }
            if !a.families.is_empty() {
                let shown: Vec<String> = a
                    .families
                    .iter()
                    .map(|(f, all, univ)| format!("{f} {all} ({univ} universal)"))
                    .collect();
                let _ = writeln!(s, "families: {}", shown.join(", "));
            }
            if let Some((over, median)) = a.permutation_null {
                let _ = writeln!(
                    s,
                    "permutation null: mean best correlation by chance alignment {median:.3} \
                     (median over neurons); excess over it above the threshold for {over} neurons"
                );
            }
            if let Some(c) = a.one_to_one {
                let _ = writeln!(
                    s,
                    "one-to-one: {} of {} universal neurons ({} of all {}) are their best match's \
                     best match in every other model",
                    c.universal_mutual, c.universal, c.mutual, c.neurons
                );
            }
        }
        s
    }
}

/// What a bundle says in numbers (`seedscope summary [--json]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The models, the anchor first.
    pub models: Vec<String>,
    /// Kept tokens.
    pub n_tokens: u64,
    /// The first anchor's layers.
    pub n_layers: usize,
    /// The first anchor's neurons per layer.
    pub d_mlp: usize,
    /// Excess correlation above which a neuron is universal.
    pub threshold: f64,
    /// One per anchor.
    pub anchors: Vec<AnchorSummary>,
}

/// One anchor's part of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnchorSummary {
    /// The anchor model.
    pub model: String,
    /// Per layer `(universal, total)`.
    pub per_layer: Vec<(usize, usize)>,
    /// The universal neurons, highest excess correlation first.
    pub universal: Vec<UniversalNeuron>,
    /// Fig. 3: the universal neurons' median within-layer percentile of each statistic.
    pub medians: Vec<(String, f64)>,
    /// Per family `(name, neurons, universal neurons)`.
    pub families: Vec<(String, usize, usize)>,
    /// How many neurons (universal, all) are mutual best matches in every other model; absent
    /// for bundles made before it was computed.
    #[serde(default)]
    pub one_to_one: Option<MutualCounts>,
    /// With the permutation null: the neurons whose excess over it is above the threshold, and
    /// the median over neurons of their mean best correlation under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permutation_null: Option<(usize, f64)>,
}

/// A universal neuron in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniversalNeuron {
    /// `L{layer}.{neuron}`.
    pub neuron: String,
    /// Its excess correlation.
    pub excess_corr: f64,
    /// Its family.
    pub family: String,
}
