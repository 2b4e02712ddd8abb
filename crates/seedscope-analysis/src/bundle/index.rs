//! A safetensors file's index, read from its header alone: each tensor's dtype, shape and byte
//! range. Tensors, or rows of them, are then read by range, so opening a bundle does not read
//! what it does not show (a GPT-2-small bundle's example windows are most of its bytes).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use safetensors::tensor::Dtype;

use super::BundleSource;
use crate::AnalysisError;

/// Where one tensor lies in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range in the file (header included).
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

impl Entry {
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        self.dtype.bitsize() / 8
    }
}

/// The tensors of one safetensors file of a bundle, and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIndex {
    file: String,
    path: PathBuf,
    tensors: BTreeMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl TensorIndex {
    /// The index of `file` in `source` (its first 8 bytes and its header are read); `None`
    /// when the bundle has no such file.
    pub fn read(source: &BundleSource, file: &str) -> Result<Option<Self>, AnalysisError> {
        let path = source.path(file);
        let corrupt = |message: String| AnalysisError::Corrupt {
            path: path.clone(),
            message,
        };
        let Some(file_len) = source.len(file)? else {
            return Ok(None);
        };
        if file_len < 8 {
            return Err(corrupt(format!(
                "not a safetensors file ({file_len} bytes)"
            )));
        }
        let n = u64::from_le_bytes(
            source
                .read_range(file, 0, 8)?
                .try_into()
                .map_err(|_| corrupt("a short header length".into()))?,
        );
        if n > 100 << 20 || n + 8 > file_len {
            return Err(corrupt(format!(
                "not a safetensors file (a header of {n} bytes in {file_len})"
            )));
        }
        let header = source.read_range(file, 8, n as usize)?;
        let json: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| corrupt(format!("bad header: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (name, v) in json {
            if name == "__metadata__" {
                metadata =
                    serde_json::from_value(v).map_err(|e| corrupt(format!("bad metadata: {e}")))?;
                continue;
            }
            let entry = (|| {
                let o = v.get("data_offsets")?.as_array()?;
                let (a, b) = (o.first()?.as_u64()?, o.get(1)?.as_u64()?);
                let shape: Vec<usize> = serde_json::from_value(v.get("shape")?.clone()).ok()?;
                let dtype: Dtype = serde_json::from_value(v.get("dtype")?.clone()).ok()?;
                let (start, end) = (8 + n + a, 8 + n + b);
                let len = shape.iter().product::<usize>() as u64 * (dtype.bitsize() / 8) as u64;
                (a <= b && end <= file_len && end - start == len).then_some(Entry {
                    dtype,
                    shape,
                    start,
                    end,
                })
            })()
            .ok_or_else(|| corrupt(format!("tensor {name}: a bad header entry")))?;
            tensors.insert(name, entry);
        }
        Ok(Some(Self {
            file: file.to_owned(),
            path,
            tensors,
            metadata,
        }))
    }

    /// The file as messages name it.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Tensor `name`'s entry, or an error naming the file and tensor.
    pub fn entry(&self, name: &str) -> Result<&Entry, AnalysisError> {
        self.tensors
            .get(name)
            .ok_or_else(|| AnalysisError::Corrupt {
                path: self.path.clone(),
                message: format!("no tensor {name}"),
            })
    }

    /// Whether the file has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensors' names and entries.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.tensors.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// The bytes of elements `[first, first + count)` of tensor `name` (row-major), checked to
    /// be of `dtype`.
    pub fn read_elems(
        &self,
        source: &BundleSource,
        name: &str,
        dtype: Dtype,
        first: usize,
        count: usize,
    ) -> Result<Vec<u8>, AnalysisError> {
        let e = self.entry(name)?;
        let size = e.elem_bytes();
        let total = e.shape.iter().product::<usize>();
        if e.dtype != dtype || first + count > total {
            return Err(AnalysisError::Corrupt {
                path: self.path.clone(),
                message: format!(
                    "tensor {name} is {:?} {:?}: no {dtype:?} elements {first}..{}",
                    e.dtype,
                    e.shape,
                    first + count
                ),
            });
        }
        source.read_range(&self.file, e.start + (first * size) as u64, count * size)
    }

    /// Tensor `name` whole, as `T`, checked to be `len` elements of `dtype`.
    pub fn read_all<T: bytemuck::Pod>(
        &self,
        source: &BundleSource,
        name: &str,
        dtype: Dtype,
        len: usize,
    ) -> Result<Vec<T>, AnalysisError> {
        let e = self.entry(name)?;
        let total = e.shape.iter().product::<usize>();
        if total != len || std::mem::size_of::<T>() != e.elem_bytes() {
            return Err(AnalysisError::Corrupt {
                path: self.path.clone(),
                message: format!(
                    "tensor {name} is {:?} {:?}, expected {len} {dtype:?}",
                    e.dtype, e.shape
                ),
            });
        }
        let bytes = self.read_elems(source, name, dtype, 0, len)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, T>(&bytes))
    }
}
