//! `shaders/histogram.wgsl`: per-neuron pre-activation histograms on the paper's fixed edges
//! (CPU twin: [`crate::twin::histogram_update`]).

use bytemuck::{Pod, Zeroable};

use crate::context::dispatch;
use crate::{ActView, GpuContext, GpuError, Kernels, check_rows, twin};

/// Bins of the pre-activation histogram: 256 fixed edges `linspace(-10, 15, 256)` and the two
/// overflow bins (the paper's `summary.py`).
pub const HIST_BINS: usize = 257;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct HistParams {
    rows: u32,
    row_len: u32,
    x_offset: u32,
    pad: u32,
}

/// Per-neuron pre-activation histograms (`shaders/histogram.wgsl`), `[n_cols, HIST_BINS]` u32
/// counts on the device.
#[derive(Debug)]
pub struct Histogram {
    counts: wgpu::Buffer,
    edges: wgpu::Buffer,
    n_cols: u32,
}

impl Histogram {
    /// Zeroed counts for `n_cols` neurons.
    pub fn new(ctx: &GpuContext, n_cols: u32) -> Result<Self, GpuError> {
        let bytes = n_cols as u64 * HIST_BINS as u64 * 4;
        let max = ctx.max_binding_bytes();
        if bytes > max {
            return Err(GpuError::Limit(format!(
                "histograms of {n_cols} neurons need {bytes} bytes, over the device's largest \
                 binding of {max}"
            )));
        }
        let counts = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("histogram"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Fresh buffers are zeroed by wgpu.
        let edges = ctx.upload("histogram edges", &twin::hist_edges())?;
        Ok(Self {
            counts,
            edges,
            n_cols,
        })
    }

    /// Count every value of `x` (`[rows, n_cols]`; at most [`MAX_BLOCK_ROWS`] rows).
    pub fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        x: &ActView<'_>,
    ) -> Result<(), GpuError> {
        check_rows(x.rows)?;
        if x.row_len != self.n_cols {
            return Err(GpuError::Limit(format!(
                "histogram of {} neurons updated with rows of {}",
                self.n_cols, x.row_len
            )));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let params = HistParams {
            rows: x.rows,
            row_len: x.row_len,
            x_offset: 0,
            pad: 0,
        };
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        dispatch(
            ctx,
            &mut encoder,
            kernels.histogram(),
            bytemuck::bytes_of(&params),
            vec![
                x.binding(),
                self.counts.as_entire_binding(),
                self.edges.as_entire_binding(),
            ],
            (x.row_len.div_ceil(64), x.rows),
        );
        ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// The counts, `[n_cols, HIST_BINS]` (blocking; native).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<u32>, GpuError> {
        pollster::block_on(self.read_async(ctx))
    }

    /// The counts, `[n_cols, HIST_BINS]`.
    pub async fn read_async(&self, ctx: &GpuContext) -> Result<Vec<u32>, GpuError> {
        let bytes = ctx
            .read_async(&self.counts, self.n_cols as u64 * HIST_BINS as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Continue from saved counts.
    pub fn restore(&self, ctx: &GpuContext, counts: &[u32]) -> Result<(), GpuError> {
        if counts.len() != self.n_cols as usize * HIST_BINS {
            return Err(GpuError::Limit(format!(
                "saved histograms hold {} counts, expected {}",
                counts.len(),
                self.n_cols as usize * HIST_BINS
            )));
        }
        ctx.queue
            .write_buffer(&self.counts, 0, bytemuck::cast_slice(counts));
        Ok(())
    }
}
