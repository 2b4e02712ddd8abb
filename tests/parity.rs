//! Parity with Hugging Face transformers on every fixture, on the CPU backend and on wgpu
//! (lavapipe in CI). Measured at worst 4.5e-6 on neuron activations and 5.5e-6 on logits (f32)
//! on the tiny fixtures, 1.2e-5 and 1.1e-5 on `gpt2-wide`; the bounds are 5e-5 and 6e-5.

mod common;

use common::{Reference, device, fixture, host, max_abs_diff};
use seedscope_model::{BackendKind, ForwardOptions, HookPoint, LoadedModel, NeuronPatch};

/// Largest absolute error allowed on a neuron activation (f32).
const NEURON_TOL: f32 = 5e-5;
/// Largest absolute error allowed on a logit (f32).
const LOGIT_TOL: f32 = 6e-5;

const FIXTURES: [&str; 5] = [
    "gpt2-plain",
    "gpt2-crfm",
    "gpt2-crfm-fp16",
    "neox-rotary",
    "gpt2-wide",
];

fn check_parity(backend: BackendKind) {
    let device = device(backend);
    eprintln!("device: {}", device.describe());
    for name in FIXTURES {
        let dir = fixture(name);
        let model = LoadedModel::load(&dir, &device.device).expect("load fixture");
        let reference = Reference::load(&dir);
        let options = ForwardOptions::all_neurons_and_logits(model.config.n_layers());
        let out = model
            .forward(&reference.tokens(), &options)
            .expect("forward");
        let mut worst_neuron = 0.0f32;
        for (hook, tensor) in &out.taps {
            let (want, shape) = reference.get(&hook.to_string());
            assert_eq!(&tensor.dims().to_vec(), shape, "{name} {hook} shape");
            let got = host(tensor);
            let err = max_abs_diff(&got, want);
            assert!(
                err < NEURON_TOL,
                "{name} {hook}: max abs error {err:e} vs transformers"
            );
            worst_neuron = worst_neuron.max(err);
        }
        assert_eq!(
            out.taps.len(),
            2 * model.config.n_layers(),
            "{name}: every tap present"
        );
        let logits = out.logits.expect("logits requested");
        let (want, shape) = reference.get("logits");
        assert_eq!(&logits.dims().to_vec(), shape);
        let err = max_abs_diff(&host(&logits), want);
        assert!(
            err < LOGIT_TOL,
            "{name} logits: max abs error {err:e} vs transformers"
        );
        eprintln!("{backend} {name}: max |Δ| neurons {worst_neuron:.2e}, logits {err:.2e}");
    }
}

#[test]
fn parity_cpu() {
    check_parity(BackendKind::Cpu);
}

#[test]
fn parity_wgpu() {
    check_parity(BackendKind::Wgpu);
}

/// The universality pass (every neuron, no logits) leaves out what nothing reads after the
/// last MLP's activation (its output projection); its taps are the full pass's, bit for bit,
/// on every fixture (sequential GPT-2 blocks and parallel NeoX ones).
#[test]
fn the_neuron_pass_gives_the_full_pass_neurons() {
    let device = device(BackendKind::Cpu);
    for name in FIXTURES {
        let dir = fixture(name);
        let model = LoadedModel::load(&dir, &device.device).expect("load fixture");
        let tokens = Reference::load(&dir).tokens();
        let n = model.config.n_layers();
        let full = model
            .forward(&tokens, &ForwardOptions::all_neurons_and_logits(n))
            .expect("full pass");
        let neurons = model
            .forward(&tokens, &ForwardOptions::all_neurons(n))
            .expect("neuron pass");
        assert!(neurons.logits.is_none(), "{name}: no logits asked for");
        assert_eq!(full.taps.len(), neurons.taps.len(), "{name}");
        for (hook, t) in &full.taps {
            assert_eq!(host(t), host(&neurons.taps[hook]), "{name} {hook}");
        }
    }
}

#[test]
fn stop_at_layer_returns_only_what_was_asked() {
    let device = device(BackendKind::Cpu);
    let dir = fixture("neox-rotary");
    let model = LoadedModel::load(&dir, &device.device).expect("load");
    let reference = Reference::load(&dir);
    let mut options = ForwardOptions::default();
    options.taps.insert(HookPoint::post(1));
    options.stop_at_layer = Some(2);
    let out = model
        .forward(&reference.tokens(), &options)
        .expect("forward");
    assert!(out.logits.is_none());
    assert_eq!(
        out.taps.keys().copied().collect::<Vec<_>>(),
        vec![HookPoint::post(1)]
    );
    let got = host(&out.taps[&HookPoint::post(1)]);
    let err = max_abs_diff(&got, &reference.get("blocks.1.mlp.hook_post").0);
    assert!(err < NEURON_TOL, "early stop changed layer 1: {err:e}");

    options.taps.insert(HookPoint::pre(2));
    let err = model
        .forward(&reference.tokens(), &options)
        .expect_err("tap beyond stop");
    assert!(err.to_string().contains("blocks.2.mlp.hook_pre"), "{err}");
}

#[test]
fn neuron_patch_sets_post_activation_and_moves_downstream() {
    let device = device(BackendKind::Cpu);
    let dir = fixture("gpt2-plain");
    let model = LoadedModel::load(&dir, &device.device).expect("load");
    let reference = Reference::load(&dir);
    let tokens = reference.tokens();
    let mut options = ForwardOptions::all_neurons(model.config.n_layers());
    options.patches.push(NeuronPatch {
        layer: 0,
        neuron: 5,
        value: 3.25,
    });
    let out = model.forward(&tokens, &options).expect("forward");
    let d_mlp = model.config.d_mlp();
    let post0 = host(&out.taps[&HookPoint::post(0)]);
    let (clean0, _) = reference.get("blocks.0.mlp.hook_post");
    for (i, (&got, &clean)) in post0.iter().zip(clean0).enumerate() {
        let want = if i % d_mlp == 5 { 3.25 } else { clean };
        assert!(
            (got - want).abs() < NEURON_TOL,
            "position {i}: {got} vs {want}"
        );
    }
    let pre1 = host(&out.taps[&HookPoint::pre(1)]);
    let moved = max_abs_diff(&pre1, &reference.get("blocks.1.mlp.hook_pre").0);
    assert!(
        moved > 1e-3,
        "patching L0N5 must change layer 1 (moved {moved})"
    );

    options.patches[0].neuron = d_mlp;
    assert!(
        model.forward(&tokens, &options).is_err(),
        "out-of-range neuron is refused"
    );
}

/// f16 and bf16 compute: the weights are converted, the taps come out in that dtype, and the
/// activations stay close to the f32 reference (rounding of an 8- or 11-bit mantissa; measured
/// 1.1e-2 for f16 and 9.7e-2 for bf16).
#[test]
fn reduced_precision_compute_tracks_the_f32_reference() {
    use burn::tensor::{DType, FloatDType};
    let device = device(BackendKind::Cpu);
    for (dtype, tolerance) in [(FloatDType::F16, 0.05), (FloatDType::BF16, 0.3)] {
        for name in ["gpt2-crfm-fp16", "neox-rotary"] {
            let dir = fixture(name);
            let model = LoadedModel::load_on(&dir, &device, dtype).expect("load fixture");
            let reference = Reference::load(&dir);
            let options = ForwardOptions::all_neurons(model.config.n_layers());
            let out = model
                .forward(&reference.tokens(), &options)
                .expect("forward");
            let mut worst = 0.0f32;
            for (hook, tensor) in out.taps {
                assert_eq!(tensor.dtype(), DType::from(dtype), "{name} {hook} dtype");
                let got = host(&tensor);
                worst = worst.max(max_abs_diff(&got, &reference.get(&hook.to_string()).0));
            }
            eprintln!("{dtype:?} {name}: max |Δ| neurons {worst:.2e}");
            assert!(worst < tolerance, "{dtype:?} {name}: {worst}");
        }
    }
}

/// Vocabulary matrices split into row chunks (as for GPT-2's 154 MB embedding on a device that
/// binds at most 128 MiB) give the same activations and logits as one matrix.
#[test]
fn chunked_vocabulary_matrices_give_the_same_outputs() {
    use seedscope_model::LoadOptions;
    for backend in [BackendKind::Cpu, BackendKind::Wgpu] {
        let device = device(backend);
        for name in ["gpt2-plain", "neox-rotary"] {
            let dir = fixture(name);
            // 32-wide f32 rows: 100 rows per chunk, so 320 tokens make 4 chunks (the last short).
            let options = LoadOptions {
                max_tensor_bytes: Some(100 * 32 * 4),
                ..LoadOptions::default()
            };
            let model = LoadedModel::load_with(&dir, &device.device, &options).expect("load");
            let reference = Reference::load(&dir);
            let options = ForwardOptions::all_neurons_and_logits(model.config.n_layers());
            let out = model
                .forward(&reference.tokens(), &options)
                .expect("forward");
            let got = host(&out.taps[&HookPoint::post(0)]);
            let err = max_abs_diff(&got, &reference.get("blocks.0.mlp.hook_post").0);
            assert!(err < NEURON_TOL, "{backend} {name} neurons: {err:e}");
            let logits = host(&out.logits.expect("logits"));
            let err = max_abs_diff(&logits, &reference.get("logits").0);
            assert!(err < LOGIT_TOL, "{backend} {name} logits: {err:e}");
        }
    }
}
