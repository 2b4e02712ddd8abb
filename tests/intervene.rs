//! `seedscope intervene` against transformers (scripts/make_intervention_reference.py): the
//! final LayerNorm scale, entropy, loss and reciprocal rank with and without a neuron fixed, on
//! a bundle of the three GPT-2 fixtures; an interrupted run resumes to the same result.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{fixture, fixture_bundle};
use seedscope_analysis::intervene::{
    InterventionRequest, Interventions, Metrics, run_interventions,
};
use seedscope_model::BackendKind;

fn close(got: &Metrics, want: &serde_json::Value, what: &str) -> f64 {
    let mut worst = 0f64;
    for (name, g) in [
        ("scale", got.scale),
        ("entropy", got.entropy),
        ("loss", got.loss),
        ("reciprocal_rank", got.reciprocal_rank),
    ] {
        let w = want[name].as_f64().expect("number");
        let err = (g - w).abs() / w.abs().max(1e-3);
        worst = worst.max(err);
        // Measured: 1.4e-8 at worst.
        assert!(err < 1.4e-7, "{what} {name}: {g} vs reference {w}");
    }
    worst
}

#[test]
fn interventions_match_transformers_and_resume() {
    let bundle = fixture_bundle(
        "intervene-bundle",
        &["gpt2-plain", "gpt2-crfm", "gpt2-crfm-fp16"],
    );
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("analysis/interventions.json")).expect("reference"),
    )
    .expect("json");
    let request = InterventionRequest {
        neurons: vec![(1, 5)],
        values: vec![0.0, 3.0],
        baseline: 3,
        seed: 7,
        max_tokens: 1 << 20,
    };
    let run = |cancel_after: Option<usize>| {
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        run_interventions(&bundle, &request, BackendKind::Cpu, cancel, move |p| {
            if cancel_after.is_some_and(|n| p.done >= n) {
                c.store(true, Ordering::SeqCst);
            }
        })
        .expect("interventions")
    };
    let full = run(None);
    assert_eq!(
        full.n_tokens,
        reference["nominal"]["n_tokens"].as_u64().expect("n")
    );
    let mut worst = close(&full.nominal, &reference["nominal"], "nominal");
    for (k, want) in reference["patched"]
        .as_array()
        .expect("patched")
        .iter()
        .enumerate()
    {
        worst = worst.max(close(
            &full.curves[0].metrics[k],
            want,
            &format!("L1.5 value {k}"),
        ));
    }
    eprintln!("max relative error against transformers: {worst:.2e}");
    // Fixing the neuron changes the scale as transformers says (not a no-op).
    assert!((full.curves[0].metrics[1].scale - full.nominal.scale).abs() > 1e-3);
    // The baseline: three neurons of the last two layers, not the target.
    assert_eq!(full.baseline_neurons.len(), 3);
    assert!(
        full.baseline_neurons
            .iter()
            .all(|&(l, n)| l >= 1 && (l, n) != (1, 5))
    );
    assert_eq!(full.curves.len(), 4);
    assert_eq!(
        Interventions::read(&bundle).expect("read"),
        Some(full.clone())
    );
    // Interrupted after three forward passes (one curve and a half), then resumed.
    std::fs::remove_file(bundle.join("interventions.json")).expect("remove");
    let part = run(Some(3));
    assert!(part.curves.len() < 4);
    let saved = Interventions::read(&bundle).expect("read").expect("saved");
    assert_eq!(saved.curves.len(), 1, "the finished curve was saved");
    assert_eq!(run(None), full);
    // A neuron outside the model is an error that says so.
    let bad = InterventionRequest {
        neurons: vec![(9, 0)],
        ..request.clone()
    };
    let e = run_interventions(
        &bundle,
        &bad,
        BackendKind::Cpu,
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect_err("outside")
    .to_string();
    assert!(e.contains("L9.0") && e.contains("outside"), "{e}");
}
