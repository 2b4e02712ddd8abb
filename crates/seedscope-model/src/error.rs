//! Errors of model loading and running. Every variant names the file or tensor at fault.

use std::path::PathBuf;

/// What can go wrong while finding, parsing or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model needs is not there.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// Which file this is, for the reader.
        what: &'static str,
    },
    /// A file could not be read at all.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or lacks a field.
    #[error("{path}: invalid config: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The config asks for something Seedscope does not implement.
    #[error("{path}: unsupported: {message}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// What is not supported.
        message: String,
    },
    /// A weights file is truncated, corrupt or otherwise unreadable.
    #[error("{path}: corrupt weights file: {message}")]
    CorruptWeights {
        /// The weights file.
        path: PathBuf,
        /// What the parser found.
        message: String,
    },
    /// The checkpoint has no tensor under a name the architecture needs.
    #[error("{path}: no tensor named `{name}` (the checkpoint has {available} tensors)")]
    MissingTensor {
        /// The weights file (or index) searched.
        path: PathBuf,
        /// The Hugging Face parameter name.
        name: String,
        /// How many tensors the checkpoint holds, to tell an empty file from a wrong one.
        available: usize,
    },
    /// A tensor has a shape the config does not allow.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor is stored in a type that cannot be a float weight.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The stored type.
        dtype: String,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: tensor `{name}` contains non-finite values")]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// The input handed to the forward pass does not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
