//! `seedscope tokenizer`: train the byte-level BPE of the embedded seed family.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use seedscope_data::ENDOFTEXT;
use seedscope_data::corpus::{read_text, train_bpe};

/// Options of `seedscope tokenizer`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Training text (`.txt` or `.txt.gz`); works separated by `<|endoftext|>` are trained on
    /// separately.
    #[arg(long, default_value = "assets/corpus/train.txt.gz")]
    pub corpus: PathBuf,
    /// Vocabulary size, `<|endoftext|>` and the 256 byte tokens included.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Output `tokenizer.json`.
    #[arg(long)]
    pub out: PathBuf,
}

/// Train and write the tokenizer.
pub fn run(args: &Args) -> Result<()> {
    if args.vocab_size <= 257 {
        bail!("--vocab-size must exceed 257 (256 bytes and {ENDOFTEXT})");
    }
    let text = read_text(&args.corpus)?;
    let tokenizer = train_bpe(text.split(ENDOFTEXT), args.vocab_size)?;
    let json = tokenizer.to_json()?;
    seedscope_model::write_file_atomic(&args.out, json.as_bytes())
        .with_context(|| format!("{}: writing tokenizer", args.out.display()))?;
    let tokens = tokenizer.to_tokens(&text, false)?.len();
    eprintln!(
        "trained {} tokens on {} ({} bytes, {tokens} tokens, {:.2} bytes/token); wrote {}",
        tokenizer.vocab_size(),
        args.corpus.display(),
        text.len(),
        text.len() as f64 / tokens as f64,
        args.out.display()
    );
    Ok(())
}
