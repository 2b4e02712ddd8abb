//! The explorer's errors: each names the file or the step at fault, and reaches the user as a
//! notice and a log line (never a panic).

use std::path::PathBuf;

/// What can go wrong in the explorer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Reading a bundle, or running an analysis.
    #[error(transparent)]
    Analysis(#[from] seedscope_analysis::AnalysisError),
    /// Loading or running a model.
    #[error(transparent)]
    Model(#[from] seedscope_model::ModelError),
    /// No device to run the models on.
    #[error(transparent)]
    Device(#[from] seedscope_model::NoAdapter),
    /// Reading tokens or a tokenizer.
    #[error(transparent)]
    Data(#[from] seedscope_data::DataError),
    /// Drawing a figure for an export.
    #[error(transparent)]
    Figure(#[from] seedscope_report::ReportError),
    /// A file that is there but wrong.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The user stopped the task.
    #[error("cancelled")]
    Cancelled,
    /// Anything else, said in words (the browser's fetch errors, a missing token, a task that
    /// panicked).
    #[error("{0}")]
    Other(String),
}

impl From<String> for AppError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl From<&str> for AppError {
    fn from(message: &str) -> Self {
        Self::Other(message.to_owned())
    }
}
