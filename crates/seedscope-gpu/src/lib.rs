//! WGSL kernels for the universality engine: streaming per-neuron moments and cross-model
//! co-moments, reduced to per-neuron best matches on the GPU.
//!
//! The shaders live in the repository's `shaders/` directory:
//! - `moments.wgsl`: per-neuron block mean and centred sum of squares, merged into running
//!   totals with Chan's formula ([`Moments`]).
//! - `cross.wgsl`: a tiled GEMM of block-centred activations, merged into a running co-moment
//!   tile ([`CrossTile`]). Kahan-compensated `(hi, lo)` pairs keep the f32 merge exact enough
//!   over tens of millions of tokens (tested against [`reference`] in f64).
//! - `finalize.wgsl`: Pearson correlations of a tile, reduced per anchor neuron to the maximum,
//!   its argmax and the minimum; only these reductions are read back (optionally the tile).
//!
//! Activations are row-major `[rows, row_len]` f32 matrices in any storage buffer
//! ([`ActView`]), so the buffers Burn wrote on the same `wgpu::Device` are used in place.

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

pub mod reference;
pub mod twin;

/// The adapter a compute device runs on, with its instance: one of the primary backends
/// (Vulkan, Metal, DX12, WebGPU), and OpenGL only where none of them has an adapter. (Probing
/// OpenGL loads the system's EGL, which on a machine without a display prints `error: ...`
/// lines about `XDG_RUNTIME_DIR` that look like the command's own errors.)
pub async fn find_adapter(
    power_preference: wgpu::PowerPreference,
) -> Result<(wgpu::Instance, wgpu::Adapter), GpuError> {
    let options = wgpu::RequestAdapterOptions {
        power_preference,
        ..Default::default()
    };
    let mut why = String::new();
    for backends in [wgpu::Backends::PRIMARY, wgpu::Backends::GL] {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        match instance.request_adapter(&options).await {
            Ok(adapter) => return Ok((instance, adapter)),
            Err(e) => why = e.to_string(),
        }
    }
    Err(GpuError::NoAdapter(why))
}

/// Errors of the GPU kernels.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter or device.
    #[error("no wgpu adapter: {0}")]
    NoAdapter(String),
    /// A buffer or dispatch over the device's limits.
    #[error("{0}")]
    Limit(String),
    /// Mapping a buffer for reading failed.
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),
}

/// The wgpu device the kernels run on (usually the one Burn uses).
#[derive(Debug, Clone)]
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter is.
    pub info: wgpu::AdapterInfo,
}

impl GpuContext {
    /// Wrap an existing device (shared with Burn).
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self {
            device,
            queue,
            info,
        }
    }

    /// Open a device of its own on the default adapter ([`find_adapter`]), with the adapter's
    /// full limits.
    pub fn request() -> Result<Self, GpuError> {
        let (_, adapter) = pollster::block_on(find_adapter(wgpu::PowerPreference::default()))?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("seedscope-gpu"),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        Ok(Self::new(device, queue, adapter.get_info()))
    }

    /// The largest storage buffer one binding may span.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.device.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let bytes = bytes.max(16);
        if bytes > self.max_binding_bytes() {
            return Err(GpuError::Limit(format!(
                "{label}: {bytes} bytes exceed the adapter's largest binding ({} bytes)",
                self.max_binding_bytes()
            )));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Upload f32 values into a new storage buffer (tests, benchmarks, the CPU-held data path).
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer, GpuError> {
        let bytes = std::mem::size_of_val(data) as u64;
        if bytes > self.max_binding_bytes() {
            return Err(GpuError::Limit(format!(
                "{label}: {bytes} bytes exceed the adapter's largest binding"
            )));
        }
        let contents: &[u8] = if data.is_empty() {
            &[0; 16]
        } else {
            bytemuck::cast_slice(data)
        };
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// Copy `bytes` from the start of `buffer` to the host, blocking until it arrives (native;
    /// in the browser, which cannot block, this is an error: use [`GpuContext::read_async`]).
    pub fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        if cfg!(target_arch = "wasm32") {
            return Err(GpuError::Readback(
                "a blocking GPU read was asked for in the browser, which only reads \
                 asynchronously (a bug: this path needs its async form)"
                    .into(),
            ));
        }
        pollster::block_on(self.read_async(buffer, bytes))
    }

    /// Wait until the device has finished the work submitted so far. In the browser this
    /// hands the event loop to the page (drawing, input) while the GPU works, and keeps the
    /// queue from running far ahead of it; natively it returns at once (the queue orders the
    /// work already, and reads wait for it).
    pub async fn settle(&self) {
        #[cfg(target_arch = "wasm32")]
        {
            let (tx, rx) = async_channel::bounded(1);
            self.queue.on_submitted_work_done(move || {
                let _ = tx.try_send(());
            });
            let _ = rx.recv().await;
        }
    }

    /// Copy `bytes` from the start of `buffer` to the host without blocking the thread: the
    /// mapping is awaited (in a browser the event loop completes it; natively the device is
    /// polled first, so the future is ready when first awaited).
    pub async fn read_async(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let slice = staging.slice(..bytes.max(4));
        let (tx, rx) = async_channel::bounded(1);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.try_send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.recv()
            .await
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    async fn read_f32(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_async(buffer, (n * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn write_f32(&self, buffer: &wgpu::Buffer, data: &[f32]) {
        if !data.is_empty() {
            self.queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(data));
        }
    }
}

/// A row-major `[rows, row_len]` f32 activation matrix inside a storage buffer, starting
/// `byte_offset` bytes into it (a multiple of the device's storage offset alignment, as Burn's
/// allocations are).
#[derive(Debug, Clone, Copy)]
pub struct ActView<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Where the matrix starts.
    pub byte_offset: u64,
    /// Tokens.
    pub rows: u32,
    /// Neurons per token (all layers side by side).
    pub row_len: u32,
}

/// The compiled kernels.
#[derive(Debug)]
pub struct Kernels {
    moments: wgpu::ComputePipeline,
    cross: wgpu::ComputePipeline,
    finalize: wgpu::ComputePipeline,
    histogram: wgpu::ComputePipeline,
    anatomy: wgpu::ComputePipeline,
    pairs: wgpu::ComputePipeline,
}

/// Output tile side of `cross.wgsl` (a 16x16 workgroup computes 64x64 entries).
pub const CROSS_TILE: u32 = 64;

/// The most rows one update merges. Longer blocks are split by the caller (each split is a
/// Chan merge of its own): a single workgroup looping over tens of thousands of rows is slow
/// to schedule, and lavapipe was seen to drop such dispatches (results silently zero).
pub const MAX_BLOCK_ROWS: u32 = 4096;

/// Chan's cross weight `n_prev · n_block / n` of merging the block `a`/`b` (which must have the
/// same rows, at most [`MAX_BLOCK_ROWS`]); `None` for an empty block.
fn cross_weight(a: &ActView<'_>, b: &ActView<'_>, n_prev: u64) -> Result<Option<f64>, GpuError> {
    if a.rows != b.rows {
        return Err(GpuError::Limit(format!(
            "anchor block has {} rows, the other {}",
            a.rows, b.rows
        )));
    }
    check_rows(a.rows)?;
    Ok((a.rows > 0).then(|| merge_weights(n_prev, a.rows as u64).1))
}

fn check_rows(rows: u32) -> Result<(), GpuError> {
    if rows > MAX_BLOCK_ROWS {
        return Err(GpuError::Limit(format!(
            "a block of {rows} rows: merge at most {MAX_BLOCK_ROWS} rows per update"
        )));
    }
    Ok(())
}

impl Kernels {
    /// Compile the shaders on `ctx`'s device.
    pub fn new(ctx: &GpuContext) -> Self {
        let make = |name: &str, src: &str| {
            let module = ctx
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                });
            ctx.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
        };
        Self {
            moments: make(
                "moments.wgsl",
                include_str!("../../../shaders/moments.wgsl"),
            ),
            cross: make("cross.wgsl", include_str!("../../../shaders/cross.wgsl")),
            finalize: make(
                "finalize.wgsl",
                include_str!("../../../shaders/finalize.wgsl"),
            ),
            histogram: make(
                "histogram.wgsl",
                include_str!("../../../shaders/histogram.wgsl"),
            ),
            anatomy: make(
                "anatomy.wgsl",
                include_str!("../../../shaders/anatomy.wgsl"),
            ),
            pairs: make("pairs.wgsl", include_str!("../../../shaders/pairs.wgsl")),
        }
    }
}

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
            &kernels.histogram,
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
            &kernels.anatomy,
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

impl<'a> ActView<'a> {
    /// A matrix filling `buffer` from its start.
    pub fn whole(buffer: &'a wgpu::Buffer, rows: usize, row_len: usize) -> Self {
        Self {
            buffer,
            byte_offset: 0,
            rows: rows as u32,
            row_len: row_len as u32,
        }
    }

    /// The matrix as a binding of exactly its bytes.
    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.byte_offset,
            size: std::num::NonZeroU64::new(self.rows as u64 * self.row_len as u64 * 4),
        })
    }
}

fn dispatch(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    params: &[u8],
    bindings: Vec<wgpu::BindingResource<'_>>,
    groups: (u32, u32),
) {
    let uniform = ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: uniform.as_entire_binding(),
    }];
    for (i, resource) in bindings.into_iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource,
        });
    }
    let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut pass = encoder.begin_compute_pass(&Default::default());
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &bind, &[]);
    pass.dispatch_workgroups(groups.0, groups.1, 1);
}

/// The largest workgroup count per dispatch dimension WebGPU guarantees.
const MAX_GROUPS: u32 = 65_535;

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
    stats: wgpu::Buffer,
    block: wgpu::Buffer,
    n_cols: u32,
    count: u64,
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
            &kernels.moments,
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
    c: wgpu::Buffer,
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
    /// The tile's correlations `[n_a, n_b]`, when asked for.
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
            c: ctx.storage("co-moments", Self::bytes(n_a, n_b))?,
            a_col,
            n_a,
            b_col,
            n_b,
        })
    }

    /// Record the merge of one block into `encoder`. `a_moments` and `b_moments` must already
    /// hold this block (their `update` recorded earlier in the same or an earlier submission);
    /// `n_prev` is the row count before the block.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        a: ActView<'_>,
        a_moments: &Moments,
        b: ActView<'_>,
        b_moments: &Moments,
        n_prev: u64,
    ) -> Result<(), GpuError> {
        let Some(w_cross) = cross_weight(&a, &b, n_prev)? else {
            return Ok(());
        };
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
                a_moments.block.as_entire_binding(),
                b_moments.block.as_entire_binding(),
                self.c.as_entire_binding(),
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
        self.update(
            ctx,
            kernels,
            &mut encoder,
            a,
            a_moments,
            b,
            b_moments,
            n_prev,
        )?;
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
                self.c.as_entire_binding(),
                a_moments.stats.as_entire_binding(),
                b_moments.stats.as_entire_binding(),
                out.as_entire_binding(),
                tile.as_entire_binding(),
            ],
            (self.n_a.div_ceil(64), 1),
        );
        ctx.queue.submit([encoder.finish()]);
        let raw = ctx.read_f32(&out, self.n_a as usize * 4).await?;
        let mut r = TileReduction {
            max: Vec::with_capacity(self.n_a as usize),
            argmax: Vec::with_capacity(self.n_a as usize),
            min: Vec::with_capacity(self.n_a as usize),
            argmin: Vec::with_capacity(self.n_a as usize),
            tile: None,
        };
        for v in raw.chunks_exact(4) {
            r.max.push(v[0]);
            r.argmax.push(v[1].to_bits());
            r.min.push(v[2]);
            r.argmin.push(v[3].to_bits());
        }
        if with_tile {
            r.tile = Some(
                ctx.read_f32(&tile, self.n_a as usize * self.n_b as usize)
                    .await?,
            );
        }
        Ok(r)
    }

    /// Read the running `(hi, lo)` pairs (for checkpoints; blocking, native).
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_state_async(ctx))
    }

    /// [`CrossTile::read_state`] without blocking.
    pub async fn read_state_async(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.c, self.n_a as usize * self.n_b as usize * 2)
            .await
    }

    /// Restore pairs saved with [`CrossTile::read_state`].
    pub fn restore(&self, ctx: &GpuContext, state: &[f32]) -> Result<(), GpuError> {
        if state.len() != self.n_a as usize * self.n_b as usize * 2 {
            return Err(GpuError::Limit(format!(
                "co-moment state has {} values, expected {}",
                state.len(),
                self.n_a as usize * self.n_b as usize * 2
            )));
        }
        ctx.write_f32(&self.c, state);
        Ok(())
    }
}

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
    c: wgpu::Buffer,
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
            c: ctx.storage("pair co-moments", (n as u64 * 8).max(8))?,
            n_pairs: n,
        })
    }

    /// Record the merge of one block into `encoder`; as [`CrossTile::update`], the moments must
    /// already hold this block and `n_prev` is the row count before it.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        encoder: &mut wgpu::CommandEncoder,
        a: ActView<'_>,
        a_moments: &Moments,
        b: ActView<'_>,
        b_moments: &Moments,
        n_prev: u64,
    ) -> Result<(), GpuError> {
        let Some(w_cross) = cross_weight(&a, &b, n_prev)? else {
            return Ok(());
        };
        if self.n_pairs == 0 {
            return Ok(());
        }
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
            &kernels.pairs,
            bytemuck::bytes_of(&params),
            vec![
                a.binding(),
                b.binding(),
                a_moments.block.as_entire_binding(),
                b_moments.block.as_entire_binding(),
                self.pairs.as_entire_binding(),
                self.c.as_entire_binding(),
            ],
            (gx, gy),
        );
        Ok(())
    }

    /// Read the running `(hi, lo)` pairs (blocking; native).
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_state_async(ctx))
    }

    /// [`PairTile::read_state`] without blocking.
    pub async fn read_state_async(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.c, self.n_pairs as usize * 2).await
    }

    /// Restore pairs saved with [`PairTile::read_state`].
    pub fn restore(&self, ctx: &GpuContext, state: &[f32]) -> Result<(), GpuError> {
        if state.len() != self.n_pairs as usize * 2 {
            return Err(GpuError::Limit(format!(
                "pair co-moment state has {} values, expected {}",
                state.len(),
                self.n_pairs as usize * 2
            )));
        }
        if !state.is_empty() {
            ctx.write_f32(&self.c, state);
        }
        Ok(())
    }
}
