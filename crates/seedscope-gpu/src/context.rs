//! The device the kernels run on: finding an adapter, the context (upload, read back, wait),
//! activation views into storage buffers, the compiled kernels and dispatching them.

use std::sync::OnceLock;

use wgpu::util::DeviceExt;

use crate::CrossKernel;

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

/// The features a device is asked for so that the kernels can use the adapter's matrix
/// units: `SHADER_F16` and `EXPERIMENTAL_COOPERATIVE_MATRIX`, where the adapter has both.
pub fn kernel_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    if adapter.features().contains(coop) {
        coop
    } else {
        wgpu::Features::empty()
    }
}

/// Open a device on `adapter` with `features` and [`kernel_features`]. Cooperative matrices
/// are one of wgpu's experimental features, which it enables only on an explicit opt-in; where
/// the device cannot be opened with them, it is opened without them (the f32 kernel runs) and
/// the reason is printed to stderr.
pub async fn open_device(
    adapter: &wgpu::Adapter,
    label: &str,
    limits: wgpu::Limits,
    features: wgpu::Features,
) -> Result<(wgpu::Device, wgpu::Queue), GpuError> {
    let extra = kernel_features(adapter);
    let descriptor = |features: wgpu::Features| wgpu::DeviceDescriptor {
        label: Some(label),
        required_features: features,
        required_limits: limits.clone(),
        experimental_features: if features.intersects(wgpu::Features::all_experimental_mask()) {
            // SAFETY: the only experimental feature asked for is cooperative matrices, used by
            // one kernel (`cross_coop.wgsl`) only on configurations the adapter lists
            // ([`CrossKernel::best`]), and tested against the f64 reference where it runs.
            #[allow(unsafe_code)]
            unsafe {
                wgpu::ExperimentalFeatures::enabled()
            }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        ..Default::default()
    };
    if !extra.is_empty() {
        match adapter.request_device(&descriptor(features | extra)).await {
            Ok(opened) => return Ok(opened),
            Err(e) => eprintln!(
                "warning: opening the device with cooperative matrices failed ({e}); the \
                 co-moments use the f32 kernel"
            ),
        }
    }
    adapter
        .request_device(&descriptor(features))
        .await
        .map_err(|e| GpuError::NoAdapter(format!("requesting a device failed: {e}")))
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
    /// The co-moment kernel [`Kernels::new`] compiles: the fastest the device offers that
    /// passed its check ([`GpuContext::with_checked_cross`]), or the f32 one.
    pub cross: CrossKernel,
}

impl GpuContext {
    /// Wrap an existing device (shared with Burn) that runs the f32 co-moment kernel; see
    /// [`GpuContext::with_cross`].
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self {
            device,
            queue,
            info,
            cross: CrossKernel::Fp32,
        }
    }

    /// The same device running `cross` for its co-moments (one of [`CrossKernel::best`]'s
    /// answers for this device).
    pub fn with_cross(self, cross: CrossKernel) -> Self {
        Self { cross, ..self }
    }

    /// The same device running `best` if it passes [`CrossKernel::check`] here, else the
    /// f32 kernel (the reason printed to stderr).
    pub fn with_checked_cross(self, best: CrossKernel) -> Self {
        match best.check(&self) {
            Ok(()) => self.with_cross(best),
            Err(why) => {
                eprintln!(
                    "warning: {} failed its check ({why}); the co-moments use the f32 kernel",
                    best.describe()
                );
                self.with_cross(CrossKernel::Fp32)
            }
        }
    }

    /// Open a device of its own on the default adapter ([`find_adapter`]), with the adapter's
    /// full limits and the features the kernels can use ([`kernel_features`]).
    pub fn request() -> Result<Self, GpuError> {
        let (_, adapter) = pollster::block_on(find_adapter(wgpu::PowerPreference::default()))?;
        let (device, queue) = pollster::block_on(open_device(
            &adapter,
            "seedscope-gpu",
            adapter.limits(),
            wgpu::Features::empty(),
        ))?;
        let cross = CrossKernel::best(
            device.features(),
            &device.limits(),
            &adapter.get_info(),
            &adapter.cooperative_matrix_properties(),
        );
        Ok(Self::new(device, queue, adapter.get_info()).with_checked_cross(cross))
    }

    /// The largest storage buffer one binding may span.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.device.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    pub(crate) fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
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

    /// The device's memory as wgpu's allocator reports it, `(allocated, reserved)` bytes:
    /// what live buffers use, and the memory blocks they are carved from (every buffer on the
    /// device, Burn's models and activations included). `None` where the backend makes no
    /// report: wgpu 30 makes it on Vulkan and DX12, not on Metal, OpenGL or WebGPU.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let r = self.device.generate_allocator_report()?;
        Some((r.total_allocated_bytes, r.total_reserved_bytes))
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

    pub(crate) async fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        n: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_async(buffer, (n * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub(crate) fn write_f32(&self, buffer: &wgpu::Buffer, data: &[f32]) {
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
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.byte_offset,
            size: std::num::NonZeroU64::new(self.rows as u64 * self.row_len as u64 * 4),
        })
    }
}

/// The kernels, each compiled on first use: a command compiles only the kernels it runs, and
/// [`CrossKernel::check`] only the three a co-moment tile needs.
#[derive(Debug)]
pub struct Kernels {
    device: wgpu::Device,
    cross_kernel: CrossKernel,
    moments: OnceLock<wgpu::ComputePipeline>,
    cross: OnceLock<wgpu::ComputePipeline>,
    finalize: OnceLock<wgpu::ComputePipeline>,
    histogram: OnceLock<wgpu::ComputePipeline>,
    anatomy: OnceLock<wgpu::ComputePipeline>,
    pairs: OnceLock<wgpu::ComputePipeline>,
}

impl Kernels {
    /// The kernels of `ctx`'s device, with its co-moment kernel ([`GpuContext::cross`]).
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_cross(ctx, ctx.cross)
    }

    /// The kernels with `cross` as the co-moment kernel (the f32 kernel runs anywhere; a
    /// cooperative one only where [`CrossKernel::best`] offered it).
    pub fn with_cross(ctx: &GpuContext, cross: CrossKernel) -> Self {
        Self {
            device: ctx.device.clone(),
            cross_kernel: cross,
            moments: OnceLock::new(),
            cross: OnceLock::new(),
            finalize: OnceLock::new(),
            histogram: OnceLock::new(),
            anatomy: OnceLock::new(),
            pairs: OnceLock::new(),
        }
    }

    /// The co-moment kernel these kernels run.
    pub fn cross_kernel(&self) -> CrossKernel {
        self.cross_kernel
    }

    pub(crate) fn moments(&self) -> &wgpu::ComputePipeline {
        self.once(
            &self.moments,
            "moments.wgsl",
            include_str!("../../../shaders/moments.wgsl"),
        )
    }

    pub(crate) fn cross(&self) -> &wgpu::ComputePipeline {
        self.cross.get_or_init(|| {
            let source = self.cross_kernel.source();
            match self.cross_kernel {
                CrossKernel::Fp32 => self.compile("cross.wgsl", &source, &[]),
                CrossKernel::Cooperative { invocations, .. } => {
                    self.compile("cross_coop.wgsl", &source, &[("WG", invocations as f64)])
                }
            }
        })
    }

    pub(crate) fn finalize(&self) -> &wgpu::ComputePipeline {
        self.once(
            &self.finalize,
            "finalize.wgsl",
            include_str!("../../../shaders/finalize.wgsl"),
        )
    }

    pub(crate) fn histogram(&self) -> &wgpu::ComputePipeline {
        self.once(
            &self.histogram,
            "histogram.wgsl",
            include_str!("../../../shaders/histogram.wgsl"),
        )
    }

    pub(crate) fn anatomy(&self) -> &wgpu::ComputePipeline {
        self.once(
            &self.anatomy,
            "anatomy.wgsl",
            include_str!("../../../shaders/anatomy.wgsl"),
        )
    }

    pub(crate) fn pairs(&self) -> &wgpu::ComputePipeline {
        self.once(
            &self.pairs,
            "pairs.wgsl",
            include_str!("../../../shaders/pairs.wgsl"),
        )
    }

    /// The pipeline in `cell`, compiled from `src` (no constants) the first time it is asked for.
    fn once<'a>(
        &'a self,
        cell: &'a OnceLock<wgpu::ComputePipeline>,
        name: &str,
        src: &str,
    ) -> &'a wgpu::ComputePipeline {
        cell.get_or_init(|| self.compile(name, src, &[]))
    }

    /// Compile `src`'s `main` with `constants` as its pipeline-overridable constants.
    fn compile(&self, name: &str, src: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            })
    }
}

/// Record one dispatch of `pipeline` with `params` as its uniform (binding 0) and `bindings`
/// after it, over `groups` workgroups.
pub(crate) fn dispatch(
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
pub(crate) const MAX_GROUPS: u32 = 65_535;
