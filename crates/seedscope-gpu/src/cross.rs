//! `shaders/cross.wgsl` and `shaders/finalize.wgsl`: the running co-moment tile of anchor
//! columns × other columns (a tiled GEMM of block-centred activations merged with Chan's
//! correction into Kahan pairs), and its Pearson correlations reduced per anchor neuron.

use bytemuck::{Pod, Zeroable};

use crate::context::dispatch;
use crate::totals::{BlockPair, Totals};
use crate::{ActView, CROSS_TILE, GpuContext, GpuError, Kernels, MAX_GROUPS, Moments};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CrossParams {
    rows: u32,
    a_row_len: u32,
    a_offset: u32,
    a_col: u32,
    n_a: u32,
    b_row_len: u32,
    b_offset: u32,
    b_col: u32,
    n_b: u32,
    w_cross: f32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FinalizeParams {
    n_a: u32,
    n_b: u32,
    a_col: u32,
    b_col: u32,
    n_total: f32,
    rel_zero: f32,
    write_tile: u32,
    pad: u32,
}

/// A neuron whose standard deviation is below this fraction of its |mean| counts as constant
/// (correlation 0): f32 activations do not resolve finer variation.
pub const REL_ZERO_STD: f32 = 1e-6;

/// The running co-moment of anchor columns `[a_col, a_col + n_a)` with other columns
/// `[b_col, b_col + n_b)`, as Kahan pairs on the GPU.
#[derive(Debug)]
pub struct CrossTile {
    c: Totals,
    /// First anchor column.
    pub a_col: u32,
    /// Anchor columns.
    pub n_a: u32,
    /// First other column.
    pub b_col: u32,
    /// Other columns.
    pub n_b: u32,
}

/// Per anchor neuron of a tile: best and worst correlation and where they are (indices relative
/// to the tile's first other column).
#[derive(Debug, Clone, PartialEq)]
pub struct TileReduction {
    /// Maximum correlation per anchor neuron.
    pub max: Vec<f32>,
    /// Its column, relative to `b_col`.
    pub argmax: Vec<u32>,
    /// Minimum correlation per anchor neuron.
    pub min: Vec<f32>,
    /// Its column, relative to `b_col`.
    pub argmin: Vec<u32>,
    /// Maximum correlation per column of the tile (per neuron of the other stream) over the
    /// tile's anchor rows: `-2` where a sparse tile has no pair in that column.
    pub col_max: Vec<f32>,
    /// Its row, relative to `a_col`.
    pub col_argmax: Vec<u32>,
    /// The tile's correlations `[n_a, n_b]` (a sparse tile: one per pair, in pair order), when
    /// asked for.
    pub tile: Option<Vec<f32>>,
}

impl CrossTile {
    /// Bytes a tile of `n_a x n_b` takes on the GPU.
    pub fn bytes(n_a: u32, n_b: u32) -> u64 {
        n_a as u64 * n_b as u64 * 8
    }

    /// A zeroed tile.
    pub fn new(
        ctx: &GpuContext,
        a_col: u32,
        n_a: u32,
        b_col: u32,
        n_b: u32,
    ) -> Result<Self, GpuError> {
        if n_a.div_ceil(CROSS_TILE) > MAX_GROUPS || n_b.div_ceil(CROSS_TILE) > MAX_GROUPS {
            return Err(GpuError::Limit(format!(
                "a {n_a} x {n_b} tile needs more than {MAX_GROUPS} workgroups per dimension"
            )));
        }
        Ok(Self {
            c: Totals::new(ctx, "co-moments", n_a as usize * n_b as usize)?,
            a_col,
            n_a,
            b_col,
            n_b,
        })
    }

    /// Record the merge of one block into `encoder`.
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
        let (a, b) = (block.a, block.b);
        let params = CrossParams {
            rows: a.rows,
            a_row_len: a.row_len,
            a_offset: 0,
            a_col: self.a_col,
            n_a: self.n_a,
            b_row_len: b.row_len,
            b_offset: 0,
            b_col: self.b_col,
            n_b: self.n_b,
            w_cross: w_cross as f32,
            pad: [0; 2],
        };
        dispatch(
            ctx,
            encoder,
            &kernels.cross,
            bytemuck::bytes_of(&params),
            vec![
                a.binding(),
                b.binding(),
                block.a_moments.block.as_entire_binding(),
                block.b_moments.block.as_entire_binding(),
                self.c.buffer.as_entire_binding(),
            ],
            (self.n_b.div_ceil(CROSS_TILE), self.n_a.div_ceil(CROSS_TILE)),
        );
        Ok(())
    }

    /// Merge one block of a single anchor/other pair and submit it: both moments, then the
    /// tile (the order [`CrossTile::update`] needs). `seedscope-analysis` does the same for
    /// many streams and tiles in one submission.
    pub fn merge_pair(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        a: ActView<'_>,
        a_moments: &mut Moments,
        b: ActView<'_>,
        b_moments: &mut Moments,
    ) -> Result<(), GpuError> {
        let n_prev = a_moments.count();
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        a_moments.update(ctx, kernels, &mut encoder, a)?;
        b_moments.update(ctx, kernels, &mut encoder, b)?;
        let block = BlockPair {
            a,
            a_moments,
            b,
            b_moments,
            n_prev,
        };
        self.update(ctx, kernels, &mut encoder, &block)?;
        ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Correlations from the running totals, reduced per anchor neuron on the GPU (blocking;
    /// native).
    pub fn finalize(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        a_moments: &Moments,
        b_moments: &Moments,
        with_tile: bool,
    ) -> Result<TileReduction, GpuError> {
        pollster::block_on(self.finalize_async(ctx, kernels, a_moments, b_moments, with_tile))
    }

    /// [`CrossTile::finalize`] without blocking.
    pub async fn finalize_async(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        a_moments: &Moments,
        b_moments: &Moments,
        with_tile: bool,
    ) -> Result<TileReduction, GpuError> {
        let out = ctx.storage("reductions", self.n_a as u64 * 16)?;
        let cols = ctx.storage("column reductions", self.n_b as u64 * 8)?;
        let tile = if with_tile {
            ctx.storage("correlations", self.n_a as u64 * self.n_b as u64 * 4)?
        } else {
            ctx.storage("no tile", 16)?
        };
        let params = FinalizeParams {
            n_a: self.n_a,
            n_b: self.n_b,
            a_col: self.a_col,
            b_col: self.b_col,
            n_total: a_moments.count as f32,
            rel_zero: REL_ZERO_STD,
            write_tile: with_tile as u32,
            pad: 0,
        };
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        dispatch(
            ctx,
            &mut encoder,
            &kernels.finalize,
            bytemuck::bytes_of(&params),
            vec![
                self.c.buffer.as_entire_binding(),
                a_moments.stats.as_entire_binding(),
                b_moments.stats.as_entire_binding(),
                out.as_entire_binding(),
                tile.as_entire_binding(),
                cols.as_entire_binding(),
            ],
            (self.n_a.max(self.n_b).div_ceil(64), 1),
        );
        ctx.queue.submit([encoder.finish()]);
        let raw = ctx.read_f32(&out, self.n_a as usize * 4).await?;
        let mut r = TileReduction {
            max: Vec::with_capacity(self.n_a as usize),
            argmax: Vec::with_capacity(self.n_a as usize),
            min: Vec::with_capacity(self.n_a as usize),
            argmin: Vec::with_capacity(self.n_a as usize),
            col_max: Vec::with_capacity(self.n_b as usize),
            col_argmax: Vec::with_capacity(self.n_b as usize),
            tile: None,
        };
        for v in raw.chunks_exact(4) {
            r.max.push(v[0]);
            r.argmax.push(v[1].to_bits());
            r.min.push(v[2]);
            r.argmin.push(v[3].to_bits());
        }
        for v in ctx
            .read_f32(&cols, self.n_b as usize * 2)
            .await?
            .chunks_exact(2)
        {
            r.col_max.push(v[0]);
            r.col_argmax.push(v[1].to_bits());
        }
        if with_tile {
            r.tile = Some(
                ctx.read_f32(&tile, self.n_a as usize * self.n_b as usize)
                    .await?,
            );
        }
        Ok(r)
    }

    /// The running co-moments (for checkpoints).
    pub fn totals(&self) -> &Totals {
        &self.c
    }
}
