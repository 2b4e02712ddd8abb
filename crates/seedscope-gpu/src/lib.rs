//! WGSL kernels for the universality engine and their CPU twins: streaming per-neuron moments
//! and cross-model co-moments reduced to per-neuron best matches, candidate pairs, histograms
//! and the anchor's anatomy. One module per kernel (`shaders/`):
//! - [`moments`]: `moments.wgsl`, per-neuron block mean and centred sum of squares merged into
//!   running totals with Chan's formula ([`Moments`]).
//! - [`cross`]: `cross.wgsl`, a tiled GEMM of block-centred activations merged into a running
//!   co-moment tile ([`CrossTile`]), or `cross_coop.wgsl`, the same on cooperative matrices
//!   with f16 inputs where the adapter has them ([`CrossKernel`]), and `finalize.wgsl`, its
//!   Pearson correlations reduced per anchor neuron to the maximum, its argmax and the minimum
//!   (only these are read back).
//! - [`pairs`]: `pairs.wgsl`, the co-moments of listed column pairs ([`PairTile`]).
//! - [`histogram`]: `histogram.wgsl`, pre-activation histograms ([`Histogram`]).
//! - [`anatomy`]: `anatomy.wgsl`, feature sums, top activations, activity by position.
//! - [`totals`]: the Kahan `(hi, lo)` totals and the block pair the co-moment kernels share.
//! - [`context`]: the device ([`GpuContext`], [`find_adapter`]), activation views, kernels.
//! - [`twin`]: the CPU twins of the histogram and anatomy kernels; [`reference`]: the exact
//!   f64 correlations every other kernel is tested against.
//!
//! Activations are row-major `[rows, row_len]` f32 matrices in any storage buffer
//! ([`ActView`]), so the buffers Burn wrote on the same `wgpu::Device` are used in place.

pub mod anatomy;
pub mod context;
pub mod cross;
pub mod histogram;
pub mod moments;
pub mod pairs;
pub mod reference;
pub mod totals;
pub mod twin;

pub use anatomy::{Anatomy, AnatomyState, FeatureTables, NO_TOKEN, feature_csr};
pub(crate) use context::MAX_GROUPS;
pub use context::{
    ActView, GpuContext, GpuError, Kernels, find_adapter, kernel_features, open_device,
};
pub use cross::{CROSS_TILE, CrossKernel, CrossTile, REL_ZERO_STD, TileReduction};
pub use histogram::{HIST_BINS, Histogram};
pub use moments::{Moments, merge_weights};
pub use pairs::PairTile;
pub use totals::{BlockPair, Totals};

/// The most rows one update merges. Longer blocks are split by the caller (each split is a
/// Chan merge of its own): a single workgroup looping over tens of thousands of rows is slow
/// to schedule, and lavapipe was seen to drop such dispatches (results silently zero).
pub const MAX_BLOCK_ROWS: u32 = 4096;

/// An error for a block over [`MAX_BLOCK_ROWS`] rows.
pub(crate) fn check_rows(rows: u32) -> Result<(), GpuError> {
    if rows > MAX_BLOCK_ROWS {
        return Err(GpuError::Limit(format!(
            "a block of {rows} rows: merge at most {MAX_BLOCK_ROWS} rows per update"
        )));
    }
    Ok(())
}
