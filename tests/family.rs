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

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The family's seeds `seeds` as the browser holds them: their files' bytes.
fn memory_inputs(
    seeds: &[&str],
    tokens: seedscope_analysis::job::MemoryTokens,
    source: &str,
) -> seedscope_analysis::job::MemoryInputs {
    seedscope_analysis::job::MemoryInputs {
        models: seeds
            .iter()
            .map(|s| {
                let d = family().join(s);
                (
                    s.to_string(),
                    read(d.join("config.json")),
                    read(d.join("model.safetensors")),
                )
            })
            .collect(),
        tokens,
        tokenizer_json: read(family().join("tokenizer.json")),
        source: source.into(),
    }
}

/// `req` analysed both ways: `run_analysis` from the files (its bundle directory) and
/// `analyse_in_memory` of `inputs` (the browser's bundle files).
fn analysed_both_ways(
    req: &seedscope_analysis::job::AnalysisRequest,
    inputs: &seedscope_analysis::job::MemoryInputs,
) -> (PathBuf, seedscope_analysis::bundle::BundleFiles) {
    use seedscope_analysis::job::{JobEnd, analyse_in_memory, run_analysis};
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let JobEnd::Written(dir) = run_analysis(req, cancel.clone(), |_| {}).expect("from files")
    else {
        panic!("the analysis from files was interrupted");
    };
    let dev = common::device(BackendKind::Cpu);
    let files = pollster::block_on(analyse_in_memory(req, inputs, &dev, cancel, |_| {}))
        .expect("in memory")
        .expect("not cancelled");
    (dir, files)
}

/// The browser's analysis (`analyse_in_memory`: bytes in, bundle files out, no directories)
/// gives the same bundle as `run_analysis` of the same request from the files.
#[test]
fn the_in_memory_analysis_equals_the_analysis_from_files() {
    use seedscope_analysis::bundle::{Bundle, BundleSource};
    use seedscope_analysis::job::{AnalysisRequest, MemoryTokens};
    let out = common::temp_dir("in-memory-vs-files").join("bundle");
    let req = AnalysisRequest {
        max_tokens: Some(3000),
        backend: BackendKind::Cpu,
        save_tiles: Some("1-1".into()),
        out: out.clone(),
        ..AnalysisRequest::default()
    };
    let inputs = memory_inputs(
        &SEEDS,
        MemoryTokens::Npy(read(family().join("eval_tokens.npy"))),
        "eval_tokens.npy",
    );
    let (dir, files) = analysed_both_ways(&req, &inputs);
    let from_files = Bundle::read(&dir).expect("bundle from files");
    let source = BundleSource::Memory {
        label: "memory".into(),
        files: std::sync::Arc::new(files.clone()),
    };
    let in_memory = Bundle::read_from(&source).expect("bundle in memory");
    let (a, b) = (&from_files.manifest, &in_memory.manifest);
    assert_eq!(a.n_tokens, b.n_tokens);
    assert_eq!(a.data_sha256, b.data_sha256);
    assert_eq!(a.fraction_universal, b.fraction_universal);
    assert_eq!(
        a.fraction_universal_per_layer,
        b.fraction_universal_per_layer
    );
    assert_eq!(from_files.neurons.len(), in_memory.neurons.len());
    for (x, y) in from_files.neurons.iter().zip(&in_memory.neurons) {
        assert_eq!(
            (x.layer, x.neuron, x.is_universal),
            (y.layer, y.neuron, y.is_universal)
        );
        assert_eq!(x.max_corr, y.max_corr);
        assert_eq!(x.mean_baseline, y.mean_baseline);
        assert_eq!(x.w_out_norm, y.w_out_norm);
    }
    // The anatomy (sums in f64 on the CPU, threaded) agrees to rounding.
    let width = 2 * 512;
    let anatomy = |src: &BundleSource| {
        seedscope_analysis::bundle::AnatomyFile::read_from(src, 0, width, true)
            .expect("anatomy")
            .expect("an anatomy file")
    };
    let (x, y) = (anatomy(&BundleSource::Dir(dir.clone())), anatomy(&source));
    assert_eq!(x.features, y.features);
    for (a, b) in [
        (&x.top_val, &y.top_val),
        (&x.best_vr, &y.best_vr),
        (&x.pos_mi, &y.pos_mi),
        (&x.top_token_mean, &y.top_token_mean),
    ] {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "anatomy differs by {worst}");
    }
    // Every other file of the directory bundle is there, byte for byte except the manifest
    // (paths, timing), with the tokenizer copied in.
    for name in [
        "correlation.safetensors",
        "tiles.safetensors",
        "histograms.safetensors",
        "attention.safetensors",
        "tokenizer.json",
    ] {
        let on_disk = read(dir.join(name));
        let in_mem = files
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing in memory"));
        assert!(on_disk == *in_mem, "{name} differs");
    }
}

/// Text chosen in the browser is tokenised as `seedscope analyze --text` does it: the same rows,
/// the same result.
#[test]
fn in_memory_text_is_tokenised_like_the_text_data_source() {
    use seedscope_analysis::bundle::{Bundle, BundleSource};
    use seedscope_analysis::job::{AnalysisRequest, DataSource, MemoryTokens};
    let dir = common::temp_dir("in-memory-text");
    let text_path = dir.join("sample.txt");
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md");
    std::fs::write(&text_path, &text).expect("write the text");
    let req = AnalysisRequest {
        models: vec![family().join("seed-a"), family().join("seed-b")],
        data: DataSource::Text(text_path),
        max_tokens: Some(1500),
        backend: BackendKind::Cpu,
        out: dir.join("bundle"),
        ..AnalysisRequest::default()
    };
    let inputs = memory_inputs(
        &["seed-a", "seed-b"],
        MemoryTokens::Text(text),
        "sample.txt",
    );
    let (out, files) = analysed_both_ways(&req, &inputs);
    let a = Bundle::read(&out).expect("from files").manifest;
    let b = Bundle::read_from(&BundleSource::Memory {
        label: "memory".into(),
        files: std::sync::Arc::new(files),
    })
    .expect("in memory")
    .manifest;
    assert_eq!(a.data_shape, b.data_shape);
    assert_eq!(a.data_sha256, b.data_sha256);
    assert_eq!(a.n_tokens, b.n_tokens);
    assert_eq!(
        a.fraction_universal_per_layer,
        b.fraction_universal_per_layer
    );
}
