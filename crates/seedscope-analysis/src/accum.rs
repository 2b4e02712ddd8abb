//! Streaming accumulators of per-neuron moments and cross-model co-moments, on the GPU (WGSL
//! kernels of `seedscope-gpu`) or the CPU (matrixmultiply GEMMs through ndarray).
//!
//! Both paths use the same scheme: every block of tokens is centred on its own means, its
//! centred cross products are one GEMM, and the block is merged into the running totals with
//! Chan et al.'s parallel formula. The GPU keeps the totals as Kahan-compensated f32 pairs; the
//! CPU keeps them in f64 (its block GEMM is f32 on centred values).

use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, s};
use seedscope_gpu::{
    ActView, CrossTile, GpuContext, Kernels, Moments, PairTile, REL_ZERO_STD, TileReduction,
};

use crate::AnalysisError;

/// One co-moment tile to accumulate: anchor model columns × another stream's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileSpec {
    /// Stream of the anchor (its real activations).
    pub a_stream: usize,
    /// Anchor columns (`layer * d_mlp + neuron`).
    pub a_cols: Range<usize>,
    /// The other stream (a model's activations, or its rotated baseline).
    pub b_stream: usize,
    /// Its columns.
    pub b_cols: Range<usize>,
    /// Candidate refinement's sparse form: for each anchor column in order, the same number
    /// of other-stream columns (absolute, within `b_cols`); only these pairs are accumulated.
    pub pairs: Option<Arc<Vec<u32>>>,
}

impl TileSpec {
    /// A dense tile.
    pub fn dense(
        a_stream: usize,
        a_cols: Range<usize>,
        b_stream: usize,
        b_cols: Range<usize>,
    ) -> Self {
        Self {
            a_stream,
            a_cols,
            b_stream,
            b_cols,
            pairs: None,
        }
    }

    /// Entries accumulated: every pair of the dense tile, or the candidate pairs.
    pub fn entries(&self) -> usize {
        match &self.pairs {
            Some(p) => p.len(),
            None => self.a_cols.len() * self.b_cols.len(),
        }
    }

    /// Accumulator bytes of the tile (8 per entry on both paths; a pair list adds 8 more).
    pub fn bytes(&self) -> u64 {
        let per = if self.pairs.is_some() { 16 } else { 8 };
        (self.entries() * per) as u64
    }

    /// The `(anchor column, other column)` pairs of a sparse tile.
    fn pair_list(&self) -> Vec<[u32; 2]> {
        let Some(p) = &self.pairs else {
            return Vec::new();
        };
        let k = p.len() / self.a_cols.len().max(1);
        p.iter()
            .enumerate()
            .map(|(e, &j)| [(self.a_cols.start + e / k.max(1)) as u32, j])
            .collect()
    }
}

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
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        a: ActView<'_>,
        ma: &Moments,
        b: ActView<'_>,
        mb: &Moments,
        n_prev: u64,
    ) -> Result<(), AnalysisError> {
        match self {
            Self::Dense(t) => t.update(ctx, kernels, encoder, a, ma, b, mb, n_prev)?,
            Self::Pairs(t) => t.update(ctx, kernels, encoder, a, ma, b, mb, n_prev)?,
        }
        Ok(())
    }

    fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, AnalysisError> {
        Ok(match self {
            Self::Dense(t) => t.read_state(ctx)?,
            Self::Pairs(t) => t.read_state(ctx)?,
        })
    }

    fn restore(&self, ctx: &GpuContext, v: &[f32]) -> Result<(), AnalysisError> {
        match self {
            Self::Dense(t) => t.restore(ctx, v)?,
            Self::Pairs(t) => t.restore(ctx, v)?,
        }
        Ok(())
    }
}

/// A block's activations on the GPU: a contiguous `[rows, cols]` f32 Burn tensor kept alive
/// (so its memory is not reused) while kernels read its buffer.
#[derive(Debug)]
pub struct GpuBlock {
    _tensor: burn::backend::wgpu::CubeTensor,
    buffer: wgpu::Buffer,
    byte_offset: u64,
    rows: u32,
    cols: u32,
}

impl GpuBlock {
    /// Take a `[rows, cols]` f32 tensor on the shared wgpu device; Burn's pending work on it is
    /// submitted first.
    pub fn new(t: burn::tensor::Tensor<2>) -> Result<Self, AnalysisError> {
        use burn::backend::Cube;
        use burn::backend::wgpu::{AutoCompiler, into_contiguous};
        use burn::cubecl::wgpu::WgpuServer;
        let [rows, cols] = t.dims();
        let p: burn::backend::wgpu::CubeTensor = t
            .try_into_primitive::<Cube>()
            .map_err(|e| AnalysisError::Invalid(format!("activations are not on wgpu: {e:?}")))?;
        let p = into_contiguous(p);
        if p.dtype != burn::tensor::DType::F32 {
            return Err(AnalysisError::Invalid(format!(
                "activations are {:?}, the kernels read f32",
                p.dtype
            )));
        }
        let managed = p
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(p.handle.clone())
            .map_err(|e| AnalysisError::Invalid(format!("wgpu buffer of a tensor: {e:?}")))?;
        p.client
            .flush()
            .map_err(|e| AnalysisError::Invalid(format!("submitting Burn's work: {e:?}")))?;
        let res = managed.resource();
        let (buffer, byte_offset) = (res.buffer.clone(), res.offset);
        drop(managed);
        Ok(Self {
            _tensor: p,
            buffer,
            byte_offset,
            rows: rows as u32,
            cols: cols as u32,
        })
    }
}

impl GpuBlock {
    /// Tokens.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Neurons per token.
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// Rows `[r0, r0 + len)` as a kernel input.
    pub fn view(&self, r0: u64, len: u32) -> ActView<'_> {
        ActView {
            buffer: &self.buffer,
            byte_offset: self.byte_offset + r0 * self.cols as u64 * 4,
            rows: len,
            row_len: self.cols,
        }
    }
}

/// How many of `rows` tokens one kernel call may take when its inputs have `cols` neurons per
/// token: within [`seedscope_gpu::MAX_BLOCK_ROWS`], within the largest binding, and a multiple
/// of the rows after which every input's offset is aligned as the device requires.
pub fn rows_per_chunk(
    ctx: &GpuContext,
    rows: u32,
    cols: impl IntoIterator<Item = u32>,
) -> Result<u64, AnalysisError> {
    let align = ctx
        .device
        .limits()
        .min_storage_buffer_offset_alignment
        .max(4) as u64;
    let mut chunk = (rows as u64).min(seedscope_gpu::MAX_BLOCK_ROWS as u64);
    for c in cols {
        let row_bytes = c as u64 * 4;
        let step = align / gcd(row_bytes, align);
        let fit = (ctx.max_binding_bytes() / row_bytes.max(1))
            .min(seedscope_gpu::MAX_BLOCK_ROWS as u64)
            / step
            * step;
        if fit == 0 {
            return Err(AnalysisError::Invalid(format!(
                "{step} token(s) of {c} neurons exceed the device's largest binding ({} bytes)",
                ctx.max_binding_bytes()
            )));
        }
        chunk = chunk.min(fit);
    }
    Ok(chunk.max(1))
}

/// One block's activations per stream (`None` for streams the current pass does not use).
#[derive(Debug)]
pub enum Block {
    /// Host matrices `[rows, cols]`.
    Cpu(Vec<Option<Array2<f32>>>),
    /// Device tensors.
    Gpu(Vec<Option<GpuBlock>>),
}

/// Running per-neuron moments on the CPU.
#[derive(Debug, Clone)]
pub struct CpuMoments {
    /// Mean.
    pub mean: Vec<f64>,
    /// Centred sum of squares.
    pub m2: Vec<f64>,
}

/// Saved accumulator state (checkpoints): named f32 or f64 arrays and the row count.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    /// Rows (tokens) merged.
    pub count: u64,
    /// Per stream moments, in the path's own layout.
    pub moments: Vec<Option<Vec<f64>>>,
    /// Per tile accumulators.
    pub tiles: Vec<Vec<f64>>,
    /// Pre-activation histograms being counted in this pass ([`crate::hist::PreHists`]).
    pub hists: Vec<Vec<u32>>,
    /// Anatomy accumulators being filled in this pass ([`crate::anatomy::Anatomies`]).
    pub anatomy: Vec<crate::anatomy::AnatomySaved>,
}

/// Accumulators of one pass: moments of the streams it uses and its tiles.
#[derive(Debug)]
pub enum Accumulator {
    /// CPU, f64 totals.
    Cpu {
        /// Tiles accumulated.
        specs: Vec<TileSpec>,
        /// Per stream.
        moments: Vec<Option<CpuMoments>>,
        /// `[a_len, b_len]` co-moments per tile.
        tiles: Vec<Vec<f64>>,
        /// Rows merged.
        count: u64,
    },
    /// GPU, compensated f32 totals.
    Gpu {
        /// The device.
        ctx: Box<GpuContext>,
        /// The kernels (compiled once per run, shared by its passes).
        kernels: Arc<Kernels>,
        /// Tiles accumulated.
        specs: Vec<TileSpec>,
        /// Per stream.
        moments: Vec<Option<Moments>>,
        /// Per tile.
        tiles: Vec<GpuTile>,
    },
}

/// Streams a set of tiles reads.
fn used_streams(specs: &[TileSpec], n_streams: usize) -> Vec<bool> {
    let mut used = vec![false; n_streams];
    for t in specs {
        used[t.a_stream] = true;
        used[t.b_stream] = true;
    }
    used
}

impl Accumulator {
    /// Zeroed CPU accumulators for `specs`; `widths[s]` is stream `s`'s column count.
    pub fn cpu(specs: Vec<TileSpec>, widths: &[usize]) -> Self {
        let used = used_streams(&specs, widths.len());
        Self::Cpu {
            moments: widths
                .iter()
                .zip(&used)
                .map(|(&w, &u)| {
                    u.then(|| CpuMoments {
                        mean: vec![0.0; w],
                        m2: vec![0.0; w],
                    })
                })
                .collect(),
            tiles: specs.iter().map(|t| vec![0.0; t.entries()]).collect(),
            specs,
            count: 0,
        }
    }

    /// Zeroed GPU accumulators; `kernels` were compiled on `ctx`'s device.
    pub fn gpu(
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
        Ok(Self::Gpu {
            ctx: Box::new(ctx),
            kernels,
            specs,
            moments,
            tiles,
        })
    }

    /// Which streams this pass needs activations for.
    pub fn streams(&self) -> Vec<bool> {
        match self {
            Self::Cpu { moments, .. } => moments.iter().map(Option::is_some).collect(),
            Self::Gpu { moments, .. } => moments.iter().map(Option::is_some).collect(),
        }
    }

    /// The tiles.
    pub fn specs(&self) -> &[TileSpec] {
        match self {
            Self::Cpu { specs, .. } | Self::Gpu { specs, .. } => specs,
        }
    }

    /// Rows merged so far.
    pub fn count(&self) -> u64 {
        match self {
            Self::Cpu { count, .. } => *count,
            Self::Gpu { moments, .. } => moments
                .iter()
                .flatten()
                .map(Moments::count)
                .next()
                .unwrap_or(0),
        }
    }

    /// Merge one block (every used stream present, all with the same rows).
    pub fn update(&mut self, block: &Block) -> Result<(), AnalysisError> {
        match (self, block) {
            (
                Self::Cpu {
                    specs,
                    moments,
                    tiles,
                    count,
                },
                Block::Cpu(data),
            ) => {
                let rows = data.iter().flatten().map(|m| m.nrows()).next().unwrap_or(0);
                if rows == 0 {
                    return Ok(());
                }
                let (w_mean, w_cross) = seedscope_gpu::merge_weights(*count, rows as u64);
                let mut centred: Vec<Option<(Array2<f32>, Vec<f64>)>> = Vec::new();
                for (m, x) in moments.iter_mut().zip(data) {
                    let (Some(m), Some(x)) = (m, x) else {
                        centred.push(None);
                        continue;
                    };
                    let (c, delta) = center_block(x.view(), m, w_mean, w_cross);
                    centred.push(Some((c, delta)));
                }
                // Column-major copies of the streams that sparse tiles read (contiguous
                // columns make each pair one dot product).
                let mut columns: Vec<Option<Array2<f32>>> = vec![None; centred.len()];
                for t in specs.iter().filter(|t| t.pairs.is_some()) {
                    for s in [t.a_stream, t.b_stream] {
                        if columns[s].is_none()
                            && let Some((c, _)) = &centred[s]
                        {
                            columns[s] = Some(c.t().as_standard_layout().into_owned());
                        }
                    }
                }
                for (t, acc) in specs.iter().zip(tiles.iter_mut()) {
                    let (Some((ca, da)), Some((cb, db))) =
                        (&centred[t.a_stream], &centred[t.b_stream])
                    else {
                        return Err(AnalysisError::Invalid(
                            "a block lacks a stream its tiles need".into(),
                        ));
                    };
                    if t.pairs.is_some() {
                        let (Some(xa), Some(xb)) = (&columns[t.a_stream], &columns[t.b_stream])
                        else {
                            return Err(AnalysisError::Invalid(
                                "a block lacks a stream its tiles need".into(),
                            ));
                        };
                        // Independent pairs: split over the cores (same sums, any split).
                        let pairs = t.pair_list();
                        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                        let chunk = pairs.len().div_ceil(threads).max(1);
                        std::thread::scope(|scope| {
                            for (accs, ps) in acc.chunks_mut(chunk).zip(pairs.chunks(chunk)) {
                                scope.spawn(move || {
                                    for (c, &[i, j]) in accs.iter_mut().zip(ps) {
                                        let (i, j) = (i as usize, j as usize);
                                        let g = dot(
                                            xa.row(i).as_slice().unwrap_or_default(),
                                            xb.row(j).as_slice().unwrap_or_default(),
                                        );
                                        *c += g + da[i] * w_cross * db[j];
                                    }
                                });
                            }
                        });
                        continue;
                    }
                    let g = ca
                        .slice(s![.., t.a_cols.clone()])
                        .t()
                        .dot(&cb.slice(s![.., t.b_cols.clone()]));
                    let nb = t.b_cols.len();
                    for (i, grow) in g.outer_iter().enumerate() {
                        let dai = da[t.a_cols.start + i] * w_cross;
                        let row = &mut acc[i * nb..(i + 1) * nb];
                        for ((c, &gv), &dbj) in row.iter_mut().zip(grow).zip(&db[t.b_cols.clone()])
                        {
                            *c += gv as f64 + dai * dbj;
                        }
                    }
                }
                *count += rows as u64;
                Ok(())
            }
            (
                Self::Gpu {
                    ctx,
                    kernels,
                    specs,
                    moments,
                    tiles,
                },
                Block::Gpu(data),
            ) => {
                let rows = data.iter().flatten().map(|b| b.rows).next().unwrap_or(0);
                if rows == 0 {
                    return Ok(());
                }
                // Merge in row chunks whose matrices fit one binding, each starting at an
                // offset the device accepts.
                let chunk = rows_per_chunk(ctx, rows, data.iter().flatten().map(|b| b.cols))?;
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                for r0 in (0..rows as u64).step_by(chunk as usize) {
                    let len = chunk.min(rows as u64 - r0) as u32;
                    let n_prev = moments
                        .iter()
                        .flatten()
                        .map(Moments::count)
                        .next()
                        .unwrap_or(0);
                    for (m, x) in moments.iter_mut().zip(data) {
                        if let (Some(m), Some(x)) = (m, x) {
                            m.update(ctx, kernels, &mut encoder, x.view(r0, len))?;
                        }
                    }
                    for (t, tile) in specs.iter().zip(tiles.iter()) {
                        let (Some(a), Some(b)) = (&data[t.a_stream], &data[t.b_stream]) else {
                            return Err(AnalysisError::Invalid(
                                "a block lacks a stream its tiles need".into(),
                            ));
                        };
                        let (Some(ma), Some(mb)) = (&moments[t.a_stream], &moments[t.b_stream])
                        else {
                            return Err(AnalysisError::Invalid(
                                "moments missing for a tile".into(),
                            ));
                        };
                        tile.update(
                            ctx,
                            kernels,
                            &mut encoder,
                            a.view(r0, len),
                            ma,
                            b.view(r0, len),
                            mb,
                            n_prev,
                        )?;
                    }
                }
                ctx.queue.submit([encoder.finish()]);
                Ok(())
            }
            _ => Err(AnalysisError::Invalid(
                "a block on one path was given to accumulators on the other".into(),
            )),
        }
    }

    /// Per-neuron `(mean, variance)` of a stream (population variance over merged rows).
    pub async fn mean_var(&self, stream: usize) -> Result<Vec<(f64, f64)>, AnalysisError> {
        let n = self.count().max(1) as f64;
        let mv: Vec<(f64, f64)> = match self {
            Self::Cpu { moments, .. } => {
                let m = moments[stream].as_ref().ok_or_else(no_stream)?;
                m.mean.iter().copied().zip(m.m2.iter().copied()).collect()
            }
            Self::Gpu { ctx, moments, .. } => {
                moments[stream]
                    .as_ref()
                    .ok_or_else(no_stream)?
                    .read_async(ctx)
                    .await?
            }
        };
        Ok(mv.into_iter().map(|(m, m2)| (m, m2 / n)).collect())
    }

    /// Reduce every tile to per-anchor-row best and worst matches; with `want_tile(i)`, also
    /// return tile `i`'s correlations.
    pub async fn finalize(
        &self,
        want_tile: impl Fn(usize) -> bool,
    ) -> Result<Vec<TileReduction>, AnalysisError> {
        match self {
            Self::Cpu {
                specs,
                moments,
                tiles,
                count,
            } => {
                let mut out = Vec::new();
                for (k, (t, acc)) in specs.iter().zip(tiles).enumerate() {
                    let (Some(ma), Some(mb)) = (&moments[t.a_stream], &moments[t.b_stream]) else {
                        return Err(no_stream());
                    };
                    let ia: Vec<f64> = t
                        .a_cols
                        .clone()
                        .map(|i| inv_scale(ma.mean[i], ma.m2[i], *count))
                        .collect();
                    let ib: Vec<f64> = t
                        .b_cols
                        .clone()
                        .map(|j| inv_scale(mb.mean[j], mb.m2[j], *count))
                        .collect();
                    out.push(match &t.pairs {
                        Some(p) => reduce_pairs(acc, p, &ia, &ib, t.b_cols.start),
                        None => reduce_rows(acc, &ia, &ib, want_tile(k)),
                    });
                }
                Ok(out)
            }
            Self::Gpu {
                ctx,
                kernels,
                specs,
                moments,
                tiles,
            } => {
                let mut out = Vec::new();
                let count = self.count();
                let mut scales: Vec<Option<Vec<f64>>> = vec![None; moments.len()];
                for (k, (t, tile)) in specs.iter().zip(tiles).enumerate() {
                    let (Some(ma), Some(mb)) = (&moments[t.a_stream], &moments[t.b_stream]) else {
                        return Err(no_stream());
                    };
                    match tile {
                        GpuTile::Dense(tile) => out.push(
                            tile.finalize_async(ctx, kernels, ma, mb, want_tile(k))
                                .await?,
                        ),
                        GpuTile::Pairs(tile) => {
                            // Few entries: read the totals and reduce on the host in f64.
                            for (s, m) in [(t.a_stream, ma), (t.b_stream, mb)] {
                                if scales[s].is_none() {
                                    scales[s] = Some(
                                        m.read_async(ctx)
                                            .await?
                                            .into_iter()
                                            .map(|(mean, m2)| inv_scale(mean, m2, count))
                                            .collect(),
                                    );
                                }
                            }
                            let state = tile.read_state_async(ctx).await?;
                            let acc: Vec<f64> = state
                                .chunks_exact(2)
                                .map(|hl| hl[0] as f64 - hl[1] as f64)
                                .collect();
                            let (Some(sa), Some(sb)) = (&scales[t.a_stream], &scales[t.b_stream])
                            else {
                                return Err(no_stream());
                            };
                            let pairs = t.pairs.as_deref().ok_or_else(no_stream)?;
                            out.push(reduce_pairs(
                                &acc,
                                pairs,
                                &sa[t.a_cols.clone()],
                                &sb[t.b_cols.clone()],
                                t.b_cols.start,
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// The running state, for a checkpoint.
    pub fn save(&self) -> Result<SavedState, AnalysisError> {
        match self {
            Self::Cpu {
                moments,
                tiles,
                count,
                ..
            } => Ok(SavedState {
                count: *count,
                moments: moments
                    .iter()
                    .map(|m| m.as_ref().map(|m| [m.mean.clone(), m.m2.clone()].concat()))
                    .collect(),
                tiles: tiles.clone(),
                hists: Vec::new(),
                anatomy: Vec::new(),
            }),
            Self::Gpu {
                ctx,
                moments,
                tiles,
                ..
            } => {
                let count = self.count();
                let mut ms = Vec::new();
                for m in moments {
                    ms.push(match m {
                        Some(m) => Some(m.read_state(ctx)?.into_iter().map(f64::from).collect()),
                        None => None,
                    });
                }
                let mut ts = Vec::new();
                for t in tiles {
                    ts.push(t.read_state(ctx)?.into_iter().map(f64::from).collect());
                }
                Ok(SavedState {
                    count,
                    moments: ms,
                    tiles: ts,
                    hists: Vec::new(),
                    anatomy: Vec::new(),
                })
            }
        }
    }

    /// The running state in the CPU path's layout on either path (moments as means then M2,
    /// co-moments as plain f64 sums): what shards write, so any machine can merge them.
    pub fn save_canonical(&self) -> Result<SavedState, AnalysisError> {
        match self {
            Self::Cpu { .. } => self.save(),
            Self::Gpu {
                ctx,
                moments,
                tiles,
                ..
            } => {
                let mut ms = Vec::new();
                for m in moments {
                    ms.push(match m {
                        Some(m) => {
                            let mv = m.read(ctx)?;
                            let mut v: Vec<f64> = mv.iter().map(|x| x.0).collect();
                            v.extend(mv.iter().map(|x| x.1));
                            Some(v)
                        }
                        None => None,
                    });
                }
                let mut ts = Vec::new();
                for t in tiles {
                    ts.push(
                        t.read_state(ctx)?
                            .chunks_exact(2)
                            .map(|hl| hl[0] as f64 - hl[1] as f64)
                            .collect(),
                    );
                }
                Ok(SavedState {
                    count: self.count(),
                    moments: ms,
                    tiles: ts,
                    hists: Vec::new(),
                    anatomy: Vec::new(),
                })
            }
        }
    }

    /// Restore a state from [`Accumulator::save`] on the same path and plan.
    pub fn restore(&mut self, state: &SavedState) -> Result<(), AnalysisError> {
        let mismatch = || AnalysisError::Invalid("the checkpoint does not match this plan".into());
        match self {
            Self::Cpu {
                moments,
                tiles,
                count,
                ..
            } => {
                if state.moments.len() != moments.len() || state.tiles.len() != tiles.len() {
                    return Err(mismatch());
                }
                for (m, s) in moments.iter_mut().zip(&state.moments) {
                    match (m, s) {
                        (Some(m), Some(s)) if s.len() == 2 * m.mean.len() => {
                            let w = m.mean.len();
                            m.mean.copy_from_slice(&s[..w]);
                            m.m2.copy_from_slice(&s[w..]);
                        }
                        (None, None) => {}
                        _ => return Err(mismatch()),
                    }
                }
                for (t, s) in tiles.iter_mut().zip(&state.tiles) {
                    if t.len() != s.len() {
                        return Err(mismatch());
                    }
                    t.copy_from_slice(s);
                }
                *count = state.count;
                Ok(())
            }
            Self::Gpu {
                ctx,
                moments,
                tiles,
                ..
            } => {
                if state.moments.len() != moments.len() || state.tiles.len() != tiles.len() {
                    return Err(mismatch());
                }
                for (m, s) in moments.iter_mut().zip(&state.moments) {
                    match (m, s) {
                        (Some(m), Some(s)) => {
                            let v: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                            m.restore(ctx, &v, state.count)?;
                        }
                        (None, None) => {}
                        _ => return Err(mismatch()),
                    }
                }
                for (t, s) in tiles.iter().zip(&state.tiles) {
                    let v: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                    t.restore(ctx, &v)?;
                }
                Ok(())
            }
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

fn no_stream() -> AnalysisError {
    AnalysisError::Invalid("a tile reads a stream without moments".into())
}

/// Centre a block on its means (corrected two-pass, f64), merge its moments into `m`, and
/// return the centred f32 block and each column's mean shift (block mean − previous mean).
fn center_block(
    x: ArrayView2<'_, f32>,
    m: &mut CpuMoments,
    w_mean: f64,
    w_m2: f64,
) -> (Array2<f32>, Vec<f64>) {
    let rows = x.nrows() as f64;
    let cols = x.ncols();
    let mut mean = vec![0.0f64; cols];
    for r in x.outer_iter() {
        for (s, &v) in mean.iter_mut().zip(r) {
            *s += v as f64;
        }
    }
    mean.iter_mut().for_each(|s| *s /= rows);
    let mut m2 = vec![0.0f64; cols];
    let mut c = Array2::<f32>::zeros(x.raw_dim());
    for (mut cr, r) in c.outer_iter_mut().zip(x.outer_iter()) {
        for j in 0..cols {
            let d = r[j] as f64 - mean[j];
            m2[j] += d * d;
            cr[j] = d as f32;
        }
    }
    let mut delta = vec![0.0f64; cols];
    for j in 0..cols {
        delta[j] = mean[j] - m.mean[j];
        m.mean[j] += delta[j] * w_mean;
        m.m2[j] += m2[j] + delta[j] * delta[j] * w_m2;
    }
    (c, delta)
}

/// `1/sqrt(M2)`, or 0 for a constant neuron (the rule `finalize.wgsl` uses).
fn inv_scale(mean: f64, m2: f64, n: u64) -> f64 {
    let floor = REL_ZERO_STD as f64 * mean;
    if m2 <= 0.0 || m2 <= floor * floor * n as f64 {
        0.0
    } else {
        1.0 / m2.sqrt()
    }
}

/// Per anchor row of a sparse tile: the best and worst of its candidate pairs (columns relative
/// to `b0`, as [`reduce_rows`] gives them).
fn reduce_pairs(acc: &[f64], pairs: &[u32], ia: &[f64], ib: &[f64], b0: usize) -> TileReduction {
    let k = pairs.len() / ia.len().max(1);
    reduce(ia.len(), false, |i| {
        (i * k..(i + 1) * k).map(move |e| {
            let j = pairs[e] as usize - b0;
            (j as u32, acc[e] * ia[i] * ib[j])
        })
    })
}

/// Dot product of two f32 slices with eight partial sums (so it vectorises), in f64 at the end.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

/// Per anchor row of a dense tile: the best and worst correlation (and with `with_tile`, the
/// row itself).
fn reduce_rows(acc: &[f64], ia: &[f64], ib: &[f64], with_tile: bool) -> TileReduction {
    let nb = ib.len();
    reduce(ia.len(), with_tile, |i| {
        ib.iter()
            .enumerate()
            .map(move |(j, &sb)| (j as u32, acc[i * nb + j] * ia[i] * sb))
    })
}

/// Reduce `n` rows, each given as `(column, correlation)` pairs by `row(i)`, to their extremes
/// (correlations clamped to [-1, 1]).
fn reduce<I: Iterator<Item = (u32, f64)>>(
    n: usize,
    with_tile: bool,
    row: impl Fn(usize) -> I,
) -> TileReduction {
    let mut r = TileReduction {
        max: Vec::with_capacity(n),
        argmax: Vec::with_capacity(n),
        min: Vec::with_capacity(n),
        argmin: Vec::with_capacity(n),
        tile: with_tile.then(Vec::new),
    };
    for i in 0..n {
        let (mut best, mut bj, mut worst, mut wj) = (-2.0f64, 0u32, 2.0f64, 0u32);
        for (j, corr) in row(i) {
            let corr = corr.clamp(-1.0, 1.0);
            if corr > best {
                best = corr;
                bj = j;
            }
            if corr < worst {
                worst = corr;
                wj = j;
            }
            if let Some(t) = r.tile.as_mut() {
                t.push(corr as f32);
            }
        }
        r.max.push(best as f32);
        r.argmax.push(bj);
        r.min.push(worst as f32);
        r.argmin.push(wj);
    }
    r
}

/// Merge the canonical states ([`Accumulator::save_canonical`]) of disjoint parts of the data
/// into the state of the whole (Chan et al.'s parallel formulas in f64): counts add; means
/// move by `δ·n_b/n`; M2 and co-moments add with `δ²·n_a n_b/n` and `δ_a δ_b·n_a n_b/n`;
/// histograms and anatomy counts add, anatomy sums are re-shifted to the first part's shift
/// and top activations are merged.
pub fn merge_states(
    specs: &[TileSpec],
    widths: &[usize],
    states: Vec<SavedState>,
) -> Result<SavedState, AnalysisError> {
    let bad = |why: String| AnalysisError::Invalid(format!("shards do not merge: {why}"));
    let mut parts = states.into_iter();
    let mut acc = parts.next().ok_or_else(|| bad("no shards".into()))?;
    let check = |st: &SavedState| -> Result<(), AnalysisError> {
        if st.moments.len() != widths.len() || st.tiles.len() != specs.len() {
            return Err(bad("different plans".into()));
        }
        for (m, &w) in st.moments.iter().zip(widths) {
            if m.as_ref().is_some_and(|m| m.len() != 2 * w) {
                return Err(bad("different widths".into()));
            }
        }
        for (t, spec) in st.tiles.iter().zip(specs) {
            if t.len() != spec.entries() {
                return Err(bad("different tiles".into()));
            }
        }
        Ok(())
    };
    check(&acc)?;
    for b in parts {
        check(&b)?;
        if b.moments
            .iter()
            .map(Option::is_some)
            .ne(acc.moments.iter().map(Option::is_some))
        {
            return Err(bad("different streams".into()));
        }
        let (na, nb) = (acc.count as f64, b.count as f64);
        let n = na + nb;
        if b.count > 0 {
            // Per stream: the mean shift δ = mean_b − mean_a.
            let delta: Vec<Option<Vec<f64>>> = acc
                .moments
                .iter()
                .zip(&b.moments)
                .zip(widths)
                .map(|((ma, mb), &w)| match (ma, mb) {
                    (Some(ma), Some(mb)) => Some((0..w).map(|j| mb[j] - ma[j]).collect()),
                    _ => None,
                })
                .collect();
            let w_cross = na * nb / n;
            for ((spec, ca), cb) in specs.iter().zip(acc.tiles.iter_mut()).zip(&b.tiles) {
                let (Some(da), Some(db)) = (&delta[spec.a_stream], &delta[spec.b_stream]) else {
                    return Err(bad("a tile without moments".into()));
                };
                if spec.pairs.is_some() {
                    for ((c, &x), [i, j]) in ca.iter_mut().zip(cb).zip(spec.pair_list()) {
                        *c += x + da[i as usize] * db[j as usize] * w_cross;
                    }
                } else {
                    let nbc = spec.b_cols.len();
                    for (r, i) in spec.a_cols.clone().enumerate() {
                        for (q, j) in spec.b_cols.clone().enumerate() {
                            let e = r * nbc + q;
                            ca[e] += cb[e] + da[i] * db[j] * w_cross;
                        }
                    }
                }
            }
            for ((ma, mb), (d, &w)) in acc
                .moments
                .iter_mut()
                .zip(&b.moments)
                .zip(delta.iter().zip(widths))
            {
                let (Some(ma), Some(mb), Some(d)) = (ma, mb, d) else {
                    continue;
                };
                for j in 0..w {
                    ma[j] += d[j] * nb / n;
                    ma[w + j] += mb[w + j] + d[j] * d[j] * w_cross;
                }
            }
            acc.count += b.count;
        }
        if acc.hists.len() != b.hists.len() || acc.anatomy.len() != b.anatomy.len() {
            return Err(bad("different anchors counted".into()));
        }
        for (ha, hb) in acc.hists.iter_mut().zip(&b.hists) {
            if ha.len() != hb.len() {
                return Err(bad("different histograms".into()));
            }
            ha.iter_mut().zip(hb).for_each(|(x, y)| *x += y);
        }
        for (aa, ab) in acc.anatomy.iter_mut().zip(&b.anatomy) {
            crate::anatomy::merge_saved(aa, ab).map_err(bad)?;
        }
    }
    Ok(acc)
}
