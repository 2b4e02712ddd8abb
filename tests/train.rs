//! Training: a short run learns, an interrupted run resumes to the same weights, and the output
//! is a Hugging Face directory Seedscope loads back.

mod common;

use common::{device, temp_dir};
use seedscope_data::corpus::{read_text, train_bpe};
use seedscope_model::train::{TrainConfig, TrainData, TrainJob, train};
use seedscope_model::{BackendKind, Checkpoint, ForwardOptions, LoadedModel, TokenBatch};

/// A small tokenizer and token stream from the head of the bundled corpus.
fn corpus_tokens() -> (usize, Vec<u32>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = read_text(&root.join("assets/corpus/train.txt.gz")).expect("corpus");
    let head: String = text.chars().take(60_000).collect();
    let tokenizer = train_bpe([head.as_str()].into_iter(), 512).expect("tokenizer");
    let stream = tokenizer.to_tokens(&head, true).expect("tokens");
    (tokenizer.vocab_size(), stream)
}

fn job<'a>(
    config: &'a TrainConfig,
    vocab_size: usize,
    seed: u64,
    out: &'a std::path::Path,
    device: &'a burn::tensor::Device,
    stop_after: Option<usize>,
) -> TrainJob<'a> {
    TrainJob {
        config,
        vocab_size,
        seed,
        out,
        device,
        stop_after,
        save_steps: &[],
    }
}

fn ci_config(steps: usize) -> TrainConfig {
    let mut config = TrainConfig::preset("ci").expect("ci preset");
    config.steps = steps;
    config.warmup_steps = 3;
    config.checkpoint_every = 4;
    config
}

#[test]
fn interrupted_training_resumes_to_identical_weights() {
    let device = device(BackendKind::Cpu);
    let (vocab, stream) = corpus_tokens();
    let config = ci_config(10);
    let data = TrainData::new(&stream, config.n_ctx, 7).expect("data");
    let whole = temp_dir("train-whole");
    let state = train(
        &job(&config, vocab, 7, &whole, &device.device, None),
        &data,
        |_| {},
    )
    .expect("uninterrupted run");
    assert_eq!(state.step, 10);

    let split = temp_dir("train-split");
    let partial = train(
        &job(&config, vocab, 7, &split, &device.device, Some(6)),
        &data,
        |_| {},
    )
    .expect("first half");
    assert_eq!(partial.step, 6);
    assert!(
        !split.join("model.safetensors").exists(),
        "no final model before the end"
    );
    assert!(
        split.join("checkpoint/state.json").is_file(),
        "checkpoint left"
    );
    let resumed = train(
        &job(&config, vocab, 7, &split, &device.device, None),
        &data,
        |_| {},
    )
    .expect("resumed run");
    assert_eq!(resumed.losses, state.losses, "same losses step for step");
    let a = std::fs::read(whole.join("model.safetensors")).expect("whole weights");
    let b = std::fs::read(split.join("model.safetensors")).expect("resumed weights");
    assert!(a == b, "resumed weights differ from the uninterrupted run");

    // Another seed: other weights; another config on the same directory: refused.
    let other = temp_dir("train-other");
    train(
        &job(&config, vocab, 8, &other, &device.device, None),
        &data,
        |_| {},
    )
    .expect("seed 8");
    let c = std::fs::read(other.join("model.safetensors")).expect("seed 8 weights");
    assert!(a != c, "different seeds must give different weights");
    let err = train(
        &job(&ci_config(12), vocab, 7, &whole, &device.device, None),
        &data,
        |_| {},
    )
    .expect_err("config mismatch");
    assert!(err.to_string().contains("another seed or config"), "{err}");
}

#[test]
fn a_short_run_learns_and_saves_a_loadable_hugging_face_model() {
    let device = device(BackendKind::Cpu);
    let (vocab, stream) = corpus_tokens();
    let config = ci_config(40);
    let data = TrainData::new(&stream, config.n_ctx, 1).expect("data");
    let out = temp_dir("train-learns");
    let state = train(
        &job(&config, vocab, 1, &out, &device.device, None),
        &data,
        |_| {},
    )
    .expect("train");
    let first: f32 = state.losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = state.losses[35..].iter().sum::<f32>() / 5.0;
    assert!(
        first > (vocab as f32).ln() - 0.5,
        "starts near uniform: {first}"
    );
    assert!(last < first - 0.5, "loss must fall: {first} -> {last}");

    let model = LoadedModel::load(&out, &device.device).expect("output loads as a HF model");
    assert_eq!(model.config.n_layers(), config.n_layer);
    let rows = TokenBatch::new(stream[..64].to_vec(), 2, 32).expect("rows");
    let out_logits = model
        .forward(&rows, &ForwardOptions::logits())
        .expect("forward");
    assert!(out_logits.logits.is_some());
    let saved = Checkpoint::open_safetensors(&out.join("model.safetensors")).expect("weights");
    assert!(saved.contains("transformer.h.1.mlp.c_fc.weight"));
}
