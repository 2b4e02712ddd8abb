//! `seedscope`: find and explore universal neurons across GPT-2 seeds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod activations;
mod bench;
mod tokenizer;
mod train;

/// Find and explore universal neurons across language-model seeds.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model over tokens and save every MLP neuron's pre- and post-activation.
    Activations(activations::Args),
    /// Measure forward throughput (tokens/s) of the neuron pass on a model.
    BenchForward(bench::Args),
    /// Train a byte-level BPE tokenizer on the bundled corpus.
    Tokenizer(tokenizer::Args),
    /// Train one seed of a GPT-2 family (checkpoints; a rerun resumes).
    Train(train::Args),
}

/// The bundled demo: a tiny GPT-2 fixture and a line of Shakespeare.
fn default_activations() -> activations::Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    activations::Args::demo(
        root.join("tests/fixtures/gpt2-crfm"),
        root.join("assets/demo.txt"),
        PathBuf::from("seedscope-out/activations.safetensors"),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Activations(args)) => activations::run(&args),
        Some(Command::BenchForward(args)) => bench::run(&args),
        Some(Command::Tokenizer(args)) => tokenizer::run(&args),
        Some(Command::Train(args)) => train::run(&args),
        None => {
            eprintln!(
                "no command given: running the demo (`seedscope activations` on the bundled fixture)"
            );
            activations::run(&default_activations())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
