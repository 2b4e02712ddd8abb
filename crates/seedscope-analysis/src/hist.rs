//! Pre-activation histograms and the activation statistics the paper derives from them (§4:
//! `summary.py` and `analysis/activations.py`): per neuron, counts on the fixed edges
//! `linspace(-10, 15, 256)` (257 bins with the two overflow bins), accumulated in the streaming
//! pass on the GPU (`shaders/histogram.wgsl`) or the CPU, and from the counts the mean,
//! variance, skew, kurtosis (non-excess) and activation frequency ("sparsity").

use std::sync::Arc;

use ndarray::Array2;
use rayon::prelude::*;
use seedscope_gpu::{GpuContext, HIST_BINS, Histogram, Kernels};

use crate::AnalysisError;
use crate::gpu_block::{GpuBlock, rows_per_chunk};

/// The first edge at or above 0 (`argmax(edges >= 0)` = 102): bins from here on count as active.
pub const ZERO_BIN: usize = 102;

/// The 256 fixed edges in f64 (`numpy.linspace(-10, 15, 256)`).
pub fn edges() -> Vec<f64> {
    (0..256).map(|i| -10.0 + 25.0 * i as f64 / 255.0).collect()
}

/// Activation statistics from one neuron's counts (the paper's `compute_moments_from_binned_data`:
/// edges extended by one step on each side, bin centres at the midpoints, weighted moments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistStats {
    /// Mean pre-activation.
    pub mean: f64,
    /// Variance.
    pub var: f64,
    /// Skew, m3 / var^1.5.
    pub skew: f64,
    /// Kurtosis, m4 / var² (non-excess: a Gaussian gives 3).
    pub kurt: f64,
    /// Fraction of counts from the bin of the first non-negative edge on ("act frequency").
    pub sparsity: f64,
}

/// The centre of each of the `HIST_BINS` bins: the edges extended by one step on each side,
/// and the midpoints (the paper's `compute_moments_from_binned_data`).
pub fn centres() -> Vec<f64> {
    let e = edges();
    let step = e[1] - e[0];
    let mut ext = Vec::with_capacity(e.len() + 2);
    ext.push(e[0] - step);
    ext.extend_from_slice(&e);
    ext.push(e[e.len() - 1] + step);
    ext.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

/// Statistics of `counts` (`HIST_BINS` values).
pub fn stats(counts: &[u32]) -> HistStats {
    let m =
        crate::stats::weighted_moments(centres().into_iter().zip(counts.iter().map(|&c| c as f64)));
    let n = counts
        .iter()
        .map(|&c| c as f64)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    HistStats {
        mean: m.mean,
        var: m.var,
        skew: m.skew,
        kurt: m.kurt,
        sparsity: counts[ZERO_BIN.min(counts.len())..]
            .iter()
            .map(|&c| c as f64)
            .sum::<f64>()
            / n,
    }
}

/// Pre-activation histograms of some anchors being counted in one pass: [`CpuHists`] or
/// [`GpuHists`], each reading its own path's blocks.
#[allow(async_fn_in_trait)]
pub trait Histograms {
    /// One block of pre-activations, `[tokens, neurons]`.
    type Block;

    /// Count histogram `k`'s block of pre-activations.
    fn update(&mut self, k: usize, pre: &Self::Block) -> Result<(), AnalysisError>;

    /// The counts of every histogram, `[width * HIST_BINS]` each.
    async fn counts(&self) -> Result<Vec<Vec<u32>>, AnalysisError>;

    /// Continue from saved counts.
    fn restore(&mut self, saved: &[Vec<u32>]) -> Result<(), AnalysisError>;
}

fn restore_len(saved: usize, n: usize) -> Result<(), AnalysisError> {
    if saved != n {
        return Err(AnalysisError::Invalid(format!(
            "the checkpoint holds {saved} histogram sets, the pass needs {n}"
        )));
    }
    Ok(())
}

/// Histograms counted on the host with the kernel's twin ([`seedscope_gpu::twin`]).
#[derive(Debug)]
pub struct CpuHists {
    /// `[width * HIST_BINS]` per anchor.
    counts: Vec<Vec<u32>>,
    edges: Vec<f32>,
}

impl CpuHists {
    /// Zeroed histograms, one per anchor of `widths[a]` neurons.
    pub fn new(widths: &[usize]) -> Self {
        Self {
            counts: widths.iter().map(|&w| vec![0; w * HIST_BINS]).collect(),
            edges: seedscope_gpu::twin::hist_edges(),
        }
    }
}

impl Histograms for CpuHists {
    type Block = Array2<f32>;

    fn update(&mut self, k: usize, pre: &Array2<f32>) -> Result<(), AnalysisError> {
        let width = self.counts[k].len() / HIST_BINS;
        if pre.ncols() != width {
            return Err(AnalysisError::Invalid(format!(
                "pre-activations of {} neurons for histograms of {width}",
                pre.ncols(),
            )));
        }
        let x = pre.as_standard_layout();
        let x = x.as_slice().ok_or_else(|| {
            AnalysisError::Invalid("pre-activations are not a contiguous matrix".into())
        })?;
        // Runs of columns on rayon's threads, each counting its own neurons.
        let per = width.div_ceil(4 * rayon::current_num_threads()).max(1);
        let edges = &self.edges;
        self.counts[k]
            .par_chunks_mut(per * HIST_BINS)
            .enumerate()
            .for_each(|(i, counts)| {
                seedscope_gpu::twin::histogram_update_columns(counts, x, width, i * per, edges);
            });
        Ok(())
    }

    async fn counts(&self) -> Result<Vec<Vec<u32>>, AnalysisError> {
        Ok(self.counts.clone())
    }

    fn restore(&mut self, saved: &[Vec<u32>]) -> Result<(), AnalysisError> {
        restore_len(saved.len(), self.counts.len())?;
        for (c, s) in self.counts.iter_mut().zip(saved) {
            if c.len() != s.len() {
                return Err(AnalysisError::Invalid(
                    "saved histograms have the wrong size".into(),
                ));
            }
            c.copy_from_slice(s);
        }
        Ok(())
    }
}

/// Histograms counted on the device (`shaders/histogram.wgsl`, atomic counts).
#[derive(Debug)]
pub struct GpuHists {
    ctx: GpuContext,
    kernels: Arc<Kernels>,
    hists: Vec<Histogram>,
}

impl GpuHists {
    /// Zeroed histograms on `ctx`'s device, one per anchor of `widths[a]` neurons.
    pub fn new(
        ctx: &GpuContext,
        kernels: &Arc<Kernels>,
        widths: &[usize],
    ) -> Result<Self, AnalysisError> {
        Ok(Self {
            ctx: ctx.clone(),
            kernels: kernels.clone(),
            hists: widths
                .iter()
                .map(|&w| Histogram::new(ctx, w as u32))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Histograms for GpuHists {
    type Block = GpuBlock;

    fn update(&mut self, k: usize, pre: &GpuBlock) -> Result<(), AnalysisError> {
        let (rows, cols) = (pre.rows(), pre.cols());
        let chunk = rows_per_chunk(&self.ctx, rows, [cols])?;
        for r0 in (0..rows as u64).step_by(chunk as usize) {
            let len = chunk.min(rows as u64 - r0) as u32;
            self.hists[k].update(&self.ctx, &self.kernels, &pre.view(r0, len))?;
        }
        Ok(())
    }

    async fn counts(&self) -> Result<Vec<Vec<u32>>, AnalysisError> {
        let mut out = Vec::with_capacity(self.hists.len());
        for h in &self.hists {
            out.push(h.read_async(&self.ctx).await?);
        }
        Ok(out)
    }

    fn restore(&mut self, saved: &[Vec<u32>]) -> Result<(), AnalysisError> {
        restore_len(saved.len(), self.hists.len())?;
        for (h, s) in self.hists.iter().zip(saved) {
            h.restore(&self.ctx, s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_from_bins_follow_the_papers_recipe() {
        // All mass in one bin: the mean is its centre, no spread.
        let mut c = vec![0u32; HIST_BINS];
        c[150] = 10;
        let e = edges();
        let s = stats(&c);
        assert!((s.mean - (e[149] + e[150]) / 2.0).abs() < 1e-12);
        assert_eq!(s.var, 0.0);
        assert_eq!(s.sparsity, 1.0);
        // Two equal bins: symmetric, kurtosis 1, half active.
        let mut c = vec![0u32; HIST_BINS];
        c[50] = 5;
        c[150] = 5;
        let s = stats(&c);
        assert!(s.skew.abs() < 1e-9);
        assert!((s.kurt - 1.0).abs() < 1e-9);
        assert_eq!(s.sparsity, 0.5);
        // The overflow bins sit one step beyond the ends.
        let mut c = vec![0u32; HIST_BINS];
        c[0] = 1;
        let step = e[1] - e[0];
        assert!((stats(&c).mean - (e[0] - step / 2.0)).abs() < 1e-12);
    }

    /// The columns counted on rayon's threads give the twin's counts over the whole block,
    /// at widths that do not split evenly.
    #[test]
    fn threaded_cpu_histograms_equal_the_twin() {
        for width in [1, 7, 130] {
            let rows = 33;
            let x = Array2::from_shape_fn((rows, width), |(r, c)| {
                ((r * 31 + c * 17) % 97) as f32 * 0.3 - 12.0
            });
            let mut hists = CpuHists::new(&[width]);
            hists.update(0, &x).expect("update");
            hists.update(0, &x).expect("update");
            let mut want = vec![0u32; width * HIST_BINS];
            let flat = x.as_slice().expect("standard layout");
            for _ in 0..2 {
                seedscope_gpu::twin::histogram_update(&mut want, flat, width, &hists.edges);
            }
            assert_eq!(hists.counts[0], want, "width {width}");
        }
    }
}
