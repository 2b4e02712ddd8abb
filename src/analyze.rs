//! `seedscope analyze` and `seedscope summary`: universality of a seed family over a token set,
//! to a result bundle.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use seedscope_analysis::bundle::{Manifest, ModelEntry, partial_dir, write_bundle};
use seedscope_analysis::{AnalysisOptions, Bundle, Family, Outcome, Run, TokenSet};
use seedscope_data::{ENDOFTEXT, TextTokenizer, pack_rows, read_tokens_npy};
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel};
use sha2::{Digest, Sha256};

/// The embedded seed family, relative to the repository root.
pub const FAMILY: [&str; 5] = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"];

/// The repository's `assets/family` directory.
pub fn family_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/family")
}

/// The family's model directories, seed-a first: what every command uses when no model is named.
pub fn family_models() -> Vec<PathBuf> {
    FAMILY.iter().map(|n| family_dir().join(n)).collect()
}

/// Options of `seedscope analyze`.
#[derive(ClapArgs, Debug, Clone)]
#[command(group(clap::ArgGroup::new("data").args(["tokens", "text", "dataset"])))]
pub struct Args {
    /// Model directories (Hugging Face layout); the first is the anchor. Default: the embedded
    /// family assets/family/seed-{a..e}.
    #[arg(long, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Token ids, int32/int64 .npy [n_seq, seq_len], used as given.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// A UTF-8 text, tokenised with the anchor's tokenizer.json into rows that start with BOS.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// A JSON-lines file with a "text" field per line (documents joined as with --text).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Tokens per row for --text/--dataset (default: the model's context, at most 512).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// The bundle directory to write.
    #[arg(long, default_value = "seedscope-out/bundle")]
    pub out: PathBuf,
    /// Excess correlation above which a neuron is universal.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Seed of the rotation baseline.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many (kept) tokens.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Keep BOS/pad and newline positions (the paper drops them).
    #[arg(long)]
    pub keep_all_tokens: bool,
    /// Analyse with every model as the anchor in turn.
    #[arg(long)]
    pub all_anchors: bool,
    /// Save full correlation tiles (f16) for heatmaps: `all`, or anchor-other layer pairs such
    /// as `0-0,1-1`.
    #[arg(long)]
    pub save_tiles: Option<String>,
    /// Compute backend: auto (wgpu on a hardware GPU, else the CPU), wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Memory budget for activations and accumulators (e.g. 4GiB, 512MiB).
    #[arg(long, default_value = "4GiB")]
    pub gpu_memory: String,
    /// Token rows per block (default: as many as fit the budget and the device's largest
    /// binding, at most 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 120)]
    pub checkpoint_secs: u64,
}

impl Args {
    /// The embedded default: the family on its eval tokens.
    pub fn embedded() -> Self {
        Self {
            models: Vec::new(),
            tokens: None,
            text: None,
            dataset: None,
            seq_len: None,
            out: PathBuf::from("seedscope-out/bundle"),
            threshold: 0.5,
            seed: 0,
            max_tokens: None,
            keep_all_tokens: false,
            all_anchors: false,
            save_tiles: None,
            backend: BackendKind::Auto,
            gpu_memory: "4GiB".into(),
            batch_size: None,
            checkpoint_secs: 120,
        }
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

fn model_entry(model: &LoadedModel) -> Result<ModelEntry> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&model.dir)
        .with_context(|| format!("listing {}", model.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, sha256_file(&p)?));
    }
    Ok(ModelEntry {
        name: model_name(&model.dir),
        path: model.dir.display().to_string(),
        files,
    })
}

fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Parse `--save-tiles`.
fn parse_tiles(spec: Option<&str>, n_layers: usize) -> Result<Vec<(usize, usize)>> {
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
            let (a, b) = p
                .split_once('-')
                .with_context(|| format!("--save-tiles: `{p}` is not LAYER-LAYER"))?;
            let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
            if a >= n_layers || b >= n_layers {
                bail!("--save-tiles: layer pair {a}-{b} is outside the models' {n_layers} layers");
            }
            Ok((a, b))
        })
        .collect()
}

/// Token ids and where they came from.
fn load_tokens(args: &Args, anchor: &LoadedModel, embedded: bool) -> Result<(TokenSet, String)> {
    let tok_path = anchor.dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    let mut drop_ids = Vec::new();
    if !args.keep_all_tokens {
        let Some(t) = &tokenizer else {
            bail!(
                "{} is missing: it is needed to find the BOS/pad and newline tokens to drop \
                 (or pass --keep-all-tokens)",
                tok_path.display()
            );
        };
        drop_ids.extend(t.bos_id());
        let nl = t.to_tokens("\n", false)?;
        if nl.len() == 1 {
            drop_ids.extend(nl);
        }
    }
    let seq_len = args
        .seq_len
        .unwrap_or(anchor.config.max_positions().min(512));
    let text_rows = |text: &str| -> Result<(Vec<u32>, usize)> {
        let t = tokenizer.as_ref().with_context(|| {
            format!("{} is missing: needed to tokenise text", tok_path.display())
        })?;
        let stream = t.to_tokens(text, false)?;
        Ok(pack_rows(&stream, seq_len, t.bos_id()))
    };
    let (ids, shape, source) = if let Some(p) = &args.tokens {
        let (ids, shape) = read_tokens_npy(p)?;
        (ids, shape, p.display().to_string())
    } else if let Some(p) = &args.text {
        let text = seedscope_data::corpus::read_text(p)?;
        let (ids, n) = text_rows(&text.replace(ENDOFTEXT, "\n"))?;
        (ids, [n, seq_len], p.display().to_string())
    } else if let Some(p) = &args.dataset {
        let f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
        let mut joined = String::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", p.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}: not JSON", p.display(), i + 1))?;
            let text = v.get("text").and_then(|t| t.as_str()).with_context(|| {
                format!("{} line {}: no string field \"text\"", p.display(), i + 1)
            })?;
            joined.push_str(text);
            joined.push('\n');
        }
        let (ids, n) = text_rows(&joined)?;
        (ids, [n, seq_len], p.display().to_string())
    } else if embedded {
        let p = family_dir().join("eval_tokens.npy");
        let (ids, shape) = read_tokens_npy(&p)?;
        (ids, shape, p.display().to_string())
    } else {
        bail!("give the data to analyse: --tokens FILE.npy, --text FILE or --dataset FILE.jsonl");
    };
    if shape[0] == 0 {
        bail!("{source}: no complete rows of {} tokens", shape[1]);
    }
    Ok((
        TokenSet {
            ids,
            n_rows: shape[0],
            seq_len: shape[1],
            drop_ids,
        },
        source,
    ))
}

/// Run `seedscope analyze`.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let embedded = args.models.is_empty();
    if embedded && (args.tokens.is_some() || args.text.is_some() || args.dataset.is_some()) {
        eprintln!("no --models given: analysing the embedded family on the data given");
    }
    let dirs: Vec<PathBuf> = if embedded {
        family_models()
    } else {
        args.models.clone()
    };
    if dirs.len() < 2 {
        bail!("--models needs at least two models (an anchor and another seed)");
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    let budget = seedscope_analysis::plan::parse_bytes(&args.gpu_memory)
        .map_err(|e| anyhow::anyhow!("--gpu-memory: {e}"))?;
    let device = ComputeDevice::open(args.backend)?;
    eprintln!("device: {}", device.describe());
    let models = dirs
        .iter()
        .map(|d| LoadedModel::load_on(d, &device, burn::tensor::FloatDType::F32))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = models.iter().map(|m| model_name(&m.dir)).collect();
    let (tokens, source) = load_tokens(args, &models[0], embedded)?;
    let n_layers = models[0].config.n_layers();
    let block_rows = args.batch_size.unwrap_or_else(|| {
        let row_bytes = (tokens.seq_len * n_layers * models[0].config.d_mlp() * 4).max(1) as u64;
        let per_stream = (budget / (4 * (2 * models.len() as u64 + 2)))
            .min(device.max_buffer_bytes.unwrap_or(u64::MAX));
        ((per_stream / row_bytes) as usize).clamp(1, 32)
    });
    let options = AnalysisOptions {
        threshold: args.threshold,
        seed: args.seed,
        max_tokens: args.max_tokens,
        keep_all_tokens: args.keep_all_tokens,
        block_rows,
        memory_budget: budget,
        save_tiles: parse_tiles(args.save_tiles.as_deref(), n_layers)?,
        all_anchors: args.all_anchors,
    };
    let entries = models.iter().map(model_entry).collect::<Result<Vec<_>>>()?;
    let mut h = Sha256::new();
    for id in &tokens.ids {
        h.update(id.to_le_bytes());
    }
    let data_sha = format!("{:x}", h.finalize());
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&(
            &entries,
            &data_sha,
            &options,
            env!("CARGO_PKG_VERSION"),
            device.kind.to_string(),
        ))?);
        format!("{:x}", h.finalize())
    };
    let work = partial_dir(&args.out);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // A second Ctrl-C while the checkpoint is written is ignored; the run stops at the
        // next block boundary.
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let run = Run {
        family: Family {
            models: &models,
            device: &device,
        },
        tokens: &tokens,
        options: &options,
        fingerprint,
        work_dir: &work,
        cancel,
        checkpoint_every: Duration::from_secs(args.checkpoint_secs),
        rotations: None,
    };
    let plan = run.plan()?;
    eprintln!(
        "{} models ({} layers x {} neurons), {} rows x {} tokens from {source}; {} pass(es), \
         about {:.1} MiB of accumulation memory",
        models.len(),
        n_layers,
        models[0].config.d_mlp(),
        tokens.n_rows,
        tokens.seq_len,
        plan.passes.len(),
        plan.peak_bytes() as f64 / (1 << 20) as f64
    );
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} pass {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut done_before = None;
    let outcome = run.run(|p| {
        let total = p.tokens_per_pass * p.passes as u64;
        let done = p.tokens_per_pass * p.pass as u64 + p.tokens;
        let first = *done_before.get_or_insert(done.saturating_sub(p.tokens.min(done)));
        bar.set_length(total);
        bar.set_position(done);
        let rate = (done - first) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{}/{}, {done}/{total} tokens, {rate:.0} tok/s, {:.0} MiB",
            p.pass + 1,
            p.passes,
            p.memory_bytes as f64 / (1 << 20) as f64
        ));
    })?;
    bar.finish_and_clear();
    let results = match outcome {
        Outcome::Interrupted { checkpoint } => {
            eprintln!(
                "interrupted: the accumulators are saved in {}; rerun the same command to resume",
                checkpoint.display()
            );
            std::process::exit(130);
        }
        Outcome::Done(r) => r,
    };
    let rows = seedscope_analysis::bundle::neuron_rows(
        &results.anchors[0],
        &names,
        results.d_mlp,
        options.threshold,
    );
    let per_layer: Vec<f64> = (0..n_layers)
        .map(|l| {
            let layer: Vec<_> = rows.iter().filter(|(r, _)| r.layer == l).collect();
            layer.iter().filter(|(r, _)| r.is_universal).count() as f64 / layer.len().max(1) as f64
        })
        .collect();
    let manifest = Manifest {
        seedscope_version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect(),
        models: entries,
        data_source: source,
        data_sha256: data_sha,
        data_shape: [tokens.n_rows, tokens.seq_len],
        dropped_ids: tokens.drop_ids.clone(),
        n_tokens: results.n_tokens,
        n_layers,
        d_mlp: results.d_mlp,
        options: options.clone(),
        baseline: format!(
            "per layer of each other model a d_mlp x d_mlp Gaussian matrix with unit-norm rows \
             (seed {}; seedscope_analysis::rotation::rotation_matrix)",
            options.seed
        ),
        device: device.describe(),
        passes: results.plan.passes.len(),
        peak_memory_bytes: results.plan.peak_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        fraction_universal: rows.iter().filter(|(r, _)| r.is_universal).count() as f64
            / rows.len().max(1) as f64,
        fraction_universal_per_layer: per_layer,
    };
    write_bundle(&args.out, &results, &names, &manifest)?;
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", Bundle::read(&args.out)?.summary());
    Ok(())
}

/// Options of `seedscope summary`.
#[derive(ClapArgs, Debug, Clone)]
pub struct SummaryArgs {
    /// A bundle directory written by `seedscope analyze`.
    pub bundle: PathBuf,
}

/// Run `seedscope summary`.
pub fn summary(args: &SummaryArgs) -> Result<()> {
    print!("{}", Bundle::read(&args.bundle)?.summary());
    Ok(())
}
