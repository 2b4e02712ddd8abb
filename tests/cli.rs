//! The `seedscope` binary end to end: what a user types, what lands on disk.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Reference, fixture, max_abs_diff, temp_dir};
use seedscope_model::{Checkpoint, TokenBatch};

fn seedscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seedscope"))
}

/// The number written just before `marker` in `text` (`about 63 MiB at peak`).
fn number_before(text: &str, marker: &str) -> u64 {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{text}"));
    let digits: String = text[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let digits: String = digits.chars().rev().collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before `{marker}` in:\n{text}"))
}

/// The number written just after `marker` in `text` (`peak heap 56 MiB`).
fn number_after(text: &str, marker: &str) -> u64 {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{text}"));
    let digits: String = text[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after `{marker}` in:\n{text}"))
}

/// `seedscope report BUNDLE --out OUT`, which must succeed; OUT.
fn report(bundle: &std::path::Path, out: &std::path::Path) -> PathBuf {
    let r = seedscope()
        .arg("report")
        .arg(bundle)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run report");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out.to_path_buf()
}

#[test]
fn activations_from_tokens_match_the_reference_file() {
    let dir = temp_dir("cli-tokens");
    let reference = Reference::load(&fixture("neox-rotary"));
    let tokens: TokenBatch = reference.tokens();
    let npy = dir.join("tokens.npy");
    seedscope_data::write_tokens_npy(&npy, tokens.ids(), tokens.shape()).expect("npy");
    let out = dir.join("out/acts.safetensors");
    let status = seedscope()
        .args([
            "activations",
            "--backend",
            "cpu",
            "--logits",
            "--batch-size",
            "1",
            "--model",
        ])
        .arg(fixture("neox-rotary"))
        .arg("--tokens")
        .arg(&npy)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run seedscope");
    assert!(status.success());
    let written = Checkpoint::open_safetensors(&out).expect("output is safetensors");
    assert_eq!(written.len(), 2 * 3 + 1, "6 hooks and logits");
    for (name, (want, shape)) in &reference.tensors {
        if name == "tokens" {
            continue;
        }
        let got = written
            .f32(name, shape)
            .expect("tensor present with the reference shape");
        let tol = if name == "logits" { 1e-3 } else { 1e-4 };
        assert!(max_abs_diff(&got, want) < tol, "{name}");
    }
}

#[test]
fn activations_from_text_tokenise_with_bos() {
    let dir = temp_dir("cli-text");
    let text = dir.join("in.txt");
    std::fs::write(&text, "Shall I compare thee to a summer's day?").expect("text");
    let out = dir.join("acts.safetensors");
    let status = seedscope()
        .args(["activations", "--backend", "cpu", "--model"])
        .arg(fixture("gpt2-plain"))
        .arg("--text")
        .arg(&text)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run seedscope");
    assert!(status.success());
    let written = Checkpoint::open_safetensors(&out).expect("output");
    let shape = written
        .shape("blocks.2.mlp.hook_post")
        .expect("last layer")
        .to_vec();
    assert_eq!(shape[0], 1, "one row");
    assert_eq!(shape[2], 128, "d_mlp");
    assert!(!written.contains("logits"), "logits only with --logits");
}

/// A command that only probes adapters on a machine without a display prints no driver noise
/// that reads like an error (Mesa's device-select layer complained about `XDG_RUNTIME_DIR`).
#[test]
fn probing_adapters_without_a_display_prints_no_stray_errors() {
    let dir = temp_dir("cli-quiet");
    let output = seedscope()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_RUNTIME_DIR")
        .args(["activations", "--backend", "auto", "--text"])
        .arg(fixture("gpt2-plain/config.json"))
        .arg("--model")
        .arg(fixture("gpt2-plain"))
        .arg("--out")
        .arg(dir.join("acts.safetensors"))
        .output()
        .expect("run seedscope activations");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("error")),
        "stray error lines: {stderr}"
    );
}

#[test]
fn a_wrong_model_directory_is_a_clear_error_and_writes_nothing() {
    let dir = temp_dir("cli-bad");
    let out = dir.join("acts.safetensors");
    let output = seedscope()
        .args([
            "activations",
            "--backend",
            "cpu",
            "--model",
            "/nonexistent/model",
            "--text",
        ])
        .arg(fixture("../../assets/demo.txt"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run seedscope");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn train_command_writes_a_hugging_face_directory_and_resumes() {
    let dir = temp_dir("cli-train");
    let out = dir.join("seed");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |extra: &[&str]| {
        seedscope()
            .current_dir(root)
            .args([
                "train",
                "--seed",
                "5",
                "--config",
                "ci",
                "--steps",
                "6",
                "--backend",
                "cpu",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run seedscope train")
    };
    let first = run(&["--stop-after", "3"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("rerun the same command to resume"));
    assert!(!out.join("model.safetensors").exists());
    let second = run(&[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_log.json")).expect("log"))
            .expect("json");
    assert_eq!(log["steps"], 6);
    assert!(
        log["eval_loss"]
            .as_f64()
            .is_some_and(|l| l.is_finite() && l > 0.0)
    );
}

#[test]
fn analyze_writes_a_complete_bundle_and_summary_reads_it() {
    let dir = temp_dir("cli-analyze");
    let out = dir.join("bundle");
    let output = seedscope()
        .arg("analyze")
        .arg("--models")
        .args(["gpt2-plain", "gpt2-crfm", "gpt2-crfm-fp16"].map(fixture))
        .arg("--tokens")
        .arg(fixture("analysis/tokens.npy"))
        .args(["--backend", "cpu", "--save-tiles", "0-0,2-1", "--out"])
        .arg(&out)
        .output()
        .expect("run seedscope analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for file in [
        "manifest.json",
        "neurons.csv",
        "correlation.safetensors",
        "tiles.safetensors",
        "histograms.safetensors",
        "anatomy.safetensors",
        "attention.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(
        !dir.join("bundle.partial").exists(),
        "the working directory was left behind"
    );
    let csv = std::fs::read_to_string(out.join("neurons.csv")).expect("csv");
    let mut lines = csv.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("model,layer,neuron,max_corr,mean_corr,min_corr,max_baseline,mean_baseline,min_baseline,excess_corr,is_universal"));
    assert_eq!(lines.count(), 3 * 128);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["models"].as_array().map(Vec::len), Some(3));
    assert_eq!(manifest["n_tokens"], 706);
    let tiles = std::fs::read(out.join("tiles.safetensors")).expect("tiles");
    let st = safetensors::SafeTensors::deserialize(&tiles).expect("tiles safetensors");
    assert_eq!(st.len(), 4);
    assert!(st.names().contains(&"gpt2-plain/gpt2-crfm/L2-L1"));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        printed.contains("anchor gpt2-plain")
            && printed.contains("all")
            && printed.contains("families: "),
        "{printed}"
    );
    let summary = seedscope()
        .arg("summary")
        .arg(&out)
        .output()
        .expect("run summary");
    assert!(summary.status.success());
    assert_eq!(String::from_utf8_lossy(&summary.stdout), printed);
    // The entropy-neuron experiment on one neuron and one baseline neuron, then the report.
    let iv = seedscope()
        .arg("intervene")
        .arg(&out)
        .args([
            "--neurons",
            "L2.3",
            "--values",
            "-0.17,2",
            "--baseline",
            "1",
        ])
        .args(["--max-tokens", "200", "--backend", "cpu"])
        .output()
        .expect("run intervene");
    let stdout = String::from_utf8_lossy(&iv.stdout);
    assert!(
        iv.status.success(),
        "{}",
        String::from_utf8_lossy(&iv.stderr)
    );
    assert!(
        stdout.contains("L2.3 scale") && stdout.contains("(baseline)"),
        "{stdout}"
    );
    assert!(out.join("interventions.json").is_file());
    let pa = seedscope()
        .arg("intervene")
        .arg(&out)
        .args(["--path", "L1.3:L2H0", "--backend", "cpu"])
        .output()
        .expect("run intervene --path");
    let stdout = String::from_utf8_lossy(&pa.stdout);
    assert!(
        pa.status.success(),
        "{}",
        String::from_utf8_lossy(&pa.stderr)
    );
    assert!(stdout.contains("L1.3 on head L2H0"), "{stdout}");
    let report = report(&out, &dir.join("report"));
    let index = std::fs::read_to_string(report.join("index.html")).expect("index");
    for f in [
        "fig2-universality.png",
        "fig7-entropy-interventions.png",
        "family-",
    ] {
        assert!(index.contains(f), "index lacks {f}");
    }
}

#[test]
fn models_of_different_shapes_analyse_into_a_bundle_the_explorer_and_report_read() {
    let dir = temp_dir("cli-unequal");
    let out = dir.join("bundle");
    let models = ["gpt2-plain", "gpt2-wide", "gpt2-crfm"];
    let output = seedscope()
        .arg("analyze")
        .arg("--models")
        .args(models.map(fixture))
        .arg("--tokens")
        .arg(fixture("analysis/tokens.npy"))
        .args(["--backend", "cpu", "--all-anchors", "--save-tiles", "all"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run seedscope analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("gpt2-wide: 4 layers x 160 neurons"),
        "the log names each model's shape: {stderr}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["models"][1]["shape"]["d_mlp"], 160);
    assert_eq!(manifest["models"][1]["shape"]["n_layers"], 4);
    // Every anchor's rows in its own shape; the best match of gpt2-plain in gpt2-wide is a
    // neuron of gpt2-wide (layers up to 3, neurons up to 159).
    let csv = std::fs::read_to_string(out.join("neurons.csv")).expect("csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let count = |m: &str| rows.iter().filter(|r| r[0] == m).count();
    assert_eq!(
        (count("gpt2-plain"), count("gpt2-wide"), count("gpt2-crfm")),
        (3 * 128, 4 * 160, 3 * 128)
    );
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let match_0 = header
        .iter()
        .position(|&h| h == "match_0")
        .expect("match_0");
    let in_wide: Vec<(usize, usize)> = rows
        .iter()
        .filter(|r| r[0] == "gpt2-plain")
        .map(|r| {
            let (l, n) = r[match_0].split_once('.').expect("layer.neuron");
            (l.parse().expect("layer"), n.parse().expect("neuron"))
        })
        .collect();
    assert!(in_wide.iter().all(|&(l, n)| l < 4 && n < 160));
    assert!(
        in_wide.iter().any(|&(l, n)| l == 3 || n >= 128),
        "matches reach gpt2-wide's own shape"
    );
    let tiles = std::fs::read(out.join("tiles.safetensors")).expect("tiles");
    let st = safetensors::SafeTensors::deserialize(&tiles).expect("tiles safetensors");
    let shape = |n: &str| st.tensor(n).expect(n).shape().to_vec();
    assert_eq!(shape("gpt2-plain/gpt2-wide/L0-L3"), [128, 160]);
    assert_eq!(shape("gpt2-wide/gpt2-plain/L3-L2"), [160, 128]);
    let summary = seedscope()
        .arg("summary")
        .arg(&out)
        .output()
        .expect("run summary");
    let printed = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success());
    assert!(
        printed.contains("gpt2-plain: 3 layers x 128 neurons, gpt2-wide: 4 layers x 160 neurons")
            && printed.contains("anchor gpt2-wide"),
        "{printed}"
    );
    // The explorer opens it: each model's shape, matches in the other model's, and the tile
    // of two models' layers with its own rows and columns.
    let ex = seedscope_app::Explorer::open(&out).expect("the explorer opens the bundle");
    assert_eq!((ex.shape(1).n_layers, ex.shape(1).d_mlp), (4, 160));
    assert!(!ex.one_shape());
    let id = seedscope_app::NeuronId {
        model: 1,
        layer: 3,
        neuron: 150,
    };
    assert!(ex.row(id).is_some(), "gpt2-wide's last neuron has a row");
    let twins = ex.matches(id);
    assert_eq!(twins.len(), 2);
    assert!(twins.iter().all(|m| m.id.layer < 3 && m.id.neuron < 128));
    assert_eq!(
        ex.read_tile("gpt2-wide/gpt2-crfm/L3-L2")
            .expect("tile")
            .len(),
        160 * 128
    );
    let report = report(&out, &dir.join("report"));
    assert!(report.join("index.html").is_file());
}

#[test]
fn the_permutation_null_reaches_the_bundle_and_the_summary() {
    let dir = temp_dir("cli-null");
    // Two fixture seeds over the fixture tokens with the null, and `extra` options.
    let analyze = |out: &std::path::Path, extra: &[&str]| {
        let output = seedscope()
            .arg("analyze")
            .arg("--models")
            .args(["gpt2-plain", "gpt2-crfm"].map(fixture))
            .arg("--tokens")
            .arg(fixture("analysis/tokens.npy"))
            .args(["--backend", "cpu", "--null", "permutation"])
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .expect("run seedscope analyze");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
    };
    let out = dir.join("bundle");
    let (printed, stderr) = analyze(&out, &[]);
    // 706 tokens of 384 neurons: enough (chance alone about 0.13).
    assert!(!stderr.contains("the permutation null over"), "{stderr}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["options"]["permutation_null"], true);
    assert!(
        manifest["null"]
            .as_str()
            .is_some_and(|s| s.contains("seed 0"))
    );
    let bundle = seedscope_analysis::Bundle::read(&out).expect("bundle");
    assert!(bundle.neurons.iter().all(|r| {
        (0.0..=1.0).contains(&r.mean_null)
            && (r.excess_over_null - (r.mean_corr - r.mean_null)).abs() < 2e-6
    }));
    assert!(
        printed.contains("permutation null: mean best correlation"),
        "{printed}"
    );
    // Too few tokens: the null says so, with the numbers.
    let (_, stderr) = analyze(&dir.join("few"), &["--max-tokens", "100"]);
    assert!(
        stderr.contains("the permutation null over 100 kept tokens: chance alone reaches"),
        "{stderr}"
    );
}

#[test]
fn a_series_of_training_checkpoints_gives_a_trajectory() {
    let dir = temp_dir("cli-series");
    let train = |seed: u64, out: &std::path::Path, extra: &[&str]| {
        let output = seedscope()
            .args([
                "train",
                "--seed",
                &seed.to_string(),
                "--config",
                "ci",
                "--backend",
                "cpu",
            ])
            .args(["--steps", "12", "--save-steps", "4,8", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .expect("run seedscope train");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let seeds: Vec<PathBuf> = (0..3).map(|k| dir.join(format!("s{k}"))).collect();
    for (k, s) in seeds.iter().enumerate() {
        train(k as u64, s, &[]);
        for step in [4, 8] {
            let c = s.join(format!("checkpoint-{step}"));
            for f in ["config.json", "model.safetensors", "tokenizer.json"] {
                assert!(c.join(f).is_file(), "{} has no {f}", c.display());
            }
        }
    }
    let text = dir.join("text.txt");
    let corpus = std::fs::read_to_string(fixture("../../assets/demo.txt")).expect("demo text");
    std::fs::write(&text, corpus.repeat(40)).expect("text");
    let analyze = |steps: &str, models: &[PathBuf], out: &std::path::Path| {
        seedscope()
            .arg("analyze")
            .arg("--models")
            .args(models)
            .arg("--text")
            .arg(&text)
            .args(["--backend", "cpu", "--steps", steps, "--out"])
            .arg(out)
            .output()
            .expect("run seedscope analyze")
    };
    let out = dir.join("series");
    let output = analyze("4,8,final", &seeds, &out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("universality over training"), "{stdout}");
    // One bundle per step, the trajectory in the last; each step's numbers are its bundle's.
    let bundles: Vec<seedscope_analysis::Bundle> = ["step-4", "step-8", "final"]
        .iter()
        .map(|d| seedscope_analysis::Bundle::read(&out.join(d)).expect("step bundle"))
        .collect();
    assert_eq!(bundles[0].manifest.models[1].name, "s1@checkpoint-4");
    let t = seedscope_analysis::bundle::Trajectory::load(&out.join("final"))
        .expect("trajectory")
        .expect("the last step has it");
    assert_eq!(
        t.steps
            .iter()
            .map(|s| (s.label.as_str(), s.step))
            .collect::<Vec<_>>(),
        vec![("4", Some(4)), ("8", Some(8)), ("final", None)]
    );
    for (k, b) in bundles.iter().enumerate() {
        let rows: Vec<_> = b
            .neurons
            .iter()
            .filter(|r| r.model == b.manifest.models[0].name)
            .collect();
        assert_eq!(rows.len(), t.mean_corr[k].len());
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(t.mean_corr[k][i], r.mean_corr as f32);
            assert_eq!(t.excess_corr[k][i], r.excess_corr as f32);
        }
        let universal = rows.iter().filter(|r| r.is_universal).count();
        assert_eq!(
            t.steps[k].fraction_universal,
            universal as f64 / rows.len() as f64
        );
    }
    // The correlations move with training: the series is not one step three times.
    assert_ne!(t.mean_corr[0], t.mean_corr[2]);
    // The report draws it.
    let report = report(&out.join("final"), &dir.join("report"));
    for ext in ["png", "svg"] {
        assert!(
            report
                .join(format!("training-universality.{ext}"))
                .is_file()
        );
    }
    // A step a seed did not save is named, with the nearest it has, before any analysis.
    let output = analyze("5,final", &seeds, &dir.join("missing"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("has no checkpoint-5 (the nearest of its 2 is checkpoint-4)"),
        "{stderr}"
    );
    assert!(!dir.join("missing").exists());
    // Steps out of training order are refused.
    let output = analyze("8,4", &seeds, &dir.join("order"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("give the steps in training order"));
    // A series whose shape changes between steps is refused before any analysis.
    let wide: Vec<PathBuf> = (0..3).map(|k| dir.join(format!("w{k}"))).collect();
    for (k, w) in wide.iter().enumerate() {
        train(k as u64, w, &["--d-mlp", "64"]);
        std::fs::rename(w.join("checkpoint-4"), seeds[k].join("checkpoint-6")).expect("move");
    }
    let output = analyze("6,final", &seeds, &dir.join("shapes"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("a series must keep the models' shape"),
        "{stderr}"
    );
    assert!(!dir.join("shapes").exists());
}

#[test]
fn models_that_do_not_share_a_tokenizer_are_refused_with_both_named() {
    let dir = temp_dir("cli-tokenizers");
    // gpt2-plain's weights with another tokenizer: one whose tokens "!" and "\"" swapped ids
    // (same size), and the embedded family's (another size).
    let fixture_tokenizer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("gpt2-plain").join("tokenizer.json")).expect("tokenizer"),
    )
    .expect("json");
    let mut swapped = fixture_tokenizer.clone();
    swapped["model"]["vocab"]["!"] = 2.into();
    swapped["model"]["vocab"]["\""] = 1.into();
    let family = std::fs::read(fixture("../../assets/family/tokenizer.json")).expect("family");
    for (name, tokenizer, why) in [
        (
            "swapped",
            serde_json::to_vec(&swapped).expect("json"),
            "token 1 is Some(\"!\") in the first and Some(\"\\\"\") in the second",
        ),
        ("family", family, "320 tokens against"),
    ] {
        let other = dir.join(name);
        std::fs::create_dir_all(&other).expect("dir");
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture("gpt2-plain").join(f), other.join(f)).expect("copy");
        }
        std::fs::write(other.join("tokenizer.json"), tokenizer).expect("tokenizer");
        let output = seedscope()
            .arg("analyze")
            .arg("--models")
            .arg(fixture("gpt2-plain"))
            .arg(&other)
            .arg("--tokens")
            .arg(fixture("analysis/tokens.npy"))
            .args(["--backend", "cpu", "--out"])
            .arg(dir.join("bundle"))
            .output()
            .expect("run seedscope analyze");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}");
        assert!(stderr.contains("do not share a tokenizer"), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            stderr.contains("gpt2-plain") && stderr.contains(name),
            "{stderr}"
        );
        assert!(!dir.join("bundle").exists());
    }
}

#[test]
fn analyze_and_summary_name_the_file_that_is_wrong() {
    let dir = temp_dir("cli-analyze-bad");
    let out = dir.join("bundle");
    let bad = seedscope()
        .arg("analyze")
        .arg("--models")
        .arg(fixture("gpt2-plain"))
        .arg("/nonexistent/seed-b")
        .arg("--tokens")
        .arg(fixture("analysis/tokens.npy"))
        .args(["--backend", "cpu", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("/nonexistent/seed-b"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
    std::fs::create_dir_all(&out).expect("dir");
    std::fs::write(out.join("manifest.json"), "{ not json").expect("write");
    for command in ["summary", "report", "intervene"] {
        let s = seedscope().arg(command).arg(&out).output().expect("run");
        let stderr = String::from_utf8_lossy(&s.stderr);
        assert!(
            !s.status.success() && stderr.contains("manifest.json") && !stderr.contains("panicked"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn without_a_display_the_app_says_so_and_points_to_analyze() {
    let out = seedscope()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run seedscope");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no display"), "{err}");
    assert!(err.contains("seedscope analyze"), "{err}");
}

/// JSON Lines data (the Pile's format) sampled under a token budget: the bundle records the
/// seed, and a later command on the bundle rebuilds the same rows (its token hash matches).
#[test]
fn a_jsonl_dataset_is_sampled_with_its_seed_and_rebuilt_for_interventions() {
    let dir = temp_dir("cli-jsonl");
    // Compressed as the Pile ships it; `intervene` must recognise .jsonl.zst as a dataset.
    let data = dir.join("docs.jsonl.zst");
    let docs: String = (0..60)
        .map(|i| {
            format!(
                "{{\"text\": \"Document {i}: the quick brown fox jumps over the lazy dog, again and again {i}.\"}}\n"
            )
        })
        .collect();
    std::fs::write(&data, zstd::encode_all(docs.as_bytes(), 3).expect("zstd")).expect("write");
    let out = dir.join("bundle");
    let run = seedscope()
        .arg("analyze")
        .arg("--models")
        .args(["gpt2-plain", "gpt2-crfm"].map(fixture))
        .arg("--dataset")
        .arg(&data)
        .args(["--seq-len", "32", "--max-tokens", "300", "--data-seed", "3"])
        .args(["--backend", "cpu", "--out"])
        .arg(&out)
        .output()
        .expect("run analyze");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["data_seed"], 3);
    assert_eq!(manifest["data_shape"][1], 32);
    assert!(manifest["n_tokens"].as_u64().expect("n") <= 300);
    let pa = seedscope()
        .arg("intervene")
        .arg(&out)
        .args(["--path", "L0.1:L1H0", "--backend", "cpu"])
        .output()
        .expect("run intervene");
    assert!(
        pa.status.success(),
        "{}",
        String::from_utf8_lossy(&pa.stderr)
    );
}

#[path = "common/hub_server.rs"]
mod hub_server;

/// The model entries of a bundle's manifest, each as its JSON text (name, path, files).
fn manifest_models(bundle: &std::path::Path) -> Vec<String> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    manifest["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m.to_string())
        .collect()
}

#[test]
fn download_a_preset_from_a_hub_then_analyse_it_offline() {
    // The five repositories of the stanford-gpt2-small preset, served from the tiny fixtures
    // (safetensors, and the CRFM fp16 pickle) by a hub-like server on 127.0.0.1.
    let mut state = hub_server::HubState::default();
    let preset = seedscope_hub::find_preset("stanford-gpt2-small").expect("preset");
    let sources = [
        ("gpt2-plain", "model.safetensors"),
        ("gpt2-crfm", "model.safetensors"),
        ("gpt2-crfm-fp16", "pytorch_model.bin"),
        ("gpt2-plain", "model.safetensors"),
        ("gpt2-crfm", "model.safetensors"),
    ];
    for (i, (repo, (dir, weights))) in preset.repos.iter().zip(sources).enumerate() {
        let commit = format!("{i:040}");
        hub_server::repo_from_dir(
            &mut state,
            repo,
            &commit,
            &fixture(dir),
            &["config.json", weights, "tokenizer.json"],
        );
    }
    let server = hub_server::HubServer::start(state);
    let dir = temp_dir("cli-download");
    let home = dir.join("hf");
    let env = |c: &mut Command| {
        c.env("HF_ENDPOINT", &server.endpoint)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1");
    };
    let mut cmd = seedscope();
    env(&mut cmd);
    let output = cmd
        .args(["download", "stanford-gpt2-small", "--step", "400000"])
        .output()
        .expect("run seedscope download");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("checksum verified").count(), 15, "{stderr}");
    let printed = String::from_utf8_lossy(&output.stdout);
    let snapshots: Vec<&str> = printed.lines().collect();
    assert_eq!(snapshots.len(), 5);
    assert!(
        snapshots[0].ends_with(&format!(
            "hf/hub/models--stanford-crfm--alias-gpt2-small-x21/snapshots/{:040}",
            0
        )),
        "{printed}"
    );
    assert!(
        server
            .requests("/resolve/")
            .iter()
            .all(|r| r.1.contains("/resolve/checkpoint-400000/"))
    );

    // Offline, `--models PRESET` finds the five seeds in the cache and nothing is requested.
    let offline = |args: &[&str]| {
        let mut cmd = seedscope();
        env(&mut cmd);
        cmd.env("HF_HUB_OFFLINE", "1")
            .args(args)
            .output()
            .expect("run seedscope")
    };
    let tokens = fixture("analysis/tokens.npy");
    let tokens = tokens.to_str().expect("UTF-8 fixture path");
    let seen = server.requests("").len();
    let out = dir.join("bundle");
    let output = offline(&[
        "analyze",
        "--models",
        "stanford-gpt2-small",
        "--step",
        "400000",
        "--tokens",
        tokens,
        "--backend",
        "cpu",
        "--out",
        out.to_str().expect("UTF-8 temp path"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server.requests("").len(), seen);
    let models = manifest_models(&out);
    assert_eq!(models.len(), 5);
    assert!(
        models[2].contains("caprica-gpt2-small-x81"),
        "{}",
        models[2]
    );

    // Every command that names a model resolves it the same way: `activations --model ORG/NAME`
    // and `eval-loss --models PRESET` at the step, from the cache, offline; a preset where one
    // model is wanted is refused with its models.
    let acts = dir.join("acts.safetensors");
    let output = offline(&[
        "activations",
        "--model",
        "stanford-crfm/caprica-gpt2-small-x81",
        "--step",
        "400000",
        "--backend",
        "cpu",
        "--tokens",
        tokens,
        "--out",
        acts.to_str().expect("UTF-8 temp path"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("caprica-gpt2-small-x81"), "{stderr}");
    let output = offline(&[
        "eval-loss",
        "--models",
        "stanford-gpt2-small",
        "--step",
        "400000",
        "--tokens",
        tokens,
        "--backend",
        "cpu",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 5);
    let output = offline(&[
        "bench-forward",
        "--model",
        "stanford-gpt2-small",
        "--step",
        "400000",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("stanford-gpt2-small names 5 models"),
        "{stderr}"
    );
    assert_eq!(server.requests("").len(), seen);

    // A revision that was never downloaded is an error that says what to run.
    let never = dir.join("never");
    let output = offline(&[
        "analyze",
        "--models",
        "stanford-gpt2-small",
        "--tokens",
        tokens,
        "--out",
        never.to_str().expect("UTF-8 temp path"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("alias-gpt2-small-x21 at revision `main` is not in the Hugging Face cache")
            && stderr.contains("offline mode")
            && stderr.contains("seedscope download stanford-crfm/alias-gpt2-small-x21"),
        "{stderr}"
    );
}

#[test]
fn a_polypythias_preset_downloads_at_a_step_and_analyses_offline() {
    // The four repositories of pythia-160m-weight-seed (Pythia-160m and the PolyPythias runs
    // that vary only the initialisation), served from the sharded GPT-NeoX fixture.
    let mut state = hub_server::HubState::default();
    let preset = seedscope_hub::find_preset("pythia-160m-weight-seed").expect("preset");
    let neox = fixture("neox-rotary");
    let mut files = vec![
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
    ];
    let shards: Vec<String> = (1..=7)
        .map(|i| format!("model-{i:05}-of-00007.safetensors"))
        .collect();
    files.extend(shards.iter().map(String::as_str));
    for (i, repo) in preset.repos.iter().enumerate() {
        hub_server::repo_from_dir(&mut state, repo, &format!("{i:040}"), &neox, &files);
    }
    let server = hub_server::HubServer::start(state);
    let dir = temp_dir("cli-polypythias");
    let home = dir.join("hf");
    let run = |args: &[&str], offline: bool| {
        let mut cmd = seedscope();
        cmd.env("HF_ENDPOINT", &server.endpoint)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd.args(args).output().expect("run seedscope")
    };
    // A step Pythia did not save is refused with the nearest one, before any transfer.
    let output = run(
        &["download", "pythia-160m-weight-seed", "--step", "513"],
        false,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no checkpoint at step 513 (the nearest is 512)"),
        "{stderr}"
    );
    assert!(server.requests("/resolve/").is_empty());
    let output = run(
        &["download", "pythia-160m-weight-seed", "--step", "512"],
        false,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // config, index, tokenizer and seven shards for each of four seeds.
    assert_eq!(stderr.matches("checksum verified").count(), 40, "{stderr}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(printed.lines().count(), 4, "{printed}");
    assert!(
        printed.contains("models--EleutherAI--pythia-160m-weight-seed3"),
        "{printed}"
    );
    assert!(
        server
            .requests("/resolve/")
            .iter()
            .all(|r| r.1.contains("/resolve/step512/"))
    );
    let tokens = fixture("analysis/tokens.npy");
    // The preset analysed offline (`steps`: `--step N` or `--steps LIST`): nothing requested.
    let analyze_offline = |steps: [&str; 2], out: &std::path::Path| {
        let seen = server.requests("").len();
        let output = run(
            &[
                "analyze",
                "--models",
                "pythia-160m-weight-seed",
                steps[0],
                steps[1],
                "--tokens",
                tokens.to_str().expect("UTF-8 fixture path"),
                "--backend",
                "cpu",
                "--out",
                out.to_str().expect("UTF-8 temp path"),
            ],
            true,
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(server.requests("").len(), seen, "offline");
    };
    let out = dir.join("bundle");
    analyze_offline(["--step", "512"], &out);
    let models = manifest_models(&out);
    assert_eq!(models.len(), 4);
    assert!(
        models[1].contains("pythia-160m-weight-seed1"),
        "{}",
        models[1]
    );
    // A series over the preset's hub revisions: step 1000 downloaded too, then both steps
    // analysed offline from the cache into one trajectory.
    let output = run(
        &["download", "pythia-160m-weight-seed", "--step", "1000"],
        false,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let series = dir.join("series");
    analyze_offline(["--steps", "512,1000"], &series);
    let t = seedscope_analysis::bundle::Trajectory::load(&series.join("step-1000"))
        .expect("trajectory")
        .expect("the last step has it");
    assert_eq!(
        t.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        vec![Some(512), Some(1000)]
    );
    assert_eq!(manifest_models(&series.join("step-512")).len(), 4);
}

#[test]
fn shards_of_a_slurm_array_merge_into_the_unsharded_bundle() {
    let dir = temp_dir("cli-shards");
    let common = |c: &mut Command| {
        c.arg("--models")
            .args(["gpt2-plain", "gpt2-crfm", "gpt2-crfm-fp16"].map(fixture))
            .arg("--tokens")
            .arg(fixture("analysis/tokens.npy"))
            .args(["--backend", "cpu", "--batch-size", "4"]);
    };
    let mut whole = seedscope();
    whole.arg("analyze");
    common(&mut whole);
    let output = whole
        .arg("--out")
        .arg(dir.join("whole"))
        .output()
        .expect("analyze");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Two array tasks as Slurm numbers them (from 1), plus one given by hand.
    for (task, shard) in [(1, None), (2, Some("1/3")), (3, None)] {
        let mut c = seedscope();
        c.arg("analyze");
        common(&mut c);
        c.arg("--out").arg(dir.join(format!("shard-{task}")));
        match shard {
            Some(s) => c.args(["--shard", s]),
            None => c
                .args(["--shard", "slurm"])
                .env("SLURM_ARRAY_TASK_ID", task.to_string())
                .env("SLURM_ARRAY_TASK_MIN", "1")
                .env("SLURM_ARRAY_TASK_COUNT", "3"),
        };
        let output = c.output().expect("analyze --shard");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("seedscope merge"), "{stderr}");
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("shard-{task}/shard.json")))
                .expect("shard.json"),
        )
        .expect("json");
        assert_eq!(info["index"], task - 1);
        assert_eq!(info["count"], 3);
    }
    // A missing shard is named, and nothing is written.
    let output = seedscope()
        .args(["merge", "--out"])
        .arg(dir.join("partial"))
        .arg(dir.join("shard-1"))
        .arg(dir.join("shard-3"))
        .output()
        .expect("merge");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("shard 1/3 is missing"), "{stderr}");
    assert!(!dir.join("partial").exists());

    let output = seedscope()
        .args(["merge", "--backend", "cpu", "--out"])
        .arg(dir.join("merged"))
        .args((1..=3).map(|t| dir.join(format!("shard-{t}"))))
        .output()
        .expect("merge");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |name: &str| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(dir.join(name).join("neurons.csv")).expect("csv");
        text.lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let (w, m) = (read("whole"), read("merged"));
    assert_eq!(w.len(), m.len());
    assert_eq!(w[0], m[0], "same columns");
    let col = |name: &str| w[0].iter().position(|c| c == name).expect("column");
    for name in ["max_corr", "excess_corr", "act_var", "kurt"] {
        let c = col(name);
        for (a, b) in w[1..].iter().zip(&m[1..]) {
            let (x, y): (f64, f64) = (a[c].parse().expect("num"), b[c].parse().expect("num"));
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{name}: {x} vs {y}"
            );
        }
    }
    let manifest = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.join(name).join("manifest.json")).expect("manifest"),
        )
        .expect("json")
    };
    assert_eq!(
        manifest("whole")["n_tokens"],
        manifest("merged")["n_tokens"]
    );
}

/// A missing bundle is one clear line that names the file, its reason said once.
#[test]
fn a_missing_bundle_is_named_once() {
    let dir = temp_dir("cli-missing-bundle");
    let output = seedscope()
        .arg("summary")
        .arg(&dir)
        .output()
        .expect("run seedscope summary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&dir.join("manifest.json").display().to_string()),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("no such file in the bundle").count(),
        1,
        "{stderr}"
    );
}

/// `seedscope cost`: one row per bundle from its manifest (tokens/s, and shares of the run's
/// time that add up to the whole), the figures when asked; a directory that is not a bundle,
/// or a bundle that does not record its time, is named.
#[test]
fn cost_compares_runs_from_their_bundles() {
    let dir = common::temp_dir("cli-cost");
    let two = common::fixture_bundle("cli-cost-two", &["gpt2-plain", "gpt2-crfm"]);
    let three = common::fixture_bundle("cli-cost-three", &["gpt2-plain", "gpt2-crfm", "gpt2-wide"]);
    let output = seedscope()
        .arg("cost")
        .args([&two, &three])
        .arg("--out")
        .arg(dir.join("figures"))
        .output()
        .expect("run seedscope cost");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows[0].starts_with("| 3 × 128 neurons, 2 models |"),
        "{stdout}"
    );
    assert!(
        rows[1].starts_with("| 3 × 128 neurons, 3 models |"),
        "{stdout}"
    );
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let shares: f64 = cells[6..14]
            .iter()
            .map(|c| c.trim_end_matches(" %").parse::<f64>().expect("a share"))
            .sum();
        assert!(
            (shares - 100.0).abs() <= 3.0,
            "shares add to {shares}: {row}"
        );
        // The forwards and the co-moments take time in every run.
        assert!(cells[6] != "0 %" || cells[7] != "0 %", "{row}");
    }
    for f in ["cost-time.png", "cost-time.svg"] {
        assert!(dir.join("figures").join(f).is_file(), "{f}");
    }
    // Not a bundle; a bundle from before the time was recorded.
    let output = seedscope().arg("cost").arg(&dir).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no manifest.json (not a bundle"),
        "{stderr}"
    );
    let manifest = two.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    m["cost"].as_object_mut().expect("cost").retain(|k, _| {
        ["forwards", "forward_seconds", "reused", "reuse_seconds"].contains(&k.as_str())
    });
    std::fs::write(&manifest, serde_json::to_vec(&m).expect("json")).expect("write");
    let output = seedscope().arg("cost").arg(&two).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("does not say where the run's time went"),
        "{stderr}"
    );
}

/// The memory budget bounds what `analyze` holds: on the CPU path, where each block's streams
/// are centred into a copy and the tiles multiplied into an f32 product, the plan counts both,
/// so the heap's peak (counted by the binary's allocator) stays under the plan's estimate and
/// the budget, also with a checkpoint after every block (written from the accumulators, not
/// from a copy of them) and over several passes. Measured on the embedded family over 20,000
/// tokens: 56 MiB against a plan of 63 at 64 MiB (four passes), 112 against 126 at 128 MiB,
/// 131 against 159 at 256 MiB. Before the product was counted: 65 MiB at 64; before the
/// checkpoint lent the sums, 166 at 128.
#[test]
fn the_memory_budget_bounds_the_heap_of_an_analysis() {
    let dir = temp_dir("cli-budget");
    for budget in [64u64, 128, 256] {
        let out = dir.join(format!("bundle-{budget}"));
        let output = seedscope()
            .args(["analyze", "--backend", "cpu", "--max-tokens", "20000"])
            .args(["--checkpoint-secs", "0"])
            .args(["--gpu-memory", &format!("{budget}MiB"), "--out"])
            .arg(&out)
            .output()
            .expect("run seedscope analyze");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let planned = heap_within_plan(&stderr, budget);
        assert!(
            planned <= budget,
            "planned {planned} MiB over {budget}:\n{stderr}"
        );
    }
}

/// The heap `analyze` or `merge` says it peaked at, held to `budget` and to the plan's
/// estimate (5 % over at most), and at least half that estimate (not one so loose that it
/// says nothing); returns the estimate.
fn heap_within_plan(stderr: &str, budget: u64) -> u64 {
    let planned = number_before(stderr, "MiB at peak");
    let heap = number_after(stderr, "peak heap ");
    assert!(
        heap <= budget && heap * 100 <= planned * 105 && heap * 2 >= planned,
        "the heap peaked at {heap} MiB, planned {planned} MiB, budget {budget} MiB:\n{stderr}"
    );
    planned
}

/// `merge` runs under the budget its shards ran under, and holds its heap to it: each pass's
/// merged sums are held once (they become the accumulator's own), the shards' files are mapped
/// one at a time and their anatomy is merged part by part. Measured on the embedded family
/// over 40,000 tokens in two shards: 64 MiB (four passes, plan 63) and 100 MiB at 128 (plan
/// 126); before, 82 and 151 MiB.
#[test]
fn a_merge_of_shards_holds_its_heap_to_their_budget() {
    let dir = temp_dir("cli-merge-budget");
    for budget in [64u64, 128] {
        let shards: Vec<PathBuf> = (0..2)
            .map(|i| dir.join(format!("shard-{budget}-{i}")))
            .collect();
        for (i, shard) in shards.iter().enumerate() {
            let output = seedscope()
                .args(["analyze", "--backend", "cpu", "--max-tokens", "40000"])
                .args(["--gpu-memory", &format!("{budget}MiB")])
                .args(["--shard", &format!("{i}/2"), "--out"])
                .arg(shard)
                .output()
                .expect("run seedscope analyze --shard");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{stderr}");
        }
        let output = seedscope()
            .args(["merge", "--backend", "cpu", "--out"])
            .arg(dir.join(format!("bundle-{budget}")))
            .args(&shards)
            .output()
            .expect("run seedscope merge");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        heap_within_plan(&stderr, budget);
    }
}

/// Ctrl-C stops `analyze` at the next block with its state saved (status 130, and how to
/// resume); the same command resumes from the checkpoint with its heap under the budget (the
/// saved sums are read from the mapped file, not copied next to the pass's own) and writes the
/// bundle an uninterrupted run writes. Measured on the embedded family at 128 MiB: a resumed
/// run's heap 112 MiB (plan 126); 173 MiB before the checkpoint was mapped.
#[cfg(unix)]
#[test]
fn an_interrupted_analysis_resumes_within_its_budget_to_the_same_bundle() {
    let dir = temp_dir("cli-resume");
    let run = |out: &std::path::Path| {
        let mut c = seedscope();
        c.args(["analyze", "--backend", "cpu", "--max-tokens", "60000"])
            .args(["--gpu-memory", "128MiB", "--checkpoint-secs", "0", "--out"])
            .arg(out);
        c
    };
    let out = dir.join("resumed");
    let child = run(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start seedscope analyze");
    let checkpoint = dir.join("resumed.partial").join("checkpoint.safetensors");
    let t0 = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(
            t0.elapsed().as_secs() < 300,
            "no checkpoint after 300 s: {}",
            checkpoint.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the child's pid, which is alive until it is waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT not sent");
    let stopped = child.wait_with_output().expect("wait for seedscope");
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("rerun the same command to resume"),
        "{stderr}"
    );
    assert!(checkpoint.exists());

    let resumed = run(&out).output().expect("resume seedscope analyze");
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    heap_within_plan(&stderr, 128);
    let forwards = |text: &str| number_before(text, "forward passes (a model over a block)");
    let whole = dir.join("whole");
    let uninterrupted = run(&whole).output().expect("run seedscope analyze");
    let whole_stderr = String::from_utf8_lossy(&uninterrupted.stderr);
    assert!(uninterrupted.status.success(), "{whole_stderr}");
    assert!(
        forwards(&stderr) < forwards(&whole_stderr),
        "the rerun did not resume:\n{stderr}"
    );
    for file in [
        "neurons.csv",
        "correlation.safetensors",
        "histograms.safetensors",
        "anatomy.safetensors",
    ] {
        let read = |d: &std::path::Path| std::fs::read(d.join(file)).expect(file);
        assert!(read(&out) == read(&whole), "{file} differs after resuming");
    }
}

#[test]
fn a_bundle_that_cannot_be_written_keeps_the_finished_run() {
    // A refined run whose bundle cannot be written (here a directory stands where neurons.csv
    // goes; on a user's machine, a full disk) says which file and what to do, and keeps what
    // it computed: the same command run again writes the bundle without running the models.
    let dir = temp_dir("cli-write-fails");
    let analyze = |out: &std::path::Path| {
        seedscope()
            .args(["analyze", "--backend", "cpu", "--max-tokens", "12000"])
            .args(["--refine", "3000", "--out"])
            .arg(out)
            .output()
            .expect("run seedscope analyze")
    };
    let out = dir.join("bundle");
    let blocked = dir.join("bundle.partial").join("neurons.csv");
    std::fs::create_dir_all(&blocked).expect("dir");
    let failed = analyze(&out);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("neurons.csv") && stderr.contains("run the same command again"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir(&blocked).expect("unblock");
    let again = analyze(&out);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("\n0 forward passes (a model over a block)"),
        "the rerun ran the models again:\n{stderr}"
    );
    for leftover in ["checkpoint.safetensors", "prefix"] {
        assert!(!out.join(leftover).exists(), "{leftover} in the bundle");
    }
    assert!(!dir.join("bundle.partial").exists());
    // The same bundle as a run that wrote it at once.
    let whole = dir.join("whole");
    let first = analyze(&whole);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for file in [
        "neurons.csv",
        "correlation.safetensors",
        "histograms.safetensors",
    ] {
        assert_eq!(
            std::fs::read(out.join(file)).expect("resumed"),
            std::fs::read(whole.join(file)).expect("whole"),
            "{file} differs after the resumed write"
        );
    }
}

/// A GPT-2 of `vocab` tokens, `d` wide, one layer of `d_mlp` neurons, written to `dir` with
/// uniform weights drawn from `seed` (an xorshift; LayerNorms at one and zero).
fn write_wide_vocabulary_gpt2(
    dir: &std::path::Path,
    seed: u64,
    (vocab, d, d_mlp): (usize, usize, usize),
) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    };
    let mut tensors: Vec<(String, common::F32Tensor)> = vec![
        (
            "transformer.wte.weight".into(),
            (draw(vocab * d), vec![vocab, d]),
        ),
        (
            "transformer.wpe.weight".into(),
            (draw(128 * d), vec![128, d]),
        ),
    ];
    let h = "transformer.h.0";
    for (name, shape) in [
        ("attn.c_attn.weight", vec![d, 3 * d]),
        ("attn.c_proj.weight", vec![d, d]),
        ("mlp.c_fc.weight", vec![d, d_mlp]),
        ("mlp.c_proj.weight", vec![d_mlp, d]),
    ] {
        tensors.push((format!("{h}.{name}"), (draw(shape.iter().product()), shape)));
    }
    for (name, n, value) in [
        ("attn.c_attn.bias", 3 * d, 0.0),
        ("attn.c_proj.bias", d, 0.0),
        ("mlp.c_fc.bias", d_mlp, 0.0),
        ("mlp.c_proj.bias", d, 0.0),
        ("ln_1.weight", d, 1.0),
        ("ln_1.bias", d, 0.0),
        ("ln_2.weight", d, 1.0),
        ("ln_2.bias", d, 0.0),
    ] {
        tensors.push((format!("{h}.{name}"), (vec![value; n], vec![n])));
    }
    tensors.push(("transformer.ln_f.weight".into(), (vec![1.0; d], vec![d])));
    tensors.push(("transformer.ln_f.bias".into(), (vec![0.0; d], vec![d])));
    let shape = common::Gpt2Shape {
        d,
        heads: 4,
        d_mlp,
        layers: 1,
        positions: 128,
        vocab,
    };
    common::write_gpt2(dir, tensors.iter().map(|(n, t)| (n, t)), &shape);
}

#[test]
fn the_least_budget_a_refused_run_names_holds_it_through_the_weight_statistics() {
    // Models whose vocabulary projection (32,768 tokens) outweighs their correlations (one
    // layer of 256 neurons): the weight statistics after the passes are the run's peak. A
    // budget too small is refused with the least that holds the run, and at that budget the
    // heap stays within it, weight statistics included.
    let dir = temp_dir("cli-budget-weights");
    let models: Vec<PathBuf> = (0..2)
        .map(|s| {
            let m = dir.join(format!("seed-{s}"));
            write_wide_vocabulary_gpt2(&m, s + 1, (32_768, 64, 256));
            m
        })
        .collect();
    let tokens = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/family/eval_tokens.npy");
    let analyze = |budget: &str, batch: Option<&str>, out: &str| {
        let mut c = seedscope();
        c.arg("analyze")
            .arg("--models")
            .args(&models)
            .arg("--tokens")
            .arg(&tokens);
        c.args([
            "--max-tokens",
            "3000",
            "--keep-all-tokens",
            "--backend",
            "cpu",
        ]);
        c.args(["--gpu-memory", budget]);
        if let Some(b) = batch {
            c.args(["--batch-size", b]);
        }
        c.arg("--out")
            .arg(dir.join(out))
            .output()
            .expect("run seedscope analyze")
    };
    let refused = analyze("1MiB", None, "refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    let hint = stderr
        .split("(with --batch-size ")
        .nth(1)
        .unwrap_or_else(|| panic!("no least budget in:\n{stderr}"));
    let batch: String = hint.chars().take_while(char::is_ascii_digit).collect();
    let least: u64 = hint
        .split("--gpu-memory ")
        .nth(1)
        .and_then(|s| s.split("MiB").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no least budget in:\n{stderr}"));
    let run = analyze(&format!("{least}MiB"), Some(&batch), "least");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let heap = number_after(&stderr, "peak heap ");
    eprintln!("the least budget named: {least} MiB; the heap at it: {heap} MiB");
    assert!(
        heap <= least,
        "the heap peaked at {heap} MiB, over the {least} MiB named:\n{stderr}"
    );
    // Not a least budget so loose that it says nothing.
    assert!(heap * 2 >= least, "heap {heap} MiB against {least} MiB");
    // One MiB less is refused by the weight statistics' own estimate.
    let short = analyze(&format!("{}MiB", least - 1), Some(&batch), "short");
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(
        !short.status.success() && stderr.contains("the weight statistics need"),
        "{stderr}"
    );
}
