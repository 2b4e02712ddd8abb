//! `seedscope bench-forward`: forward throughput of the neuron pass, for comparing backends
//! (and, through scripts/bench_forward.py, against PyTorch on the same weights).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::FloatDType;
use clap::Args as ClapArgs;
use seedscope_model::{
    BackendKind, ComputeDevice, ForwardOptions, HookPoint, LoadedModel, TokenBatch,
};

/// Options of `seedscope bench-forward`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A model directory, a Hugging Face cache entry (models--org--name), or an org/name
    /// repository id from the cache. Default: seed-a of the embedded family.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which revision of a model named by repository id.
    #[command(flatten)]
    pub revision: crate::models::RevisionArgs,
    /// Compute backend.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Compute dtype.
    #[arg(long, default_value = "f32")]
    pub dtype: crate::activations::ComputeDtype,
    /// Timed iterations (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
}

/// Time the all-neurons pass (every `hook_pre`/`hook_post`, stopping after the last MLP) and
/// print one JSON line with tokens per second.
pub fn run(args: &Args) -> Result<()> {
    let device = ComputeDevice::open(args.backend)?;
    let dir = crate::models::resolve_model(args.model.as_deref(), &args.revision.revision())?;
    let model = LoadedModel::load_on(&dir, &device, args.dtype.into())?;
    let n = args.batch * args.seq_len;
    let vocab = model.config.vocab_size() as u64;
    // A fixed pseudo-random token stream (64-bit LCG), the same on every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let ids = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 33) % vocab) as u32
        })
        .collect();
    let tokens = TokenBatch::new(ids, args.batch, args.seq_len)?;
    let layers = model.config.n_layers();
    let options = ForwardOptions::all_neurons(layers);
    let last = HookPoint::post(layers - 1);
    let pass = || -> Result<f64> {
        let start = Instant::now();
        let out = model.forward(&tokens, &options)?;
        // Reading one reduction back forces the whole (lazy, asynchronous) graph to run.
        let sum = out.taps[&last]
            .clone()
            .cast(FloatDType::F32)
            .sum()
            .try_into_scalar::<f32>()
            .map_err(|e| anyhow::anyhow!("forward pass failed: {e}"))?;
        anyhow::ensure!(sum.is_finite(), "non-finite activations");
        Ok(start.elapsed().as_secs_f64())
    };
    pass()?;
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters.max(1) {
        times.push(pass()?);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"backend\":\"{}\",\"dtype\":\"{:?}\",\"device\":{:?},\"batch\":{},\"seq_len\":{},\"seconds\":{:.4},\"tokens_per_s\":{:.1}}}",
        device.kind,
        args.dtype,
        device.describe(),
        args.batch,
        args.seq_len,
        median,
        n as f64 / median
    );
    Ok(())
}
