//! Where a pass's statistics run: [`Cpu`] (the host, f64 totals) or [`Gpu`] (the WGSL
//! kernels on the wgpu device the models ran on). The engine is generic over [`Compute`]: a
//! pass's accumulators, histograms and anatomy all come from one path and read that path's
//! [`Compute::Block`]s, so activations of one path cannot reach the other's accumulators.

use std::sync::Arc;

use burn::tensor::Tensor;
use ndarray::Array2;
use seedscope_gpu::{GpuContext, Kernels};

use crate::AnalysisError;
use crate::accum::{Accumulate, CpuAccumulator, GpuAccumulator};
use crate::anatomy::{Anatomies, AnatomyDevice, AnatomySpec, CpuAnatomy, GpuAnatomy};
use crate::gpu_block::GpuBlock;
use crate::hist::{CpuHists, GpuHists, Histograms};
use crate::plan::TileSpec;

/// A compute path: how a block of activations is held and the statistics that read it.
#[allow(async_fn_in_trait)]
pub trait Compute {
    /// One stream's activations for one block of tokens, `[tokens, neurons]`.
    type Block;
    /// Moments and co-moments.
    type Accumulator: Accumulate<Block = Self::Block>;
    /// Pre-activation histograms.
    type Hists: Histograms<Block = Self::Block>;
    /// The anatomy's device part.
    type Anatomy: AnatomyDevice<Block = Self::Block>;

    /// Take a Burn tensor (the models' output, `[tokens, neurons]`) as a block of this path.
    fn block(&self, t: Tensor<2>) -> Result<Self::Block, AnalysisError>;

    /// Zeroed accumulators for `specs` (`widths[s]`: stream `s`'s neurons); with `held_rows =
    /// Some(tokens)`, accumulators that hold the pass's rows, about that many
    /// ([`crate::plan::Plan::holds_rows`]: the host only).
    fn accumulator(
        &self,
        specs: Vec<TileSpec>,
        widths: &[usize],
        held_rows: Option<u64>,
    ) -> Result<Self::Accumulator, AnalysisError>;

    /// Zeroed histograms, one per anchor of `widths[a]` neurons.
    fn hists(&self, widths: &[usize]) -> Result<Self::Hists, AnalysisError>;

    /// Empty anatomy accumulators, one per anchor of `widths[a]` neurons.
    fn anatomies(
        &self,
        spec: &AnatomySpec,
        widths: &[usize],
    ) -> Result<Anatomies<Self::Anatomy>, AnalysisError>;

    /// Wait until the work recorded so far is done (on a GPU in the browser this hands the
    /// event loop to the page); nothing on the CPU, where the work is done when recorded.
    async fn settle(&self);

    /// The device's memory now, `(allocated, reserved)` bytes, where the device reports it
    /// (wgpu's allocator report); `None` on the CPU, whose peak is the process's.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The host: Burn's CPU tensors copied into ndarray matrices, f64 totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl Compute for Cpu {
    type Block = Array2<f32>;
    type Accumulator = CpuAccumulator;
    type Hists = CpuHists;
    type Anatomy = CpuAnatomy;

    fn block(&self, t: Tensor<2>) -> Result<Array2<f32>, AnalysisError> {
        let [r, c] = t.dims();
        let v = t
            .try_into_data()
            .map_err(|e| AnalysisError::Invalid(format!("computing activations: {e}")))?
            .try_into_vec::<f32>()
            .map_err(|e| AnalysisError::Invalid(format!("reading activations: {e:?}")))?;
        Array2::from_shape_vec((r, c), v).map_err(|e| AnalysisError::Invalid(e.to_string()))
    }

    fn accumulator(
        &self,
        specs: Vec<TileSpec>,
        widths: &[usize],
        held_rows: Option<u64>,
    ) -> Result<CpuAccumulator, AnalysisError> {
        Ok(match held_rows {
            Some(tokens) => CpuAccumulator::holding_rows(specs, widths, tokens),
            None => CpuAccumulator::new(specs, widths),
        })
    }

    fn hists(&self, widths: &[usize]) -> Result<CpuHists, AnalysisError> {
        Ok(CpuHists::new(widths))
    }

    fn anatomies(
        &self,
        spec: &AnatomySpec,
        widths: &[usize],
    ) -> Result<Anatomies<CpuAnatomy>, AnalysisError> {
        Ok(Anatomies::cpu(spec, widths))
    }

    async fn settle(&self) {}
}

/// The wgpu device Burn ran the models on, with the kernels compiled once for a run.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// The device.
    pub ctx: GpuContext,
    /// Its compiled kernels.
    pub kernels: Arc<Kernels>,
}

impl Gpu {
    /// Compile the kernels on `ctx`'s device.
    pub fn new(ctx: GpuContext) -> Self {
        let kernels = Arc::new(Kernels::new(&ctx));
        Self { ctx, kernels }
    }
}

impl Compute for Gpu {
    type Block = GpuBlock;
    type Accumulator = GpuAccumulator;
    type Hists = GpuHists;
    type Anatomy = GpuAnatomy;

    fn block(&self, t: Tensor<2>) -> Result<GpuBlock, AnalysisError> {
        GpuBlock::new(t)
    }

    fn accumulator(
        &self,
        specs: Vec<TileSpec>,
        widths: &[usize],
        held_rows: Option<u64>,
    ) -> Result<GpuAccumulator, AnalysisError> {
        if held_rows.is_some() {
            return Err(AnalysisError::Invalid(
                "the plan holds a pass's rows, which only the CPU path does".into(),
            ));
        }
        GpuAccumulator::new(self.ctx.clone(), self.kernels.clone(), specs, widths)
    }

    fn hists(&self, widths: &[usize]) -> Result<GpuHists, AnalysisError> {
        GpuHists::new(&self.ctx, &self.kernels, widths)
    }

    fn anatomies(
        &self,
        spec: &AnatomySpec,
        widths: &[usize],
    ) -> Result<Anatomies<GpuAnatomy>, AnalysisError> {
        Anatomies::gpu(&self.ctx, &self.kernels, spec, widths)
    }

    async fn settle(&self) {
        self.ctx.settle().await;
    }

    fn memory(&self) -> Option<(u64, u64)> {
        self.ctx.memory()
    }
}
