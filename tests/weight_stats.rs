//! Weight statistics on TransformerLens-processed weights against the independent numpy
//! reference of `scripts/make_weight_stats_reference.py` (the trained seed-a, a GPT-2 with real
//! LayerNorm parameters, and the GPT-NeoX fixture for its layout and untied unembedding).

use std::path::Path;

use burn::tensor::FloatDType;
use safetensors::SafeTensors;
use seedscope_analysis::weights::{NeuronWeights, Projection, VOCAB_ENDS, weight_stats};
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel};

mod common;

/// Check `model_dir`'s statistics, with the vocabulary projection where `projection` says,
/// against `reference`.
fn check(model_dir: &str, reference: &str, projection: &Projection) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    let model =
        LoadedModel::load_on(&root.join(model_dir), &device, FloatDType::F32).expect("model");
    let processed = model.processed_weights().expect("processed");
    let stats = weight_stats(&processed, projection).expect("weight statistics");
    let bytes = std::fs::read(root.join(reference)).expect("reference");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let f64s = |name: &str| -> Vec<f64> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    };
    let i32s = |name: &str| -> Vec<i32> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()
    };
    type Get = fn(&NeuronWeights) -> f64;
    let columns: [(&str, Get, f64); 10] = [
        // About ten times the largest error measured on the two models (f64 throughout, except
        // the vocabulary cosines, an f32 GEMM).
        ("w_in_norm", |n| n.w_in_norm, 3e-14),
        ("input_bias", |n| n.input_bias, 3e-14),
        ("w_out_norm", |n| n.w_out_norm, 3e-14),
        ("in_out_sim", |n| n.in_out_sim, 3e-14),
        ("l2_penalty", |n| n.l2_penalty, 3e-14),
        ("vocab_mean", |n| n.vocab_mean, 3.5e-8),
        ("vocab_var", |n| n.vocab_var, 3.5e-8),
        ("vocab_skew", |n| n.vocab_skew, 2e-6),
        ("vocab_kurt", |n| n.vocab_kurt, 2e-6),
        ("null_frac", |n| n.null_frac, 1.5e-13),
    ];
    for (name, get, tol) in columns {
        let want = f64s(name);
        assert_eq!(want.len(), stats.len(), "{name}");
        let mut worst = 0.0f64;
        for (i, (w, n)) in want.iter().zip(&stats).enumerate() {
            let got = get(n);
            let err = (got - w).abs() / w.abs().max(1.0);
            worst = worst.max(err);
            assert!(
                err <= tol,
                "{model_dir} {name}[{i}]: {got} vs reference {w}"
            );
        }
        eprintln!("{model_dir} {name}: max relative error {worst:.2e}");
    }
    // Attention (de)activation scores: BOS keys from the model, W_Q processed like
    // TransformerLens, every neuron against every later head.
    let tok =
        seedscope_data::TextTokenizer::from_file(&root.join(model_dir).join("tokenizer.json"))
            .expect("tokenizer");
    let keys = seedscope_analysis::attention::bos_keys(&model, tok.bos_id().expect("bos"))
        .expect("BOS keys");
    let att =
        seedscope_analysis::attention::attention_scores(&processed, &keys, 0).expect("scores");
    let mut worst = 0.0f64;
    for (name, got, heads, want_heads) in [
        ("attn_max", &att.max, &att.max_head, i32s("attn_max_head")),
        ("attn_min", &att.min, &att.min_head, i32s("attn_min_head")),
    ] {
        let want = f64s(name);
        for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
            if w.is_nan() {
                assert!(
                    g.is_nan(),
                    "{model_dir} {name}[{i}]: {g} where no later head exists"
                );
                continue;
            }
            let err = (*g as f64 - w).abs() / w.abs().max(1.0);
            worst = worst.max(err);
            assert!(err < 6e-6, "{model_dir} {name}[{i}]: {g} vs reference {w}");
            assert_eq!(
                heads[i] as i32, want_heads[i],
                "{model_dir} {name}[{i}] head"
            );
        }
    }
    eprintln!("{model_dir} attention scores: max relative error {worst:.2e}");
    // The ends of the vocabulary projection: the same tokens (the order may differ only among
    // cosines equal within f32 rounding).
    let (top, bottom) = (i32s("vocab_top"), i32s("vocab_bottom"));
    let mut same = 0;
    for (i, n) in stats.iter().enumerate() {
        let want_top = &top[i * VOCAB_ENDS..(i + 1) * VOCAB_ENDS];
        let want_bottom = &bottom[i * VOCAB_ENDS..(i + 1) * VOCAB_ENDS];
        same += usize::from(n.vocab_top[0] as i32 == want_top[0]);
        same += usize::from(n.vocab_bottom[0] as i32 == want_bottom[0]);
        let mut got: Vec<i32> = n.vocab_top.iter().map(|&t| t as i32).collect();
        let mut want: Vec<i32> = want_top.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            got, want,
            "{model_dir} neuron {i}: the top {VOCAB_ENDS} tokens differ"
        );
    }
    let mut common_all = 0;
    for (i, n) in stats.iter().enumerate() {
        let want_top = &top[i * VOCAB_ENDS..(i + 1) * VOCAB_ENDS];
        common_all += n
            .vocab_top
            .iter()
            .filter(|t| want_top.contains(&(**t as i32)))
            .count();
    }
    eprintln!(
        "{model_dir}: {same} of {} first-rank vocabulary tokens agree; {common_all} of {} top-10 \
         tokens are in the reference's top 10",
        2 * stats.len(),
        VOCAB_ENDS * stats.len()
    );
    assert_eq!(
        same,
        2 * stats.len(),
        "every neuron's first-rank tokens at both ends agree"
    );
}

#[test]
fn gpt2_weight_statistics_match_the_reference() {
    check(
        "assets/family/seed-a",
        "tests/fixtures/weight_stats/seed-a.safetensors",
        &Projection::Host,
    );
}

#[test]
fn neox_weight_statistics_match_the_reference() {
    check(
        "tests/fixtures/neox-rotary",
        "tests/fixtures/weight_stats/neox-rotary.safetensors",
        &Projection::Host,
    );
}

/// The vocabulary projection on the GPU (Burn's matmul; lavapipe here), within the same
/// tolerances. The buffer limit is set so that the 4,096-token vocabulary goes up in four
/// chunks (1,100 tokens: a block of 1,024 neurons' cosines of 4 bytes each fill 4.5 MB), so the
/// chunks' seams are checked too.
#[test]
fn gpt2_weight_statistics_on_the_gpu_match_the_reference() {
    let device = common::device(BackendKind::Wgpu);
    // A run projects on the GPU where it is a hardware one (lavapipe's GEMM is slower than the
    // host's).
    assert_eq!(
        matches!(Projection::for_run(&device), Projection::Device { .. }),
        !device.is_software_adapter()
    );
    let cpu = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    assert!(matches!(Projection::for_run(&cpu), Projection::Host));
    let Some(Projection::Device { device, .. }) = Projection::on(&device) else {
        panic!("a wgpu device projects on the GPU");
    };
    check(
        "assets/family/seed-a",
        "tests/fixtures/weight_stats/seed-a.safetensors",
        &Projection::Device {
            device,
            max_buffer_bytes: Some(1024 * 4 * 1100),
        },
    );
}
