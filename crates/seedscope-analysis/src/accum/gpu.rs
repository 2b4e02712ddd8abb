//! The GPU accumulator: the WGSL kernels of `seedscope-gpu` (moments, dense co-moment tiles,
//! candidate pairs) on the device the models ran on, Kahan-compensated f32 totals.

use std::borrow::Cow;
use std::sync::Arc;

use seedscope_gpu::{
    BlockPair, CrossTile, GpuContext, Kernels, Moments, PairTile, TileReduction, Totals,
};

use super::{
    Accumulate, Finish, SavedState, inv_scale, missing_stream, no_stream, plan_mismatch,
    reduce_pairs, used_streams,
};
use crate::AnalysisError;
use crate::gpu_block::{GpuBlock, rows_per_chunk};
use crate::plan::TileSpec;

/// A GPU accumulator: a dense co-moment tile or a list of pairs.
#[derive(Debug)]
pub enum GpuTile {
    /// All pairs of a column range × a column range.
    Dense(CrossTile),
    /// Candidate pairs.
    Pairs(PairTile),
}

impl GpuTile {
    /// Record the merge of one block (see [`CrossTile::update`]).
    fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        block: &BlockPair<'_>,
    ) -> Result<(), AnalysisError> {
        match self {
            Self::Dense(t) => t.update(ctx, kernels, encoder, block)?,
            Self::Pairs(t) => t.update(ctx, kernels, encoder, block)?,
        }
        Ok(())
    }

    /// The running co-moments.
    fn totals(&self) -> &Totals {
        match self {
            Self::Dense(t) => t.totals(),
            Self::Pairs(t) => t.totals(),
        }
    }
}

/// Accumulators of one pass on the GPU, compensated f32 totals.
#[derive(Debug)]
pub struct GpuAccumulator {
    ctx: GpuContext,
    kernels: Arc<Kernels>,
    specs: Vec<TileSpec>,
    /// Per stream (none for streams the pass does not read).
    moments: Vec<Option<Moments>>,
    /// Per tile.
    tiles: Vec<GpuTile>,
}

impl GpuAccumulator {
    /// Zeroed accumulators for `specs` (`widths[s]`: stream `s`'s column count); `kernels`
    /// were compiled on `ctx`'s device.
    pub fn new(
        ctx: GpuContext,
        kernels: Arc<Kernels>,
        specs: Vec<TileSpec>,
        widths: &[usize],
    ) -> Result<Self, AnalysisError> {
        let used = used_streams(&specs, widths.len());
        let mut moments = Vec::new();
        for (&w, &u) in widths.iter().zip(&used) {
            moments.push(if u {
                Some(Moments::new(&ctx, w as u32)?)
            } else {
                None
            });
        }
        let mut tiles = Vec::new();
        for t in &specs {
            tiles.push(match &t.pairs {
                None => GpuTile::Dense(CrossTile::new(
                    &ctx,
                    t.a_cols.start as u32,
                    t.a_cols.len() as u32,
                    t.b_cols.start as u32,
                    t.b_cols.len() as u32,
                )?),
                Some(_) => GpuTile::Pairs(PairTile::new(&ctx, &t.pair_list())?),
            });
        }
        Ok(Self {
            ctx,
            kernels,
            specs,
            moments,
            tiles,
        })
    }

    /// Every stream's inverse scales `1/sqrt(M2)`, read once for the sparse tiles that need
    /// them (they are reduced on the host in f64).
    async fn scales(&self) -> Result<Vec<Option<Vec<f64>>>, AnalysisError> {
        let mut scales = vec![None; self.moments.len()];
        for t in self.specs.iter().filter(|t| t.pairs.is_some()) {
            for s in [t.a_stream, t.b_stream] {
                if scales[s].is_none() {
                    scales[s] = Some(self.inv_scales(s).await?);
                }
            }
        }
        Ok(scales)
    }
}

impl GpuAccumulator {
    /// The running state: as stored (moments as per-neuron `(mean, compensation, M2,
    /// compensation)`, co-moments as Kahan pairs), or `canonical`: the CPU path's layout
    /// (means then M2, co-moments folded to plain sums).
    async fn state(&self, canonical: bool) -> Result<SavedState<'static>, AnalysisError> {
        let mut moments = Vec::new();
        for m in &self.moments {
            moments.push(match m {
                Some(m) if canonical => {
                    let mv = m.read_async(&self.ctx).await?;
                    Some(
                        mv.iter()
                            .map(|x| x.0)
                            .chain(mv.iter().map(|x| x.1))
                            .collect(),
                    )
                }
                Some(m) => Some(
                    m.read_state_async(&self.ctx)
                        .await?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                ),
                None => None,
            });
        }
        let mut tiles = Vec::new();
        for t in &self.tiles {
            let pairs = t.totals().read_async(&self.ctx).await?;
            tiles.push(Cow::Owned(if canonical {
                pairs
                    .chunks_exact(2)
                    .map(|hl| hl[0] as f64 - hl[1] as f64)
                    .collect()
            } else {
                pairs.into_iter().map(f64::from).collect()
            }));
        }
        Ok(SavedState {
            count: self.count(),
            moments,
            tiles,
            rows: Vec::new(),
            hists: Vec::new(),
            anatomy: Vec::new(),
        })
    }
}

impl Accumulate for GpuAccumulator {
    type Block = GpuBlock;

    fn specs(&self) -> &[TileSpec] {
        &self.specs
    }

    fn streams(&self) -> Vec<bool> {
        self.moments.iter().map(Option::is_some).collect()
    }

    fn count(&self) -> u64 {
        self.moments
            .iter()
            .flatten()
            .map(Moments::count)
            .next()
            .unwrap_or(0)
    }

    fn update(&mut self, block: &[Option<GpuBlock>]) -> Result<(), AnalysisError> {
        let rows = block
            .iter()
            .flatten()
            .map(GpuBlock::rows)
            .next()
            .unwrap_or(0);
        if rows == 0 {
            return Ok(());
        }
        let ctx = &self.ctx;
        // Merge in row chunks whose matrices fit one binding, each starting at an offset the
        // device accepts.
        let chunk = rows_per_chunk(ctx, rows, block.iter().flatten().map(GpuBlock::cols))?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for r0 in (0..rows as u64).step_by(chunk as usize) {
            let len = chunk.min(rows as u64 - r0) as u32;
            let n_prev = self.count();
            for (m, x) in self.moments.iter_mut().zip(block) {
                if let (Some(m), Some(x)) = (m, x) {
                    m.update(ctx, &self.kernels, &mut encoder, x.view(r0, len))?;
                }
            }
            for (t, tile) in self.specs.iter().zip(&self.tiles) {
                let (Some(a), Some(b)) = (&block[t.a_stream], &block[t.b_stream]) else {
                    return Err(missing_stream());
                };
                let (Some(ma), Some(mb)) = (&self.moments[t.a_stream], &self.moments[t.b_stream])
                else {
                    return Err(no_stream());
                };
                let pair = BlockPair {
                    a: a.view(r0, len),
                    a_moments: ma,
                    b: b.view(r0, len),
                    b_moments: mb,
                    n_prev,
                };
                tile.update(ctx, &self.kernels, &mut encoder, &pair)?;
            }
        }
        ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    async fn mean_var(&self, stream: usize) -> Result<Vec<(f64, f64)>, AnalysisError> {
        let n = self.count().max(1) as f64;
        let m = self.moments[stream].as_ref().ok_or_else(no_stream)?;
        Ok(m.read_async(&self.ctx)
            .await?
            .into_iter()
            .map(|(mean, m2)| (mean, m2 / n))
            .collect())
    }

    async fn inv_scales(&self, stream: usize) -> Result<Vec<f64>, AnalysisError> {
        let count = self.count();
        let m = self.moments[stream].as_ref().ok_or_else(no_stream)?;
        Ok(m.read_async(&self.ctx)
            .await?
            .into_iter()
            .map(|(mean, m2)| inv_scale(mean, m2, count))
            .collect())
    }

    async fn finalize(
        &self,
        finish: impl Fn(usize) -> Finish,
        mut sink: impl AsyncFnMut(usize, TileReduction) -> Result<Option<Vec<f32>>, AnalysisError>,
    ) -> Result<(), AnalysisError> {
        let scales = self.scales().await?;
        // Host buffers for the pairs' correlations (a dense tile's come from the device's
        // read-back).
        let mut spare = Vec::new();
        for (k, (t, tile)) in self.specs.iter().zip(&self.tiles).enumerate() {
            let with_tile = match finish(k) {
                Finish::Skip => continue,
                f => f == Finish::WithTile,
            };
            let (Some(ma), Some(mb)) = (&self.moments[t.a_stream], &self.moments[t.b_stream])
            else {
                return Err(no_stream());
            };
            let red = match tile {
                GpuTile::Dense(tile) => {
                    tile.finalize_async(&self.ctx, &self.kernels, ma, mb, with_tile)
                        .await?
                }
                GpuTile::Pairs(tile) => {
                    // Few entries: read the totals and reduce on the host in f64.
                    let acc: Vec<f64> = tile
                        .totals()
                        .read_async(&self.ctx)
                        .await?
                        .chunks_exact(2)
                        .map(|hl| hl[0] as f64 - hl[1] as f64)
                        .collect();
                    let (Some(sa), Some(sb)) = (&scales[t.a_stream], &scales[t.b_stream]) else {
                        return Err(no_stream());
                    };
                    let pairs = t.pairs.as_deref().ok_or_else(no_stream)?;
                    reduce_pairs(
                        &acc,
                        pairs,
                        (&sa[t.a_cols.clone()], &sb[t.b_cols.clone()]),
                        t.b_cols.start,
                        with_tile.then(|| std::mem::take(&mut spare)),
                    )
                }
            };
            if let Some(back) = sink(k, red).await? {
                spare = back;
            }
        }
        Ok(())
    }

    async fn co_moments(&self, tile: usize) -> Result<Cow<'_, [f64]>, AnalysisError> {
        let t = self.tiles.get(tile).ok_or_else(plan_mismatch)?;
        let pairs = t.totals().read_async(&self.ctx).await?;
        Ok(Cow::Owned(
            pairs
                .chunks_exact(2)
                .map(|hl| hl[0] as f64 - hl[1] as f64)
                .collect(),
        ))
    }

    async fn save(&mut self) -> Result<SavedState<'_>, AnalysisError> {
        self.state(false).await
    }

    async fn save_canonical(&self) -> Result<SavedState<'_>, AnalysisError> {
        self.state(true).await
    }

    fn restore(&mut self, state: &SavedState<'_>) -> Result<(), AnalysisError> {
        if state.moments.len() != self.moments.len() || state.tiles.len() != self.tiles.len() {
            return Err(plan_mismatch());
        }
        for (m, s) in self.moments.iter_mut().zip(&state.moments) {
            match (m, s) {
                (Some(m), Some(s)) => {
                    let v: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                    m.restore(&self.ctx, &v, state.count)?;
                }
                (None, None) => {}
                _ => return Err(plan_mismatch()),
            }
        }
        for (t, s) in self.tiles.iter().zip(&state.tiles) {
            let v: Vec<f32> = s.iter().map(|&x| x as f32).collect();
            t.totals().restore(&self.ctx, &v)?;
        }
        Ok(())
    }
}
