//! `seedscope`: find and explore universal neurons across GPT-2 seeds.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod activations;
mod analyze;
mod bench;
mod bench_corr;
mod bench_refine;
mod cost;
mod download;
mod eval_loss;
mod intervene;
mod models;
mod report;
mod tokenizer;
mod train;

/// mimalloc (fast to reuse the large blocks an analysis frees), counted: `cap` keeps the bytes
/// allocated now and at the peak ([`heap_peak`]); it sets no limit.
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// The most heap bytes the process has held at once so far.
pub fn heap_peak() -> usize {
    GLOBAL.max_allocated()
}

/// Find and explore universal neurons across language-model seeds.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the explorer window (the default with no command): a bundle if given, else the last
    /// one, else the embedded family (analysed in the background on first start).
    App(AppArgs),
    /// Find universal neurons: cross-seed correlations, rotation baseline, excess correlation,
    /// written to a bundle. With no arguments: the embedded family on its eval tokens.
    Analyze(analyze::Args),
    /// Fetch a seed family (preset) or a model from the Hugging Face hub into its cache:
    /// resumable, checksums verified, HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE honoured.
    Download(download::Args),
    /// Combine the shard directories of `analyze --shard I/N` into the bundle an unsharded
    /// run would have written (the sums add exactly).
    Merge(analyze::MergeArgs),
    /// Print the fraction of universal neurons, overall and per layer, of a bundle.
    Summary(analyze::SummaryArgs),
    /// Render a bundle's figures (Fig. 2, 3, 6, 9, families, entropy candidates) as PNG and SVG
    /// with a page per neuron family and an index.html.
    Report(report::Args),
    /// How analyses' cost grows: tokens/s and where each run's time went (forwards,
    /// co-moments, statistics, device waits, weight statistics), from their bundles.
    Cost(cost::Args),
    /// The entropy-neuron experiment: fix neurons' activations and measure LayerNorm scale,
    /// entropy, loss and reciprocal rank against random baseline neurons.
    Intervene(intervene::Args),
    /// Run a model over tokens and save every MLP neuron's pre- and post-activation.
    Activations(activations::Args),
    /// Measure forward throughput (tokens/s) of the neuron pass on a model.
    BenchForward(bench::Args),
    /// Measure correlation-update throughput (GFLOP/s) of the CPU path and the WGSL kernels.
    BenchCorrelation(bench_corr::Args),
    /// Candidate refinement against the exhaustive run on the same data: times, deviations,
    /// missed best matches, universal-set differences.
    BenchRefine(bench_refine::Args),
    /// Mean next-token loss of models over a token set (default: the family on its eval set).
    EvalLoss(eval_loss::Args),
    /// Train a byte-level BPE tokenizer on the bundled corpus.
    Tokenizer(tokenizer::Args),
    /// Train one seed of a GPT-2 family (checkpoints; a rerun resumes).
    Train(train::Args),
}

/// Options of `seedscope app`.
#[derive(clap::Args)]
struct AppArgs {
    /// A bundle directory written by `seedscope analyze`.
    bundle: Option<std::path::PathBuf>,
}

/// On a machine without a display, keep Mesa's Vulkan device-select layer out of adapter
/// probes: it exists to pick the GPU a display server uses, and without one it only prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` twice per probe, which
/// reads like the command's own error.
#[allow(unsafe_code)]
fn quiet_headless_vulkan() {
    let unset = |v: &str| std::env::var_os(v).is_none();
    if unset("XDG_RUNTIME_DIR") && unset("WAYLAND_DISPLAY") && unset("DISPLAY") {
        // SAFETY: called first thing in `main`, before any thread exists that could read the
        // environment at the same time.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> ExitCode {
    quiet_headless_vulkan();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Activations(args)) => activations::run(&args),
        Some(Command::Analyze(args)) => analyze::run(&args),
        Some(Command::Download(args)) => download::run(&args),
        Some(Command::Merge(args)) => analyze::merge(&args),
        Some(Command::Summary(args)) => analyze::summary(&args),
        Some(Command::Report(args)) => report::run(&args),
        Some(Command::Cost(args)) => cost::run(&args),
        Some(Command::Intervene(args)) => intervene::run(&args),
        Some(Command::BenchForward(args)) => bench::run(&args),
        Some(Command::BenchCorrelation(args)) => bench_corr::run(&args),
        Some(Command::BenchRefine(args)) => bench_refine::run(&args),
        Some(Command::EvalLoss(args)) => eval_loss::run(&args),
        Some(Command::Tokenizer(args)) => tokenizer::run(&args),
        Some(Command::Train(args)) => train::run(&args),
        Some(Command::App(args)) => seedscope_app::run_native(args.bundle).map_err(Into::into),
        None => seedscope_app::run_native(None).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: the crates' errors already print
/// their source in their message ("{path}: {source}"), so a cause whose text is there is not
/// repeated.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}
