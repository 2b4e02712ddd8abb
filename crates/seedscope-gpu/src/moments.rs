//! `shaders/moments.wgsl`: per-neuron running mean and centred sum of squares, merged block by
//! block with Chan's formula into Kahan pairs.

use bytemuck::{Pod, Zeroable};

use crate::context::dispatch;
use crate::{ActView, GpuContext, GpuError, Kernels, check_rows};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MomentParams {
    rows: u32,
    row_len: u32,
    x_offset: u32,
    n_cols: u32,
    inv_block: f32,
    w_mean: f32,
    w_m2: f32,
    pad: u32,
}

/// Running per-neuron count, mean and centred sum of squares (M2) of one activation matrix,
/// plus the last block's means and mean shifts, which [`CrossTile::update`] reads.
#[derive(Debug)]
pub struct Moments {
    pub(crate) stats: wgpu::Buffer,
    pub(crate) block: wgpu::Buffer,
    n_cols: u32,
    pub(crate) count: u64,
}

/// Merge weights of a block of `n_block` rows into totals over `n_prev` rows (Chan et al.):
/// `(n_block / n, n_prev * n_block / n)`, in f64 before the cast.
pub fn merge_weights(n_prev: u64, n_block: u64) -> (f64, f64) {
    let n = (n_prev + n_block) as f64;
    (n_block as f64 / n, n_prev as f64 * n_block as f64 / n)
}

impl Moments {
    /// Zeroed moments for `n_cols` neurons.
    pub fn new(ctx: &GpuContext, n_cols: u32) -> Result<Self, GpuError> {
        Ok(Self {
            stats: ctx.storage("moments", n_cols as u64 * 16)?,
            block: ctx.storage("block moments", n_cols as u64 * 8)?,
            n_cols,
            count: 0,
        })
    }

    /// Rows merged so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Neurons.
    pub fn n_cols(&self) -> u32 {
        self.n_cols
    }

    /// Record the merge of one block (all `n_cols` columns of `x`) into `encoder`.
    pub fn update(
        &mut self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        x: ActView<'_>,
    ) -> Result<(), GpuError> {
        if x.row_len < self.n_cols {
            return Err(GpuError::Limit(format!(
                "activation rows hold {} neurons, the moments {}",
                x.row_len, self.n_cols
            )));
        }
        check_rows(x.rows)?;
        if x.rows == 0 {
            return Ok(());
        }
        let (w_mean, w_m2) = merge_weights(self.count, x.rows as u64);
        let params = MomentParams {
            rows: x.rows,
            row_len: x.row_len,
            x_offset: 0,
            n_cols: self.n_cols,
            inv_block: (1.0 / x.rows as f64) as f32,
            w_mean: w_mean as f32,
            w_m2: w_m2 as f32,
            pad: 0,
        };
        dispatch(
            ctx,
            encoder,
            kernels.moments(),
            bytemuck::bytes_of(&params),
            vec![
                x.binding(),
                self.stats.as_entire_binding(),
                self.block.as_entire_binding(),
            ],
            (self.n_cols.div_ceil(64), 1),
        );
        self.count += x.rows as u64;
        Ok(())
    }

    /// Read the running state: per neuron `(mean, mean compensation, m2, m2 compensation)`
    /// (blocking; native).
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_state_async(ctx))
    }

    /// [`Moments::read_state`] without blocking.
    pub async fn read_state_async(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.stats, self.n_cols as usize * 4).await
    }

    /// Per-neuron `(mean, M2)` (the compensation folded in: a pair stands for `hi - lo`;
    /// blocking, native).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<(f64, f64)>, GpuError> {
        pollster::block_on(self.read_async(ctx))
    }

    /// [`Moments::read`] without blocking.
    pub async fn read_async(&self, ctx: &GpuContext) -> Result<Vec<(f64, f64)>, GpuError> {
        Ok(self
            .read_state_async(ctx)
            .await?
            .chunks_exact(4)
            .map(|s| (s[0] as f64 - s[1] as f64, s[2] as f64 - s[3] as f64))
            .collect())
    }

    /// Restore a state saved with [`Moments::read_state`] after `count` rows.
    pub fn restore(&mut self, ctx: &GpuContext, state: &[f32], count: u64) -> Result<(), GpuError> {
        if state.len() != self.n_cols as usize * 4 {
            return Err(GpuError::Limit(format!(
                "moment state has {} values, expected {}",
                state.len(),
                self.n_cols as usize * 4
            )));
        }
        ctx.write_f32(&self.stats, state);
        self.count = count;
        Ok(())
    }
}
