//! `shaders/anatomy.wgsl`: per anchor neuron the feature sums (variance explained), top-k
//! activations and per-position activity (CPU twin: [`crate::twin::anatomy_update`]).

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use crate::context::dispatch;
use crate::{ActView, GpuContext, GpuError, Kernels, check_rows};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AnatomyParams {
    rows: u32,
    row_len: u32,
    col0: u32,
    n_cols: u32,
    k: u32,
    n_pos: u32,
    n_feat: u32,
    vocab: u32,
    first: u32,
    pad: [u32; 3],
}

/// No token (the previous token of a row's first position) in [`Anatomy::update`]'s `info`.
pub const NO_TOKEN: u32 = u32::MAX;

/// The token feature lists `shaders/anatomy.wgsl` reads: per token id the features active on
/// it as the current token and as the previous token, uploaded once per run.
#[derive(Debug)]
pub struct FeatureTables {
    csr: wgpu::Buffer,
    vocab: u32,
    n_feat: u32,
}

impl FeatureTables {
    /// Upload `current[t]` and `previous[t]` (feature ids `< n_feat`) for every token id `t`.
    pub fn new(
        ctx: &GpuContext,
        current: &[Vec<u32>],
        previous: &[Vec<u32>],
        n_feat: u32,
    ) -> Result<Self, GpuError> {
        let csr = feature_csr(current, previous, n_feat)?;
        let bytes = csr.len() as u64 * 4;
        if bytes > ctx.max_binding_bytes() {
            return Err(GpuError::Limit(format!(
                "token feature lists of {bytes} bytes exceed the device's largest binding"
            )));
        }
        let csr = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("feature lists"),
                contents: bytemuck::cast_slice(&csr),
                usage: wgpu::BufferUsages::STORAGE,
            });
        Ok(Self {
            csr,
            vocab: current.len() as u32,
            n_feat,
        })
    }
}

/// The CSR layout of `shaders/anatomy.wgsl`: current-token offsets `[0, vocab]`, previous-token
/// offsets `[vocab + 1, 2 vocab + 1]`, then the feature ids; offsets count from the start.
pub fn feature_csr(
    current: &[Vec<u32>],
    previous: &[Vec<u32>],
    n_feat: u32,
) -> Result<Vec<u32>, GpuError> {
    if current.len() != previous.len() {
        return Err(GpuError::Limit(format!(
            "feature lists for {} current and {} previous token ids",
            current.len(),
            previous.len()
        )));
    }
    if let Some(f) = current
        .iter()
        .chain(previous)
        .flatten()
        .find(|&&f| f >= n_feat)
    {
        return Err(GpuError::Limit(format!("feature id {f} of {n_feat}")));
    }
    let vocab = current.len();
    let mut out = Vec::with_capacity(2 * vocab + 2);
    let mut ids = Vec::new();
    let base = (2 * vocab + 2) as u32;
    for table in [current, previous] {
        for lists in table {
            out.push(base + ids.len() as u32);
            ids.extend_from_slice(lists);
        }
        out.push(base + ids.len() as u32);
    }
    out.extend(ids);
    Ok(out)
}

/// One column range of the anchor's anatomy accumulators (`shaders/anatomy.wgsl`): feature
/// sums, top-k activations and per-position active counts of neurons `[col0, col0 + n_cols)`.
#[derive(Debug)]
pub struct Anatomy {
    sums: wgpu::Buffer,
    counts: wgpu::Buffer,
    col0: u32,
    n_cols: u32,
    k: u32,
    n_pos: u32,
    n_feat: u32,
    started: std::cell::Cell<bool>,
}

/// The host copy of an [`Anatomy`]'s state.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomyState {
    /// `[n_feat, n_cols]` feature sums of `v - shift`.
    pub sums: Vec<f64>,
    /// `[n_cols]` shifts.
    pub shift: Vec<f32>,
    /// `[n_cols, k]` top activations, descending (`-inf` where fewer were seen).
    pub top_val: Vec<f32>,
    /// `[n_cols, k]` their token indices ([`NO_TOKEN`] where none).
    pub top_idx: Vec<u32>,
    /// `[n_pos, n_cols]` counts of activations above 0.
    pub active: Vec<u32>,
}

impl Anatomy {
    /// Bytes of the device state for `n_cols` neurons.
    pub fn bytes(n_cols: u32, k: u32, n_pos: u32, n_feat: u32) -> u64 {
        let n = n_cols as u64;
        (n_feat as u64 * n * 2 + n) * 4 + (2 * n * k as u64 + n_pos as u64 * n) * 4
    }

    /// The most columns one chunk may hold under the device's largest binding.
    pub fn max_cols(ctx: &GpuContext, k: u32, n_pos: u32, n_feat: u32) -> u32 {
        let per_col_sums = (n_feat as u64 * 2 + 1) * 4;
        let per_col_counts = (2 * k as u64 + n_pos as u64) * 4;
        let max = ctx.max_binding_bytes();
        (max / per_col_sums.max(per_col_counts)).min(u32::MAX as u64) as u32
    }

    /// First neuron column.
    pub fn col0(&self) -> u32 {
        self.col0
    }

    /// Neuron columns.
    pub fn n_cols(&self) -> u32 {
        self.n_cols
    }

    /// Zeroed state for neurons `[col0, col0 + n_cols)`.
    pub fn new(
        ctx: &GpuContext,
        col0: u32,
        n_cols: u32,
        k: u32,
        n_pos: u32,
        n_feat: u32,
    ) -> Result<Self, GpuError> {
        let sums = ctx.storage(
            "anatomy sums",
            (n_feat as u64 * n_cols as u64 * 2 + n_cols as u64) * 4,
        )?;
        let counts = ctx.storage(
            "anatomy counts",
            (2 * n_cols as u64 * k as u64 + n_pos as u64 * n_cols as u64) * 4,
        )?;
        let a = Self {
            sums,
            counts,
            col0,
            n_cols,
            k,
            n_pos,
            n_feat,
            started: std::cell::Cell::new(false),
        };
        a.restore(ctx, &AnatomyState::empty(n_cols, k, n_pos, n_feat), false)?;
        Ok(a)
    }

    /// Accumulate `x` (`[rows, row_len]`, at most [`MAX_BLOCK_ROWS`] rows) with `info` holding
    /// four u32 per row: position bucket, token id, previous token id, global token index.
    pub fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        tables: &FeatureTables,
        x: &ActView<'_>,
        info: &[u32],
    ) -> Result<(), GpuError> {
        check_rows(x.rows)?;
        if info.len() != 4 * x.rows as usize
            || self.col0 + self.n_cols > x.row_len
            || tables.n_feat != self.n_feat
        {
            return Err(GpuError::Limit(format!(
                "anatomy of columns {}..{} (of {} features) updated with {} rows of {} and {} \
                 info values for {} features",
                self.col0,
                self.col0 + self.n_cols,
                self.n_feat,
                x.rows,
                x.row_len,
                info.len(),
                tables.n_feat
            )));
        }
        if let Some(p) = info.chunks_exact(4).find(|r| r[0] >= self.n_pos) {
            return Err(GpuError::Limit(format!(
                "position bucket {} of {}",
                p[0], self.n_pos
            )));
        }
        if x.rows == 0 || self.n_cols == 0 {
            return Ok(());
        }
        let params = AnatomyParams {
            rows: x.rows,
            row_len: x.row_len,
            col0: self.col0,
            n_cols: self.n_cols,
            k: self.k,
            n_pos: self.n_pos,
            n_feat: self.n_feat,
            vocab: tables.vocab,
            first: u32::from(!self.started.get()),
            pad: [0; 3],
        };
        let info = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("anatomy info"),
                contents: bytemuck::cast_slice(info),
                usage: wgpu::BufferUsages::STORAGE,
            });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        dispatch(
            ctx,
            &mut encoder,
            kernels.anatomy(),
            bytemuck::bytes_of(&params),
            vec![
                x.binding(),
                info.as_entire_binding(),
                tables.csr.as_entire_binding(),
                self.sums.as_entire_binding(),
                self.counts.as_entire_binding(),
            ],
            (self.n_cols.div_ceil(64), 1),
        );
        ctx.queue.submit([encoder.finish()]);
        self.started.set(true);
        Ok(())
    }

    /// The state, read back asynchronously (see [`GpuContext::read_async`]).
    pub async fn read_async(&self, ctx: &GpuContext) -> Result<AnatomyState, GpuError> {
        let (n, k) = (self.n_cols as usize, self.k as usize);
        let nf = self.n_feat as usize;
        let sums: Vec<f32> = bytemuck::pod_collect_to_vec(
            &ctx.read_async(&self.sums, ((nf * n * 2 + n) * 4) as u64)
                .await?,
        );
        let counts: Vec<u32> = bytemuck::pod_collect_to_vec(
            &ctx.read_async(
                &self.counts,
                ((2 * n * k + self.n_pos as usize * n) * 4) as u64,
            )
            .await?,
        );
        Ok(AnatomyState {
            sums: sums[..nf * n * 2]
                .chunks_exact(2)
                .map(|p| p[0] as f64 - p[1] as f64)
                .collect(),
            shift: sums[nf * n * 2..].to_vec(),
            top_val: counts[..n * k].iter().map(|&b| f32::from_bits(b)).collect(),
            top_idx: counts[n * k..2 * n * k].to_vec(),
            active: counts[2 * n * k..].to_vec(),
        })
    }

    /// The state (blocking; native).
    pub fn read(&self, ctx: &GpuContext) -> Result<AnatomyState, GpuError> {
        pollster::block_on(self.read_async(ctx))
    }

    /// Continue from `state`; `started` says whether the shifts are already set.
    pub fn restore(
        &self,
        ctx: &GpuContext,
        state: &AnatomyState,
        started: bool,
    ) -> Result<(), GpuError> {
        let (n, k) = (self.n_cols as usize, self.k as usize);
        let nf = self.n_feat as usize;
        if state.sums.len() != nf * n
            || state.shift.len() != n
            || state.top_val.len() != n * k
            || state.top_idx.len() != n * k
            || state.active.len() != self.n_pos as usize * n
        {
            return Err(GpuError::Limit(format!(
                "saved anatomy state does not fit {n} neurons, {nf} features, top {k}, {} \
                 positions",
                self.n_pos
            )));
        }
        let mut sums: Vec<f32> = Vec::with_capacity(nf * n * 2 + n);
        for &v in &state.sums {
            let hi = v as f32;
            sums.push(hi);
            sums.push((hi as f64 - v) as f32);
        }
        sums.extend_from_slice(&state.shift);
        ctx.write_f32(&self.sums, &sums);
        let mut counts: Vec<u32> = state.top_val.iter().map(|v| v.to_bits()).collect();
        counts.extend_from_slice(&state.top_idx);
        counts.extend_from_slice(&state.active);
        ctx.queue
            .write_buffer(&self.counts, 0, bytemuck::cast_slice(&counts));
        self.started.set(started);
        Ok(())
    }
}

impl AnatomyState {
    /// The state before any token: zero sums and counts, an empty top-k.
    pub fn empty(n_cols: u32, k: u32, n_pos: u32, n_feat: u32) -> Self {
        let (n, k) = (n_cols as usize, k as usize);
        Self {
            sums: vec![0.0; n_feat as usize * n],
            shift: vec![0.0; n],
            top_val: vec![f32::NEG_INFINITY; n * k],
            top_idx: vec![NO_TOKEN; n * k],
            active: vec![0; n_pos as usize * n],
        }
    }
}
