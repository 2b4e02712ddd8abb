//! `seedscope train`: train one seed of a GPT-2 family on the bundled corpus.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use seedscope_data::corpus::read_text;
use seedscope_data::{ENDOFTEXT, TextTokenizer, pack_rows};
use seedscope_model::train::{TrainConfig, TrainData, TrainJob, eval_loss, train};
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel, TokenBatch};

/// Options of `seedscope train`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Seed of the initialisation and of the data order.
    #[arg(long)]
    pub seed: u64,
    /// Preset: `tiny` (the embedded family) or `ci` (a two-minute smoke run).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Override the preset's number of optimiser steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the preset's number of layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override the preset's residual width (d_model).
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Override the preset's MLP width (neurons per layer).
    #[arg(long)]
    pub d_mlp: Option<usize>,
    /// Override the preset's peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Override the preset's batch size (rows of n_ctx tokens per step); a GPU trains faster
    /// with larger batches.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Output Hugging Face directory (config.json, model.safetensors, tokenizer.json); a
    /// checkpoint in it is resumed.
    #[arg(long)]
    pub out: PathBuf,
    /// Training text (`.txt` or `.txt.gz`, works separated by `<|endoftext|>`).
    #[arg(long, default_value = "assets/corpus/train.txt.gz")]
    pub corpus: PathBuf,
    /// Held-out text for the final evaluation loss.
    #[arg(long, default_value = "assets/corpus/eval.txt.gz")]
    pub eval_corpus: PathBuf,
    /// The tokenizer (shared by every seed of a family).
    #[arg(long, default_value = "assets/family/tokenizer.json")]
    pub tokenizer: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Stop after this many steps in this invocation, leaving a checkpoint to resume from.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Also keep the weights at these training steps, as Hugging Face directories
    /// OUT/checkpoint-STEP (with the tokenizer): a series for `seedscope analyze --steps`.
    #[arg(long, value_delimiter = ',')]
    pub save_steps: Vec<usize>,
}

/// Tokenise a corpus file into one stream, each work preceded by `<|endoftext|>`.
fn token_stream(tokenizer: &TextTokenizer, path: &std::path::Path) -> Result<Vec<u32>> {
    let text = read_text(path)?;
    let mut stream = Vec::new();
    for work in text.split(ENDOFTEXT) {
        stream.extend(tokenizer.to_tokens(work.trim(), true)?);
    }
    Ok(stream)
}

/// Run the command.
pub fn run(args: &Args) -> Result<()> {
    let Some(mut config) = TrainConfig::preset(&args.config) else {
        bail!("unknown --config `{}` (tiny or ci)", args.config);
    };
    if let Some(steps) = args.steps {
        config.steps = steps;
        config.warmup_steps = config.warmup_steps.min(steps);
    }
    config.n_layer = args.layers.unwrap_or(config.n_layer);
    config.n_embd = args.d_model.unwrap_or(config.n_embd);
    config.n_inner = args.d_mlp.unwrap_or(config.n_inner);
    config.lr = args.lr.unwrap_or(config.lr);
    config.batch_size = args.batch_size.unwrap_or(config.batch_size);
    let tokenizer = TextTokenizer::from_file(&args.tokenizer)?;
    let stream = token_stream(&tokenizer, &args.corpus)?;
    let data = TrainData::new(&stream, config.n_ctx, args.seed)?;
    let device = ComputeDevice::open(args.backend)?;
    eprintln!(
        "device: {}; {} training tokens in {} windows; {} steps of {} x {} tokens",
        device.describe(),
        stream.len(),
        data.len(),
        config.steps,
        config.batch_size,
        config.n_ctx
    );
    let bar = ProgressBar::new(config.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    // Tokens per second from the end of the first step of this invocation on (the first step
    // pays for start-up: shader compilation, autotuning), for the bar and the log.
    let mut first_step: Option<(usize, Instant)> = None;
    let mut rate = 0.0;
    if let Some(&s) = args
        .save_steps
        .iter()
        .find(|&&s| s == 0 || s > config.steps)
    {
        bail!(
            "--save-steps {s}: a saved step must be between 1 and the run's {} steps",
            config.steps
        );
    }
    let job = TrainJob {
        config: &config,
        vocab_size: tokenizer.vocab_size(),
        seed: args.seed,
        out: &args.out,
        device: &device.device,
        stop_after: args.stop_after,
        save_steps: &args.save_steps,
    };
    let state = train(&job, &data, |r| {
        let (first, at) = *first_step.get_or_insert((r.step, Instant::now()));
        if r.step > first {
            rate = (r.step - first) as f64 * r.tokens as f64 / at.elapsed().as_secs_f64();
        }
        bar.set_position(r.step as u64);
        bar.set_message(format!(
            "loss {:.3}, lr {:.2e}, {rate:.0} tok/s",
            r.loss, r.lr
        ));
    })?;
    bar.finish();
    for &step in args.save_steps.iter().filter(|&&s| s <= state.step) {
        let dir = seedscope_model::train::step_dir(&args.out, step);
        if dir.is_dir() {
            seedscope_model::write_file_atomic(
                &dir.join("tokenizer.json"),
                tokenizer.to_json()?.as_bytes(),
            )
            .with_context(|| format!("writing {}", dir.join("tokenizer.json").display()))?;
        }
    }
    if state.step < config.steps {
        eprintln!(
            "stopped after step {} of {} ({rate:.0} tokens/s after the first step, {:.1} s in all): \
             rerun the same command to resume from {}",
            state.step,
            config.steps,
            started.elapsed().as_secs_f64(),
            args.out.join("checkpoint").display()
        );
        return Ok(());
    }
    seedscope_model::write_file_atomic(
        &args.out.join("tokenizer.json"),
        tokenizer.to_json()?.as_bytes(),
    )
    .context("writing tokenizer.json")?;
    let model = LoadedModel::load(&args.out, &device.device)?;
    let eval_stream = token_stream(&tokenizer, &args.eval_corpus)?;
    let (ids, n_rows) = pack_rows(&eval_stream, config.n_ctx, None);
    let rows = TokenBatch::new(ids, n_rows, config.n_ctx)?;
    let loss = eval_loss(&model.model, &rows, &device.device, 16)?;
    let summary = serde_json::json!({
        "seed": args.seed,
        "config": config,
        "steps": state.step,
        "final_train_loss": state.losses.last(),
        "eval_loss": loss,
        "eval_tokens": n_rows * config.n_ctx,
        "train_losses": state.losses,
        "device": device.describe(),
        "tokens_per_s_last_run": rate,
    });
    seedscope_model::write_file_atomic(
        &args.out.join("train_log.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    eprintln!(
        "eval loss {loss:.4} nats over {} tokens ({rate:.0} training tokens/s); wrote {}",
        n_rows * config.n_ctx,
        args.out.display()
    );
    Ok(())
}
