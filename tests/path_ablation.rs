//! The query-only path ablation against transformers (scripts/make_path_ablation_reference.py):
//! neuron L0.7 removed from head L1H1's query on the GPT-2 fixture; errors name what is wrong.

mod common;

use common::{fixture, fixture_bundle};
use seedscope_analysis::path_ablation::{read, run_path_ablation};
use seedscope_model::BackendKind;

#[test]
fn path_ablation_matches_transformers() {
    let bundle = fixture_bundle("path-ablation-bundle", &["gpt2-plain", "gpt2-crfm"]);
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("analysis/path_ablation.json")).expect("reference"),
    )
    .expect("json");
    for kind in [BackendKind::Cpu, BackendKind::Wgpu] {
        let got = run_path_ablation(&bundle, Some(((0, 7), (1, 1))), 1 << 20, kind)
            .expect("path ablation");
        assert_eq!(got.positions, (8, 32));
        assert_eq!(got.n_tokens, want["n_tokens"].as_u64().expect("n"));
        let mut worst = 0f64;
        for (name, g) in [
            ("mean_activation", got.mean_activation),
            ("mean_bos_attention", got.mean_bos_attention),
            ("mean_bos_attention_ablated", got.mean_bos_attention_ablated),
            ("mean_z_norm", got.mean_z_norm),
            ("mean_z_norm_ablated", got.mean_z_norm_ablated),
            ("corr_activation_bos_change", got.corr_activation_bos_change),
            (
                "corr_activation_norm_change",
                got.corr_activation_norm_change,
            ),
        ] {
            let w = want[name].as_f64().expect("number");
            let err = (g - w).abs() / w.abs().max(1e-2);
            worst = worst.max(err);
            // Measured: 3.5e-7 (cpu) and 4.0e-7 (wgpu) at worst.
            assert!(err < 4e-6, "{kind} {name}: {g} vs reference {w}");
        }
        eprintln!("{kind}: max relative error against transformers {worst:.2e}");
        assert_eq!(got.points.len(), 576);
    }
    // Stored once per pair (the second run replaced the first).
    assert_eq!(read(&bundle).expect("read").len(), 1);
    // A head before the neuron is refused with the reason.
    let e = run_path_ablation(&bundle, Some(((1, 0), (0, 0))), 100, BackendKind::Cpu)
        .expect_err("head before neuron")
        .to_string();
    assert!(e.contains("come before the head"), "{e}");
}
