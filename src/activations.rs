//! `seedscope activations`: neuron activations of a model over tokens, to a safetensors file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::FloatDType;
use clap::Args as ClapArgs;
use seedscope_data::{TextTokenizer, pack_rows, read_tokens_npy};
use seedscope_model::{
    BackendKind, ComputeDevice, ForwardOptions, LoadedModel, TokenBatch, write_safetensors,
};

/// Options of `seedscope activations`.
#[derive(ClapArgs, Debug, Clone)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "text"])))]
pub struct Args {
    /// A model directory (config.json, weights, tokenizer.json), a Hugging Face cache entry
    /// (models--org--name), or an org/name repository id from the cache. Default: seed-a of
    /// the embedded family.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which revision of a model named by repository id.
    #[command(flatten)]
    pub revision: crate::models::RevisionArgs,
    /// Token ids, int32 or int64 .npy of shape [n_seq, seq_len], used as given (no BOS added).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// A UTF-8 text file, tokenised with the model's tokenizer.json (BOS prepended).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// With --text: do not prepend BOS.
    #[arg(long)]
    pub no_bos: bool,
    /// With --text: tokens per row; a text longer than this is cut into rows, each starting
    /// with BOS, and a short tail is dropped (TransformerLens tokenize_and_concatenate).
    /// Default: the whole text as one row if it fits the context, else rows of the context.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Output file: f32 `blocks.{l}.mlp.hook_pre` / `hook_post` of shape [n_seq, seq_len, d_mlp].
    #[arg(long)]
    pub out: PathBuf,
    /// Also save `logits` [n_seq, seq_len, d_vocab].
    #[arg(long)]
    pub logits: bool,
    /// Compute backend: auto (wgpu on a hardware GPU, else the CPU), wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Compute dtype (weights are converted to it whatever the checkpoint stores; outputs are
    /// always written as f32).
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,
}

/// The float types a model can compute in.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDtype {
    /// 32-bit float: matches transformers within 5e-5 (tests/parity.rs).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<ComputeDtype> for FloatDType {
    fn from(d: ComputeDtype) -> Self {
        match d {
            ComputeDtype::F32 => FloatDType::F32,
            ComputeDtype::F16 => FloatDType::F16,
            ComputeDtype::Bf16 => FloatDType::BF16,
        }
    }
}

/// Run the command.
pub fn run(args: &Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = ComputeDevice::open(args.backend)?;
    eprintln!("device: {}", device.describe());
    let model_dir = crate::models::resolve_model(args.model.as_deref(), &args.revision.revision())?;
    let model = LoadedModel::load_on(&model_dir, &device, args.dtype.into())?;
    let tokens = input_tokens(args, &model)?;
    let [n_seq, seq_len] = tokens.shape();
    eprintln!(
        "model: {} ({} layers x {} neurons); tokens: {n_seq} x {seq_len}",
        model.dir.display(),
        model.config.n_layers(),
        model.config.d_mlp()
    );

    let n_layers = model.config.n_layers();
    let options = if args.logits {
        ForwardOptions::all_neurons_and_logits(n_layers)
    } else {
        ForwardOptions::all_neurons(n_layers)
    };
    let mut outputs: BTreeMap<String, (Vec<f32>, usize)> = BTreeMap::new();
    for start in (0..n_seq).step_by(args.batch_size) {
        let batch = tokens.rows(start, args.batch_size);
        let out = model.forward(&batch, &options)?;
        let named = out
            .taps
            .into_iter()
            .map(|(hook, t)| (hook.to_string(), t))
            .chain(out.logits.map(|l| ("logits".to_owned(), l)));
        for (name, tensor) in named {
            let width = tensor.dims()[2];
            // Burn runs lazily: a device error (say, a buffer over the adapter's limit) surfaces
            // here, as an error rather than a panic.
            let data = tensor
                .cast(FloatDType::F32)
                .try_into_data()
                .map_err(|e| anyhow::anyhow!("computing {name}: {e}"))?
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading {name} back: {e:?}"))?;
            let entry = outputs.entry(name).or_insert_with(|| (Vec::new(), width));
            entry.0.extend_from_slice(&data);
        }
    }
    let mut metadata = HashMap::new();
    metadata.insert("model".to_owned(), model.dir.display().to_string());
    metadata.insert("device".to_owned(), device.describe());
    metadata.insert("seedscope".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    let tensors = outputs
        .into_iter()
        .map(|(name, (values, width))| (name, values, vec![n_seq, seq_len, width]))
        .collect::<Vec<_>>();
    write_safetensors(&args.out, &tensors, metadata)?;
    eprintln!("wrote {} tensors to {}", tensors.len(), args.out.display());
    Ok(())
}

fn input_tokens(args: &Args, model: &LoadedModel) -> Result<TokenBatch> {
    if let Some(path) = &args.tokens {
        let (ids, [n_seq, seq_len]) = read_tokens_npy(path)?;
        return TokenBatch::new(ids, n_seq, seq_len)
            .with_context(|| format!("{}: token batch", path.display()));
    }
    let Some(text_path) = &args.text else {
        bail!("give --tokens or --text");
    };
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("{}: reading text", text_path.display()))?;
    let tokenizer_path = model.dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_model_dir(&model.dir)?;
    tokenizer.check_fits(model.config.vocab_size())?;
    let bos = (!args.no_bos).then(|| tokenizer.bos_id()).flatten();
    if !args.no_bos && bos.is_none() {
        bail!(
            "{}: has no <|endoftext|> token to use as BOS; pass --no-bos",
            tokenizer_path.display()
        );
    }
    let stream = tokenizer.to_tokens(&text, false)?;
    let context = model.config.max_positions();
    let whole = stream.len() + usize::from(bos.is_some());
    let seq_len = args.seq_len.unwrap_or(whole.min(context));
    if seq_len == 0 || seq_len > context {
        bail!("--seq-len {seq_len} must be between 1 and the model's context of {context}");
    }
    let (ids, n_rows) = pack_rows(&stream, seq_len, bos);
    if n_rows == 0 {
        bail!(
            "{}: {} tokens make no row of {seq_len}",
            text_path.display(),
            stream.len()
        );
    }
    let used = n_rows * (seq_len - usize::from(bos.is_some()));
    if used < stream.len() {
        eprintln!(
            "note: dropped the last {} tokens (a partial row)",
            stream.len() - used
        );
    }
    Ok(TokenBatch::new(ids, n_rows, seq_len)?)
}
