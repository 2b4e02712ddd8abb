//! Helpers shared by the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use seedscope_model::{BackendKind, ComputeDevice, LoadedModel, TokenBatch};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor from a reference file, as f32 (token ids too).
pub struct Reference {
    pub tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
}

impl Reference {
    /// Read `reference.safetensors` written by scripts/make_fixtures.py.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join("reference.safetensors");
        let bytes = std::fs::read(&path).expect("reference file");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values: Vec<f32> = match view.dtype() {
                    safetensors::Dtype::F32 => view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    safetensors::Dtype::I64 => view
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                        .collect(),
                    other => panic!("unexpected dtype {other:?} in {}", path.display()),
                };
                (name, (values, view.shape().to_vec()))
            })
            .collect();
        Self { tensors }
    }

    pub fn get(&self, name: &str) -> &(Vec<f32>, Vec<usize>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no {name}"))
    }

    pub fn tokens(&self) -> TokenBatch {
        let (values, shape) = self.get("tokens");
        let ids = values.iter().map(|&v| v as u32).collect();
        TokenBatch::new(ids, shape[0], shape[1]).expect("token shape")
    }
}

/// The device for a backend; a wgpu test fails loudly when there is no adapter.
pub fn device(kind: BackendKind) -> ComputeDevice {
    match ComputeDevice::open(kind) {
        Ok(d) => d,
        Err(e) => panic!("this test needs a wgpu adapter and found none: {e}"),
    }
}

/// A tensor's values on the host, as f32 (whatever its dtype).
pub fn host<const D: usize>(tensor: &burn::tensor::Tensor<D>) -> Vec<f32> {
    tensor
        .clone()
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A fresh temporary directory under the target's tmp.
/// Fixture models `names`, loaded on `dev` in f32.
pub fn fixture_models(names: &[&str], dev: &ComputeDevice) -> Vec<LoadedModel> {
    names
        .iter()
        .map(|m| {
            LoadedModel::load_on(&fixture(m), dev, burn::tensor::FloatDType::F32)
                .expect("fixture model")
        })
        .collect()
}

/// The analysis fixtures' tokens (`analysis/tokens.npy`), dropping BOS and newline as an
/// analysis does.
pub fn analysis_tokens() -> seedscope_analysis::TokenSet {
    let (ids, shape) =
        seedscope_data::read_tokens_npy(&fixture("analysis/tokens.npy")).expect("tokens");
    let tok = seedscope_data::TextTokenizer::from_file(&fixture("gpt2-plain/tokenizer.json"))
        .expect("tokenizer");
    let mut drop_ids: Vec<u32> = tok.bos_id().into_iter().collect();
    drop_ids.extend(tok.to_tokens("\n", false).expect("newline"));
    seedscope_analysis::TokenSet {
        ids,
        n_rows: shape[0],
        seq_len: shape[1],
        drop_ids,
    }
}

/// Tensor `name` of the safetensors file `bytes` (a numpy reference) as f64.
pub fn tensor_f64s(bytes: &[u8], name: &str) -> Vec<f64> {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("reference has no {name}"));
    let b = t.data();
    match t.dtype() {
        safetensors::Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        safetensors::Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        safetensors::Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        safetensors::Dtype::U8 => b.iter().map(|&v| v as f64).collect(),
        safetensors::Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        other => panic!("{name}: {other:?}"),
    }
}

/// A fresh directory of this test's own (`seedscope-test-<tag>-<random>` in the system's
/// temporary directory), removed when it goes out of scope unless the test is failing: then its
/// files are left to look at, and the test's output names it.
pub fn temp_dir(tag: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("seedscope-test-{tag}-"))
        .tempdir()
        .expect("temp dir");
    TempDir(dir)
}

/// A test's directory ([`temp_dir`]); reads as its path.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("the failing test's files: {}", self.0.path().display());
        }
    }
}

/// Copy every file of a fixture directory into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
    }
}

/// A bundle of `models` (fixture names) over the fixture tokens, analysed on the CPU into a
/// fresh temporary directory tagged `tag`.
pub fn fixture_bundle(tag: &str, models: &[&str]) -> TempDir {
    use seedscope_analysis::job::{AnalysisRequest, DataSource, JobEnd, run_analysis};
    let bundle = temp_dir(tag);
    let end = run_analysis(
        &AnalysisRequest {
            models: models.iter().map(|m| fixture(m)).collect(),
            data: DataSource::Tokens(fixture("analysis/tokens.npy")),
            out: bundle.to_path_buf(),
            backend: BackendKind::Cpu,
            ..AnalysisRequest::default()
        },
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        |_| {},
    )
    .expect("analysis");
    assert_eq!(end, JobEnd::Written(bundle.to_path_buf()));
    bundle
}

/// Largest error on a correlation that the cooperative-matrix co-moment kernel allows: it
/// rounds each centred activation to f16 (2^-11 relative) before its products, which sum in
/// f32. Measured at worst 2.9e-4 on the fixtures (`tests/analysis.rs`; 2.0e-4 in
/// `tests/unequal.rs`), on lavapipe of Mesa 26.1 with 8 x 8 x 8 fragments
/// (`scripts/lavapipe_coop.sh`).
pub const COOPERATIVE_TOL: f64 = 2e-3;

/// The tolerance of a test that allows `f32_tol` on the CPU path and the f32 kernel, for a run
/// on `dev` with `fp32_co_moments`: [`COOPERATIVE_TOL`] where that run's co-moments use
/// cooperative matrices (an adapter that offers them and no `fp32_co_moments`).
pub fn kernel_tol(dev: &ComputeDevice, fp32_co_moments: bool, f32_tol: f64) -> f64 {
    if cooperative(dev, fp32_co_moments) {
        COOPERATIVE_TOL.max(f32_tol)
    } else {
        f32_tol
    }
}

/// Whether a run on `dev` with `fp32_co_moments` takes the cooperative-matrix kernel.
fn cooperative(dev: &ComputeDevice, fp32_co_moments: bool) -> bool {
    matches!(
        dev.cross_kernel(fp32_co_moments),
        Some(seedscope_gpu::CrossKernel::Cooperative { .. })
    )
}

/// The `fp32_co_moments` settings a test against a reference runs on `dev`, each with its
/// tolerance: the device's own co-moment kernel and, where that is the cooperative one, the
/// f32 kernel as well (so both are checked on such an adapter).
pub fn co_moment_kernels(dev: &ComputeDevice, f32_tol: f64) -> Vec<(bool, f64)> {
    let mut out = vec![(false, kernel_tol(dev, false, f32_tol))];
    if cooperative(dev, false) {
        out.push((true, f32_tol));
    }
    out
}

/// A tensor's f32 values and its shape.
pub type F32Tensor = (Vec<f32>, Vec<usize>);

/// The shape of a GPT-2 that [`write_gpt2`] writes.
pub struct Gpt2Shape {
    /// Residual width.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// Layers.
    pub layers: usize,
    /// Positions.
    pub positions: usize,
    /// Vocabulary.
    pub vocab: usize,
}

/// Write a Hugging Face GPT-2 directory `dir` (tied unembedding, `gelu_new`): `tensors` by their
/// Hugging Face names, f32 values and shapes, as `model.safetensors`, and `shape` as
/// `config.json`.
pub fn write_gpt2<'a>(
    dir: &Path,
    tensors: impl IntoIterator<Item = (&'a String, &'a F32Tensor)>,
    shape: &Gpt2Shape,
) {
    std::fs::create_dir_all(dir).expect("model dir");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .into_iter()
        .map(|(n, (v, s))| {
            let bytes: &[u8] = bytemuck::cast_slice(v);
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytes)
                    .expect("view");
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write");
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new", "n_embd": shape.d, "n_head": shape.heads,
        "n_inner": shape.d_mlp, "n_layer": shape.layers, "n_positions": shape.positions,
        "vocab_size": shape.vocab, "layer_norm_epsilon": 1e-5, "bos_token_id": 0,
        "eos_token_id": 0, "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
}
