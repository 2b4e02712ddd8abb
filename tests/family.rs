//! The embedded seed family (assets/family): five GPT-2 seeds that load, reach the evaluation
//! loss transformers computes for them, and really differ.

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
        // Against Hugging Face transformers on the same weights and rows
        // (scripts/family_losses.py, recorded to 6 decimals).
        let want = rec["eval_loss_test_rows_transformers"][name]
            .as_f64()
            .expect("transformers' loss");
        eprintln!(
            "{name}: eval loss {loss:.7} vs transformers {want}: {:.1e}",
            (loss - want).abs()
        );
        assert!(
            (loss - want).abs() < 1e-5,
            "{name}: eval loss {loss} vs transformers {want}"
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
    let dir = common::temp_dir("in-memory-vs-files");
    let out = dir.join("bundle");
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

/// docs/report is the shipped family's report: the numbers `scripts/make_docs_report.sh`
/// committed with it (`docs/report/summary.json`) are what a fresh analysis of the family over
/// all its held-out tokens gives. A stale report (another family, other defaults) fails here.
#[test]
fn the_committed_report_is_a_fresh_analysis_of_the_family() {
    use seedscope_analysis::bundle::{Bundle, Summary};
    use seedscope_analysis::job::{AnalysisRequest, JobEnd, run_analysis};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/report/summary.json");
    let committed: Summary = serde_json::from_slice(&read(path)).expect("summary.json");
    let dir = common::temp_dir("family-report");
    let out = dir.join("bundle");
    let request = AnalysisRequest {
        out: out.clone(),
        backend: BackendKind::Cpu,
        command: vec!["tests/family.rs".into()],
        ..AnalysisRequest::default()
    };
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let end = run_analysis(&request, cancel, |_| {}).expect("analysis");
    assert_eq!(end, JobEnd::Written(out.clone()));
    let fresh = Bundle::read(&out).expect("bundle").summary_data();
    assert_eq!(
        (
            &fresh.models,
            fresh.n_tokens,
            fresh.n_layers,
            fresh.d_mlp,
            fresh.threshold
        ),
        (
            &committed.models,
            committed.n_tokens,
            committed.n_layers,
            committed.d_mlp,
            committed.threshold
        )
    );
    for (f, c) in fresh.anchors.iter().zip(&committed.anchors) {
        assert_eq!(f.model, c.model);
        assert_eq!(f.per_layer, c.per_layer, "universal neurons per layer");
        assert_eq!(f.families, c.families, "families");
        let names = |s: &seedscope_analysis::bundle::AnchorSummary| -> Vec<String> {
            s.universal.iter().map(|u| u.neuron.clone()).collect()
        };
        assert_eq!(names(f), names(c), "the universal neurons");
        for (a, b) in f.universal.iter().zip(&c.universal) {
            assert!(
                (a.excess_corr - b.excess_corr).abs() < 1e-4,
                "{}: excess {} vs committed {}",
                a.neuron,
                a.excess_corr,
                b.excess_corr
            );
        }
        for ((name, a), (_, b)) in f.medians.iter().zip(&c.medians) {
            assert!((a - b).abs() < 0.5, "{name}: median percentile {a} vs {b}");
        }
    }
}

/// Universality over training on the family's own checkpoints (every seed's weights at steps
/// 200 and 800, shipped in fp16 beside the final ones): `seedscope analyze --steps
/// 200,800,final` with the defaults' models and data, over 16,384 eval tokens under a 56 MiB
/// budget (several passes reading kept activations). Measured: 0, 1 and 7 universal neurons
/// (all in layer 1), and the final seven's mean excess 0.20, 0.49, 0.56 over the three steps.
#[test]
fn the_family_checkpoints_give_its_universality_over_training() {
    use seedscope_analysis::bundle::{Bundle, Trajectory};
    let out = common::temp_dir("family-series");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seedscope"))
        .args([
            "analyze",
            "--steps",
            "200,800,final",
            "--max-tokens",
            "16384",
        ])
        .args(["--gpu-memory", "56MiB", "--backend", "cpu", "--out"])
        .arg(&out)
        .output()
        .expect("run seedscope analyze");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (dir, other) in [
        ("step-200", "seed-e@checkpoint-200"),
        ("step-800", "seed-e@checkpoint-800"),
        ("final", "seed-e"),
    ] {
        let m = Bundle::read(&out.join(dir)).expect("step bundle").manifest;
        assert_eq!(m.models[4].name, other);
        assert!(m.passes > 1, "{dir}: the budget should need several passes");
    }
    let t = Trajectory::load(&out.join("final"))
        .expect("trajectory")
        .expect("the last step has it");
    assert_eq!(
        t.steps
            .iter()
            .map(|s| (s.label.as_str(), s.step, s.n_tokens))
            .collect::<Vec<_>>(),
        vec![
            ("200", Some(200), 16384),
            ("800", Some(800), 16384),
            ("final", None, 16384)
        ]
    );
    let last = t.excess_corr.last().expect("steps");
    let universal: Vec<usize> = (0..last.len())
        .filter(|&i| f64::from(last[i]) > t.threshold)
        .collect();
    let counts: Vec<usize> = t
        .excess_corr
        .iter()
        .map(|e| e.iter().filter(|&&v| f64::from(v) > t.threshold).count())
        .collect();
    let mean_excess: Vec<f32> = t
        .excess_corr
        .iter()
        .map(|e| universal.iter().map(|&i| e[i]).sum::<f32>() / universal.len() as f32)
        .collect();
    eprintln!("universal per step {counts:?}; the final ones' mean excess {mean_excess:?}");
    assert!((3..=30).contains(&counts[2]), "{counts:?}");
    assert!(universal.iter().all(|&i| i >= t.d_mlp), "all in layer 1");
    assert!(counts[0] <= 1 && counts[0] < counts[2], "{counts:?}");
    // The universal neurons form during training: their excess rises step by step, from
    // well below the threshold.
    assert!(
        mean_excess.windows(2).all(|w| w[0] < w[1]),
        "{mean_excess:?}"
    );
    assert!(mean_excess[0] < 0.35, "{mean_excess:?}");
}
