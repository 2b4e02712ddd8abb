//! Running the bundle's models for the neuron page: a neuron's activation on text the user
//! types (in every seed at once) and its max-activating examples over the bundle's data.
//! On the desktop the models are read from the manifest's paths once per bundle, on the CPU
//! backend (small batches; the GPU, if any, is the analysis's), inside a task thread; in the
//! browser the page hands over models it fetched, on its WebGPU device. Activations are read
//! back asynchronously, so the same code runs in a thread and on the page's event loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::FloatDType;
use seedscope_data::{TextTokenizer, read_tokens_npy};
use seedscope_model::{
    BackendKind, ComputeDevice, ForwardOptions, HookPoint, LoadedModel, TokenBatch,
};

use crate::AppError;
use crate::data::{Example, Examples, Explorer, NeuronId};
use crate::jobs::{ProgressInfo, Reporter};

/// The bundle's models and tokenizer, loaded on first use and shared by tasks.
pub struct Models {
    device: ComputeDevice,
    /// Where the models come from: directories (loaded on first use) or already loaded.
    dirs: Vec<PathBuf>,
    loaded: Mutex<HashMap<usize, Arc<LoadedModel>>>,
    tokenizer: TextTokenizer,
    data: DataRef,
}

#[derive(Clone)]
struct DataRef {
    source: String,
    shape: [usize; 2],
    dropped: Vec<u32>,
    /// The token ids in memory (the browser, which has no files to read them from); `None`:
    /// read from `source`.
    ids: Option<Arc<Vec<u32>>>,
}

/// A neuron's activation on every token of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The neuron.
    pub id: NeuronId,
    /// Post-activation per token.
    pub acts: Vec<f32>,
}

/// Tokens of a text and the traces of the asked neurons.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveText {
    /// Token strings (BOS first).
    pub tokens: Vec<String>,
    /// One per asked neuron.
    pub traces: Vec<Trace>,
}

impl Models {
    /// Prepare to run the models of `ex` (nothing is loaded yet).
    pub fn new(ex: &Explorer) -> Result<Self, AppError> {
        let m = &ex.bundle.manifest;
        let dirs: Vec<PathBuf> = m.models.iter().map(|e| PathBuf::from(&e.path)).collect();
        let first = dirs
            .first()
            .ok_or_else(|| format!("{}: the manifest lists no models", ex.source.display()))?;
        let tokenizer = TextTokenizer::from_model_dir(first)?;
        let device = ComputeDevice::open(BackendKind::Cpu)?;
        Ok(Self {
            device,
            dirs,
            loaded: Mutex::new(HashMap::new()),
            tokenizer,
            data: DataRef {
                source: m.data_source.clone(),
                shape: m.data_shape,
                dropped: m.dropped_ids.clone(),
                ids: None,
            },
        })
    }

    /// The models of `ex`, already loaded on `device` (manifest order), with its tokenizer and,
    /// where the caller has them, the analysed token ids (`[rows, seq]` as the manifest records;
    /// without them examples and token searches say the data is missing).
    pub fn loaded(
        ex: &Explorer,
        device: ComputeDevice,
        models: Vec<LoadedModel>,
        tokenizer: TextTokenizer,
        ids: Option<Vec<u32>>,
    ) -> Self {
        let m = &ex.bundle.manifest;
        Self {
            device,
            dirs: models.iter().map(|l| l.dir.clone()).collect(),
            loaded: Mutex::new(
                models
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (i, Arc::new(l)))
                    .collect(),
            ),
            tokenizer,
            data: DataRef {
                source: m.data_source.clone(),
                shape: m.data_shape,
                dropped: m.dropped_ids.clone(),
                ids: Some(Arc::new(ids.unwrap_or_default())),
            },
        }
    }

    /// The models of `ex` from bytes in memory (the browser: the embedded family it fetched, or
    /// the models it analysed from disk), loaded on `device`: every model the manifest lists
    /// must be among `inputs` by name, with the weights and config its sha256 names. The data
    /// is `inputs`' token rows when they are the bundle's (its shape and sha256); otherwise
    /// there is none and examples come from the bundle ([`Models::has_data`]).
    pub fn from_memory(
        ex: &Explorer,
        device: ComputeDevice,
        inputs: &seedscope_analysis::job::MemoryInputs,
    ) -> Result<Self, AppError> {
        use seedscope_analysis::job::{data_sha256, sha256_hex};
        let m = &ex.bundle.manifest;
        let mut models = Vec::new();
        for e in &m.models {
            let Some((name, config, weights)) = inputs.models.iter().find(|x| x.0 == e.name) else {
                return Err(format!(
                    "{}: the bundle's model {} is not among the models at hand ({})",
                    ex.source.display(),
                    e.name,
                    inputs
                        .models
                        .iter()
                        .map(|x| x.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            };
            for (file, bytes) in [("config.json", config), ("model.safetensors", weights)] {
                if let Some((_, want)) = e.files.iter().find(|(f, _)| f == file)
                    && *want != sha256_hex(bytes)
                {
                    return Err(format!(
                        "{name}/{file} is not the one the bundle {} was made with (its sha256 \
                         differs from the manifest's)",
                        ex.source.display()
                    )
                    .into());
                }
            }
            models.push(LoadedModel::from_bytes(
                Path::new(name),
                config,
                weights.clone(),
                &device,
                FloatDType::F32,
            )?);
        }
        let first = models
            .first()
            .ok_or_else(|| format!("{}: the manifest lists no models", ex.source.display()))?;
        let tokenizer =
            TextTokenizer::from_bytes(&inputs.tokenizer_json, Path::new("tokenizer.json"))?;
        let (ids, shape) = inputs.token_rows(&tokenizer, first.config.max_positions())?;
        let ids = (shape == m.data_shape && data_sha256(&ids) == m.data_sha256).then_some(ids);
        Ok(Self::loaded(ex, device, models, tokenizer, ids))
    }

    /// Model `i`, loaded on first use. The cache's lock is held only to look up and to insert,
    /// never while loading (loads run side by side, and a panic while loading cannot poison
    /// it); a lock poisoned anyway is taken over, since the map stays consistent.
    fn model(&self, i: usize) -> Result<Arc<LoadedModel>, AppError> {
        let cache = || self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache().get(&i) {
            return Ok(m.clone());
        }
        let dir = self
            .dirs
            .get(i)
            .ok_or_else(|| format!("no model {i} in the bundle"))?;
        let m = LoadedModel::load_on(dir, &self.device, FloatDType::F32).map_err(|e| {
            format!("{e} (the bundle's models are read from the paths in its manifest)")
        })?;
        Ok(cache().entry(i).or_insert_with(|| Arc::new(m)).clone())
    }

    fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&t| {
                self.tokenizer
                    .decode(&[t])
                    .unwrap_or_else(|_| format!("<{t}>"))
            })
            .collect()
    }

    /// Per neuron (grouped by model), its post-activation on `ids` (`[rows, seq]`).
    async fn run(
        &self,
        ids: &[u32],
        rows: usize,
        seq: usize,
        neurons: &[NeuronId],
    ) -> Result<Vec<Vec<f32>>, AppError> {
        let mut out = vec![Vec::new(); neurons.len()];
        let mut by_model: HashMap<usize, Vec<usize>> = HashMap::new();
        for (k, n) in neurons.iter().enumerate() {
            by_model.entry(n.model).or_default().push(k);
        }
        let batch = TokenBatch::new(ids.to_vec(), rows, seq)?;
        for (model, ks) in by_model {
            let m = self.model(model)?;
            let options = ForwardOptions {
                taps: ks
                    .iter()
                    .map(|&k| HookPoint::post(neurons[k].layer))
                    .collect(),
                ..ForwardOptions::default()
            };
            let fwd = m.forward(&batch, &options)?;
            for k in ks {
                let n = neurons[k];
                let t = fwd
                    .taps
                    .get(&HookPoint::post(n.layer))
                    .ok_or_else(|| format!("no activations of layer {}", n.layer))?;
                let d = t.dims()[2];
                if n.neuron >= d {
                    return Err(format!("{} has only {d} neurons per layer", n.short()).into());
                }
                let col = t.clone().slice([0..rows, 0..seq, n.neuron..n.neuron + 1]);
                out[k] = to_vec(col).await?;
            }
        }
        Ok(out)
    }

    /// The activation of each of `neurons` on `text` (BOS prepended, cut to the context).
    pub async fn live_text(&self, text: &str, neurons: &[NeuronId]) -> Result<LiveText, AppError> {
        let mut ids = self.tokenizer.to_tokens(text, true)?;
        let ctx = self
            .model(neurons.first().map_or(0, |n| n.model))?
            .config
            .max_positions();
        ids.truncate(ctx);
        if ids.is_empty() {
            return Ok(LiveText {
                tokens: Vec::new(),
                traces: Vec::new(),
            });
        }
        let acts = self.run(&ids, 1, ids.len(), neurons).await?;
        Ok(LiveText {
            tokens: self.token_strings(&ids),
            traces: neurons
                .iter()
                .zip(acts)
                .map(|(&id, acts)| Trace { id, acts })
                .collect(),
        })
    }

    /// Whether the bundle's data can be scanned (examples, token searches): always from files,
    /// in memory only when the caller had the very ids the bundle was made from.
    pub fn has_data(&self) -> bool {
        let [n, seq] = self.data.shape;
        self.data
            .ids
            .as_ref()
            .is_none_or(|ids| ids.len() == n * seq)
    }

    /// The bundle's token rows (at most `max_rows`).
    fn data_rows(&self, max_rows: usize) -> Result<(Vec<u32>, usize, usize), AppError> {
        let path = Path::new(&self.data.source);
        let [n, seq] = self.data.shape;
        if let Some(ids) = &self.data.ids {
            if ids.len() != n * seq {
                return Err(format!(
                    "the bundle's data ({}) is not in this browser: examples and token searches \
                     run the models over it (the family's own data is fetched when the bundle \
                     was made from it)",
                    self.data.source
                )
                .into());
            }
            let rows = n.min(max_rows);
            return Ok((ids[..rows * seq].to_vec(), rows, seq));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("npy") {
            return Err(format!(
                "{}: examples are shown for token (.npy) data; this bundle was made from text",
                path.display()
            )
            .into());
        }
        let (ids, shape) = read_tokens_npy(path)?;
        if shape != [n, seq] {
            return Err(AppError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "now has shape {shape:?}, the bundle recorded {:?}",
                    [n, seq]
                ),
            });
        }
        let rows = n.min(max_rows);
        Ok((ids[..rows * seq].to_vec(), rows, seq))
    }

    /// Top-`k` examples of each of `neurons` over the first `max_rows` rows of the bundle's data
    /// (dropped positions skipped, as in the analysis).
    pub async fn examples(
        &self,
        neurons: &[NeuronId],
        top_k: usize,
        max_rows: usize,
        rep: &Reporter<Vec<Examples>>,
    ) -> Result<Vec<Examples>, AppError> {
        let (ids, rows, seq) = self.data_rows(max_rows)?;
        // The ids the analysis dropped (BOS/pad, newline), as its manifest records them.
        let drop = &self.data.dropped;
        let block = 32usize;
        // per neuron: (value, row, pos) candidates and per-token sums
        let mut best: Vec<Vec<(f32, usize, usize)>> = vec![Vec::new(); neurons.len()];
        let mut sums: Vec<HashMap<u32, (f64, usize)>> = vec![HashMap::new(); neurons.len()];
        let mut row_acts: Vec<HashMap<usize, Vec<f32>>> = vec![HashMap::new(); neurons.len()];
        let started = web_time::Instant::now();
        for r0 in (0..rows).step_by(block) {
            if rep.cancelled() {
                return Err(AppError::Cancelled);
            }
            let r1 = (r0 + block).min(rows);
            let acts = self
                .run(&ids[r0 * seq..r1 * seq], r1 - r0, seq, neurons)
                .await?;
            for (k, a) in acts.iter().enumerate() {
                for (i, &v) in a.iter().enumerate() {
                    let (row, pos) = (r0 + i / seq, i % seq);
                    let tok = ids[row * seq + pos];
                    if drop.contains(&tok) {
                        continue;
                    }
                    let e = sums[k].entry(tok).or_insert((0.0, 0));
                    e.0 += v as f64;
                    e.1 += 1;
                    best[k].push((v, row, pos));
                }
                // Keep the top k distinct rows so far, and their rows' activations.
                best[k].sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut seen = Vec::new();
                best[k].retain(|&(_, row, _)| {
                    if seen.contains(&row) || seen.len() >= top_k {
                        false
                    } else {
                        seen.push(row);
                        true
                    }
                });
                for &(_, row, _) in &best[k] {
                    if row >= r0 && row < r1 {
                        let i = (row - r0) * seq;
                        row_acts[k].insert(row, a[i..i + seq].to_vec());
                    }
                }
                row_acts[k].retain(|row, _| seen.contains(row));
            }
            let done = (r1 * seq) as u64;
            rep.progress(ProgressInfo::tokens(
                done,
                (rows * seq) as u64,
                started,
                format!("{} neuron(s)", neurons.len()),
            ));
        }
        Ok(neurons
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                let top = best[k]
                    .iter()
                    .map(|&(value, row, pos)| Example {
                        value,
                        row,
                        pos,
                        tokens: self.token_strings(&ids[row * seq..(row + 1) * seq]),
                        acts: row_acts[k].get(&row).cloned().unwrap_or_default(),
                    })
                    .collect();
                let mut toks: Vec<(u32, f32, usize)> = sums[k]
                    .iter()
                    .filter(|(_, (_, c))| *c >= 3)
                    .map(|(&t, &(s, c))| (t, (s / c as f64) as f32, c))
                    .collect();
                // Highest mean first (ties by token id, so the order does not depend on the
                // map's); only tokens on which the neuron fires: a mean above zero and at least
                // 1 % of the highest, not the near-zero GELU tails whose order is noise.
                toks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let floor = toks.first().map_or(0.0, |t| 0.01 * t.1);
                toks.retain(|t| t.1 > 0.0 && t.1 >= floor);
                toks.truncate(10);
                Examples {
                    id,
                    top,
                    top_tokens: toks
                        .into_iter()
                        .map(|(t, m, c)| (self.token_strings(&[t]).remove(0), m, c))
                        .collect(),
                    scanned: rows * seq,
                }
            })
            .collect())
    }

    /// Neurons of `model` ranked by how much more they fire on the token `query` than on other
    /// tokens: z = (mean activation on the token − mean activation) / std, over the first
    /// `max_rows` rows of the bundle's data. A query matches the tokens that decode to it exactly,
    /// else those that match it ignoring case and surrounding spaces.
    pub async fn token_search(
        &self,
        model: usize,
        query: &str,
        max_rows: usize,
        rep: &Reporter<TokenRanking>,
    ) -> Result<TokenRanking, AppError> {
        let (ids, rows, seq) = self.data_rows(max_rows)?;
        let vocab = self.tokenizer.vocab_size() as u32;
        let decoded: Vec<String> = (0..vocab)
            .map(|t| self.token_strings(&[t]).remove(0))
            .collect();
        let mut wanted: Vec<u32> = (0..vocab)
            .filter(|&t| decoded[t as usize] == query)
            .collect();
        if wanted.is_empty() {
            let q = query.trim().to_lowercase();
            wanted = (0..vocab)
                .filter(|&t| decoded[t as usize].trim().to_lowercase() == q)
                .collect();
        }
        if wanted.is_empty() {
            return Err(format!("no token of the vocabulary reads {query:?}").into());
        }
        let m = self.model(model)?;
        let (n_layers, d) = (m.config.n_layers(), m.config.d_mlp());
        // The ids the analysis dropped (BOS/pad, newline), as its manifest records them.
        let drop = &self.data.dropped;
        let width = n_layers * d;
        let (mut sum, mut sq, mut on) = (vec![0f64; width], vec![0f64; width], vec![0f64; width]);
        let (mut n, mut n_on) = (0usize, 0usize);
        let options = ForwardOptions::all_neurons(n_layers);
        let started = web_time::Instant::now();
        for r0 in (0..rows).step_by(32) {
            if rep.cancelled() {
                return Err(AppError::Cancelled);
            }
            let r1 = (r0 + 32).min(rows);
            let batch = TokenBatch::new(ids[r0 * seq..r1 * seq].to_vec(), r1 - r0, seq)?;
            let out = m.forward(&batch, &options)?;
            let mut layers = Vec::new();
            for l in 0..n_layers {
                let t = out
                    .taps
                    .get(&HookPoint::post(l))
                    .ok_or_else(|| format!("no activations of layer {l}"))?;
                layers.push(to_vec(t.clone()).await?);
            }
            for p in 0..(r1 - r0) * seq {
                let tok = ids[r0 * seq + p];
                if drop.contains(&tok) {
                    continue;
                }
                let hit = wanted.contains(&tok);
                n += 1;
                n_on += usize::from(hit);
                for (l, a) in layers.iter().enumerate() {
                    for (j, &v) in a[p * d..(p + 1) * d].iter().enumerate() {
                        let v = v as f64;
                        let k = l * d + j;
                        sum[k] += v;
                        sq[k] += v * v;
                        if hit {
                            on[k] += v;
                        }
                    }
                }
            }
            let done = (r1 * seq) as u64;
            rep.progress(ProgressInfo::tokens(
                done,
                (rows * seq) as u64,
                started,
                format!("token {query:?}"),
            ));
        }
        if n_on == 0 {
            return Err(format!(
                "{query:?} does not occur in the first {rows} rows of the bundle's data"
            )
            .into());
        }
        let mut ranked: Vec<(NeuronId, f32, f32)> = (0..width)
            .map(|k| {
                let mean = sum[k] / n as f64;
                let std = (sq[k] / n as f64 - mean * mean).max(0.0).sqrt();
                let mean_on = on[k] / n_on as f64;
                let z = if std > 0.0 {
                    (mean_on - mean) / std
                } else {
                    0.0
                };
                (
                    NeuronId {
                        model,
                        layer: k / d,
                        neuron: k % d,
                    },
                    mean_on as f32,
                    z as f32,
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(TokenRanking {
            query: query.to_owned(),
            occurrences: n_on,
            ranked,
        })
    }
}

/// A tensor's values (awaited: on WebGPU in the browser a read cannot block).
async fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>, AppError> {
    t.into_data_async()
        .await
        .map_err(|e| AppError::Other(format!("reading activations: {e}")))?
        .try_into_vec::<f32>()
        .map_err(|e| AppError::Other(format!("reading activations: {e:?}")))
}

/// Neurons ranked by their activation on one token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRanking {
    /// The token searched for.
    pub query: String,
    /// How often it occurred.
    pub occurrences: usize,
    /// `(neuron, mean activation on the token, z-score)`, highest z first.
    pub ranked: Vec<(NeuronId, f32, f32)>,
}
