//! Activations computed once per block and model and kept for the passes after the first
//! ([`Reuse`](crate::plan::Reuse)): in memory on the models' device, or on disk in the work
//! directory (raw little-endian f32, read back by offset). The values are the forward's own
//! f32 tensors, so a pass that reads them accumulates exactly what a forward would give it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::AnalysisError;

/// One model's activations over one block, each where some pass needs it: post-activations,
/// their rotated baseline, pre-activations (for histograms a later pass counts).
#[derive(Clone, Default)]
pub(super) struct ModelActs {
    pub post: Option<Tensor<2>>,
    pub rotated: Option<Tensor<2>>,
    pub pre: Option<Tensor<2>>,
}

impl ModelActs {
    fn parts(&self) -> [&Option<Tensor<2>>; 3] {
        [&self.post, &self.rotated, &self.pre]
    }
}

/// Per model, which of (post, rotated, pre) are kept.
pub(super) type Keep = Vec<[bool; 3]>;

/// The kept activations of every (block, model).
pub(super) struct Store {
    keep: Keep,
    place: Place,
    /// Every block of the pass that filled it is in.
    complete: bool,
}

enum Place {
    Memory(HashMap<(usize, usize), ModelActs>),
    Disk {
        path: PathBuf,
        file: File,
        /// (block, model, part) → (byte offset, shape).
        index: HashMap<(usize, usize, usize), (u64, [usize; 2])>,
        end: u64,
    },
}

impl Store {
    /// An empty store in memory.
    pub fn memory(keep: Keep) -> Self {
        Self {
            keep,
            place: Place::Memory(HashMap::new()),
            complete: false,
        }
    }

    /// An empty store in the file `path` (created, or emptied).
    pub fn disk(path: &Path, keep: Keep) -> Result<Self, AnalysisError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| AnalysisError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            keep,
            place: Place::Disk {
                path: path.to_path_buf(),
                file,
                index: HashMap::new(),
                end: 0,
            },
            complete: false,
        })
    }

    /// What is kept of each model.
    pub fn keep(&self) -> &Keep {
        &self.keep
    }

    /// Whether every block is in (the filling pass ended).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The filling pass ended: later passes read from here.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    /// Keep what [`Store::keep`] names of model `model`'s activations over block `block`.
    pub fn put(
        &mut self,
        block: usize,
        model: usize,
        acts: &ModelActs,
    ) -> Result<(), AnalysisError> {
        let keep = self.keep.get(model).copied().unwrap_or_default();
        let kept = |i: usize| acts.parts()[i].clone().filter(|_| keep[i]);
        match &mut self.place {
            Place::Memory(map) => {
                map.insert(
                    (block, model),
                    ModelActs {
                        post: kept(0),
                        rotated: kept(1),
                        pre: kept(2),
                    },
                );
            }
            Place::Disk {
                path,
                file,
                index,
                end,
            } => {
                for part in 0..3 {
                    let Some(t) = kept(part) else { continue };
                    let [r, c] = t.dims();
                    let data = t
                        .try_into_data()
                        .map_err(|e| AnalysisError::Invalid(format!("reading activations: {e}")))?;
                    let values = data.as_slice::<f32>().map_err(|e| {
                        AnalysisError::Invalid(format!("activations to keep: {e:?}"))
                    })?;
                    let bytes: &[u8] = bytemuck::cast_slice(values);
                    file.write_all(bytes).map_err(|source| AnalysisError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    index.insert((block, model, part), (*end, [r, c]));
                    *end += bytes.len() as u64;
                }
            }
        }
        Ok(())
    }

    /// The `want`ed parts (post, rotated, pre) of model `model`'s kept activations over block
    /// `block`, on `device`.
    pub fn get(
        &mut self,
        block: usize,
        model: usize,
        want: [bool; 3],
        device: &Device,
    ) -> Result<ModelActs, AnalysisError> {
        let missing = || {
            AnalysisError::Invalid(format!(
                "the kept activations lack model {model} in block {block}"
            ))
        };
        match &mut self.place {
            Place::Memory(map) => {
                let a = map.get(&(block, model)).ok_or_else(missing)?;
                let part = |i: usize| a.parts()[i].clone().filter(|_| want[i]);
                Ok(ModelActs {
                    post: part(0),
                    rotated: part(1),
                    pre: part(2),
                })
            }
            Place::Disk {
                path, file, index, ..
            } => {
                let mut parts: [Option<Tensor<2>>; 3] = Default::default();
                for (part, slot) in parts.iter_mut().enumerate() {
                    if !want[part] || !self.keep.get(model).is_some_and(|k| k[part]) {
                        continue;
                    }
                    let &(offset, [r, c]) = index.get(&(block, model, part)).ok_or_else(missing)?;
                    let mut values = vec![0f32; r * c];
                    let io = |source| AnalysisError::Io {
                        path: path.clone(),
                        source,
                    };
                    file.seek(SeekFrom::Start(offset)).map_err(io)?;
                    file.read_exact(bytemuck::cast_slice_mut(&mut values))
                        .map_err(io)?;
                    *slot = Some(Tensor::from_data(TensorData::new(values, [r, c]), device));
                }
                let [post, rotated, pre] = parts;
                Ok(ModelActs { post, rotated, pre })
            }
        }
    }

    /// Where the activations are kept, in words.
    pub fn place(&self) -> String {
        match &self.place {
            Place::Memory(_) => "in memory".into(),
            Place::Disk { path, .. } => format!("in {}", path.display()),
        }
    }

    /// Bytes kept so far.
    pub fn bytes(&self) -> u64 {
        match &self.place {
            Place::Memory(map) => map
                .values()
                .flat_map(|a| a.parts())
                .flatten()
                .map(|t| (t.dims()[0] * t.dims()[1] * 4) as u64)
                .sum(),
            Place::Disk { end, .. } => *end,
        }
    }

    /// Release the activations (the file is removed).
    pub fn remove(self) -> Result<(), AnalysisError> {
        if let Place::Disk { path, file, .. } = self.place {
            // Closed before it is removed (Windows removes no open file).
            {
                let _closed = file;
            }
            std::fs::remove_file(&path).map_err(|source| AnalysisError::Io { path, source })?;
        }
        Ok(())
    }
}
