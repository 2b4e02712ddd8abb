//! GPT-2 and GPT-NeoX in Burn, loaded from Hugging Face checkpoints, with TransformerLens-style
//! neuron taps (`blocks.{l}.mlp.hook_pre` / `hook_post`) and neuron patches.
//!
//! ```no_run
//! use seedscope_model::{BackendKind, ComputeDevice, ForwardOptions, LoadedModel, TokenBatch};
//! let device = ComputeDevice::open(BackendKind::Cpu)?;
//! let model = LoadedModel::load("tests/fixtures/gpt2-plain".as_ref(), &device.device)?;
//! let tokens = TokenBatch::new(vec![0, 5, 9, 2], 1, 4)?;
//! let out = model.forward(&tokens, &ForwardOptions::all_neurons(model.config.n_layers()))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod atomic;
mod backend;
mod config;
mod error;
mod fused;
mod hooks;
pub mod matmul;
mod model;
mod processed;
pub mod train;
mod weights;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

pub use atomic::{replace_dir, write_file_atomic, write_file_atomic_with};
pub use backend::{BackendKind, ComputeDevice, NoAdapter, WgpuHandles, device_features};
pub use config::{Activation, Gpt2Config, ModelConfig, NeoXConfig};
pub use error::{ModelError, Result};
pub use fused::FusedOps;
pub use hooks::{ForwardOptions, HookPoint, MlpSite, NeuronPatch, QueryAblation};
pub use model::{
    ForwardOutput, Gpt2, Gpt2Block, HeadProbe, LoadOptions, Mlp, NeoX, NeoXBlock, Transformer,
    VocabMatrix,
};
pub use processed::{ProcessedMlp, ProcessedWeights};
pub use weights::{Checkpoint, NamedTensors, WeightDtype, resolve_model_dir, write_safetensors};

/// Token ids of `n_seq` sequences of `seq_len` tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    ids: Vec<u32>,
    n_seq: usize,
    seq_len: usize,
}

impl TokenBatch {
    /// Wrap ids; errors if their count is not `n_seq * seq_len`.
    pub fn new(ids: Vec<u32>, n_seq: usize, seq_len: usize) -> Result<Self> {
        if ids.len() != n_seq * seq_len {
            return Err(ModelError::Input(format!(
                "{} token ids do not fill {n_seq} sequences of {seq_len}",
                ids.len()
            )));
        }
        Ok(Self {
            ids,
            n_seq,
            seq_len,
        })
    }

    /// `[n_seq, seq_len]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.n_seq, self.seq_len]
    }

    /// The ids, row-major.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Rows `start..start + len` as a new batch.
    pub fn rows(&self, start: usize, len: usize) -> Self {
        let end = (start + len).min(self.n_seq);
        Self {
            ids: self.ids[start * self.seq_len..end * self.seq_len].to_vec(),
            n_seq: end - start,
            seq_len: self.seq_len,
        }
    }

    /// The ids as an Int tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&t| i64::from(t)).collect();
        Tensor::from_data(TensorData::new(ids, self.shape()), device)
    }
}

/// A model with its configuration, ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// The Burn module.
    pub model: Transformer,
    /// The directory it was loaded from (a snapshot directory for the Hugging Face cache).
    pub dir: PathBuf,
    /// The device the weights live on.
    pub device: Device,
    /// What the weights are computed in.
    pub dtype: FloatDType,
}

impl LoadedModel {
    /// Load a Hugging Face model directory or cache entry onto `device`, computing in f32
    /// (fp16 and bf16 checkpoints are upcast, as transformers does by default) with no buffer
    /// limit.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, &LoadOptions::default())
    }

    /// Load onto an opened [`ComputeDevice`], respecting its buffer limit, in `dtype`.
    pub fn load_on(path: &Path, device: &ComputeDevice, dtype: FloatDType) -> Result<Self> {
        let options = LoadOptions {
            dtype,
            max_tensor_bytes: device.max_buffer_bytes,
        };
        Self::load_with(path, &device.device, &options)
    }

    /// Like [`load`](Self::load), with explicit [`LoadOptions`].
    pub fn load_with(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        let dir = resolve_model_dir(path)?;
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let checkpoint = Checkpoint::open_dir(&dir)?;
        let model = Transformer::load(&config, &checkpoint, device, options)?;
        Ok(Self {
            config,
            model,
            dir,
            device: device.clone(),
            dtype: options.dtype,
        })
    }

    /// Load a model from the bytes of its `config.json` and `model.safetensors` (the browser,
    /// which has no directories), onto `device` in `dtype`; `dir` names it in errors and
    /// manifests.
    pub fn from_bytes(
        dir: &Path,
        config_json: &[u8],
        safetensors: Vec<u8>,
        device: &ComputeDevice,
        dtype: FloatDType,
    ) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::str::from_utf8(config_json).map_err(|e| ModelError::CorruptWeights {
            path: config_path.clone(),
            message: format!("not UTF-8: {e}"),
        })?;
        let config = ModelConfig::from_json_str(text, &config_path)?;
        let checkpoint =
            Checkpoint::from_safetensors_bytes(&dir.join(weights::SAFETENSORS_FILE), safetensors)?;
        let options = LoadOptions {
            dtype,
            max_tensor_bytes: device.max_buffer_bytes,
        };
        let model = Transformer::load(&config, &checkpoint, &device.device, &options)?;
        Ok(Self {
            config,
            model,
            dir: dir.to_path_buf(),
            device: device.device.clone(),
            dtype,
        })
    }

    /// Bytes the weights take on the device (parameters times their element size).
    pub fn weight_bytes(&self) -> u64 {
        use burn::module::Module;
        let size = match self.dtype {
            FloatDType::F64 => 8,
            FloatDType::F32 | FloatDType::Flex32 => 4,
            FloatDType::F16 | FloatDType::BF16 => 2,
        };
        self.model.num_params() as u64 * size
    }

    /// Run on a token batch after checking it against the model (ids in the vocabulary, length
    /// within the context, taps that exist).
    pub fn forward(&self, tokens: &TokenBatch, options: &ForwardOptions) -> Result<ForwardOutput> {
        Transformer::check_request(&self.config, tokens.shape(), options)?;
        let vocab = self.config.vocab_size();
        if let Some(bad) = tokens.ids().iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        Ok(self.model.forward(tokens.to_tensor(&self.device), options))
    }
}
