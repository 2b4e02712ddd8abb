//! Loading checkpoints: the Hugging Face cache layout, and a clear error (never a panic) for
//! every kind of bad input. The parsers are also run on random and mutated bytes.

mod common;

use std::path::Path;

use common::{Reference, copy_dir, device, fixture, host, max_abs_diff, temp_dir};
use proptest::prelude::*;
use seedscope_data::{TextTokenizer, read_tokens_npy};
use seedscope_model::{BackendKind, Checkpoint, ForwardOptions, LoadedModel, ModelConfig};

fn load_err(dir: &Path) -> String {
    let device = device(BackendKind::Cpu);
    match LoadedModel::load(dir, &device.device) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hugging_face_cache_layout_loads_the_snapshot_refs_main_names() {
    let root = temp_dir("hf-cache");
    let entry = root.join("models--seedscope--tiny-gpt2");
    copy_dir(&fixture("gpt2-plain"), &entry.join("snapshots/0123abcd"));
    copy_dir(&fixture("gpt2-crfm"), &entry.join("snapshots/ffff0000"));
    std::fs::create_dir_all(entry.join("refs")).expect("refs");
    std::fs::write(entry.join("refs/main"), "0123abcd\n").expect("ref");
    let device = device(BackendKind::Cpu);
    let model = LoadedModel::load(&entry, &device.device).expect("cache entry loads");
    assert!(model.dir.ends_with("snapshots/0123abcd"));
    let reference = Reference::load(&fixture("gpt2-plain"));
    let out = model
        .forward(&reference.tokens(), &ForwardOptions::logits())
        .expect("forward");
    let logits = host(&out.logits.expect("logits"));
    assert!(max_abs_diff(&logits, &reference.get("logits").0) < 1e-3);

    std::fs::remove_file(entry.join("refs/main")).expect("drop ref");
    let err = load_err(&entry);
    assert!(err.contains("several snapshots"), "{err}");
}

/// Copy a fixture, let `spoil` damage it, and return the load error.
fn spoiled(fixture_name: &str, tag: &str, spoil: impl FnOnce(&Path)) -> String {
    let dir = temp_dir(tag);
    copy_dir(&fixture(fixture_name), &dir);
    spoil(&dir);
    load_err(&dir)
}

fn rewrite_safetensors(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)>),
) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec(), v.shape().to_vec(), v.dtype()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, b, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write");
}

#[test]
fn bad_inputs_get_errors_that_name_the_file_and_problem() {
    let missing = load_err(Path::new("/nonexistent/seedscope-model"));
    assert!(
        missing.contains("/nonexistent/seedscope-model") && missing.contains("missing"),
        "{missing}"
    );

    let no_config = spoiled("gpt2-plain", "no-config", |d| {
        std::fs::remove_file(d.join("config.json")).expect("rm")
    });
    assert!(no_config.contains("config.json"), "{no_config}");

    let no_weights = spoiled("gpt2-plain", "no-weights", |d| {
        std::fs::remove_file(d.join("model.safetensors")).expect("rm")
    });
    assert!(no_weights.contains("pytorch_model.bin"), "{no_weights}");

    let truncated = spoiled("gpt2-plain", "truncated", |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("truncate");
    });
    assert!(
        truncated.contains("model.safetensors") && truncated.contains("corrupt"),
        "{truncated}"
    );

    let lying_header = spoiled("gpt2-plain", "lying-header", |d| {
        let p = d.join("model.safetensors");
        let mut bytes = std::fs::read(&p).expect("read");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).expect("utf8");
        // Claim a larger shape for the token embedding than its bytes hold.
        let lie = header.replacen("[320,32]", "[640,32]", 1);
        assert_ne!(header, lie, "fixture header layout changed");
        bytes.splice(8..8 + n, lie.into_bytes());
        std::fs::write(&p, bytes).expect("write");
    });
    assert!(lying_header.contains("model.safetensors"), "{lying_header}");

    let wrong_shape = spoiled("gpt2-plain", "wrong-shape", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |ts| {
            let t = ts
                .iter_mut()
                .find(|t| t.0.ends_with("h.1.mlp.c_fc.bias"))
                .expect("bias");
            t.1.truncate(t.1.len() - 4);
            t.2 = vec![t.2[0] - 1];
        })
    });
    assert!(
        wrong_shape.contains("h.1.mlp.c_fc.bias") && wrong_shape.contains("[127]"),
        "{wrong_shape}"
    );

    let missing_tensor = spoiled("gpt2-plain", "missing-tensor", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |ts| {
            ts.retain(|t| !t.0.ends_with("h.2.ln_2.weight"))
        })
    });
    assert!(
        missing_tensor.contains("h.2.ln_2.weight"),
        "{missing_tensor}"
    );

    let nan = spoiled("gpt2-plain", "nan", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |ts| {
            let t = ts
                .iter_mut()
                .find(|t| t.0.ends_with("ln_f.bias"))
                .expect("ln_f");
            t.1[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        })
    });
    assert!(
        nan.contains("ln_f.bias") && nan.contains("non-finite"),
        "{nan}"
    );

    let int_weights = spoiled("gpt2-plain", "int-weights", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |ts| {
            let t = ts
                .iter_mut()
                .find(|t| t.0.ends_with("wpe.weight"))
                .expect("wpe");
            t.3 = safetensors::Dtype::I32;
        })
    });
    assert!(
        int_weights.contains("wpe.weight") && int_weights.contains("dtype"),
        "{int_weights}"
    );

    let corrupt_pickle = spoiled("gpt2-crfm-fp16", "corrupt-pickle", |d| {
        let p = d.join("pytorch_model.bin");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).expect("truncate");
    });
    assert!(
        corrupt_pickle.contains("pytorch_model.bin"),
        "{corrupt_pickle}"
    );

    let missing_shard = spoiled("neox-rotary", "missing-shard", |d| {
        std::fs::remove_file(d.join("model-00003-of-00007.safetensors")).expect("rm")
    });
    assert!(
        missing_shard.contains("model-00003-of-00007.safetensors"),
        "{missing_shard}"
    );

    let unsupported = spoiled("gpt2-plain", "unsupported", |d| {
        let p = d.join("config.json");
        let text = std::fs::read_to_string(&p)
            .expect("read")
            .replace("\"gpt2\"", "\"llama\"");
        std::fs::write(&p, text).expect("write");
    });
    assert!(
        unsupported.contains("config.json") && unsupported.contains("llama"),
        "{unsupported}"
    );
}

#[test]
fn tokenizer_with_a_larger_vocabulary_than_the_model_is_refused() {
    let dir = fixture("gpt2-plain");
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
    assert_eq!(tokenizer.vocab_size(), 320);
    tokenizer.check_fits(320).expect("fits its own model");
    let err = tokenizer
        .check_fits(300)
        .expect_err("too small a model")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("320"),
        "{err}"
    );
    let ids = tokenizer
        .to_tokens("Shall I compare thee", true)
        .expect("encode");
    assert_eq!(ids[0], 0, "BOS first");
    assert_eq!(
        tokenizer.decode(&ids[1..]).expect("decode"),
        "Shall I compare thee"
    );
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let device = device(BackendKind::Cpu);
    let model = LoadedModel::load(&fixture("gpt2-plain"), &device.device).expect("load");
    let tokens = seedscope_model::TokenBatch::new(vec![0, 1, 320], 1, 3).expect("batch");
    let err = model
        .forward(&tokens, &ForwardOptions::logits())
        .expect_err("id 320")
        .to_string();
    assert!(err.contains("320"), "{err}");
    let long = seedscope_model::TokenBatch::new(vec![1; 33], 1, 33).expect("batch");
    let err = model
        .forward(&long, &ForwardOptions::logits())
        .expect_err("too long")
        .to_string();
    assert!(err.contains("32 positions"), "{err}");
}

/// Write `bytes` to a fresh file and run a parser on it; reaching the end means no panic.
fn parse_all(tag: &str, bytes: &[u8]) {
    let dir = temp_dir(tag);
    let st = dir.join("model.safetensors");
    std::fs::write(&st, bytes).expect("write");
    let _ = Checkpoint::open_safetensors(&st).map(|c| c.f32("wte.weight", &[320, 32]));
    let pkl = dir.join("pytorch_model.bin");
    std::fs::write(&pkl, bytes).expect("write");
    let _ = Checkpoint::open_pickle(&pkl).map(|c| c.f32("transformer.wte.weight", &[320, 32]));
    let npy = dir.join("tokens.npy");
    std::fs::write(&npy, bytes).expect("write");
    let _ = read_tokens_npy(&npy);
    let _ = ModelConfig::from_json_str(&String::from_utf8_lossy(bytes), Path::new("config.json"));
    let _ = TextTokenizer::from_bytes(bytes, Path::new("tokenizer.json"));
}

/// A valid file of each format with one byte range overwritten or the file cut short.
fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (0..base.len(), any::<u8>(), 1usize..16, any::<bool>()).prop_map(move |(at, byte, run, cut)| {
        let mut bytes = base.to_vec();
        if cut {
            bytes.truncate(at);
        } else {
            let end = (at + run).min(bytes.len());
            bytes[at..end].fill(byte);
        }
        bytes
    })
}

static SAFETENSORS: &[u8] = include_bytes!("fixtures/gpt2-plain/model.safetensors");
static PICKLE: &[u8] = include_bytes!("fixtures/gpt2-crfm-fp16/pytorch_model.bin");
static CONFIG: &[u8] = include_bytes!("fixtures/neox-rotary/config.json");

/// 64 cases per property by default; `PROPTEST_CASES=N` runs a longer fuzzing session.
fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn parsers_survive_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_all("fuzz-random", &bytes);
    }

    #[test]
    fn parsers_survive_mutated_safetensors(bytes in mutated(SAFETENSORS)) {
        parse_all("fuzz-st", &bytes);
    }

    #[test]
    fn parsers_survive_mutated_pickles(bytes in mutated(PICKLE)) {
        parse_all("fuzz-pkl", &bytes);
    }

    #[test]
    fn parsers_survive_mutated_configs(bytes in mutated(CONFIG)) {
        parse_all("fuzz-config", &bytes);
    }
}
