//! `seedscope analyze` and `seedscope summary`: universality of a seed family over a token set,
//! to a result bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use seedscope_analysis::Bundle;
use seedscope_analysis::bundle::{TRAJECTORY, Trajectory};
use seedscope_analysis::job::{AnalysisRequest, DataSource, JobEnd, JobEvent, run_analysis};
use seedscope_model::BackendKind;

/// Options of `seedscope analyze`.
#[derive(ClapArgs, Debug, Clone)]
#[command(group(clap::ArgGroup::new("data").args(["tokens", "text", "dataset"])))]
pub struct Args {
    /// Model directories (Hugging Face layout), presets (stanford-gpt2-small, ...) or org/name
    /// repository ids, resolved from the Hugging Face cache (`seedscope download` fills it); the
    /// first model is the anchor. Seeds of one model, or models of other widths and depths that
    /// share its tokenizer. Default: the embedded family assets/family/seed-{a..e}.
    #[arg(long, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Revision of the models named by preset or repository id (default: main).
    #[arg(long, conflicts_with = "step")]
    pub revision: Option<String>,
    /// The training checkpoint at this step of the models named by preset or repository id.
    #[arg(long)]
    pub step: Option<u64>,
    /// Universality over training: analyse a series of checkpoints of the same seeds
    /// (`--steps 100,400,final`), each step into its own bundle under --out (step-100/, ...,
    /// final/), then write trajectory.json into the last step's bundle (fraction universal per
    /// layer per step; every anchor neuron's best-match correlation and excess at every step).
    /// A step is the presets' hub revision (Stanford CRFM checkpoint-N, Pythia stepN) or a
    /// model directory's checkpoint-N subdirectory (`seedscope train --save-steps`); `final`
    /// is the models as given.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["step", "revision", "shard"])]
    pub steps: Vec<String>,
    /// Token ids, int32/int64 .npy [n_seq, seq_len], used as given.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// A UTF-8 text, tokenised with the anchor's tokenizer.json into rows that start with BOS.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// JSON Lines with a "text" field per line, plain or .zst (the Pile's test.jsonl.zst):
    /// documents over 50 characters, concatenated and cut into rows behind a BOS like
    /// TransformerLens tokenize_and_concatenate; with --max-tokens a seeded sample of rows.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Seed of the row sample of --dataset under --max-tokens.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
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
    /// Memory budget of the run on its device (e.g. 4GiB, 512MiB): the models' weights, the
    /// results, the rotation baseline's matrices, a block's activations, the correlation
    /// accumulators and any activations kept for later passes. On the CPU path, the host
    /// memory it stands for. Default: 4GiB, or where that cannot hold the run, the least that
    /// does and 512MiB for the correlations
    #[arg(long)]
    pub gpu_memory: Option<String>,
    /// Token rows per block (default: as many as fit the budget and the device's largest
    /// binding, at most 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 120)]
    pub checkpoint_secs: u64,
    /// Candidate refinement: all pairs over a sample of about N kept tokens (every s-th row),
    /// then exact correlations of each neuron's --candidates best and worst matches over all
    /// tokens (e.g. 2000000 for the paper's 100M-token runs).
    #[arg(long, value_name = "N")]
    pub refine: Option<u64>,
    /// Candidates kept at each end per neuron and stream with --refine.
    #[arg(long, default_value_t = 32, requires = "refine")]
    pub candidates: usize,
    /// Process only shard I of N (every N-th block of the data from the I-th) and write its
    /// sums to --out as a shard directory for `seedscope merge`; as I/N, or taken from
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT with `--shard slurm`.
    #[arg(long, value_name = "I/N|slurm")]
    pub shard: Option<String>,
    /// Compute the models in f16 where the GPU supports shader-f16 (half the weight and
    /// activation memory; accumulation stays compensated f32); f32 elsewhere.
    #[arg(long)]
    pub half: bool,
    /// Accumulate co-moments with the f32 kernel even where the GPU has cooperative matrices
    /// (tensor cores; by default they run, multiplying the block-centred activations in f16
    /// with f32 accumulation; the manifest's `device` says which kernel ran).
    #[arg(long)]
    pub fp32_co_moments: bool,
    /// A second null next to the rotation baseline: `permutation` correlates each anchor
    /// neuron with every other seed's activations in a permuted token order (each block's
    /// kept tokens rotated by a random offset of at least 32, drawn from --seed), the best
    /// correlation expected by chance alignment at this token count and width
    /// (neurons.csv: max_null, mean_null, excess_over_null).
    #[arg(long, value_name = "permutation", value_parser = ["permutation"])]
    pub null: Option<String>,
}

/// `I/N`, or the Slurm array task's (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`, with
/// `SLURM_ARRAY_TASK_MIN` subtracted so arrays may start at 0 or 1).
pub fn parse_shard(spec: &str) -> Result<(usize, usize)> {
    let (i, n) = if spec == "slurm" {
        let var = |name: &str| -> Result<usize> {
            std::env::var(name)
                .map_err(|_| {
                    anyhow::anyhow!("--shard slurm: {name} is not set (not in a job array?)")
                })?
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--shard slurm: {name}: {e}"))
        };
        let min = var("SLURM_ARRAY_TASK_MIN").unwrap_or(0);
        (
            var("SLURM_ARRAY_TASK_ID")?.saturating_sub(min),
            var("SLURM_ARRAY_TASK_COUNT")?,
        )
    } else {
        let (i, n) = spec
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("--shard {spec}: expected I/N, e.g. 0/4"))?;
        (
            i.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--shard {spec}: {e}"))?,
            n.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--shard {spec}: {e}"))?,
        )
    };
    if n == 0 || i >= n {
        bail!("--shard {spec}: shard {i} of {n} does not exist (0 <= I < N)");
    }
    Ok((i, n))
}

impl Args {
    /// The job this command line asks for.
    pub fn request(&self) -> Result<AnalysisRequest> {
        let models = crate::models::resolve_models(
            &self.models,
            &crate::models::revision(self.revision.as_deref(), self.step),
        )?;
        self.request_for(models)
    }

    /// The job of this command line on `models` (already resolved).
    fn request_for(&self, models: Vec<PathBuf>) -> Result<AnalysisRequest> {
        let data = match (&self.tokens, &self.text, &self.dataset) {
            (Some(p), _, _) => DataSource::Tokens(p.clone()),
            (_, Some(p), _) => DataSource::Text(p.clone()),
            (_, _, Some(p)) => DataSource::Dataset(p.clone()),
            _ if self.models.is_empty() => DataSource::Embedded,
            _ => bail!(
                "give the data to analyse: --tokens FILE.npy, --text FILE or --dataset FILE.jsonl"
            ),
        };
        if models.len() == 1 {
            bail!("--models needs at least two models (an anchor and another seed)");
        }
        if self.batch_size == Some(0) {
            bail!("--batch-size must be at least 1");
        }
        Ok(AnalysisRequest {
            models,
            data,
            seq_len: self.seq_len,
            out: self.out.clone(),
            threshold: self.threshold,
            seed: self.seed,
            max_tokens: self.max_tokens,
            data_seed: self.data_seed,
            keep_all_tokens: self.keep_all_tokens,
            all_anchors: self.all_anchors,
            save_tiles: self.save_tiles.clone(),
            backend: self.backend,
            memory_budget: self
                .gpu_memory
                .as_deref()
                .map(seedscope_analysis::plan::parse_bytes)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--gpu-memory: {e}"))?,
            batch_size: self.batch_size,
            checkpoint_every: Duration::from_secs(self.checkpoint_secs),
            refine: match self.refine {
                Some(0) => bail!("--refine needs a prefix of at least 2 tokens"),
                Some(n) => Some(seedscope_analysis::Refine {
                    prefix_tokens: n,
                    k: self.candidates.max(1),
                }),
                None => None,
            },
            shard: self.shard.as_deref().map(parse_shard).transpose()?,
            half: self.half,
            fp32_co_moments: self.fp32_co_moments,
            permutation_null: self.null.is_some(),
            merge: Vec::new(),
            command: std::env::args().collect(),
        })
    }
}

/// Run `seedscope analyze`.
pub fn run(args: &Args) -> Result<()> {
    if args.models.is_empty()
        && (args.tokens.is_some() || args.text.is_some() || args.dataset.is_some())
    {
        eprintln!("no --models given: analysing the embedded family on the data given");
    }
    if !args.steps.is_empty() {
        return run_series(args);
    }
    let request = args.request()?;
    if let Some(out) = run_job(&request)? {
        print!("{}", Bundle::read(&out)?.summary());
    }
    Ok(())
}

/// Run one analysis with a progress bar; its bundle, or `None` for a shard. An interrupted run
/// exits (status 130) after saying how to resume.
fn run_job(request: &AnalysisRequest) -> Result<Option<PathBuf>> {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // A second Ctrl-C while the checkpoint is written is ignored; the run stops at the
        // next block boundary.
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} pass {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let t0 = Instant::now();
    let mut done_before = None;
    let end = run_analysis(request, cancel, |event| match event {
        JobEvent::Log(line) => bar.suspend(|| eprintln!("{line}")),
        JobEvent::Planned(_) => bar.set_draw_target(indicatif::ProgressDrawTarget::stderr()),
        JobEvent::Progress(p) => {
            let (total, done) = (p.total(), p.done());
            let first = *done_before.get_or_insert(done - p.tokens);
            bar.set_length(total);
            bar.set_position(done);
            let rate = (done - first) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{}/{}, {done}/{total} tokens, {rate:.0} tok/s, {:.0} MiB",
                p.pass + 1,
                p.passes,
                p.memory_bytes as f64 / (1 << 20) as f64
            ));
        }
    })?;
    bar.finish_and_clear();
    // What the budget bounds, measured: every byte the process held at once on its heap
    // (the models, the data, the accumulators, the bundle's writing), counted by the
    // allocator; the plan's estimate and the budget are in the lines above.
    eprintln!("peak heap {} MiB", crate::heap_peak() >> 20);
    match end {
        JobEnd::Interrupted(checkpoint) => {
            eprintln!(
                "interrupted: the accumulators are saved in {}; rerun the same command to resume",
                checkpoint.display()
            );
            std::process::exit(130);
        }
        JobEnd::Written(out) if request.shard.is_some() => {
            eprintln!(
                "shard written to {}; when every shard is done: seedscope merge SHARD_DIRS... \
                 --out BUNDLE",
                out.display()
            );
            Ok(None)
        }
        JobEnd::Written(out) => Ok(Some(out)),
    }
}

/// The steps of `--steps`: each label with its training step (`final`: none), in the order
/// given, which must be training order.
fn parse_steps(labels: &[String]) -> Result<Vec<(String, Option<u64>)>> {
    let mut out: Vec<(String, Option<u64>)> = Vec::new();
    for label in labels.iter().map(|l| l.trim()) {
        let step = match label {
            "final" => None,
            n => Some(n.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("--steps: `{n}` is neither a training step nor `final`")
            })?),
        };
        if let Some((prev, p)) = out.last() {
            let ordered = match (p, step) {
                (Some(a), Some(b)) => *a < b,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !ordered {
                bail!("--steps: {label} comes after {prev}; give the steps in training order");
            }
        }
        out.push((label.to_string(), step));
    }
    Ok(out)
}

/// A model directory's training checkpoint `checkpoint-{step}`, or an error naming the
/// directory and the checkpoints it has (the nearest first).
fn local_checkpoint(dir: &Path, step: u64) -> Result<PathBuf> {
    let want = dir.join(format!("checkpoint-{step}"));
    if want.is_dir() {
        return Ok(want);
    }
    let mut have: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("checkpoint-")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    have.sort_by_key(|s: &u64| (s.abs_diff(step), *s));
    match have.first() {
        Some(near) => bail!(
            "{} has no checkpoint-{step} (the nearest of its {} is checkpoint-{near})",
            dir.display(),
            have.len()
        ),
        None => bail!(
            "{} has no training checkpoints (checkpoint-N directories, as `seedscope train \
             --save-steps` writes them)",
            dir.display()
        ),
    }
}

impl Args {
    /// The models of step `step` (`None`: as given): each model directory's checkpoint-N, the
    /// presets' and repository ids' revision at the step.
    fn step_models(&self, step: Option<u64>) -> Result<Vec<PathBuf>> {
        let specs = if self.models.is_empty() {
            seedscope_analysis::job::family_models()
        } else {
            self.models.clone()
        };
        let Some(n) = step else {
            return crate::models::resolve_models(&specs, &crate::models::revision(None, None));
        };
        let mut out = Vec::new();
        for spec in &specs {
            if spec.is_dir() {
                out.push(local_checkpoint(spec, n)?);
            } else {
                out.extend(crate::models::resolve_models(
                    std::slice::from_ref(spec),
                    &crate::models::revision(None, Some(n)),
                )?);
            }
        }
        Ok(out)
    }
}

/// `seedscope analyze --steps`: every step's bundle, then the trajectory in the last one.
fn run_series(args: &Args) -> Result<()> {
    let steps = parse_steps(&args.steps)?;
    // Every step's models first: a missing one is named before hours of analysis.
    let models: Vec<Vec<PathBuf>> = steps
        .iter()
        .map(|(_, step)| args.step_models(*step))
        .collect::<Result<_>>()?;
    // Each model keeps its shape over the whole series (models of one step may differ from
    // each other, as in any analysis).
    let mut first: Vec<(String, PathBuf, (usize, usize))> = Vec::new();
    for ((label, _), models) in steps.iter().zip(&models) {
        for (i, dir) in models.iter().enumerate() {
            let config = seedscope_model::ModelConfig::from_file(
                &seedscope_model::resolve_model_dir(dir)?.join("config.json"),
            )?;
            let shape = (config.n_layers(), config.d_mlp());
            match first.get(i) {
                None => first.push((label.clone(), dir.clone(), shape)),
                Some((l0, d0, s0)) if *s0 != shape => bail!(
                    "step {label} ({}) has {} layers x {} neurons but step {l0} ({}) has {} x {}: \
                     a series must keep the models' shape",
                    dir.display(),
                    shape.0,
                    shape.1,
                    d0.display(),
                    s0.0,
                    s0.1
                ),
                Some(_) => {}
            }
        }
    }
    let mut done: Vec<(String, Option<u64>, String, Bundle)> = Vec::new();
    for ((label, step), models) in steps.iter().zip(models) {
        let dir = match step {
            Some(n) => format!("step-{n}"),
            None => "final".to_string(),
        };
        let mut request = args.request_for(models)?;
        request.out = args.out.join(&dir);
        eprintln!("== step {label}: {} ==", request.out.display());
        let Some(out) = run_job(&request)? else {
            bail!("a series does not run as shards");
        };
        done.push((label.clone(), *step, dir, Bundle::read(&out)?));
    }
    let trajectory = Trajectory::from_bundles(&done)?;
    let last = args
        .out
        .join(done.last().map(|v| v.2.clone()).unwrap_or_default());
    seedscope_model::write_file_atomic(&last.join(TRAJECTORY), &trajectory.to_json()?)?;
    println!(
        "universality over training (anchor {}, threshold {}):\n{:>8} {:>10} {:>11}  per layer",
        trajectory.anchor, trajectory.threshold, "step", "tokens", "universal"
    );
    for s in &trajectory.steps {
        let per_layer: Vec<String> = s
            .per_layer
            .iter()
            .map(|f| format!("{:.2}%", 100.0 * f))
            .collect();
        println!(
            "{:>8} {:>10} {:>10.2}%  {}",
            s.label,
            s.n_tokens,
            100.0 * s.fraction_universal,
            per_layer.join(" ")
        );
    }
    println!("trajectory: {}", last.join(TRAJECTORY).display());
    Ok(())
}

/// Options of `seedscope summary`.
#[derive(ClapArgs, Debug, Clone)]
pub struct SummaryArgs {
    /// A bundle directory written by `seedscope analyze`.
    pub bundle: PathBuf,
    /// Print the numbers as JSON (the universal neurons, per-layer counts, Fig. 3 medians,
    /// families) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run `seedscope summary`.
pub fn summary(args: &SummaryArgs) -> Result<()> {
    let bundle = Bundle::read(&args.bundle)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&bundle.summary_data())?);
    } else {
        print!("{}", bundle.summary());
    }
    Ok(())
}

/// Options of `seedscope merge`.
#[derive(ClapArgs, Debug, Clone)]
pub struct MergeArgs {
    /// Shard directories written by `seedscope analyze --shard I/N` (all N of them).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// The bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute backend for the weight statistics (the merge itself runs on the CPU).
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
}

/// Run `seedscope merge`: the bundle the unsharded analysis would have written.
pub fn merge(args: &MergeArgs) -> Result<()> {
    let first = args
        .shards
        .first()
        .ok_or_else(|| anyhow::anyhow!("no shards given"))?;
    let info = seedscope_analysis::job::read_shard_info(first)?;
    let mut request = info.request;
    request.out = args.out.clone();
    request.shard = None;
    request.merge = args.shards.clone();
    request.backend = args.backend;
    request.command = std::env::args().collect();
    let end = run_analysis(&request, Arc::new(AtomicBool::new(false)), |e| {
        if let JobEvent::Log(line) = e {
            eprintln!("{line}");
        }
    })?;
    // The merge runs under the shards' budget; what it held at once, as `analyze` says it.
    eprintln!("peak heap {} MiB", crate::heap_peak() >> 20);
    match end {
        JobEnd::Written(out) => {
            print!("{}", Bundle::read(&out)?.summary());
            Ok(())
        }
        JobEnd::Interrupted(p) => bail!("interrupted (checkpoint {})", p.display()),
    }
}
