//! What the two co-moment kernels share: the block they merge ([`BlockPair`]) and their
//! running totals on the device as Kahan `(hi, lo)` f32 pairs ([`Totals`]).

use crate::{ActView, GpuContext, GpuError, Moments, check_rows, merge_weights};

/// One block of an anchor stream and another, with their moments (which must already hold
/// this block: their `update` recorded earlier in the same or an earlier submission) and the
/// row count before it.
#[derive(Debug, Clone, Copy)]
pub struct BlockPair<'a> {
    /// The anchor's activations.
    pub a: ActView<'a>,
    /// Its moments.
    pub a_moments: &'a Moments,
    /// The other stream's activations, the same rows.
    pub b: ActView<'a>,
    /// Its moments.
    pub b_moments: &'a Moments,
    /// Rows merged before this block.
    pub n_prev: u64,
}

impl BlockPair<'_> {
    /// Chan's cross weight `n_prev · n_block / n` of merging the block; `None` for an empty
    /// one. The two sides must have the same rows, at most [`crate::MAX_BLOCK_ROWS`].
    pub(crate) fn cross_weight(&self) -> Result<Option<f64>, GpuError> {
        if self.a.rows != self.b.rows {
            return Err(GpuError::Limit(format!(
                "anchor block has {} rows, the other {}",
                self.a.rows, self.b.rows
            )));
        }
        check_rows(self.a.rows)?;
        Ok((self.a.rows > 0).then(|| merge_weights(self.n_prev, self.a.rows as u64).1))
    }
}

/// `len` running totals on the device, each a Kahan `(hi, lo)` pair of f32 that stands for
/// `hi - lo`.
#[derive(Debug)]
pub struct Totals {
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
}

impl Totals {
    /// `len` zero totals.
    pub(crate) fn new(ctx: &GpuContext, label: &str, len: usize) -> Result<Self, GpuError> {
        Ok(Self {
            buffer: ctx.storage(label, (len as u64 * 8).max(8))?,
            len,
        })
    }

    /// The `(hi, lo)` pairs, `2 * len` values (for checkpoints; blocking, native).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_async(ctx))
    }

    /// [`Totals::read`] without blocking.
    pub async fn read_async(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.buffer, self.len * 2).await
    }

    /// Continue from pairs saved with [`Totals::read`].
    pub fn restore(&self, ctx: &GpuContext, state: &[f32]) -> Result<(), GpuError> {
        if state.len() != self.len * 2 {
            return Err(GpuError::Limit(format!(
                "saved co-moments have {} values, expected {}",
                state.len(),
                self.len * 2
            )));
        }
        ctx.write_f32(&self.buffer, state);
        Ok(())
    }
}
