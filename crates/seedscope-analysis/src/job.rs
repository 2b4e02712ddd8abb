//! A whole analysis as one call: load the models and the data, plan, run (resuming from a
//! checkpoint), write the bundle. `seedscope analyze` and the app's background jobs both run
//! this, so the CLI and the UI give the same bundle for the same request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use web_time::Instant;

use seedscope_data::{ENDOFTEXT, TextTokenizer, pack_rows, read_tokens_npy};
pub use seedscope_model::BackendKind;
use seedscope_model::{ComputeDevice, LoadedModel};
use sha2::{Digest, Sha256};

use crate::bundle::{Manifest, ModelEntry, TOKENIZER, partial_dir, write_bundle_files};
use crate::plan::{Plan, Reuse, Shape};
use crate::{AnalysisError, AnalysisOptions, Family, Outcome, Progress, Run, TokenSet};

/// The embedded seed family's model directories, seed-a first.
pub const FAMILY: [&str; 5] = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"];

/// The repository's `assets/family` directory (the embedded default).
pub fn family_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/family");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The family's model directories, seed-a first: what every command uses when no model is named.
pub fn family_models() -> Vec<PathBuf> {
    FAMILY.iter().map(|n| family_dir().join(n)).collect()
}

/// Where the tokens come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DataSource {
    /// The embedded family's held-out eval tokens (`assets/family/eval_tokens.npy`).
    Embedded,
    /// Token ids, int32/int64 `.npy` `[n_seq, seq_len]`, used as given.
    Tokens(PathBuf),
    /// UTF-8 text, tokenised with the anchor's `tokenizer.json` into rows that start with BOS.
    Text(PathBuf),
    /// JSON lines with a `"text"` field (the Pile's format; `.zst`-compressed or not), packed
    /// like TransformerLens `tokenize_and_concatenate` ([`seedscope_data::pile`]); with
    /// `max_tokens`, a seeded uniform sample of rows.
    Dataset(PathBuf),
}

/// Everything an analysis needs, as the CLI's flags or the app's dialog give it (recorded in a
/// shard's `shard.json`, the backend aside, so a merge rebuilds the same analysis).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AnalysisRequest {
    /// Model directories; the first is the anchor. Empty: the embedded family.
    pub models: Vec<PathBuf>,
    /// The data.
    pub data: DataSource,
    /// Tokens per row for text data (default: the model's context, at most 512).
    pub seq_len: Option<usize>,
    /// The bundle directory to write.
    pub out: PathBuf,
    /// Excess correlation above which a neuron is universal.
    pub threshold: f64,
    /// Seed of the rotation baseline.
    pub seed: u64,
    /// Use at most this many kept tokens.
    pub max_tokens: Option<u64>,
    /// Seed of the row sample of a [`DataSource::Dataset`] under `max_tokens`.
    pub data_seed: u64,
    /// Keep BOS/pad and newline positions.
    pub keep_all_tokens: bool,
    /// Every model as the anchor in turn.
    pub all_anchors: bool,
    /// Tiles to save: `all` or `A-B,...` layer pairs.
    pub save_tiles: Option<String>,
    /// Compute backend.
    #[serde(skip, default = "auto_backend")]
    pub backend: BackendKind,
    /// Memory budget of the run, bytes ([`AnalysisOptions::memory_budget`]); `None`:
    /// [`DEFAULT_BUDGET`], or where that cannot hold the run, the least that does and
    /// [`DEFAULT_HEADROOM`] (the log says so).
    #[serde(default)]
    pub memory_budget: Option<u64>,
    /// Token rows per block (default: what fits, at most 32).
    pub batch_size: Option<usize>,
    /// Time between checkpoints.
    pub checkpoint_every: Duration,
    /// Two-stage candidate refinement instead of the exhaustive all-pairs pass.
    pub refine: Option<crate::engine::Refine>,
    /// Compute the models in f16 where the device supports it (f32 otherwise, with a note).
    #[serde(default)]
    pub half: bool,
    /// The f32 co-moment kernel even where the GPU has cooperative matrices.
    #[serde(default)]
    pub fp32_co_moments: bool,
    /// The permutation null next to the rotation baseline (`--null permutation`).
    #[serde(default)]
    pub permutation_null: bool,
    /// The command line recorded in the manifest.
    pub command: Vec<String>,
    /// Run only shard `(index, count)` of the data: `out` becomes a shard directory of
    /// accumulated sums (`shard.json`, `pass-*.safetensors`) for [`AnalysisRequest::merge`].
    #[serde(default)]
    pub shard: Option<(usize, usize)>,
    /// Shard directories of this same analysis to combine into the bundle `out`, instead of
    /// running the models over the data (models and data are still read: weights, features).
    #[serde(default)]
    pub merge: Vec<PathBuf>,
}

fn auto_backend() -> BackendKind {
    BackendKind::Auto
}

/// `shard.json` of a shard directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardInfo {
    /// This shard.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
    /// Identifies the analysis (models, data, options), whatever device ran it.
    pub merge_key: String,
    /// The fingerprint its pass files carry.
    pub fingerprint: String,
    /// The device's largest binding, which shaped the plan the merge replays.
    pub max_binding: u64,
    /// Kept tokens this shard accumulated.
    pub tokens: u64,
    /// The analysis.
    pub request: AnalysisRequest,
}

/// File name of a shard's description.
pub const SHARD_INFO: &str = "shard.json";

/// Read `dir/shard.json`.
pub fn read_shard_info(dir: &Path) -> Result<ShardInfo, AnalysisError> {
    let path = dir.join(SHARD_INFO);
    let bytes = std::fs::read(&path).map_err(|source| AnalysisError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| AnalysisError::Corrupt {
        path,
        message: format!("not a Seedscope shard description: {e}"),
    })
}

impl Default for AnalysisRequest {
    /// The embedded default: the family on its eval tokens, into `seedscope-out/bundle`.
    fn default() -> Self {
        Self {
            models: Vec::new(),
            data: DataSource::Embedded,
            seq_len: None,
            out: PathBuf::from("seedscope-out/bundle"),
            threshold: 0.5,
            seed: 0,
            max_tokens: None,
            data_seed: 0,
            keep_all_tokens: false,
            all_anchors: false,
            save_tiles: None,
            backend: BackendKind::Auto,
            memory_budget: None,
            batch_size: None,
            checkpoint_every: Duration::from_secs(120),
            refine: None,
            half: false,
            fp32_co_moments: false,
            permutation_null: false,
            command: Vec::new(),
            shard: None,
            merge: Vec::new(),
        }
    }
}

/// What happens during a job, for a progress bar or a log.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A line for the log (device, shapes, plan).
    Log(String),
    /// The plan is known.
    Planned(Plan),
    /// Tokens done.
    Progress(Progress),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// The bundle is written.
    Written(PathBuf),
    /// Cancelled; rerunning the same request resumes from this checkpoint.
    Interrupted(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AnalysisError + '_ {
    move |source| AnalysisError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sha256_file(path: &Path) -> Result<String, AnalysisError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(format!("{:x}", h.finalize()))
}

/// The display name of a model directory: its last component; a training checkpoint inside a
/// model's directory (`seed-a/checkpoint-400`, as `seedscope train --save-steps` keeps them) is
/// named after both (`seed-a@checkpoint-400`), so the seeds of one step stay apart.
pub fn model_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(last) = name(dir) else {
        return dir.display().to_string();
    };
    let is_step = last
        .strip_prefix("checkpoint-")
        .or_else(|| last.strip_prefix("step"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match dir.parent().and_then(name) {
        Some(parent) if is_step => format!("{parent}@{last}"),
        _ => last,
    }
}

fn model_entry(model: &LoadedModel) -> Result<ModelEntry, AnalysisError> {
    let mut entries: Vec<_> = std::fs::read_dir(&model.dir)
        .map_err(io(&model.dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for p in entries {
        files.push((model_name(&p), sha256_file(&p)?));
    }
    Ok(ModelEntry {
        name: model_name(&model.dir),
        path: model.dir.display().to_string(),
        files,
        shape: Some(Shape::of(model)),
    })
}

/// Parse a tile list: `all`, or anchor-other layer pairs such as `0-0,1-1`.
pub fn parse_tiles(spec: Option<&str>, n_layers: usize) -> Result<Vec<(usize, usize)>, String> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    if spec == "all" {
        return Ok((0..n_layers)
            .flat_map(|a| (0..n_layers).map(move |b| (a, b)))
            .collect());
    }
    spec.split(',')
        .map(|p| {
            let bad = || format!("`{p}` is not LAYER-LAYER");
            let (a, b) = p.split_once('-').ok_or_else(bad)?;
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a >= n_layers || b >= n_layers {
                return Err(format!(
                    "layer pair {a}-{b} is outside the models' {n_layers} layers"
                ));
            }
            Ok((a, b))
        })
        .collect()
}

/// The ids whose positions the paper drops: BOS/pad and a single-token newline.
pub fn drop_ids(tokenizer: &TextTokenizer) -> Result<Vec<u32>, AnalysisError> {
    let mut ids: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    let nl = tokenizer.to_tokens("\n", false)?;
    if nl.len() == 1 {
        ids.extend(nl);
    }
    Ok(ids)
}

/// Refuse a family whose models do not share the anchor's tokenizer: the data are tokenised
/// once, with the anchor's, so every model must read the same ids. Names both tokenizers and
/// the first token that differs (models without a tokenizer file are taken as they are).
fn check_tokenizers(models: &[LoadedModel]) -> Result<(), AnalysisError> {
    let load = |m: &LoadedModel| {
        TextTokenizer::model_dir_has_tokenizer(&m.dir)
            .then(|| TextTokenizer::from_model_dir(&m.dir))
            .transpose()
    };
    let Some(first) = models.first() else {
        return Ok(());
    };
    let Some(anchor) = load(first)? else {
        return Ok(());
    };
    for m in &models[1..] {
        let Some(t) = load(m)? else { continue };
        let differs = |why: String| {
            AnalysisError::Invalid(format!(
                "{} and {} do not share a tokenizer ({why}): the data are tokenised once, with \
                 the anchor's, so every model must read the same ids",
                first.dir.display(),
                m.dir.display()
            ))
        };
        if t.vocab_size() != anchor.vocab_size() {
            return Err(differs(format!(
                "{} tokens against {}",
                anchor.vocab_size(),
                t.vocab_size()
            )));
        }
        for id in 0..anchor.vocab_size() as u32 {
            let (a, b) = (anchor.inner().id_to_token(id), t.inner().id_to_token(id));
            if a != b {
                return Err(differs(format!(
                    "token {id} is {a:?} in the first and {b:?} in the second"
                )));
            }
        }
    }
    Ok(())
}

/// The BOS id of a model's tokenizer, if it has one.
pub(crate) fn tokenizer_bos(model: &LoadedModel) -> Option<u32> {
    TextTokenizer::from_model_dir(&model.dir).ok()?.bos_id()
}

/// Token rows of `req`'s data and a description of where they came from.
pub fn load_tokens(
    req: &AnalysisRequest,
    anchor: &LoadedModel,
) -> Result<(TokenSet, String), AnalysisError> {
    let tok_path = anchor.dir.join("tokenizer.json");
    let tokenizer = if TextTokenizer::model_dir_has_tokenizer(&anchor.dir) {
        Some(TextTokenizer::from_model_dir(&anchor.dir)?)
    } else {
        None
    };
    let missing =
        |why: &str| AnalysisError::Invalid(format!("{} is missing: {why}", tok_path.display()));
    let drop = if req.keep_all_tokens {
        Vec::new()
    } else {
        let t = tokenizer.as_ref().ok_or_else(|| {
            missing(
                "it is needed to find the BOS/pad and newline tokens to drop (or keep all tokens)",
            )
        })?;
        drop_ids(t)?
    };
    let seq_len = req
        .seq_len
        .unwrap_or(anchor.config.max_positions().min(512));
    let (ids, shape, source) = match &req.data {
        DataSource::Tokens(p) => {
            let (ids, shape) = read_tokens_npy(p)?;
            (ids, shape, p.display().to_string())
        }
        DataSource::Embedded => {
            let p = family_dir().join("eval_tokens.npy");
            let (ids, shape) = read_tokens_npy(&p)?;
            (ids, shape, p.display().to_string())
        }
        DataSource::Text(p) => {
            let t = tokenizer
                .as_ref()
                .ok_or_else(|| missing("needed to tokenise text"))?;
            // Read in 1 MiB chunks, and under --max-tokens only as far as the budget (plus a
            // row) of tokens that are not dropped.
            let (mut seen, mut kept) = (0usize, 0u64);
            let need = req.max_tokens.map(|m| m + seq_len as u64);
            let stream = seedscope_data::corpus::stream_text_tokens(
                p,
                t,
                1 << 20,
                |chunk| chunk.replace(ENDOFTEXT, "\n"),
                |tokens| {
                    kept += tokens[seen..]
                        .iter()
                        .filter(|id| !drop.contains(id))
                        .count() as u64;
                    seen = tokens.len();
                    need.is_some_and(|n| kept >= n)
                },
            )?;
            let (ids, n) = pack_rows(&stream, seq_len, t.bos_id());
            (ids, [n, seq_len], p.display().to_string())
        }
        DataSource::Dataset(p) => {
            let t = tokenizer
                .as_ref()
                .ok_or_else(|| missing("needed to tokenise the documents"))?;
            // Rows to sample for the token budget: a row keeps at most seq_len - 1 tokens.
            let max_rows = req
                .max_tokens
                .map(|m| (m as usize).div_ceil(seq_len.saturating_sub(1).max(1)) + 1);
            let rows = seedscope_data::pile::read_pile_rows(
                p,
                t,
                &seedscope_data::pile::PileOptions {
                    seq_len,
                    min_chars: 50,
                    max_rows,
                    seed: req.data_seed,
                },
            )?;
            (rows.ids, [rows.n_rows, seq_len], p.display().to_string())
        }
    };
    if shape[0] == 0 {
        return Err(AnalysisError::Invalid(format!(
            "{source}: no complete rows of {} tokens",
            shape[1]
        )));
    }
    Ok((
        TokenSet {
            ids,
            n_rows: shape[0],
            seq_len: shape[1],
            drop_ids: drop,
        },
        source,
    ))
}

/// The data of an in-memory analysis.
pub enum MemoryTokens {
    /// Token rows, an int32/int64 `.npy` `[n_rows, seq_len]`, used as given.
    Npy(Vec<u8>),
    /// UTF-8 text, tokenised with the anchor's tokenizer into rows of the model's context (at
    /// most 512) that start with BOS, as `seedscope analyze --text` does.
    Text(String),
}

/// An analysis's inputs held in memory (what the browser fetches or the user picks): per model
/// its name, `config.json` and `model.safetensors`; the data; the anchor's `tokenizer.json`.
pub struct MemoryInputs {
    /// `(name, config.json, model.safetensors)` per model, the anchor first.
    pub models: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// The data.
    pub tokens: MemoryTokens,
    /// The anchor's tokenizer.
    pub tokenizer_json: Vec<u8>,
    /// Where the tokens came from, for the manifest.
    pub source: String,
}

impl MemoryInputs {
    /// The data as token rows `(ids, [rows, seq_len])`: the `.npy` as given, or the text
    /// tokenised with `tokenizer` into rows of the model's context (`max_positions`, at most
    /// 512) behind BOS, as `seedscope analyze --text` does. What the analysis of these inputs
    /// reads, so live text and example scans read the same rows.
    pub fn token_rows(
        &self,
        tokenizer: &TextTokenizer,
        max_positions: usize,
    ) -> Result<(Vec<u32>, [usize; 2]), AnalysisError> {
        match &self.tokens {
            MemoryTokens::Npy(bytes) => Ok(seedscope_data::read_tokens_npy_bytes(
                bytes,
                Path::new(&self.source),
            )?),
            MemoryTokens::Text(text) => {
                let seq_len = max_positions.min(512);
                let stream = tokenizer.to_tokens(&text.replace(ENDOFTEXT, "\n"), false)?;
                let (ids, n) = pack_rows(&stream, seq_len, tokenizer.bos_id());
                if n == 0 {
                    return Err(AnalysisError::Invalid(format!(
                        "{}: shorter than one row of {seq_len} tokens",
                        self.source
                    )));
                }
                Ok((ids, [n, seq_len]))
            }
        }
    }
}

/// Run `req`'s analysis (threshold, baseline seed, token budget, tiles; its paths are unused) on
/// inputs in memory, to a bundle in memory: no files, no checkpoints, and no blocking (GPU reads
/// are awaited), so it runs in the browser on the page's event loop. The models run on
/// `device`; the weight statistics and attention scores are computed from CPU copies (Burn's
/// blocking reads are not possible in the browser). `None` when cancelled.
pub async fn analyse_in_memory(
    req: &AnalysisRequest,
    inputs: &MemoryInputs,
    device: &ComputeDevice,
    cancel: Arc<AtomicBool>,
    mut events: impl FnMut(JobEvent),
) -> Result<Option<crate::bundle::BundleFiles>, AnalysisError> {
    let started = Instant::now();
    if inputs.models.len() < 2 {
        return Err(AnalysisError::Invalid(
            "universality needs at least two models (an anchor and another seed)".into(),
        ));
    }
    events(JobEvent::Log(format!(
        "device: {}",
        device_line(device, req)
    )));
    let cpu = ComputeDevice::open_async(BackendKind::Cpu)
        .await
        .map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    let (mut models, mut stat_models, mut entries) = (Vec::new(), Vec::new(), Vec::new());
    for (name, config, weights) in &inputs.models {
        let step = Instant::now();
        let dir = Path::new(name);
        let f32 = burn::tensor::FloatDType::F32;
        models.push(LoadedModel::from_bytes(
            dir,
            config,
            weights.clone(),
            device,
            f32,
        )?);
        stat_models.push(LoadedModel::from_bytes(
            dir,
            config,
            weights.clone(),
            &cpu,
            f32,
        )?);
        entries.push(ModelEntry {
            name: name.clone(),
            path: name.clone(),
            files: vec![
                ("config.json".into(), sha256_hex(config)),
                ("model.safetensors".into(), sha256_hex(weights)),
            ],
            shape: models.last().map(Shape::of),
        });
        events(JobEvent::Log(format!(
            "loaded {name} in {:.1} s",
            step.elapsed().as_secs_f64()
        )));
    }
    let names: Vec<String> = inputs.models.iter().map(|m| m.0.clone()).collect();
    let tokenizer = TextTokenizer::from_bytes(&inputs.tokenizer_json, Path::new(TOKENIZER))?;
    let (ids, shape) = inputs.token_rows(&tokenizer, models[0].config.max_positions())?;
    let tokens = TokenSet {
        ids,
        n_rows: shape[0],
        seq_len: shape[1],
        drop_ids: if req.keep_all_tokens {
            Vec::new()
        } else {
            drop_ids(&tokenizer)?
        },
    };
    let options = analysis_options(req, &models, &tokens, device, false)?;
    let data_sha = data_sha256(&tokens.ids);
    let features = timed(
        &mut |l| events(JobEvent::Log(l)),
        &format!(
            "{} rows x {} tokens; token features",
            tokens.n_rows, tokens.seq_len
        ),
        || token_features(Some(&tokenizer), models[0].config.vocab_size(), &tokens.ids),
    );
    let run = Run {
        family: Family {
            models: &models,
            device,
        },
        tokens: &tokens,
        options: &options,
        fingerprint: String::new(),
        work_dir: None,
        cancel,
        checkpoint_every: Duration::MAX,
        rotations: None,
        anatomy: Some(crate::anatomy::AnatomySpec {
            features: features.clone(),
            seq_len: tokens.seq_len,
        }),
    };
    let plan = run.plan()?;
    events(JobEvent::Planned(plan));
    let results = match run.run_async(|p| events(JobEvent::Progress(p))).await? {
        Outcome::Interrupted { .. } => return Ok(None),
        Outcome::Done(r) => r,
    };
    events(JobEvent::Log(format!(
        "correlation passes done after {:.1} s",
        started.elapsed().as_secs_f64()
    )));
    let files = assemble(
        &Assembly {
            results: &results,
            stat_models: &stat_models,
            projection: crate::weights::Projection::Host,
            names: &names,
            entries,
            tokens: &tokens,
            features: &features,
            bos: tokenizer.bos_id(),
            source: inputs.source.clone(),
            data_sha,
            options: &options,
            req,
            device: device_line(device, req),
            seconds: started.elapsed().as_secs_f64(),
        },
        Some(inputs.tokenizer_json.clone()),
        &mut |l| events(JobEvent::Log(l)),
    )?;
    Ok(Some(files))
}

/// Run `step`, then `log` what it was and how long it took.
fn timed<T>(log: &mut dyn FnMut(String), what: &str, step: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = step();
    log(format!(
        "{what} in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    out
}

/// The sha256 of `bytes` in hex: what a manifest records of each model file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The sha256 of token ids (little-endian u32s): what a manifest records of its data.
pub fn data_sha256(ids: &[u32]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

/// The token features of the anatomy for a vocabulary of `vocab_size` (strings decoded with
/// `tokenizer`; empty without one) and the analysed ids.
fn token_features(
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
    ids: &[u32],
) -> Arc<crate::features::FeatureSet> {
    let vocab: Vec<String> = match tokenizer {
        Some(t) => (0..vocab_size as u32)
            .map(|id| t.decode(&[id]).unwrap_or_default())
            .collect(),
        None => vec![String::new(); vocab_size],
    };
    Arc::new(crate::features::FeatureSet::build(
        &vocab,
        ids,
        &crate::features::FeatureOptions::default(),
    ))
}

/// The memory budget of a run whose request names none ([`AnalysisRequest::memory_budget`]),
/// where the run needs no more.
pub const DEFAULT_BUDGET: u64 = 4 << 30;

/// What a run whose request names no budget gets beyond the least that holds it, where
/// [`DEFAULT_BUDGET`] does not: room for the correlations, which at the least budget that
/// holds a run may take a pass per tile (GPT-2 small's five seeds on the CPU: a first stage
/// of 192 passes at the least, 4 with this).
pub const DEFAULT_HEADROOM: u64 = 512 << 20;

/// `options` under the budget the run gets: the one asked for (`asked`), which must hold every
/// stage (`check`: [`Run::check_budget`]), else its error with the budget that would (at the
/// same rows per block); or by default [`DEFAULT_BUDGET`], or where that is too small, the
/// least budget (to a MiB) that holds every stage and [`DEFAULT_HEADROOM`].
fn fit_budget(
    asked: Option<u64>,
    options: AnalysisOptions,
    check: impl Fn(&AnalysisOptions) -> Result<(), AnalysisError>,
) -> Result<AnalysisOptions, AnalysisError> {
    let with = |budget: u64| AnalysisOptions {
        memory_budget: budget,
        ..options.clone()
    };
    let first = match check(&options) {
        Ok(()) => return Ok(options),
        Err(e) => e,
    };
    // In MiB: twice as much until it holds (a budget beyond every machine's memory is an
    // error that says so), then halve the gap down to the least that holds.
    const MIB: u64 = 1 << 20;
    let holds = |mib: u64| check(&with(mib * MIB)).is_ok();
    let (mut low, mut high) = (
        options.memory_budget / MIB,
        (options.memory_budget / MIB).max(1),
    );
    loop {
        high *= 2;
        if holds(high) {
            break;
        }
        if high >= 1 << 30 {
            return Err(first);
        }
        low = high;
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if holds(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    match (asked, first) {
        (None, _) => Ok(with(high * MIB + DEFAULT_HEADROOM)),
        (Some(_), AnalysisError::Invalid(why)) => Err(AnalysisError::Invalid(format!(
            "{why} (with --batch-size {} the run fits in --gpu-memory {high}MiB)",
            options.block_rows
        ))),
        (Some(_), e) => Err(e),
    }
}

/// The engine's options for `req` on these models, tokens and device (rows per block: what
/// fits the memory budget and the device's largest buffer, at most 32, unless given).
fn analysis_options(
    req: &AnalysisRequest,
    models: &[LoadedModel],
    tokens: &TokenSet,
    device: &ComputeDevice,
    half: bool,
) -> Result<AnalysisOptions, AnalysisError> {
    let shapes: Vec<Shape> = models.iter().map(Shape::of).collect();
    let deepest = shapes.iter().map(|s| s.n_layers).max().unwrap_or(0);
    let budget = req.memory_budget.unwrap_or(DEFAULT_BUDGET);
    let block_rows = req.batch_size.unwrap_or_else(|| {
        // A quarter of what the weights leave for a block's activations (the plan's
        // estimate: every stream and the forward's intermediates), and the widest model's
        // activations within the device's largest buffer.
        let weights: u64 = models.iter().map(LoadedModel::weight_bytes).sum();
        let free = budget.saturating_sub(weights);
        let kinds = if req.permutation_null { 3 } else { 2 };
        let row_bytes = crate::plan::activation_bytes(
            &shapes,
            kinds,
            tokens.seq_len,
            device.statistics_on_host(),
        )
        .max(1);
        let widest = shapes.iter().map(Shape::width).max().unwrap_or(0);
        let stream_row = (tokens.seq_len * widest * 4).max(1) as u64;
        let rows =
            (free / 4 / row_bytes).min(device.max_buffer_bytes.unwrap_or(u64::MAX) / stream_row);
        (rows as usize).clamp(1, 32)
    });
    Ok(AnalysisOptions {
        threshold: req.threshold,
        seed: req.seed,
        max_tokens: req.max_tokens,
        keep_all_tokens: req.keep_all_tokens,
        block_rows,
        memory_budget: budget,
        save_tiles: parse_tiles(req.save_tiles.as_deref(), deepest)
            .map_err(|e| AnalysisError::Invalid(format!("tiles to save: {e}")))?,
        all_anchors: req.all_anchors,
        refine: req.refine,
        half,
        fp32_co_moments: req.fp32_co_moments,
        permutation_null: req.permutation_null,
    })
}

/// The device line of the log and the manifest: the device and, on wgpu, the co-moment
/// kernel the run uses.
fn device_line(device: &ComputeDevice, req: &AnalysisRequest) -> String {
    match device.cross_kernel(req.fp32_co_moments) {
        Some(kernel) => format!("{}; co-moments: {}", device.describe(), kernel.describe()),
        None => device.describe(),
    }
}

/// Run the analysis `req` describes to its bundle. `cancel` stops it at the next block boundary
/// with a checkpoint (a rerun resumes); `events` hears the log, the plan and the progress.
pub fn run_analysis(
    req: &AnalysisRequest,
    cancel: Arc<AtomicBool>,
    mut events: impl FnMut(JobEvent),
) -> Result<JobEnd, AnalysisError> {
    let started = Instant::now();
    let dirs = if req.models.is_empty() {
        family_models()
    } else {
        req.models.clone()
    };
    if dirs.len() < 2 {
        return Err(AnalysisError::Invalid(
            "universality needs at least two models (an anchor and another seed)".into(),
        ));
    }
    if req.batch_size == Some(0) {
        return Err(AnalysisError::Invalid(
            "the batch size must be at least 1".into(),
        ));
    }
    let device =
        ComputeDevice::open(req.backend).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    events(JobEvent::Log(format!(
        "device: {}",
        device_line(&device, req)
    )));
    let half = req.half && device.supports_f16();
    if req.half && !half {
        events(JobEvent::Log(
            "f16 asked for, but the device has no shader-f16: computing in f32".into(),
        ));
    }
    let dtype = if half {
        burn::tensor::FloatDType::F16
    } else {
        burn::tensor::FloatDType::F32
    };
    // The models side by side (each load decodes and lays out its weights on one core); the
    // first error in the order given is the one reported.
    let models: Vec<_> = {
        use rayon::prelude::*;
        dirs.par_iter()
            .map(|d| LoadedModel::load_on(d, &device, dtype))
            .collect()
    };
    let models = models.into_iter().collect::<Result<Vec<_>, _>>()?;
    check_tokenizers(&models)?;
    let names: Vec<String> = models.iter().map(|m| model_name(&m.dir)).collect();
    let (tokens, source) = load_tokens(req, &models[0])?;
    let options = analysis_options(req, &models, &tokens, &device, half)?;
    // Token features for the anatomy (decoded with the anchor's tokenizer when it has one).
    let tokenizer = if TextTokenizer::model_dir_has_tokenizer(&models[0].dir) {
        Some(TextTokenizer::from_model_dir(&models[0].dir)?)
    } else {
        None
    };
    let features = token_features(
        tokenizer.as_ref(),
        models[0].config.vocab_size(),
        &tokens.ids,
    );
    let work = partial_dir(&req.out);
    // The run as planned under the budget asked for, or by default the one it needs.
    let planning = Run {
        family: Family {
            models: &models,
            device: &device,
        },
        tokens: &tokens,
        options: &options,
        fingerprint: String::new(),
        work_dir: Some(&work),
        cancel,
        checkpoint_every: req.checkpoint_every,
        rotations: None,
        anatomy: Some(crate::anatomy::AnatomySpec {
            features: features.clone(),
            seq_len: tokens.seq_len,
        }),
    };
    let fitted = fit_budget(req.memory_budget, options.clone(), |o| {
        planning.with_options(o).check_budget()
    })?;
    if req.memory_budget.is_none() && fitted.memory_budget > DEFAULT_BUDGET {
        events(JobEvent::Log(format!(
            "the default memory budget of {} MiB is too small for these models: the run takes \
             {} MiB, the least it needs and {} MiB for the correlations (--gpu-memory sets the \
             budget)",
            DEFAULT_BUDGET >> 20,
            fitted.memory_budget >> 20,
            DEFAULT_HEADROOM >> 20
        )));
    }
    let options = fitted;
    let entries = models
        .iter()
        .map(model_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let data_sha = data_sha256(&tokens.ids);
    // The analysis whatever the device (shards of it merge), then this run on this device.
    let merge_key = json_sha256(&(&entries, &data_sha, &options, env!("CARGO_PKG_VERSION")))?;
    let fingerprint = json_sha256(&(&merge_key, device.kind.to_string(), req.shard))?;
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let run = Run {
        fingerprint,
        ..planning.with_options(&options)
    };
    let plan = run.plan()?;
    events(JobEvent::Log(format!(
        "{} models ({}), {} rows x {} tokens from {source}",
        models.len(),
        crate::plan::shapes_in_words(&names, &models.iter().map(Shape::of).collect::<Vec<_>>()),
        tokens.n_rows,
        tokens.seq_len,
    )));
    match run.first_stage_plan()? {
        Some(first) => events(JobEvent::Log(format!(
            "first stage (all pairs over the sample): {}; second stage: the candidate pairs \
             over all tokens in one pass, about {} MiB at peak",
            plan_words(&first),
            run.second_stage_bytes()?.unwrap_or(0) >> 20
        ))),
        None => events(JobEvent::Log(plan_words(&plan))),
    }
    events(JobEvent::Planned(plan));
    let results = if !req.merge.is_empty() {
        let infos = req
            .merge
            .iter()
            .map(|d| read_shard_info(d))
            .collect::<Result<Vec<_>, _>>()?;
        check_shards(&req.merge, &infos, &merge_key)?;
        events(JobEvent::Log(format!(
            "merging {} shards ({} tokens)",
            infos.len(),
            infos.iter().map(|i| i.tokens).sum::<u64>()
        )));
        let fingerprints: Vec<String> = infos.iter().map(|i| i.fingerprint.clone()).collect();
        Box::new(run.merge(&req.merge, &fingerprints, infos[0].max_binding)?)
    } else if let Some((index, count)) = req.shard {
        let r = match run.run_shard(index, count, |p| events(JobEvent::Progress(p)))? {
            Outcome::Interrupted { checkpoint } => return Ok(JobEnd::Interrupted(checkpoint)),
            Outcome::Done(r) => r,
        };
        let info = ShardInfo {
            index,
            count,
            merge_key,
            fingerprint: run.fingerprint.clone(),
            max_binding: device.max_buffer_bytes.unwrap_or(u64::MAX),
            tokens: r.n_tokens,
            request: req.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&info).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
        seedscope_model::write_file_atomic(&work.join(SHARD_INFO), &json)?;
        crate::checkpoint::discard(&work)?;
        seedscope_model::replace_dir(&work, &req.out)?;
        events(JobEvent::Log(format!(
            "wrote shard {index}/{count} ({} tokens) to {} in {:.1} s",
            r.n_tokens,
            req.out.display(),
            started.elapsed().as_secs_f64()
        )));
        return Ok(JobEnd::Written(req.out.clone()));
    } else {
        match run.run(|p| events(JobEvent::Progress(p)))? {
            Outcome::Interrupted { checkpoint } => return Ok(JobEnd::Interrupted(checkpoint)),
            Outcome::Done(r) => r,
        }
    };
    let files = assemble(
        &Assembly {
            results: &results,
            stat_models: &models,
            projection: crate::weights::Projection::for_run(&device),
            names: &names,
            entries,
            tokens: &tokens,
            features: &features,
            source,
            data_sha,
            options: &options,
            req,
            device: device_line(&device, req),
            seconds: started.elapsed().as_secs_f64(),
            bos: tokenizer_bos(&models[0]),
        },
        std::fs::read(models[0].dir.join(TOKENIZER)).ok(),
        &mut |l| events(JobEvent::Log(l)),
    )?;
    write_bundle_files(&req.out, &files)?;
    events(JobEvent::Log(format!(
        "wrote {} in {:.1} s",
        req.out.display(),
        started.elapsed().as_secs_f64()
    )));
    Ok(JobEnd::Written(req.out.clone()))
}

/// A plan in words: its passes, its peak memory and how the later passes get activations.
fn plan_words(plan: &Plan) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let reuse = match plan.reuse {
        Reuse::Single => String::new(),
        Reuse::Memory => format!(
            "; the later passes read the first's {:.0} MiB of activations from memory",
            mib(plan.reuse_bytes)
        ),
        Reuse::Disk => format!(
            "; the later passes read the first's {:.0} MiB of activations from the work \
             directory",
            mib(plan.reuse_bytes)
        ),
    };
    let rotations = if plan.rotation_bytes > 0 {
        format!(
            ", {:.0} MiB the rotation baseline's matrices",
            mib(plan.rotation_bytes)
        )
    } else {
        String::new()
    };
    format!(
        "{} pass(es), about {:.0} MiB at peak ({:.0} MiB of it model weights and \
         results{rotations}){reuse}",
        plan.passes.len(),
        mib(plan.peak_bytes()),
        mib(plan.reserved_bytes)
    )
}

/// What [`assemble`] turns into a bundle's files.
struct Assembly<'a> {
    results: &'a crate::Results,
    /// The models the weight statistics and attention scores read (in the browser CPU copies:
    /// Burn's blocking reads are not possible there).
    stat_models: &'a [LoadedModel],
    /// Where their vocabulary projections run (the host in the browser, for the same reason).
    projection: crate::weights::Projection,
    names: &'a [String],
    entries: Vec<ModelEntry>,
    tokens: &'a TokenSet,
    features: &'a crate::features::FeatureSet,
    bos: Option<u32>,
    source: String,
    data_sha: String,
    options: &'a AnalysisOptions,
    req: &'a AnalysisRequest,
    device: String,
    seconds: f64,
}

/// The bundle of a finished run: weight statistics and attention scores of every anchor, the
/// neuron rows, the manifest, and the files (with a copy of `tokenizer`, the anchor's
/// `tokenizer.json`).
fn assemble(
    a_: &Assembly<'_>,
    tokenizer: Option<Vec<u8>>,
    log: &mut dyn FnMut(String),
) -> Result<crate::bundle::BundleFiles, AnalysisError> {
    let results = a_.results;
    for note in &results.notes {
        log(note.clone());
    }
    let c = results.cost;
    log(format!(
        "{} forward passes (a model over a block) in {:.1} s; {} reads of kept activations \
         instead, in {:.1} s",
        c.forwards, c.forward_seconds, c.reused, c.reuse_seconds
    ));
    let m = c.device_memory;
    if m.peak_reserved_bytes > 0 {
        log(format!(
            "peak GPU memory (wgpu's allocator report): {:.2} GiB in buffers, {:.2} GiB reserved",
            m.peak_allocated_bytes as f64 / f64::from(1 << 30),
            m.peak_reserved_bytes as f64 / f64::from(1 << 30)
        ));
    }
    // From every model's TransformerLens-processed weights (made one model at a time: for
    // GPT-2 small they are about 0.8 GB in f64): its weight statistics (the anchors' fill
    // their neuron rows, every model's vocabulary moments go to the report's Fig. 6), and for
    // an anchor its attention (de)activation scores (BOS keys from one forward of BOS).
    let anchors: Vec<usize> = results.anchors.iter().map(|a| a.anchor).collect();
    let mut attention = vec![None; anchors.len()];
    let started = Instant::now();
    let what = match a_.projection {
        crate::weights::Projection::Host => "weight statistics and attention scores",
        crate::weights::Projection::Device { .. } => {
            "weight statistics (the vocabulary projection on the GPU) and attention scores"
        }
    };
    let weights = timed(log, what, || {
        a_.stat_models
            .iter()
            .enumerate()
            .map(|(m, model)| {
                let p = model.processed_weights()?;
                if let (Some(bos), Some(k)) = (a_.bos, anchors.iter().position(|&a| a == m)) {
                    let keys = crate::attention::bos_keys(model, bos)?;
                    attention[k] = Some(crate::attention::attention_scores(
                        &p,
                        &keys,
                        a_.options.seed,
                    )?);
                }
                Ok(Some(crate::weights::weight_stats(&p, &a_.projection)?))
            })
            .collect::<Result<Vec<_>, AnalysisError>>()
    })?;
    let weights_seconds = started.elapsed().as_secs_f64();
    timed(log, "neuron rows and bundle files", || {
        bundle_of(a_, &weights, &attention, tokenizer, weights_seconds)
    })
}

/// The neuron rows, the manifest and the files of a finished run, given its anchors' weight
/// statistics and attention scores and the seconds they took.
fn bundle_of(
    a_: &Assembly<'_>,
    weights: &[Option<Vec<crate::weights::NeuronWeights>>],
    attention: &[Option<crate::attention::AttentionScores>],
    tokenizer: Option<Vec<u8>>,
    weights_seconds: f64,
) -> Result<crate::bundle::BundleFiles, AnalysisError> {
    let anchor = a_.results.shapes[a_.results.anchors[0].anchor];
    let n_layers = anchor.n_layers;
    let rows = crate::bundle::neuron_rows(
        &a_.results.anchors[0],
        a_.names,
        anchor.d_mlp,
        a_.options.threshold,
        &crate::bundle::RowExtras {
            weights: weights
                .get(a_.results.anchors[0].anchor)
                .and_then(|w| w.as_deref()),
            features: Some(a_.features),
            attention: attention.first().and_then(Option::as_ref),
        },
    );
    let (fraction, per_layer) = crate::stats::universal_fractions(&crate::stats::universal_counts(
        rows.iter().map(|(r, _)| (r.layer, r.is_universal)),
        n_layers,
    ));
    let manifest = Manifest {
        seedscope_version: env!("CARGO_PKG_VERSION").into(),
        command: a_.req.command.clone(),
        models: a_.entries.clone(),
        data_source: a_.source.clone(),
        data_sha256: a_.data_sha.clone(),
        data_shape: [a_.tokens.n_rows, a_.tokens.seq_len],
        dropped_ids: a_.tokens.drop_ids.clone(),
        data_seed: a_.req.data_seed,
        n_tokens: a_.results.n_tokens,
        n_layers,
        d_mlp: anchor.d_mlp,
        options: a_.options.clone(),
        baseline: format!(
            "per layer of each other model a d_mlp x d_mlp (its own d_mlp) Gaussian matrix with unit-norm rows \
             (seed {}; seedscope_analysis::rotation::rotation_matrix)",
            a_.options.seed
        ),
        one_to_one: crate::bundle::one_to_one_method(a_.options.refine.map(|r| r.k)),
        null: if a_.options.permutation_null {
            format!(
                "permutation: each block of {} token rows has its kept tokens rotated by an \
                 offset of at least {} drawn from seed {} and the block's first row \
                 (seedscope_analysis::engine::null_order); each anchor neuron's best \
                 correlation with every other model's activations in that order",
                a_.options.block_rows,
                crate::engine::NULL_SHIFT,
                a_.options.seed
            )
        } else {
            String::new()
        },
        device: a_.device.clone(),
        passes: a_.results.plan.passes.len(),
        peak_memory_bytes: a_.results.plan.peak_bytes(),
        seconds: a_.seconds,
        cost: crate::RunCost {
            weights_seconds,
            ..a_.results.cost
        },
        fraction_universal: fraction,
        fraction_universal_per_layer: per_layer,
    };
    crate::bundle::bundle_files(
        a_.results,
        a_.names,
        &manifest,
        weights,
        attention,
        Some((a_.features, a_.tokens)),
        tokenizer.as_deref(),
    )
}

/// Shards merge only when they are every slice of the same analysis, once each.
fn check_shards(
    dirs: &[PathBuf],
    infos: &[ShardInfo],
    merge_key: &str,
) -> Result<(), AnalysisError> {
    let count = infos.first().map_or(0, |i| i.count);
    let mut seen = vec![false; count];
    for (d, i) in dirs.iter().zip(infos) {
        if i.merge_key != merge_key {
            return Err(AnalysisError::Invalid(format!(
                "{} is a shard of a different analysis (other models, data or options)",
                d.display()
            )));
        }
        if i.count != count || i.index >= count {
            return Err(AnalysisError::Invalid(format!(
                "{} is shard {}/{}, the first is of {count}",
                d.display(),
                i.index,
                i.count
            )));
        }
        if std::mem::replace(&mut seen[i.index], true) {
            return Err(AnalysisError::Invalid(format!(
                "{} repeats shard {}/{count}",
                d.display(),
                i.index
            )));
        }
        if i.max_binding != infos[0].max_binding {
            return Err(AnalysisError::Invalid(format!(
                "{} ran on a device with another binding limit (so another plan)",
                d.display()
            )));
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(AnalysisError::Invalid(format!(
            "shard {missing}/{count} is missing: give every shard directory"
        )));
    }
    Ok(())
}

/// The sha256 of `key`'s JSON (fingerprints of analyses).
fn json_sha256<T: serde::Serialize>(key: &T) -> Result<String, AnalysisError> {
    let bytes = serde_json::to_vec(key).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget asked for is kept or refused with the run's own error; by default the run
    /// gets 4 GiB, or the least budget that holds it (to a MiB) and the headroom.
    #[test]
    fn the_default_budget_grows_to_what_the_run_needs_and_an_asked_one_does_not() {
        let need = (5_000 << 20) + 12_345;
        let check = |o: &AnalysisOptions| {
            if o.memory_budget >= need {
                Ok(())
            } else {
                Err(AnalysisError::Invalid(format!(
                    "{} MiB is too small",
                    o.memory_budget >> 20
                )))
            }
        };
        let options = AnalysisOptions {
            memory_budget: DEFAULT_BUDGET,
            ..AnalysisOptions::default()
        };
        let fitted = fit_budget(None, options.clone(), check).expect("fits");
        let least = fitted.memory_budget - DEFAULT_HEADROOM;
        assert!(
            least >= need && least - need <= 1 << 20,
            "{least} for {need}"
        );
        let asked = AnalysisOptions {
            memory_budget: 4 << 30,
            ..options.clone()
        };
        let e = fit_budget(Some(4 << 30), asked, check).expect_err("too small");
        // With the least budget that holds it, in whole MiB.
        let hint = format!("the run fits in --gpu-memory {}MiB", need.div_ceil(1 << 20));
        assert!(e.to_string().contains("4096 MiB is too small"), "{e}");
        assert!(e.to_string().contains(&hint), "{e}");
        // Where the default holds the run, it stays.
        let fits = fit_budget(None, options, |_| Ok(())).expect("fits");
        assert_eq!(fits.memory_budget, DEFAULT_BUDGET);
    }

    /// The log's and the manifest's device line name the co-moment kernel on wgpu (the one
    /// `--fp32-co-moments` forces, or the device's fastest), and nothing more on the CPU.
    #[test]
    fn the_device_line_names_the_co_moment_kernel_on_wgpu() {
        let req = AnalysisRequest::default();
        let cpu = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
        assert_eq!(device_line(&cpu, &req), cpu.describe());
        let gpu = ComputeDevice::open(BackendKind::Wgpu)
            .unwrap_or_else(|e| panic!("needs a wgpu adapter (lavapipe will do): {e}"));
        let fastest = device_line(&gpu, &req);
        assert!(
            fastest.starts_with(&gpu.describe())
                && (fastest.ends_with("co-moments: f32 register tiles (cross.wgsl)")
                    || fastest.contains("co-moments: cooperative matrices")),
            "{fastest}"
        );
        let forced = AnalysisRequest {
            fp32_co_moments: true,
            ..req
        };
        assert!(
            device_line(&gpu, &forced).ends_with("co-moments: f32 register tiles (cross.wgsl)")
        );
    }
}
