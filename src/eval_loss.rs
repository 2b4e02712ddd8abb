//! `seedscope eval-loss`: mean next-token cross-entropy of models over a token set.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use seedscope_data::read_tokens_npy;
use seedscope_model::train::eval_loss;
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel, TokenBatch};

/// Options of `seedscope eval-loss`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directories, presets or org/name repository ids from the Hugging Face cache
    /// (default: the embedded family).
    #[arg(long, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Which revision of the models named by preset or repository id.
    #[command(flatten)]
    pub revision: crate::models::RevisionArgs,
    /// Token rows, .npy [n_seq, seq_len] (default: the family's eval_tokens.npy).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Use only the first N rows.
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Compute backend.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
}

/// Print one JSON line per model: `{"model", "eval_loss", "tokens"}` (nats per predicted token).
pub fn run(args: &Args) -> Result<()> {
    let family = seedscope_analysis::job::family_dir();
    let models: Vec<PathBuf> = if args.models.is_empty() {
        seedscope_analysis::job::family_models()
    } else {
        crate::models::resolve_models(&args.models, &args.revision.revision())?
    };
    let tokens = args
        .tokens
        .clone()
        .unwrap_or_else(|| family.join("eval_tokens.npy"));
    let (ids, [n, seq]) = read_tokens_npy(&tokens)?;
    let n = args.max_rows.map_or(n, |m| m.min(n));
    let rows = TokenBatch::new(ids[..n * seq].to_vec(), n, seq)?;
    let device = ComputeDevice::open(args.backend)?;
    for dir in models {
        let model = LoadedModel::load_on(&dir, &device, burn::tensor::FloatDType::F32)?;
        let loss = eval_loss(&model.model, &rows, &device.device, 16)?;
        println!(
            "{}",
            serde_json::json!({"model": dir.display().to_string(), "eval_loss": loss, "tokens": n * (seq - 1)})
        );
    }
    Ok(())
}
