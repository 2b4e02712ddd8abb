//! Reading Hugging Face checkpoints: safetensors (single or sharded) and PyTorch pickles.
//!
//! Tensors are looked up by their checkpoint names and converted to f32 on request, so that a
//! model is built parameter by parameter with no renaming table (the candle way). Every error
//! names the file and, where there is one, the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::SafeTensors;

use crate::error::{ModelError, Result};

/// Element types a weight may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit float.
    F32,
    /// IEEE half (the Stanford CRFM checkpoints).
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
}

impl WeightDtype {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
        }
    }
}

enum Source {
    /// A range of a safetensors file held in memory.
    Bytes {
        file: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    /// A lazily read tensor of a PyTorch pickle.
    Pickle(pytorch_reader::Tensor),
    /// Values already in memory (a random initialisation).
    Owned(Arc<Vec<f32>>),
}

struct Entry {
    dtype: Option<WeightDtype>,
    stored_dtype: String,
    shape: Vec<usize>,
    file: PathBuf,
    source: Source,
}

/// The weights of one model, from whatever files hold them.
pub struct Checkpoint {
    /// The file (or index) that lists the tensors, for error messages.
    path: PathBuf,
    tensors: HashMap<String, Entry>,
}

/// Tensors by name as `(name, f32 values row-major, shape)`.
pub type NamedTensors = Vec<(String, Vec<f32>, Vec<usize>)>;

/// Write f32 tensors as a safetensors file, atomically ([`crate::write_file_atomic`]), with
/// `metadata` and the `{"format": "pt"}` entry transformers' `from_pretrained` requires.
pub fn write_safetensors(
    path: &Path,
    tensors: &NamedTensors,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, _, shape), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|view| (name.clone(), view))
                .map_err(|e| corrupt(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    metadata.insert("format".to_owned(), "pt".to_owned());
    let serialized = safetensors::serialize(views, Some(metadata))
        .map_err(|e| corrupt(path, format!("serialising: {e}")))?;
    crate::atomic::write_file_atomic(path, &serialized)
}

/// File names looked for in a model directory, in order of preference.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Index of a sharded safetensors checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// PyTorch pickle checkpoint (what the Stanford CRFM seeds ship).
pub const PICKLE_FILE: &str = "pytorch_model.bin";

fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ModelError::MissingFile {
            path: path.to_path_buf(),
            what: "weights file",
        }
    } else {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::CorruptWeights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Checkpoint {
    /// Open the weights of a Hugging Face model directory: `model.safetensors`, else a sharded
    /// `model.safetensors.index.json`, else `pytorch_model.bin`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join(SAFETENSORS_FILE);
        let index = dir.join(SAFETENSORS_INDEX);
        let pickle = dir.join(PICKLE_FILE);
        if single.exists() {
            Self::open_safetensors(&single)
        } else if index.exists() {
            Self::open_safetensors_index(&index)
        } else if pickle.exists() {
            Self::open_pickle(&pickle)
        } else {
            Err(ModelError::MissingFile {
                path: dir.to_path_buf(),
                what: "weights: none of model.safetensors, model.safetensors.index.json, pytorch_model.bin",
            })
        }
    }

    /// Open one safetensors file.
    pub fn open_safetensors(path: &Path) -> Result<Self> {
        let mut tensors = HashMap::new();
        add_safetensors_file(path, &mut tensors, None)?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// A safetensors file already in memory (fetched in the browser); `path` names it in
    /// errors.
    pub fn from_safetensors_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut tensors = HashMap::new();
        add_safetensors_bytes(path, bytes, &mut tensors, None)?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Open a sharded safetensors checkpoint through its `model.safetensors.index.json`.
    pub fn open_safetensors_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| io_error(index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(index, format!("index JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| corrupt(index, "index has no `weight_map` object"))?;
        let mut by_file: HashMap<String, Vec<String>> = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                corrupt(
                    index,
                    format!("weight_map entry `{name}` is not a file name"),
                )
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(corrupt(
                    index,
                    format!("shard name `{file}` is not a plain file name"),
                ));
            }
            by_file
                .entry(file.to_owned())
                .or_default()
                .push(name.clone());
        }
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut tensors = HashMap::new();
        let mut files: Vec<_> = by_file.into_iter().collect();
        files.sort();
        for (file, names) in files {
            let shard = dir.join(&file);
            add_safetensors_file(&shard, &mut tensors, Some(&names))?;
        }
        Ok(Self {
            path: index.to_path_buf(),
            tensors,
        })
    }

    /// Open a PyTorch pickle (`torch.save` of a state dict, zip or legacy format).
    pub fn open_pickle(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(io_error(path, std::io::ErrorKind::NotFound.into()));
        }
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| corrupt(path, format!("PyTorch pickle: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, tensor) in reader.into_tensors() {
            use pytorch_reader::DType as P;
            let dtype = match tensor.dtype() {
                P::F32 => Some(WeightDtype::F32),
                P::F16 => Some(WeightDtype::F16),
                P::BF16 => Some(WeightDtype::BF16),
                P::F64 => Some(WeightDtype::F64),
                _ => None,
            };
            let entry = Entry {
                dtype,
                stored_dtype: format!("{:?}", tensor.dtype()),
                shape: tensor.shape().to_vec(),
                file: path.to_path_buf(),
                source: Source::Pickle(tensor),
            };
            tensors.insert(name, entry);
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// A checkpoint of f32 tensors held in memory; `path` names it in errors.
    pub fn from_tensors(path: &Path, tensors: NamedTensors) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(name, values, shape)| {
                let entry = Entry {
                    dtype: Some(WeightDtype::F32),
                    stored_dtype: "F32".into(),
                    shape,
                    file: path.to_path_buf(),
                    source: Source::Owned(Arc::new(values)),
                };
                (name, entry)
            })
            .collect();
        Self {
            path: path.to_path_buf(),
            tensors,
        }
    }

    /// The file (or index) the tensors were listed in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
                available: self.tensors.len(),
            })
    }

    /// Read a float tensor as f32, checking that it has exactly `expected` shape and holds only
    /// finite values.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        if entry.shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: entry.file.clone(),
                name: name.to_owned(),
                found: entry.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let Some(dtype) = entry.dtype else {
            return Err(ModelError::UnsupportedDtype {
                path: entry.file.clone(),
                name: name.to_owned(),
                dtype: entry.stored_dtype.clone(),
            });
        };
        let values = match &entry.source {
            Source::Bytes { file, start, end } => decode(&file[*start..*end], dtype),
            Source::Owned(values) => values.as_ref().clone(),
            Source::Pickle(tensor) => {
                let bytes = tensor
                    .read()
                    .map_err(|e| corrupt(&entry.file, format!("tensor `{name}`: {e}")))?;
                decode(&bytes, dtype)
            }
        };
        let n: usize = expected.iter().product();
        if values.len() != n {
            return Err(corrupt(
                &entry.file,
                format!(
                    "tensor `{name}` holds {} values, its shape needs {n}",
                    values.len()
                ),
            ));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                path: entry.file.clone(),
                name: name.to_owned(),
            });
        }
        Ok(values)
    }
}

fn add_safetensors_file(
    path: &Path,
    tensors: &mut HashMap<String, Entry>,
    expected_names: Option<&[String]>,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    add_safetensors_bytes(path, bytes, tensors, expected_names)
}

/// The tensors of safetensors file `bytes` (named `path` in errors) into `tensors`.
fn add_safetensors_bytes(
    path: &Path,
    bytes: Vec<u8>,
    tensors: &mut HashMap<String, Entry>,
    expected_names: Option<&[String]>,
) -> Result<()> {
    let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("safetensors: {e}")))?;
    let data_start = 8 + header_len;
    let file = Arc::new(bytes);
    let infos = metadata.tensors();
    if let Some(names) = expected_names
        && let Some(missing) = names.iter().find(|n| !infos.contains_key(n.as_str()))
    {
        return Err(corrupt(
            path,
            format!("the index places `{missing}` in this shard, which does not hold it"),
        ));
    }
    for (name, info) in infos {
        use safetensors::Dtype as S;
        let dtype = match info.dtype {
            S::F32 => Some(WeightDtype::F32),
            S::F16 => Some(WeightDtype::F16),
            S::BF16 => Some(WeightDtype::BF16),
            S::F64 => Some(WeightDtype::F64),
            _ => None,
        };
        let (start, end) = info.data_offsets;
        let (start, end) = (data_start + start, data_start + end);
        if end > file.len() || start > end {
            return Err(corrupt(
                path,
                format!("tensor `{name}` lies outside the file"),
            ));
        }
        if let Some(d) = dtype {
            let n: usize = info.shape.iter().product();
            if n * d.size() != end - start {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor `{name}`: shape {:?} does not match its byte length",
                        info.shape
                    ),
                ));
            }
        }
        tensors.insert(
            name,
            Entry {
                dtype,
                stored_dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                file: path.to_path_buf(),
                source: Source::Bytes {
                    file: Arc::clone(&file),
                    start,
                    end,
                },
            },
        );
    }
    Ok(())
}

/// Little-endian bytes of `dtype` to f32.
fn decode(bytes: &[u8], dtype: WeightDtype) -> Vec<f32> {
    match dtype {
        WeightDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        WeightDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    }
}

/// Find the model directory a user pointed at: a plain Hugging Face directory (holding
/// `config.json`), or a Hugging Face cache entry `models--org--name` whose `refs/main` names a
/// snapshot under `snapshots/` (with a single snapshot taken when there is no ref).
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what: "model directory",
        });
    }
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let snapshots = path.join("snapshots");
    if !snapshots.is_dir() {
        return Err(ModelError::MissingFile {
            path: path.join("config.json"),
            what: "Hugging Face config.json (and the directory is no Hugging Face cache entry: it has no snapshots/)",
        });
    }
    let main_ref = path.join("refs").join("main");
    let revision = if main_ref.is_file() {
        std::fs::read_to_string(&main_ref)
            .map_err(|source| ModelError::Io {
                path: main_ref.clone(),
                source,
            })?
            .trim()
            .to_owned()
    } else {
        let entries = std::fs::read_dir(&snapshots).map_err(|source| ModelError::Io {
            path: snapshots.clone(),
            source,
        })?;
        let mut revisions: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        revisions.sort();
        match revisions.as_slice() {
            [only] => only.clone(),
            [] => {
                return Err(ModelError::MissingFile {
                    path: snapshots,
                    what: "a snapshot in the Hugging Face cache entry",
                });
            }
            _ => {
                return Err(ModelError::Config {
                    path: snapshots,
                    message: format!(
                        "several snapshots ({}) and no refs/main to choose one; pass the snapshot directory",
                        revisions.join(", ")
                    ),
                });
            }
        }
    };
    if revision.is_empty() || revision.contains('/') || revision.contains("..") {
        return Err(ModelError::Config {
            path: main_ref,
            message: format!("`{revision}` is not a snapshot revision"),
        });
    }
    let dir = snapshots.join(&revision);
    if !dir.join("config.json").is_file() {
        return Err(ModelError::MissingFile {
            path: dir.join("config.json"),
            what: "Hugging Face config.json in the snapshot refs/main names",
        });
    }
    Ok(dir)
}
