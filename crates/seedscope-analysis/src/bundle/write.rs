//! Writing a bundle: its files in memory ([`bundle_files`]), then into a directory atomically
//! ([`write_bundle_files`]: assembled in `<out>.partial/`, renamed into place when complete).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::anatomy_file::NO_WINDOW_TOKEN;
use super::rows::{NeuronRow, PCT_COLUMNS, RowExtras, layer_percentiles, neuron_rows};
use super::{
    ANATOMY, ATTENTION, CORRELATION, HISTOGRAMS, MANIFEST, Manifest, NEURONS, TILES, TOKENIZER,
    VOCAB_MOMENTS, partial_dir,
};
use crate::AnalysisError;
use crate::engine::TokenSet;
use crate::features::FeatureSet;
use crate::plan::Shape;
use crate::results::Results;
use crate::weights::{NeuronWeights, VOCAB_ENDS};

/// The files of a bundle by name, in memory.
pub type BundleFiles = BTreeMap<String, Vec<u8>>;

/// Write bundle `files` into `out` atomically: assembled in [`partial_dir`], the finished
/// run's checkpoint there removed once every file is written ([`crate::checkpoint::discard`]),
/// then renamed over any previous bundle. A file that cannot be written (a full disk) is an
/// error naming it that says how to finish from the checkpoint.
pub fn write_bundle_files(out: &Path, files: &BundleFiles) -> Result<(), AnalysisError> {
    let dir = partial_dir(out);
    std::fs::create_dir_all(&dir).map_err(|source| AnalysisError::Io {
        path: dir.clone(),
        source,
    })?;
    // Optional files a previous attempt may have left in the partial directory.
    for name in [TILES, HISTOGRAMS, ANATOMY, ATTENTION, TOKENIZER] {
        if !files.contains_key(name) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    let total: usize = files.values().map(Vec::len).sum();
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| {
            let kept = dir.join(crate::checkpoint::FILE);
            let source = if kept.exists() {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the finished run is kept in {}: make room for the bundle \
                         ({:.1} MB) and run the same command again, which writes it without \
                         running the passes again",
                        kept.display(),
                        total as f64 / 1e6
                    ),
                )
            } else {
                e
            };
            AnalysisError::Io { path, source }
        })?;
    }
    crate::checkpoint::discard(&dir)?;
    Ok(seedscope_model::replace_dir(&dir, out)?)
}

/// The files of the bundle for `results`, in memory: what the browser keeps and what
/// [`write_bundle_files`] writes. `weights[m]`: the weight statistics of model `m` (manifest
/// order), when computed; `attention[a]`: anchor `a`'s attention scores (order of
/// `results.anchors`); `tokenizer`: the anchor's `tokenizer.json`.
pub fn bundle_files(
    results: &Results,
    names: &[String],
    manifest: &Manifest,
    weights: &[Option<Vec<NeuronWeights>>],
    attention: &[Option<crate::attention::AttentionScores>],
    data: Option<(&FeatureSet, &TokenSet)>,
    tokenizer: Option<&[u8]>,
) -> Result<BundleFiles, AnalysisError> {
    // Per anchor, its rows of neurons.csv (the correlation file stores some of their columns).
    let rows: Vec<_> = results
        .anchors
        .iter()
        .enumerate()
        .map(|(ai, r)| {
            let extras = RowExtras {
                weights: weights.get(r.anchor).and_then(|w| w.as_deref()),
                features: data.map(|d| d.0),
                attention: attention.get(ai).and_then(Option::as_ref),
            };
            let d = results.shapes[r.anchor].d_mlp;
            neuron_rows(r, names, d, manifest.options.threshold, &extras)
        })
        .collect();
    let mut files = BundleFiles::new();
    if let Some(t) = tokenizer {
        files.insert(TOKENIZER.into(), t.to_vec());
    }
    files.insert(NEURONS.into(), neurons_csv(results, &rows)?);
    files.insert(
        CORRELATION.into(),
        correlation_file(results, &rows, names, weights)?,
    );
    let optional = [
        (HISTOGRAMS, histograms_file(results, names)?),
        (TILES, tiles_file(results, names)?),
        (ANATOMY, anatomy_file(results, data)?),
        (ATTENTION, attention_file(results, names, attention)?),
    ];
    for (name, bytes) in optional {
        if let Some(bytes) = bytes {
            files.insert(name.into(), bytes);
        }
    }
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    files.insert(MANIFEST.into(), json);
    Ok(files)
}

/// One safetensors file being assembled: named tensors as little-endian bytes.
#[derive(Default)]
struct TensorFile {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl TensorFile {
    fn push<const N: usize, T>(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        values: impl IntoIterator<Item = T>,
        le: impl Fn(T) -> [u8; N],
    ) {
        let bytes = values.into_iter().flat_map(le).collect();
        self.tensors.push((name, dtype, shape, bytes));
    }

    fn f32s(&mut self, name: String, shape: Vec<usize>, v: impl IntoIterator<Item = f32>) {
        self.push(name, Dtype::F32, shape, v, f32::to_le_bytes);
    }

    fn i32s(&mut self, name: String, shape: Vec<usize>, v: impl IntoIterator<Item = i32>) {
        self.push(name, Dtype::I32, shape, v, i32::to_le_bytes);
    }

    /// The file, with `info` as its metadata; `None` when it holds no tensor.
    fn finish(
        self,
        info: impl FnOnce() -> Result<HashMap<String, String>, AnalysisError>,
    ) -> Result<Option<Vec<u8>>, AnalysisError> {
        if self.tensors.is_empty() {
            return Ok(None);
        }
        let views = self
            .tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| AnalysisError::Invalid(format!("bundle tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let info = info()?;
        let bytes = safetensors::serialize(views, (!info.is_empty()).then_some(info))
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        Ok(Some(ordered_header(bytes)))
    }
}

/// A safetensors file with its header's keys in order. `safetensors::serialize` writes the
/// metadata map in hash order, which changes from process to process; ordered, a bundle's
/// bytes depend on its content alone (a rerun, or a resumed run, writes the same files). The
/// header is rewritten in place: the same entries, so the same length, padding included.
fn ordered_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let ordered = || -> Option<Vec<u8>> {
        let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let text = std::str::from_utf8(bytes.get(8..8 + n)?).ok()?;
        let mut header: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(text.trim_end()).ok()?;
        if let Some(meta) = header.get_mut("__metadata__") {
            let sorted: BTreeMap<String, serde_json::Value> =
                serde_json::from_value(meta.take()).ok()?;
            *meta = serde_json::to_value(sorted).ok()?;
        }
        let mut out = serde_json::to_vec(&header).ok()?;
        (out.len() <= n).then(|| {
            out.resize(n, b' ');
            out
        })
    };
    if let Some(header) = ordered() {
        bytes[8..8 + header.len()].copy_from_slice(&header);
    }
    bytes
}

/// Tensor names of anchor `ai` (position in `results.anchors`) with model index `anchor`: the
/// first anchor's are bare, the others' are prefixed `anchor{m}/`.
fn anchor_prefix(ai: usize, anchor: usize) -> String {
    if ai == 0 {
        String::new()
    } else {
        format!("anchor{anchor}/")
    }
}

/// A missing id (`u32::MAX`) as −1 (feature and token ids are far below `i32::MAX`).
fn signed(i: u32) -> i32 {
    if i == u32::MAX { -1 } else { i as i32 }
}

/// A missing index (`u32::MAX`) as −1, any other index exactly.
fn signed_wide(i: u32) -> i64 {
    if i == u32::MAX { -1 } else { i64::from(i) }
}

type Rows = Vec<(NeuronRow, Vec<(f32, u32)>)>;

/// `neurons.csv`: the [`NeuronRow`] columns, the within-layer percentiles, then per other model
/// the best correlation and its neuron (`layer.neuron` of that model); every anchor's rows in
/// turn.
fn neurons_csv(results: &Results, rows: &[Rows]) -> Result<Vec<u8>, AnalysisError> {
    let csv_err = |e: csv::Error| AnalysisError::Invalid(format!("writing neurons.csv: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let n_others = results.anchors.first().map_or(0, |r| r.others.len());
    let mut header: Vec<String> = NeuronRow::columns().iter().map(|s| s.to_string()).collect();
    header.extend(PCT_COLUMNS.iter().map(|(n, _)| format!("{n}_pct")));
    for k in 0..n_others {
        header.push(format!("corr_{k}"));
        header.push(format!("match_{k}"));
    }
    w.write_record(&header).map_err(csv_err)?;
    for (anchor, rows) in results.anchors.iter().zip(rows) {
        let others: Vec<_> = anchor.others.iter().map(|&o| results.shapes[o]).collect();
        let pcts = layer_percentiles(&rows.iter().map(|(r, _)| r).collect::<Vec<_>>());
        for ((row, per), pct) in rows.iter().zip(&pcts) {
            let mut rec = row.fields();
            rec.extend(pct.iter().map(|p| format!("{p:.4}")));
            for ((c, j), shape) in per.iter().zip(&others) {
                let (l, n) = shape.split(*j as usize);
                rec.push(format!("{c:.6}"));
                rec.push(format!("{l}.{n}"));
            }
            w.write_record(&rec).map_err(csv_err)?;
        }
    }
    w.into_inner()
        .map_err(|e| AnalysisError::Invalid(format!("writing neurons.csv: {e}")))
}

/// `correlation.safetensors`: per anchor (its `l` layers of `d` neurons) `max_corr`,
/// `min_corr`, `baseline_max_corr` (and with the permutation null `null_max_corr`)
/// `[n_other, l, d]` f32, the best match's `max_corr_layer` and `max_corr_neuron` i32 (in that
/// other model), `excess_corr` f32 and `is_universal` u8 `[l, d]`, `layer_match_fraction`
/// `[l, L]` (Fig. 2c, mean over the other models; `L`: the deepest other model's layers, a
/// shallower model's missing layers count 0) and `layer_match_fraction_per_model`
/// `[n_other, l, L]`, `vocab_top`/`vocab_bottom` `[l, d, 10]` i32 when the weights were
/// computed; and, when every model's were and the models share one shape, `vocab_moments`
/// `[n_models, l, d, 4]` (vocabulary mean, variance, skew, kurtosis per neuron: Fig. 6 across
/// seeds).
fn correlation_file(
    results: &Results,
    rows: &[Rows],
    names: &[String],
    weights: &[Option<Vec<NeuronWeights>>],
) -> Result<Vec<u8>, AnalysisError> {
    let mut file = TensorFile::default();
    for ((ai, r), rows) in results.anchors.iter().enumerate().zip(rows) {
        let prefix = anchor_prefix(ai, r.anchor);
        let Shape {
            n_layers: l,
            d_mlp: d,
        } = results.shapes[r.anchor];
        let others: Vec<Shape> = r.others.iter().map(|&o| results.shapes[o]).collect();
        let deepest = others.iter().map(|s| s.n_layers).max().unwrap_or(0);
        let n_o = r.others.len();
        let shape = vec![n_o, l, d];
        let real_max = r.real.iter().flat_map(|m| m.max.iter().copied());
        file.f32s(format!("{prefix}max_corr"), shape.clone(), real_max);
        let real_min = r.real.iter().flat_map(|m| m.min.iter().copied());
        file.f32s(format!("{prefix}min_corr"), shape.clone(), real_min);
        let base_max = r.baseline.iter().flat_map(|m| m.max.iter().copied());
        file.f32s(
            format!("{prefix}baseline_max_corr"),
            shape.clone(),
            base_max,
        );
        if !r.null.is_empty() {
            let null_max = r.null.iter().flat_map(|m| m.max.iter().copied());
            file.f32s(format!("{prefix}null_max_corr"), shape.clone(), null_max);
        }
        let best = || {
            r.real
                .iter()
                .zip(&others)
                .flat_map(|(m, s)| m.argmax.iter().map(|&j| s.split(j as usize)))
        };
        let layer_of = best().map(|(l, _)| l as i32);
        file.i32s(format!("{prefix}max_corr_layer"), shape.clone(), layer_of);
        let neuron_of = best().map(|(_, n)| n as i32);
        file.i32s(format!("{prefix}max_corr_neuron"), shape, neuron_of);
        let excess = rows.iter().map(|(row, _)| row.excess_corr as f32);
        file.f32s(format!("{prefix}excess_corr"), vec![l, d], excess);
        let universal = rows.iter().map(|(row, _)| u8::from(row.is_universal));
        file.push(
            format!("{prefix}is_universal"),
            Dtype::U8,
            vec![l, d],
            universal,
            |u| [u],
        );
        let per_model: Vec<Vec<f32>> = r
            .real
            .iter()
            .zip(&others)
            .map(|(m, s)| layer_match(&m.argmax, results.shapes[r.anchor], s, deepest))
            .collect();
        let mut mean = vec![0.0f32; l * deepest];
        for f in &per_model {
            for (m, v) in mean.iter_mut().zip(f) {
                *m += v / n_o as f32;
            }
        }
        file.f32s(
            format!("{prefix}layer_match_fraction"),
            vec![l, deepest],
            mean,
        );
        if let Some(stats) = weights.get(r.anchor).and_then(|w| w.as_deref()) {
            let ends = |f: fn(&NeuronWeights) -> &Vec<u32>| {
                stats.iter().flat_map(move |n| {
                    (0..VOCAB_ENDS).map(move |k| f(n).get(k).map_or(-1, |&t| t as i32))
                })
            };
            let shape = vec![l, d, VOCAB_ENDS];
            file.i32s(
                format!("{prefix}vocab_top"),
                shape.clone(),
                ends(|n| &n.vocab_top),
            );
            file.i32s(
                format!("{prefix}vocab_bottom"),
                shape,
                ends(|n| &n.vocab_bottom),
            );
        }
        file.f32s(
            format!("{prefix}layer_match_fraction_per_model"),
            vec![n_o, l, deepest],
            per_model.into_iter().flatten(),
        );
    }
    let shape = results.shapes.first().copied().unwrap_or_default();
    if let Some(all) = weights
        .iter()
        .map(|w| w.as_deref())
        .collect::<Option<Vec<_>>>()
        .filter(|all| all.len() == names.len())
        .filter(|_| results.shapes.iter().all(|&s| s == shape))
    {
        let moments = all
            .iter()
            .flat_map(|stats| stats.iter())
            .flat_map(|n| [n.vocab_mean, n.vocab_var, n.vocab_skew, n.vocab_kurt])
            .map(|v| v as f32);
        file.f32s(
            VOCAB_MOMENTS.into(),
            vec![names.len(), shape.n_layers, shape.d_mlp, 4],
            moments,
        );
    }
    let info = || {
        Ok(HashMap::from([(
            "format".to_owned(),
            "seedscope-correlation-v1".to_owned(),
        )]))
    };
    file.finish(info)?
        .ok_or_else(|| AnalysisError::Invalid("no anchor results to write".into()))
}

/// `histograms.safetensors`: per anchor (named by its model) the pre-activation counts, u32
/// `[l, d, HIST_BINS]`; metadata `edges`.
fn histograms_file(results: &Results, names: &[String]) -> Result<Option<Vec<u8>>, AnalysisError> {
    let mut file = TensorFile::default();
    for r in results.anchors.iter().filter(|r| !r.pre_hist.is_empty()) {
        let Shape {
            n_layers: l,
            d_mlp: d,
        } = results.shapes[r.anchor];
        file.push(
            names[r.anchor].clone(),
            Dtype::U32,
            vec![l, d, seedscope_gpu::HIST_BINS],
            r.pre_hist.iter().copied(),
            u32::to_le_bytes,
        );
    }
    file.finish(|| {
        let edges = serde_json::to_string(&crate::hist::edges())
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        Ok(HashMap::from([("edges".to_owned(), edges)]))
    })
}

/// `tiles.safetensors`: the saved correlation tiles, f16 `[anchor d_mlp, other d_mlp]`, named
/// `{anchor}/{other}/L{a}-L{b}`.
fn tiles_file(results: &Results, names: &[String]) -> Result<Option<Vec<u8>>, AnalysisError> {
    let mut file = TensorFile::default();
    for r in &results.anchors {
        for t in &r.tiles {
            let (da, db) = (
                results.shapes[r.anchor].d_mlp,
                results.shapes[t.other].d_mlp,
            );
            file.push(
                format!(
                    "{}/{}/L{}-L{}",
                    names[r.anchor], names[t.other], t.layer_a, t.layer_b
                ),
                Dtype::F16,
                vec![da, db],
                t.corr.iter().map(|&v| half::f16::from_f32(v)),
                half::f16::to_le_bytes,
            );
        }
    }
    file.finish(|| Ok(HashMap::new()))
}

/// `attention.safetensors`: per anchor (tensor names prefixed with its model name) `hist` and
/// `hist_baseline`, u64 counts of all (neuron, later head) attention scores and of the Gaussian
/// baseline's over [`crate::attention::SCORE_RANGE`] in [`crate::attention::SCORE_BINS`] bins.
fn attention_file(
    results: &Results,
    names: &[String],
    attention: &[Option<crate::attention::AttentionScores>],
) -> Result<Option<Vec<u8>>, AnalysisError> {
    let mut file = TensorFile::default();
    for (r, a) in results.anchors.iter().zip(attention) {
        let Some(a) = a else { continue };
        for (n, h) in [("hist", &a.hist), ("hist_baseline", &a.hist_baseline)] {
            file.push(
                format!("{}/{n}", names[r.anchor]),
                Dtype::U64,
                vec![crate::attention::SCORE_BINS],
                h.iter().copied(),
                u64::to_le_bytes,
            );
        }
    }
    file.finish(|| {
        let (lo, hi) = crate::attention::SCORE_RANGE;
        Ok(HashMap::from([(
            "range".to_owned(),
            format!("[{lo}, {hi}]"),
        )]))
    })
}

/// Tokens of context kept before and after each max-activating example (the paper's 50 / 10).
pub const CONTEXT: (usize, usize) = (50, 10);

/// `anatomy.safetensors`: per anchor (prefixed `anchor{m}/` after the first) the examples
/// `top_val` `[l, d, k]` f32, `top_index` `[l, d, k]` i64 (`row * seq_len + position`, −1 where
/// none) and `windows` `[l, d, k, 61]` token ids (50 before, the token, 10 after, within its
/// row): u16 with [`NO_WINDOW_TOKEN`] outside a row when every id fits, else i32 with −1; `best_feature` `[l, d, 3]` i32 with `best_vr` f32; `top_token` `[l, d, 10]`
/// i32 with `top_token_mean` f32; `pos_mi` `[l, d]` f32. Metadata `features`: the feature list
/// (JSON), `context`: `[50, 10]`.
fn anatomy_file(
    results: &Results,
    data: Option<(&FeatureSet, &TokenSet)>,
) -> Result<Option<Vec<u8>>, AnalysisError> {
    let Some((features, tokens)) = data else {
        return Ok(None);
    };
    let (before, after) = CONTEXT;
    let win = before + 1 + after;
    let seq = tokens.seq_len;
    // The tokens around global token index `g` (−1 outside its row, or for no example).
    let window = |g: u32| {
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
    };
    let (nb, nt) = (crate::anatomy::BEST_FEATURES, crate::anatomy::TOP_TOKENS);
    // Windows in u16 when every id fits (GPT-2's and Pythia's vocabularies do): half the file.
    let narrow = tokens.ids.iter().all(|&t| t < u32::from(NO_WINDOW_TOKEN));
    let mut file = TensorFile::default();
    for (ai, r) in results.anchors.iter().enumerate() {
        let Some(a) = &r.anatomy else { continue };
        let prefix = anchor_prefix(ai, r.anchor);
        let Shape {
            n_layers: l,
            d_mlp: d,
        } = results.shapes[r.anchor];
        let k = a.k;
        file.f32s(
            format!("{prefix}top_val"),
            vec![l, d, k],
            a.top_val.iter().copied(),
        );
        // Global token indices can pass i32: i64.
        let index = a.top_idx.iter().map(|&i| signed_wide(i));
        file.push(
            format!("{prefix}top_index"),
            Dtype::I64,
            vec![l, d, k],
            index,
            i64::to_le_bytes,
        );
        let windows = a.top_idx.iter().flat_map(|&g| window(g));
        if narrow {
            let narrow = windows.map(|t| u16::try_from(t).unwrap_or(NO_WINDOW_TOKEN));
            let shape = vec![l, d, k, win];
            file.push(
                format!("{prefix}windows"),
                Dtype::U16,
                shape,
                narrow,
                u16::to_le_bytes,
            );
        } else {
            file.i32s(format!("{prefix}windows"), vec![l, d, k, win], windows);
        }
        let best = a.best_feature.iter().map(|&f| signed(f));
        file.i32s(format!("{prefix}best_feature"), vec![l, d, nb], best);
        file.f32s(
            format!("{prefix}best_vr"),
            vec![l, d, nb],
            a.best_vr.iter().copied(),
        );
        let top_token = a.top_token.iter().map(|&t| signed(t));
        file.i32s(format!("{prefix}top_token"), vec![l, d, nt], top_token);
        let means = a.top_token_mean.iter().copied();
        file.f32s(format!("{prefix}top_token_mean"), vec![l, d, nt], means);
        file.f32s(
            format!("{prefix}pos_mi"),
            vec![l, d],
            a.pos_mi.iter().copied(),
        );
    }
    file.finish(|| {
        let list = serde_json::to_string(&features.features)
            .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        Ok(HashMap::from([
            ("features".to_owned(), list),
            ("context".to_owned(), format!("[{before}, {after}]")),
        ]))
    })
}

/// `[anchor layers, columns]` fractions of each anchor layer's neurons whose best match (`argmax`:
/// columns of the other model, of shape `other`) lies in each layer.
fn layer_match(argmax: &[u32], anchor: Shape, other: &Shape, columns: usize) -> Vec<f32> {
    let mut f = vec![0.0f32; anchor.n_layers * columns];
    for (i, &j) in argmax.iter().enumerate() {
        let (la, lb) = (anchor.layer_of(i), other.layer_of(j as usize));
        if lb < columns {
            f[la * columns + lb] += 1.0 / anchor.d_mlp as f32;
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata make the same bytes, whatever order the metadata's hash
    /// map holds them in, and the file reads back whole.
    #[test]
    fn a_tensor_file_is_the_same_bytes_for_the_same_content() {
        let file = |seed: u64| {
            let mut f = TensorFile::default();
            f.f32s("b".into(), vec![3], [1.0, 2.0, 3.0]);
            f.i32s("a".into(), vec![2], [7, -1]);
            let info = || {
                // Maps filled in different orders (and each with its own hash keys).
                let mut keys: Vec<u64> = (0..12).collect();
                keys.rotate_left(seed as usize);
                Ok(keys
                    .into_iter()
                    .map(|k| (format!("key{k}"), format!("[{k}, \"v\"]")))
                    .collect::<HashMap<_, _>>())
            };
            f.finish(info).expect("serialize").expect("a file")
        };
        let first = file(0);
        for seed in 1..6 {
            assert!(file(seed) == first, "run {seed} wrote other bytes");
        }
        let st = safetensors::SafeTensors::deserialize(&first).expect("a safetensors file");
        assert_eq!(
            st.tensor("a").expect("a").data(),
            &[7, 0, 0, 0, 255, 255, 255, 255]
        );
        let (_, header) = safetensors::SafeTensors::read_metadata(&first).expect("header");
        let meta = header.metadata().as_ref().expect("metadata");
        assert_eq!(meta.len(), 12);
        assert_eq!(meta["key5"], "[5, \"v\"]");
    }
}
