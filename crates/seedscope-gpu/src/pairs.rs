//! `shaders/pairs.wgsl`: running co-moments of a list of (anchor column, other column) pairs,
//! the sparse counterpart of [`crate::CrossTile`] for candidate refinement.

use bytemuck::{Pod, Zeroable};

use crate::context::dispatch;
use crate::totals::{BlockPair, Totals};
use crate::{GpuContext, GpuError, Kernels, MAX_GROUPS};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PairParams {
    rows: u32,
    a_row_len: u32,
    b_row_len: u32,
    n_pairs: u32,
    w_cross: f32,
    pad: [u32; 3],
}

/// Running co-moments of a list of column pairs (`shaders/pairs.wgsl`): the sparse counterpart
/// of [`CrossTile`] for candidate refinement, with the same block centring, Chan merge and
/// Kahan `(hi, lo)` totals.
#[derive(Debug)]
pub struct PairTile {
    pairs: wgpu::Buffer,
    c: Totals,
    /// Pairs held.
    pub n_pairs: u32,
}

impl PairTile {
    /// Bytes the accumulator of `n_pairs` pairs takes on the GPU (totals and the pair list).
    pub fn bytes(n_pairs: u32) -> u64 {
        n_pairs as u64 * 16
    }

    /// Zeroed totals for `pairs`, each `(anchor column, other column)`.
    pub fn new(ctx: &GpuContext, pairs: &[[u32; 2]]) -> Result<Self, GpuError> {
        let n = u32::try_from(pairs.len())
            .map_err(|_| GpuError::Limit(format!("{} pairs in one list", pairs.len())))?;
        if n.div_ceil(64) > MAX_GROUPS * MAX_GROUPS {
            return Err(GpuError::Limit(format!(
                "{n} pairs need too many workgroups"
            )));
        }
        let list = ctx.storage("pair list", (n as u64 * 8).max(8))?;
        let flat: Vec<u32> = pairs.iter().flatten().copied().collect();
        if !flat.is_empty() {
            ctx.queue
                .write_buffer(&list, 0, bytemuck::cast_slice(&flat));
        }
        Ok(Self {
            pairs: list,
            c: Totals::new(ctx, "pair co-moments", n as usize)?,
            n_pairs: n,
        })
    }

    /// Record the merge of one block into `encoder` (as [`crate::CrossTile::update`]).
    pub fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        block: &BlockPair<'_>,
    ) -> Result<(), GpuError> {
        let Some(w_cross) = block.cross_weight()? else {
            return Ok(());
        };
        if self.n_pairs == 0 {
            return Ok(());
        }
        let (a, b) = (block.a, block.b);
        let params = PairParams {
            rows: a.rows,
            a_row_len: a.row_len,
            b_row_len: b.row_len,
            n_pairs: self.n_pairs,
            w_cross: w_cross as f32,
            pad: [0; 3],
        };
        let groups = self.n_pairs.div_ceil(64);
        let (gx, gy) = if groups > MAX_GROUPS {
            (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
        } else {
            (groups, 1)
        };
        dispatch(
            ctx,
            encoder,
            kernels.pairs(),
            bytemuck::bytes_of(&params),
            vec![
                a.binding(),
                b.binding(),
                block.a_moments.block.as_entire_binding(),
                block.b_moments.block.as_entire_binding(),
                self.pairs.as_entire_binding(),
                self.c.buffer.as_entire_binding(),
            ],
            (gx, gy),
        );
        Ok(())
    }

    /// The running co-moments, one per pair (for checkpoints and the host's reduction).
    pub fn totals(&self) -> &Totals {
        &self.c
    }
}
