//! `write_report` on a bundle of the embedded family (4,096 tokens, CPU) with interventions and
//! a path ablation: every figure as PNG and SVG, family pages with examples, an index that links
//! them; a broken bundle is an error that names the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use seedscope_analysis::intervene::{InterventionRequest, run_interventions};
use seedscope_analysis::job::BackendKind;
use seedscope_analysis::job::{AnalysisRequest, JobEnd, run_analysis};
use seedscope_analysis::path_ablation::run_path_ablation;

/// A bundle with interventions and a path ablation, in `dir`.
fn bundle(dir: &Path) -> PathBuf {
    let out = dir.join("bundle");
    let request = AnalysisRequest {
        out: out.clone(),
        max_tokens: Some(4096),
        backend: BackendKind::Cpu,
        command: vec!["seedscope-report tests".into()],
        ..AnalysisRequest::default()
    };
    let end = run_analysis(&request, Arc::new(AtomicBool::new(false)), |_| {}).expect("analysis");
    assert_eq!(end, JobEnd::Written(out.clone()));
    // The entropy-neuron curves (Fig. 7) for one neuron and one baseline neuron, and one path
    // ablation (Fig. 8), on a few hundred tokens.
    let request = InterventionRequest {
        neurons: vec![(1, 3)],
        values: vec![-0.17, 2.0],
        baseline: 1,
        max_tokens: 256,
        ..InterventionRequest::default()
    };
    run_interventions(
        &out,
        &request,
        BackendKind::Cpu,
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect("interventions");
    run_path_ablation(&out, Some(((0, 3), (1, 0))), 256, BackendKind::Cpu).expect("path ablation");
    out
}

#[test]
fn the_report_has_every_figure_family_page_and_index() {
    let dir = tempfile::Builder::new()
        .prefix("seedscope-report-")
        .tempdir()
        .expect("temp dir");
    let b = bundle(dir.path());
    let out = dir.path().join("out");
    let s = seedscope_report::write_report(&b, &out).expect("report");
    assert_eq!(
        s.seeds_with_weights, 5,
        "Fig. 6 uses all five seeds: {:?}",
        s.notes
    );
    for f in [
        "fig2-universality",
        "fig3-percentiles",
        "fig6a-vocab-kurtosis",
        "fig6b-vocab-skew",
        "fig9-frequency-vs-in-out",
        "entropy-candidates",
        "fig7-entropy-interventions",
        "fig8-path-ablation-L0.3-L1H0",
        "families",
    ] {
        assert!(
            s.figures.iter().any(|x| x == f),
            "{f} missing from {:?}",
            s.figures
        );
        let svg = std::fs::read_to_string(out.join(format!("{f}.svg"))).expect("svg");
        assert!(svg.starts_with("<svg"), "{f}");
        let png = std::fs::read(out.join(format!("{f}.png"))).expect("png");
        let img = image::load_from_memory(&png)
            .expect("png decodes")
            .to_rgb8();
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(inked > img.pixels().len() / 100, "{f}.png is nearly blank");
    }
    assert_eq!(
        s.figures.len(),
        9,
        "every figure was checked: {:?}",
        s.figures
    );
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    for f in &s.figures {
        assert!(
            index.contains(&format!("src=\"{f}.png\"")),
            "index lacks {f}"
        );
    }
    assert!(!s.families.is_empty());
    for page in &s.families {
        assert!(
            index.contains(&format!("href=\"{page}\"")),
            "index lacks {page}"
        );
        let html = std::fs::read_to_string(out.join(page)).expect("family page");
        // Every shown neuron has its examples with the maximum marked.
        assert!(html.contains("<h3>L"), "{page} shows no neuron");
        assert!(html.contains("<mark>"), "{page} shows no example");
    }
    // A second report replaces the first in place.
    seedscope_report::write_report(&b, &out).expect("report again");
    assert!(!seedscope_analysis::bundle::partial_dir(&out).exists());
    // A corrupt correlation file is an error naming it; the old report stays.
    std::fs::write(b.join("correlation.safetensors"), b"not safetensors").expect("write");
    let e = seedscope_report::write_report(&b, &out).expect_err("corrupt bundle");
    assert!(e.to_string().contains("correlation.safetensors"), "{e}");
    assert!(out.join("index.html").exists());
}
