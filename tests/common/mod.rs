//! Helpers shared by the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use seedscope_model::{BackendKind, ComputeDevice, TokenBatch};

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
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "seedscope-test-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
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
pub fn fixture_bundle(tag: &str, models: &[&str]) -> PathBuf {
    use seedscope_analysis::job::{AnalysisRequest, DataSource, JobEnd, run_analysis};
    let bundle = temp_dir(tag);
    let end = run_analysis(
        &AnalysisRequest {
            models: models.iter().map(|m| fixture(m)).collect(),
            data: DataSource::Tokens(fixture("analysis/tokens.npy")),
            out: bundle.clone(),
            backend: BackendKind::Cpu,
            ..AnalysisRequest::default()
        },
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        |_| {},
    )
    .expect("analysis");
    assert_eq!(end, JobEnd::Written(bundle.clone()));
    bundle
}
