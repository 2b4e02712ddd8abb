//! The embedded seed family (assets/family): five GPT-2 seeds that load, reach the recorded
//! evaluation loss, and really differ.

mod common;

use std::path::PathBuf;

use seedscope_model::train::eval_loss;
use seedscope_model::{BackendKind, LoadedModel, TokenBatch};

const SEEDS: [&str; 5] = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"];

fn family() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/family")
}

fn recorded() -> serde_json::Value {
    let path = family().join("FAMILY.json");
    serde_json::from_slice(&std::fs::read(&path).expect("FAMILY.json"))
        .expect("FAMILY.json is JSON")
}

#[test]
fn every_seed_reaches_its_recorded_eval_loss() {
    let rec = recorded();
    let rows = rec["test_rows"].as_u64().expect("test_rows") as usize;
    let (ids, [n, seq]) =
        seedscope_data::read_tokens_npy(&family().join("eval_tokens.npy")).expect("eval tokens");
    assert!(n >= rows);
    let batch = TokenBatch::new(ids[..rows * seq].to_vec(), rows, seq).expect("rows");
    let dev = common::device(BackendKind::Cpu);
    for name in SEEDS {
        let model = LoadedModel::load_on(&family().join(name), &dev, burn::tensor::FloatDType::F32)
            .expect(name);
        let loss = eval_loss(&model.model, &batch, &dev.device, 16).expect("eval");
        let want = rec["eval_loss_test_rows"][name]
            .as_f64()
            .expect("recorded loss");
        assert!(
            (loss - want).abs() < 1e-3,
            "{name}: eval loss {loss} vs recorded {want}"
        );
        // Clearly better than predicting the unigram distribution.
        let unigram = rec["eval_unigram_entropy_nats"].as_f64().expect("entropy");
        assert!(
            loss < unigram - 1.0,
            "{name}: {loss} is not much better than unigram {unigram}"
        );
    }
}

#[test]
fn the_seeds_share_a_shape_but_not_their_weights() {
    let dev = common::device(BackendKind::Cpu);
    let weights: Vec<Vec<f32>> = SEEDS
        .iter()
        .map(|name| {
            let m = LoadedModel::load_on(&family().join(name), &dev, burn::tensor::FloatDType::F32)
                .expect(name);
            assert_eq!((m.config.n_layers(), m.config.d_mlp()), (2, 512), "{name}");
            m.model
                .named_tensors()
                .expect("state dict")
                .into_iter()
                .find(|(n, _, _)| n.ends_with("h.0.mlp.c_fc.weight"))
                .map(|(_, v, _)| v)
                .expect("c_fc weight")
        })
        .collect();
    for i in 0..SEEDS.len() {
        for j in i + 1..SEEDS.len() {
            let diff = common::max_abs_diff(&weights[i], &weights[j]);
            assert!(
                diff > 0.1,
                "{} and {} have the same weights",
                SEEDS[i],
                SEEDS[j]
            );
        }
    }
    let seeds = &recorded()["seeds"];
    let distinct: std::collections::BTreeSet<u64> = SEEDS
        .iter()
        .map(|s| seeds[s].as_u64().expect("seed"))
        .collect();
    assert_eq!(distinct.len(), 5);
}
