//! A bundle as the views need it: the manifest and neuron rows, the per-anchor correlation
//! tensors, what the views look up per frame computed once at open (within-layer ranks of every
//! statistic, per-layer sorted excess correlations), and the saved tiles (read lazily, one at a
//! time, by a task).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use seedscope_analysis::bundle::{BundleSource, CORRELATION, TILES};
use seedscope_analysis::stats::Ranks;
use seedscope_analysis::weights::VOCAB_ENDS;
use seedscope_analysis::{Bundle, NeuronRow, Shape};

use crate::AppError;

/// A neuron of one model of the family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NeuronId {
    /// Model index in the manifest.
    pub model: usize,
    /// Layer.
    pub layer: usize,
    /// Neuron within the layer.
    pub neuron: usize,
}

impl NeuronId {
    /// `L{layer}.{neuron}`, the paper's notation.
    pub fn short(&self) -> String {
        format!("L{}.{}", self.layer, self.neuron)
    }
}

/// Best match of an anchor neuron in one other model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// The other model's neuron.
    pub id: NeuronId,
    /// Its correlation with the anchor neuron.
    pub corr: f32,
    /// The most negative correlation with any of the other model's neurons.
    pub min_corr: f32,
    /// The best correlation in the rotated baseline.
    pub baseline: f32,
}

/// The correlation tensors of one anchor.
#[derive(Debug, Clone)]
pub struct AnchorData {
    /// The anchor model.
    pub anchor: usize,
    /// Other models, manifest order.
    pub others: Vec<usize>,
    /// `[n_other][layer * d_mlp + neuron]`.
    max_corr: Vec<Vec<f32>>,
    max_layer: Vec<Vec<i32>>,
    max_neuron: Vec<Vec<i32>>,
    min_corr: Vec<Vec<f32>>,
    baseline: Vec<Vec<f32>>,
    /// `[n_layers * n_layers]`: fraction of anchor-layer neurons whose best match is in each layer.
    pub layer_match: Vec<f32>,
    /// Indices into [`Explorer::rows`] of this anchor's neurons, `layer * d_mlp + neuron` order.
    pub rows: Vec<usize>,
    /// Per neuron (same order), the within-layer percentiles of
    /// [`seedscope_analysis::bundle::PCT_COLUMNS`].
    pub percentiles: Vec<Vec<f64>>,
    /// Per neuron the token ids at the top and bottom of its vocabulary projection
    /// (`VOCAB_ENDS` each), when the bundle has them.
    pub vocab_ends: Option<(Vec<i32>, Vec<i32>)>,
    /// `[stat][layer]`: the layer's values of each of [`NEURON_STATS`], sorted once, for
    /// within-layer percentiles.
    ranks: Vec<Vec<Ranks>>,
    /// Per layer the neurons' excess correlations, ascending, NaN left out (counts at any
    /// threshold; a NaN is never universal).
    excess: Vec<Vec<f64>>,
}

/// A statistic of a neuron row.
pub type Stat = fn(&NeuronRow) -> f64;

/// The statistics the neuron page shows with their within-layer percentile.
pub const NEURON_STATS: [(&str, Stat); 21] = [
    ("mean best r over seeds", |r| r.mean_corr),
    ("max best r", |r| r.max_corr),
    ("min best r", |r| r.min_corr),
    ("baseline (mean)", |r| r.mean_baseline),
    ("excess correlation", |r| r.excess_corr),
    ("activation mean", |r| r.act_mean),
    ("activation variance", |r| r.act_var),
    ("pre-activation mean", |r| r.mean),
    ("pre-activation variance", |r| r.var),
    ("pre-activation skew", |r| r.skew),
    ("pre-activation kurtosis", |r| r.kurt),
    ("activation frequency", |r| r.sparsity),
    ("w_in norm", |r| r.w_in_norm),
    ("input bias", |r| r.input_bias),
    ("w_out norm", |r| r.w_out_norm),
    ("cos(w_in, w_out)", |r| r.in_out_sim),
    ("l2 penalty", |r| r.l2_penalty),
    ("vocab mean", |r| r.vocab_mean),
    ("vocab var", |r| r.vocab_var),
    ("vocab skew", |r| r.vocab_skew),
    ("vocab kurt", |r| r.vocab_kurt),
];

/// One max-activating position with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The activation at the position.
    pub value: f32,
    /// Row in the data.
    pub row: usize,
    /// Position in the row.
    pub pos: usize,
    /// The row's tokens (strings).
    pub tokens: Vec<String>,
    /// The neuron's activation on each token of the row.
    pub acts: Vec<f32>,
}

/// A neuron's top examples and the tokens with the highest mean activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    /// The neuron.
    pub id: NeuronId,
    /// Best first.
    pub top: Vec<Example>,
    /// `(token, mean activation, count)`, highest mean first: tokens seen at least 3 times on
    /// which the neuron fires (mean above zero and at least 1 % of the highest).
    pub top_tokens: Vec<(String, f32, usize)>,
    /// Tokens scanned.
    pub scanned: usize,
}

/// An opened bundle.
#[derive(Debug, Clone)]
pub struct Explorer {
    /// Where the bundle's files are (a directory, or files in memory on the web).
    pub source: BundleSource,
    /// Manifest and rows.
    pub bundle: Bundle,
    /// Model names, manifest order.
    pub names: Vec<String>,
    /// One per anchor in the bundle (anchor 0 first).
    pub anchors: Vec<AnchorData>,
    /// Saved tiles: name → (byte range in `tiles.safetensors`, shape).
    tiles: BTreeMap<String, ((u64, u64), [usize; 2])>,
    tokenizer: Option<seedscope_data::TextTokenizer>,
    /// Pre-activation histograms per model name, `[n_layers * d_mlp * HIST_BINS]`.
    histograms: BTreeMap<String, Vec<u32>>,
    /// Per anchor model index: best features, top tokens, position MI (no examples).
    anatomy: BTreeMap<usize, seedscope_analysis::bundle::AnatomyFile>,
    /// Universality over training, when the bundle is the last step of a series.
    pub trajectory: Option<seedscope_analysis::bundle::Trajectory>,
}

/// The bundle's `trajectory.json`, if it has one, checked against its `l` layers of `d`.
fn read_trajectory(
    source: &BundleSource,
    l: usize,
    d: usize,
) -> Result<Option<seedscope_analysis::bundle::Trajectory>, AppError> {
    use seedscope_analysis::bundle::{TRAJECTORY, Trajectory};
    let path = source.path(TRAJECTORY);
    let Some(bytes) = source.read(TRAJECTORY)? else {
        return Ok(None);
    };
    let t = Trajectory::read(&bytes, &path)?;
    if (t.n_layers, t.d_mlp) != (l, d) {
        return Err(corrupt(
            &path,
            format!(
                "a trajectory of {} x {} neurons in a bundle of {l} x {d}",
                t.n_layers, t.d_mlp
            ),
        ));
    }
    Ok(Some(t))
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> AppError {
    AppError::Corrupt {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Tensor `name` of `st` as `len` values of `T` (stored as `dtype`), or an error naming `path`.
fn tensor<T: bytemuck::Pod>(
    st: &SafeTensors,
    name: &str,
    path: &Path,
    len: usize,
    dtype: Dtype,
) -> Result<Vec<T>, AppError> {
    Ok(seedscope_analysis::bundle::read_tensor(
        st, name, path, len, dtype,
    )?)
}

fn tensor_f32(st: &SafeTensors, name: &str, path: &Path, len: usize) -> Result<Vec<f32>, AppError> {
    tensor(st, name, path, len, Dtype::F32)
}

fn tensor_i32(st: &SafeTensors, name: &str, path: &Path, len: usize) -> Result<Vec<i32>, AppError> {
    tensor(st, name, path, len, Dtype::I32)
}

impl Explorer {
    /// Open the bundle at `dir`. Errors name the file and what is wrong with it.
    pub fn open(dir: &Path) -> Result<Self, AppError> {
        Self::open_source(BundleSource::Dir(dir.to_path_buf()))
    }

    /// Open a bundle from a directory or from files in memory.
    pub fn open_source(source: BundleSource) -> Result<Self, AppError> {
        let bundle = Bundle::read_from(&source)?;
        let m = &bundle.manifest;
        let names: Vec<String> = m.models.iter().map(|e| e.name.clone()).collect();
        let cpath = source.path(CORRELATION);
        let bytes = source.require(CORRELATION)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&cpath, e))?;
        let anchor_ids: Vec<usize> = if m.options.all_anchors {
            (0..names.len()).collect()
        } else {
            vec![0]
        };
        let mut anchors = Vec::new();
        for &a in &anchor_ids {
            let prefix = if a == 0 {
                String::new()
            } else {
                format!("anchor{a}/")
            };
            let others: Vec<usize> = (0..names.len()).filter(|&o| o != a).collect();
            let n_o = others.len();
            let Shape {
                n_layers: l,
                d_mlp: d,
            } = m.shape_of(a);
            let width = l * d;
            let deepest = others
                .iter()
                .map(|&o| m.shape_of(o).n_layers)
                .max()
                .unwrap_or(0);
            let split_f = |v: Vec<f32>| v.chunks(width).map(<[f32]>::to_vec).collect::<Vec<_>>();
            let split_i = |v: Vec<i32>| v.chunks(width).map(<[i32]>::to_vec).collect::<Vec<_>>();
            let rows: Vec<usize> = bundle
                .neurons
                .iter()
                .enumerate()
                .filter(|(_, r)| r.model == names[a])
                .map(|(i, _)| i)
                .collect();
            let in_order = rows.iter().enumerate().all(|(k, &i)| {
                (bundle.neurons[i].layer, bundle.neurons[i].neuron) == (k / d, k % d)
            });
            if rows.len() != width || !in_order {
                return Err(corrupt(
                    &source.path(seedscope_analysis::bundle::NEURONS),
                    format!(
                        "{} rows for anchor {}, expected {l} layers x {d} neurons in order",
                        rows.len(),
                        names[a]
                    ),
                ));
            }
            anchors.push(AnchorData {
                anchor: a,
                max_corr: split_f(tensor_f32(
                    &st,
                    &format!("{prefix}max_corr"),
                    &cpath,
                    n_o * width,
                )?),
                max_layer: split_i(tensor_i32(
                    &st,
                    &format!("{prefix}max_corr_layer"),
                    &cpath,
                    n_o * width,
                )?),
                max_neuron: split_i(tensor_i32(
                    &st,
                    &format!("{prefix}max_corr_neuron"),
                    &cpath,
                    n_o * width,
                )?),
                min_corr: split_f(tensor_f32(
                    &st,
                    &format!("{prefix}min_corr"),
                    &cpath,
                    n_o * width,
                )?),
                baseline: split_f(tensor_f32(
                    &st,
                    &format!("{prefix}baseline_max_corr"),
                    &cpath,
                    n_o * width,
                )?),
                layer_match: tensor_f32(
                    &st,
                    &format!("{prefix}layer_match_fraction"),
                    &cpath,
                    l * deepest,
                )?,
                vocab_ends: match st.tensor(&format!("{prefix}vocab_top")) {
                    // Bundles without weight statistics have no vocabulary ends.
                    Err(_) => None,
                    Ok(_) => Some((
                        tensor_i32(
                            &st,
                            &format!("{prefix}vocab_top"),
                            &cpath,
                            width * VOCAB_ENDS,
                        )?,
                        tensor_i32(
                            &st,
                            &format!("{prefix}vocab_bottom"),
                            &cpath,
                            width * VOCAB_ENDS,
                        )?,
                    )),
                },
                others,
                percentiles: seedscope_analysis::bundle::layer_percentiles(
                    &rows.iter().map(|&i| &bundle.neurons[i]).collect::<Vec<_>>(),
                ),
                ranks: NEURON_STATS
                    .iter()
                    .map(|(_, f)| {
                        (0..l)
                            .map(|layer| {
                                let v: Vec<f64> = rows[layer * d..(layer + 1) * d]
                                    .iter()
                                    .map(|&i| f(&bundle.neurons[i]))
                                    .collect();
                                Ranks::new(&v)
                            })
                            .collect()
                    })
                    .collect(),
                excess: (0..l)
                    .map(|layer| {
                        let mut v: Vec<f64> = rows[layer * d..(layer + 1) * d]
                            .iter()
                            .map(|&i| bundle.neurons[i].excess_corr)
                            .filter(|x| !x.is_nan())
                            .collect();
                        v.sort_by(f64::total_cmp);
                        v
                    })
                    .collect(),
                rows,
            });
        }
        let tiles = read_tile_index(&source, m)?;
        // Token strings need the tokenizer: the bundle's copy, else the anchor's; a bundle
        // without one whose models moved still opens without it.
        let tokenizer = match source.read(seedscope_analysis::bundle::TOKENIZER)? {
            Some(bytes) => Some(seedscope_data::TextTokenizer::from_bytes(
                &bytes,
                &source.path(seedscope_analysis::bundle::TOKENIZER),
            )?),
            None => m.models.first().and_then(|e| {
                seedscope_data::TextTokenizer::from_model_dir(Path::new(&e.path)).ok()
            }),
        };
        let histograms = read_histograms(&source, m)?;
        let mut anatomy = BTreeMap::new();
        for &a in &anchor_ids {
            let width = m.shape_of(a).width();
            if let Some(f) =
                seedscope_analysis::bundle::AnatomyFile::read_from(&source, a, width, false)?
            {
                anatomy.insert(a, f);
            }
        }
        let trajectory = read_trajectory(&source, m.n_layers, m.d_mlp)?;
        Ok(Self {
            source,
            bundle,
            names,
            anchors,
            tiles,
            tokenizer,
            histograms,
            anatomy,
            trajectory,
        })
    }

    /// Model `model`'s layers and neurons per layer (models compared need not share them).
    pub fn shape(&self, model: usize) -> Shape {
        self.bundle.manifest.shape_of(model)
    }

    /// Whether every model has the same shape (a seed family).
    pub fn one_shape(&self) -> bool {
        self.bundle.manifest.one_shape()
    }

    /// The first anchor's layers.
    pub fn n_layers(&self) -> usize {
        self.bundle.manifest.n_layers
    }

    /// The first anchor's neurons per layer.
    pub fn d_mlp(&self) -> usize {
        self.bundle.manifest.d_mlp
    }

    /// A neuron's column in its model's activations (`layer * d_mlp + neuron`).
    pub fn index(&self, id: NeuronId) -> usize {
        id.layer * self.shape(id.model).d_mlp + id.neuron
    }

    /// All rows of `neurons.csv`.
    pub fn rows(&self) -> &[NeuronRow] {
        &self.bundle.neurons
    }

    /// The anchor data for model `model`, if it was an anchor.
    pub fn anchor(&self, model: usize) -> Option<&AnchorData> {
        self.anchors.iter().find(|a| a.anchor == model)
    }

    /// The row of an anchor neuron.
    pub fn row(&self, id: NeuronId) -> Option<&NeuronRow> {
        let a = self.anchor(id.model)?;
        let i = *a.rows.get(self.index(id))?;
        self.bundle.neurons.get(i)
    }

    /// The id of row `i`.
    pub fn id_of_row(&self, i: usize) -> Option<NeuronId> {
        let r = self.bundle.neurons.get(i)?;
        Some(NeuronId {
            model: self.names.iter().position(|n| *n == r.model)?,
            layer: r.layer,
            neuron: r.neuron,
        })
    }

    /// Best matches of an anchor neuron in each other model (empty if `id.model` is no anchor).
    pub fn matches(&self, id: NeuronId) -> Vec<Match> {
        let Some(a) = self.anchor(id.model) else {
            return Vec::new();
        };
        let i = self.index(id);
        a.others
            .iter()
            .enumerate()
            .filter_map(|(k, &o)| {
                Some(Match {
                    id: NeuronId {
                        model: o,
                        layer: usize::try_from(*a.max_layer[k].get(i)?).ok()?,
                        neuron: usize::try_from(*a.max_neuron[k].get(i)?).ok()?,
                    },
                    corr: *a.max_corr[k].get(i)?,
                    min_corr: *a.min_corr[k].get(i)?,
                    baseline: *a.baseline[k].get(i)?,
                })
            })
            .collect()
    }

    /// Universal counts at `threshold` for anchor `model`: per layer `(universal, total)` (a
    /// binary search per layer in the excess correlations sorted at open).
    pub fn counts(&self, model: usize, threshold: f64) -> Vec<(usize, usize)> {
        match self.anchor(model) {
            Some(a) => a
                .excess
                .iter()
                .map(|v| {
                    (
                        v.len() - v.partition_point(|&x| x <= threshold),
                        self.shape(model).d_mlp,
                    )
                })
                .collect(),
            None => vec![(0, 0); self.shape(model).n_layers],
        }
    }

    /// The within-layer percentile of [`NEURON_STATS`]`[k]` of an anchor neuron (scipy's
    /// `percentileofscore(kind='rank')`), from the ranks made at open.
    pub fn percentile(&self, id: NeuronId, k: usize) -> Option<f64> {
        let a = self.anchor(id.model)?;
        let (_, f) = NEURON_STATS.get(k)?;
        Some(a.ranks.get(k)?.get(id.layer)?.percentile(f(self.row(id)?)))
    }

    /// The token ids at the top and bottom of an anchor neuron's vocabulary projection.
    pub fn vocab_ends(&self, id: NeuronId) -> Option<(&[i32], &[i32])> {
        let (t, b) = self.anchor(id.model)?.vocab_ends.as_ref()?;
        let i = self.index(id) * VOCAB_ENDS;
        Some((t.get(i..i + VOCAB_ENDS)?, b.get(i..i + VOCAB_ENDS)?))
    }

    /// The pre-activation histogram of an anchor neuron (`HIST_BINS` counts), when the bundle has
    /// histograms.
    pub fn histogram(&self, id: NeuronId) -> Option<&[u32]> {
        let h = self.histograms.get(self.names.get(id.model)?)?;
        let b = seedscope_gpu::HIST_BINS;
        let i = self.index(id);
        h.get(i * b..(i + 1) * b)
    }

    /// An anchor neuron's best token features with their variance explained, best first.
    pub fn best_features(&self, id: NeuronId) -> Vec<(&str, f32)> {
        let Some(a) = self.anatomy.get(&id.model) else {
            return Vec::new();
        };
        let nb = seedscope_analysis::anatomy::BEST_FEATURES;
        let i = self.index(id);
        (0..nb)
            .filter_map(|j| {
                let f = usize::try_from(*a.best_feature.get(i * nb + j)?).ok()?;
                Some((a.features.get(f)?.name.as_str(), a.best_vr[i * nb + j]))
            })
            .collect()
    }

    /// An anchor neuron's tokens with the highest mean activation over the analysed data, with
    /// those means.
    pub fn mean_top_tokens(&self, id: NeuronId) -> Vec<(u32, f32)> {
        let Some(a) = self.anatomy.get(&id.model) else {
            return Vec::new();
        };
        let nt = seedscope_analysis::anatomy::TOP_TOKENS;
        let i = self.index(id);
        (0..nt)
            .filter_map(|j| {
                let t = u32::try_from(*a.top_token.get(i * nt + j)?).ok()?;
                Some((t, a.top_token_mean[i * nt + j]))
            })
            .collect()
    }

    /// The anchor's tokenizer (`tokenizer.json` of the first model), for showing token ids.
    pub fn tokenizer(&self) -> Option<&seedscope_data::TextTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Names of the saved tiles.
    pub fn tile_names(&self) -> impl Iterator<Item = &str> {
        self.tiles.keys().map(String::as_str)
    }

    /// The tile name for anchor `a` layer `la` × model `b` layer `lb`.
    pub fn tile_name(&self, a: usize, la: usize, b: usize, lb: usize) -> String {
        format!("{}/{}/L{la}-L{lb}", self.names[a], self.names[b])
    }

    /// Read one saved tile, `[anchor d_mlp, other d_mlp]` row-major (rows: anchor neurons), as
    /// f32.
    pub fn read_tile(&self, name: &str) -> Result<Vec<f32>, AppError> {
        let path = self.source.path(TILES);
        let &((start, end), shape) = self
            .tiles
            .get(name)
            .ok_or_else(|| corrupt(&path, format!("no tile {name}")))?;
        let bytes = self
            .source
            .read_range(TILES, start, (end - start) as usize)?;
        if bytes.len() != shape[0] * shape[1] * 2 {
            return Err(corrupt(
                &path,
                format!(
                    "tile {name} holds {} bytes, not {} x {} f16 values",
                    bytes.len(),
                    shape[0],
                    shape[1]
                ),
            ));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect())
    }
}

/// The index of `tiles.safetensors` (absent: no tiles): per tensor its byte range in the file
/// and its shape, from the header alone; each tile `{anchor}/{other}/L{a}-L{b}` is
/// `[anchor d_mlp, other d_mlp]` (the manifest `m`'s shapes).
#[allow(clippy::type_complexity)]
fn read_tile_index(
    source: &BundleSource,
    m: &seedscope_analysis::bundle::Manifest,
) -> Result<BTreeMap<String, ((u64, u64), [usize; 2])>, AppError> {
    let Some(index) = seedscope_analysis::bundle::TensorIndex::read(source, TILES)? else {
        return Ok(BTreeMap::new());
    };
    let expected = |name: &str| {
        let mut parts = name.split('/');
        let a = m.model_index(parts.next()?)?;
        let b = m.model_index(parts.next()?)?;
        Some([m.shape_of(a).d_mlp, m.shape_of(b).d_mlp])
    };
    index
        .entries()
        .map(
            |(name, e)| match (e.dtype, e.shape.as_slice(), expected(name)) {
                (Dtype::F16, &[r, c], Some(want)) if [r, c] == want => {
                    Ok((name.to_owned(), ((e.start, e.end), [r, c])))
                }
                (_, _, want) => Err(corrupt(
                    index.path(),
                    match want {
                        Some([r, c]) => format!("tile {name}: not an f16 [{r}, {c}] tensor"),
                        None => format!("tile {name}: not named after two of the bundle's models"),
                    },
                )),
            },
        )
        .collect()
}

/// `histograms.safetensors` (absent: none): per model name its u32 counts (the manifest `m`
/// gives each model's neurons).
fn read_histograms(
    source: &BundleSource,
    m: &seedscope_analysis::bundle::Manifest,
) -> Result<BTreeMap<String, Vec<u32>>, AppError> {
    let path = &source.path(seedscope_analysis::bundle::HISTOGRAMS);
    let Some(bytes) = source.read(seedscope_analysis::bundle::HISTOGRAMS)? else {
        return Ok(BTreeMap::new());
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    st.names()
        .into_iter()
        .map(|name| {
            let model = m.model_index(name).ok_or_else(|| {
                corrupt(
                    path,
                    format!("histograms of {name}, no model of the bundle"),
                )
            })?;
            let want = m.shape_of(model).width() * seedscope_gpu::HIST_BINS;
            Ok((name.to_string(), tensor(&st, name, path, want, Dtype::U32)?))
        })
        .collect()
}

impl Explorer {
    /// Why the bundle shows no stored examples for a neuron of `model`: it was not an anchor
    /// (bundles keep examples for their anchors' neurons), or its examples file is not here
    /// (written without it, or not fetched: the page refuses one too large for it).
    pub fn why_no_stored_examples(&self, model: usize) -> &'static str {
        if self.anchors.iter().any(|a| a.anchor == model) && !self.anatomy.contains_key(&model) {
            "none here: this bundle's examples file (anatomy.safetensors) is not loaded"
        } else {
            "none stored: bundles keep examples for their anchors' neurons"
        }
    }

    /// The examples the bundle stores for `neurons` (its `anatomy.safetensors`: each anchor
    /// neuron's top activations with 50 tokens before and 10 after), for where the models
    /// cannot run (the browser). Neurons of models that were not an anchor get none; the
    /// stored examples carry the activation at the example's token only.
    pub fn stored_examples(&self, neurons: &[NeuronId]) -> Result<Vec<Examples>, AppError> {
        let tok = self
            .tokenizer()
            .ok_or("the bundle has no tokenizer to show the examples' tokens with")?;
        let mut out = Vec::new();
        for &n in neurons {
            // Only anchors have examples in the bundle; each neuron's are read by range.
            let Some(a) = self.anatomy.get(&n.model) else {
                out.push(Examples {
                    id: n,
                    top: Vec::new(),
                    top_tokens: Vec::new(),
                    scanned: 0,
                });
                continue;
            };
            let i = self.index(n);
            let win = a.window();
            let (values, windows) = a.examples(&self.source, i)?;
            let top = (0..a.k)
                .filter_map(|j| {
                    let value = *values.get(j)?;
                    let ids = windows.get(j * win..(j + 1) * win)?;
                    if !value.is_finite() || ids.get(a.context.0).is_none_or(|&t| t < 0) {
                        return None;
                    }
                    let pos = ids[..a.context.0].iter().filter(|&&t| t >= 0).count();
                    let tokens: Vec<String> = ids
                        .iter()
                        .filter(|&&t| t >= 0)
                        .map(|&t| tok.decode(&[t as u32]).unwrap_or_default())
                        .collect();
                    let mut acts = vec![0.0; tokens.len()];
                    acts[pos] = value;
                    Some(Example {
                        value,
                        row: 0,
                        pos,
                        tokens,
                        acts,
                    })
                })
                .collect();
            out.push(Examples {
                id: n,
                top,
                top_tokens: Vec::new(),
                scanned: 0,
            });
        }
        Ok(out)
    }
}
