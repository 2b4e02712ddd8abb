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

use std::sync::mpsc;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

pub mod reference;

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

    /// Open a device of its own on the default adapter, with the adapter's full limits.
    pub fn request() -> Result<Self, GpuError> {
        let instance = wgpu::Instance::default();
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
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

    /// Copy `bytes` from the start of `buffer` to the host (blocking; native only).
    pub fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
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
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    fn read_f32(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read(buffer, (n * 4) as u64)?;
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
}

/// Output tile side of `cross.wgsl` (a 16x16 workgroup computes 64x64 entries).
pub const CROSS_TILE: u32 = 64;

/// The most rows one update merges. Longer blocks are split by the caller (each split is a
/// Chan merge of its own): a single workgroup looping over tens of thousands of rows is slow
/// to schedule, and lavapipe was seen to drop such dispatches (results silently zero).
pub const MAX_BLOCK_ROWS: u32 = 4096;

fn check_rows(rows: u32) -> Result<(), GpuError> {
    if rows > MAX_BLOCK_ROWS {
        return Err(GpuError::Limit(format!(
            "a block of {rows} rows: merge at most {MAX_BLOCK_ROWS} rows per update"
        )));
    }
    Ok(())
}

impl Kernels {
    /// Compile the three shaders on `ctx`'s device.
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
        let edges = ctx.upload("histogram edges", &reference::hist_edges())?;
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

    /// The counts, `[n_cols, HIST_BINS]`.
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<u32>, GpuError> {
        let bytes = ctx.read(&self.counts, self.n_cols as u64 * HIST_BINS as u64 * 4)?;
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

    /// Read the running state: per neuron `(mean, mean compensation, m2, m2 compensation)`.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.stats, self.n_cols as usize * 4)
    }

    /// Per-neuron `(mean, M2)` (the compensation folded in: a pair stands for `hi - lo`).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<(f64, f64)>, GpuError> {
        Ok(self
            .read_state(ctx)?
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
        if a.rows != b.rows {
            return Err(GpuError::Limit(format!(
                "anchor block has {} rows, the other {}",
                a.rows, b.rows
            )));
        }
        check_rows(a.rows)?;
        if a.rows == 0 {
            return Ok(());
        }
        let (_, w_cross) = merge_weights(n_prev, a.rows as u64);
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

    /// Correlations from the running totals, reduced per anchor neuron on the GPU.
    pub fn finalize(
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
        let raw = ctx.read_f32(&out, self.n_a as usize * 4)?;
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
            r.tile = Some(ctx.read_f32(&tile, self.n_a as usize * self.n_b as usize)?);
        }
        Ok(r)
    }

    /// Read the running `(hi, lo)` pairs (for checkpoints).
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        ctx.read_f32(&self.c, self.n_a as usize * self.n_b as usize * 2)
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
