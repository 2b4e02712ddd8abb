//! The universality engine (the paper's §2): for every neuron of an anchor model, its Pearson
//! correlation with every neuron of every other seed over a stream of tokens, its best match,
//! the random-rotation baseline, the excess correlation and the universal flag.
//!
//! - [`engine`]: the streaming pass in stages (plan, block forward + masking + rotation,
//!   accumulation, checkpoints, refinement, shard merges) producing [`Results`].
//! - [`results`]: what a run produces and reports.
//! - [`compute`]: the two places statistics run, [`compute::Cpu`] and [`compute::Gpu`];
//!   [`accum`], [`hist`] and [`anatomy`] hold each path's accumulators behind one trait.
//! - [`plan`]: the co-moment tiles, grouped into passes under a memory budget and the device's
//!   limits.
//! - [`bundle`]: the result directory (`manifest.json`, `neurons.csv`,
//!   `correlation.safetensors`, `tiles.safetensors`), written atomically, and its reader.
//! - [`job`]: a whole analysis from a request (models, data, options) to a bundle, as the CLI
//!   and the app run it.
//! - [`rotation`]: the baseline's unit-row Gaussian matrices.
//! - [`checkpoint`]: resumable state.
//! - [`hist`]: pre-activation histograms and the activation statistics drawn from them.
//! - [`weights`]: per-neuron weight statistics on TransformerLens-processed weights.
//! - [`matching`]: the one-to-one assignment over a refined run's known entries.

use std::path::PathBuf;

pub mod accum;
pub mod anatomy;
pub mod attention;
pub mod bundle;
pub mod checkpoint;
pub mod compute;
pub mod engine;
pub mod features;
pub mod gpu_block;
pub mod hist;
pub mod intervene;
pub mod job;
pub mod matching;
pub mod path_ablation;
pub mod plan;
pub mod results;
pub mod rotation;
pub mod stats;
pub mod weights;

pub use bundle::{Bundle, NeuronRow};
pub use engine::{AnalysisOptions, Family, Refine, Run, TokenSet};
pub use plan::Shape;
pub use results::{
    BlockTiming, Candidates, DeviceMemory, LayerBlock, OneToOne, Outcome, Progress, Results,
    RunCost,
};
pub use seedscope_model::{replace_dir, write_file_atomic};

/// Errors of an analysis. Each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] seedscope_model::ModelError),
    /// Reading data failed.
    #[error(transparent)]
    Data(#[from] seedscope_data::DataError),
    /// A GPU kernel failed.
    #[error(transparent)]
    Gpu(#[from] seedscope_gpu::GpuError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file exists but is not what it should be.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Inputs or options that cannot work together.
    #[error("{0}")]
    Invalid(String),
}
