//! Writing a bundle: its files in memory ([`bundle_files`]), then into a directory atomically
//! ([`write_bundle_files`]: assembled in `<out>.partial/`, renamed into place when complete).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::rows::{NeuronRow, PCT_COLUMNS, RowExtras, layer_percentiles, neuron_rows};
use super::{
    ANATOMY, ATTENTION, CORRELATION, HISTOGRAMS, MANIFEST, Manifest, NEURONS, TILES, TOKENIZER,
    VOCAB_MOMENTS, partial_dir,
};
use crate::AnalysisError;
use crate::engine::TokenSet;
use crate::features::FeatureSet;
use crate::results::Results;
use crate::weights::{NeuronWeights, VOCAB_ENDS};

/// The files of a bundle by name, in memory.
pub type BundleFiles = BTreeMap<String, Vec<u8>>;

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
        let stats = weights.get(r.anchor).and_then(|w| w.as_deref());
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
        let cat_f32 = |f: &dyn Fn(&crate::results::Matches) -> Vec<f32>,
                       list: &[crate::results::Matches]|
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
    // Every model's vocabulary moments (Fig. 6 across seeds), when all were computed.
    if let Some(all) = weights
        .iter()
        .map(|w| w.as_deref())
        .collect::<Option<Vec<_>>>()
        .filter(|all| all.len() == names.len())
    {
        let bytes: Vec<u8> = all
            .iter()
            .flat_map(|stats| stats.iter())
            .flat_map(|n| [n.vocab_mean, n.vocab_var, n.vocab_skew, n.vocab_kurt])
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        tensors.push((
            VOCAB_MOMENTS.into(),
            Dtype::F32,
            vec![names.len(), l, d, 4],
            bytes,
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
