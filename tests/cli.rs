//! The `seedscope` binary end to end: what a user types, what lands on disk.

mod common;

use std::process::Command;

use common::{Reference, fixture, max_abs_diff, temp_dir};
use seedscope_model::{Checkpoint, TokenBatch};

fn seedscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seedscope"))
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
    std::fs::remove_dir_all(&dir).ok();
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
    std::fs::remove_dir_all(&dir).ok();
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
    std::fs::remove_dir_all(&dir).ok();
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
    std::fs::remove_dir_all(&dir).ok();
}
