//! Pre-activation histograms and the activation statistics the paper derives from them (§4:
//! `summary.py` and `analysis/activations.py`): per neuron, counts on the fixed edges
//! `linspace(-10, 15, 256)` (257 bins with the two overflow bins), accumulated in the streaming
//! pass on the GPU (`shaders/histogram.wgsl`) or the CPU, and from the counts the mean,
//! variance, skew, kurtosis (non-excess) and activation frequency ("sparsity").

use std::sync::Arc;

use burn::tensor::Tensor;
use seedscope_gpu::{GpuContext, HIST_BINS, Histogram, Kernels};

use crate::AnalysisError;
use crate::accum::{GpuBlock, rows_per_chunk};

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

/// Statistics of `counts` (`HIST_BINS` values).
pub fn stats(counts: &[u32]) -> HistStats {
    let e = edges();
    let step = e[1] - e[0];
    let mut ext = Vec::with_capacity(e.len() + 2);
    ext.push(e[0] - step);
    ext.extend_from_slice(&e);
    ext.push(e[e.len() - 1] + step);
    let centres: Vec<f64> = ext.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let n: f64 = counts.iter().map(|&c| c as f64).sum();
    let n = n.max(f64::MIN_POSITIVE);
    let mean = counts
        .iter()
        .zip(&centres)
        .map(|(&c, x)| c as f64 * x)
        .sum::<f64>()
        / n;
    let moment = |k: i32| {
        counts
            .iter()
            .zip(&centres)
            .map(|(&c, x)| c as f64 * (x - mean).powi(k))
            .sum::<f64>()
            / n
    };
    let var = moment(2);
    HistStats {
        mean,
        var,
        skew: moment(3) / var.powf(1.5),
        kurt: moment(4) / (var * var),
        sparsity: counts[ZERO_BIN.min(counts.len())..]
            .iter()
            .map(|&c| c as f64)
            .sum::<f64>()
            / n,
    }
}

/// The bin of `x` among `edges` (f32 edges as the kernel computes them), as
/// `numpy.searchsorted(edges, x, side="left")`.
fn bin(x: f32, edges: &[f32]) -> usize {
    if x.is_nan() {
        edges.len()
    } else {
        edges.partition_point(|&e| e < x)
    }
}

/// Histograms being accumulated for some anchors in one pass.
#[derive(Debug)]
pub enum PreHists {
    /// Host counts per anchor, `[width * HIST_BINS]`.
    Cpu {
        /// Counts.
        counts: Vec<Vec<u32>>,
        /// Edges in f32.
        edges: Vec<f32>,
    },
    /// Device histograms per anchor.
    Gpu {
        /// The device.
        ctx: Box<GpuContext>,
        /// Compiled kernels.
        kernels: Arc<Kernels>,
        /// One per anchor.
        hists: Vec<Histogram>,
    },
}

impl PreHists {
    /// `n` zeroed histograms of `width` neurons, on the GPU when `gpu` is given.
    pub fn new(
        gpu: Option<(&GpuContext, &Arc<Kernels>)>,
        n: usize,
        width: usize,
    ) -> Result<Self, AnalysisError> {
        Ok(match gpu {
            Some((ctx, kernels)) => Self::Gpu {
                ctx: Box::new(ctx.clone()),
                kernels: kernels.clone(),
                hists: (0..n)
                    .map(|_| Histogram::new(ctx, width as u32))
                    .collect::<Result<_, _>>()?,
            },
            None => Self::Cpu {
                counts: vec![vec![0; width * HIST_BINS]; n],
                edges: seedscope_gpu::reference::hist_edges(),
            },
        })
    }

    /// Count histogram `k`'s block of pre-activations `[tokens, width]`.
    pub fn update(&mut self, k: usize, pre: Tensor<2>) -> Result<(), AnalysisError> {
        match self {
            Self::Cpu { counts, edges } => {
                let [rows, width] = pre.dims();
                let x = pre
                    .try_into_data()
                    .map_err(|e| AnalysisError::Invalid(format!("pre-activations: {e}")))?
                    .try_into_vec::<f32>()
                    .map_err(|e| AnalysisError::Invalid(format!("pre-activations: {e:?}")))?;
                let c = &mut counts[k];
                for t in 0..rows {
                    for (j, &v) in x[t * width..(t + 1) * width].iter().enumerate() {
                        c[j * HIST_BINS + bin(v, edges)] += 1;
                    }
                }
            }
            Self::Gpu {
                ctx,
                kernels,
                hists,
            } => {
                let b = GpuBlock::new(pre)?;
                let (rows, cols) = (b.rows(), b.cols());
                let chunk = rows_per_chunk(ctx, rows, [cols])?;
                for r0 in (0..rows as u64).step_by(chunk as usize) {
                    let len = chunk.min(rows as u64 - r0) as u32;
                    hists[k].update(ctx, kernels, &b.view(r0, len))?;
                }
            }
        }
        Ok(())
    }

    /// The counts of every histogram (blocking; native).
    pub fn save(&self) -> Result<Vec<Vec<u32>>, AnalysisError> {
        pollster::block_on(self.save_async())
    }

    /// The counts of every histogram.
    pub async fn save_async(&self) -> Result<Vec<Vec<u32>>, AnalysisError> {
        Ok(match self {
            Self::Cpu { counts, .. } => counts.clone(),
            Self::Gpu { ctx, hists, .. } => {
                let mut out = Vec::with_capacity(hists.len());
                for h in hists {
                    out.push(h.read_async(ctx).await?);
                }
                out
            }
        })
    }

    /// Continue from saved counts.
    pub fn restore(&mut self, saved: &[Vec<u32>]) -> Result<(), AnalysisError> {
        let n = match self {
            Self::Cpu { counts, .. } => counts.len(),
            Self::Gpu { hists, .. } => hists.len(),
        };
        if saved.len() != n {
            return Err(AnalysisError::Invalid(format!(
                "the checkpoint holds {} histogram sets, the pass needs {n}",
                saved.len()
            )));
        }
        match self {
            Self::Cpu { counts, .. } => {
                for (c, s) in counts.iter_mut().zip(saved) {
                    if c.len() != s.len() {
                        return Err(AnalysisError::Invalid(
                            "saved histograms have the wrong size".into(),
                        ));
                    }
                    c.copy_from_slice(s);
                }
            }
            Self::Gpu { ctx, hists, .. } => {
                for (h, s) in hists.iter().zip(saved) {
                    h.restore(ctx, s)?;
                }
            }
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

    #[test]
    fn host_binning_matches_searchsorted() {
        let e = seedscope_gpu::reference::hist_edges();
        assert_eq!(bin(-20.0, &e), 0);
        assert_eq!(bin(-10.0, &e), 0);
        assert_eq!(bin(e[102], &e), 102);
        assert_eq!(bin(e[102] + 1e-3, &e), 103);
        assert_eq!(bin(20.0, &e), 256);
        assert_eq!(bin(f32::NAN, &e), 256);
    }
}
