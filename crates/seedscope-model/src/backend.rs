//! Choosing where tensors live: a wgpu adapter (Vulkan, Metal, DX12, WebGPU) or Burn's Flex
//! CPU backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;

/// The compute paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// wgpu on a hardware adapter; the CPU backend where the only adapter is a software
    /// rasteriser or there is none. The choice is reported by [`ComputeDevice::describe`].
    Auto,
    /// Burn on wgpu: the default.
    Wgpu,
    /// Burn's Flex CPU backend: the fallback, and the fast path where the only adapter is a
    /// software rasteriser.
    Cpu,
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("unknown backend `{other}` (auto, wgpu or cpu)")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// No usable wgpu adapter.
#[derive(Debug, thiserror::Error)]
#[error(
    "no GPU adapter found by wgpu ({0}); install a Vulkan, Metal or DX12 driver \
     (on Debian: apt-get install mesa-vulkan-drivers libvulkan1) or pass --backend cpu"
)]
pub struct NoAdapter(String);

/// A device ready for Burn, with a description of what it is.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    /// The Burn device.
    pub device: Device,
    /// Which path it is.
    pub kind: BackendKind,
    /// The adapter wgpu reports (`None` for the CPU backend).
    pub adapter: Option<wgpu::AdapterInfo>,
    /// Why `Auto` chose the CPU, if it did.
    pub note: Option<String>,
    /// The largest buffer the adapter can bind (`min(max_storage_buffer_binding_size,
    /// max_buffer_size)`); `None` on the CPU.
    pub max_buffer_bytes: Option<u64>,
    /// The wgpu device and queue Burn runs on (`None` on the CPU): Seedscope's own WGSL kernels
    /// use the same ones, so they read Burn's output buffers in place.
    pub wgpu: Option<WgpuHandles>,
}

impl ComputeDevice {
    /// Whether an analysis's statistics run on the host: the CPU path, and wgpu without an
    /// adapter's kernels. There the accumulators centre a copy of every stream of a block, so
    /// a block takes twice its activations' memory ([`crate`]'s callers plan for it).
    pub fn statistics_on_host(&self) -> bool {
        self.wgpu.is_none() || self.adapter.is_none()
    }

    /// How many models' forwards a run computes side by side: two on a CPU with two threads
    /// or more (Burn Flex runs a forward's element-wise work on one core, so one forward left
    /// the other idle: two at once on 2 cores gave 2.3x the tokens/s of one at the embedded
    /// family's shape and 1.3x at GPT-2 small's width), one on a GPU (one queue).
    pub fn forwards_at_once(&self) -> usize {
        match self.kind {
            BackendKind::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
            _ => 1,
        }
    }

    /// Whether the models may compute in f16 here: a wgpu device with `shader-f16`.
    pub fn supports_f16(&self) -> bool {
        self.wgpu
            .as_ref()
            .is_some_and(|h| h.device.features().contains(wgpu::Features::SHADER_F16))
    }
}

/// The wgpu device shared by Burn and Seedscope's kernels.
#[derive(Debug, Clone)]
pub struct WgpuHandles {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The fastest co-moment kernel the device offers (cooperative matrices where the adapter
    /// has them, the device was opened with them and the kernel passed its check).
    pub cross: seedscope_gpu::CrossKernel,
}

impl ComputeDevice {
    /// Open the requested backend. For wgpu the adapter is probed first, so a machine without
    /// one gets a clear error instead of a panic inside Burn; `Auto` never fails.
    pub fn open(kind: BackendKind) -> Result<Self, NoAdapter> {
        pollster::block_on(Self::open_async(kind))
    }

    /// [`ComputeDevice::open`] without blocking (adapter and device requests are futures).
    /// The browser's page shares the device it draws with instead
    /// ([`ComputeDevice::from_wgpu`]).
    pub async fn open_async(kind: BackendKind) -> Result<Self, NoAdapter> {
        let cpu = Self {
            device: Device::flex(),
            kind: BackendKind::Cpu,
            adapter: None,
            note: None,
            max_buffer_bytes: None,
            wgpu: None,
        };
        match kind {
            BackendKind::Cpu => Ok(cpu),
            BackendKind::Wgpu => Self::wgpu(probe_adapter().await?).await,
            BackendKind::Auto => Ok(match probe_adapter().await {
                Ok(probe) if probe.1.get_info().device_type != wgpu::DeviceType::Cpu => {
                    Self::wgpu(probe).await?
                }
                Ok((_, adapter)) => Self {
                    note: Some(format!(
                        "the only GPU adapter, {}, is a software one",
                        adapter.get_info().name
                    )),
                    ..cpu
                },
                Err(NoAdapter(reason)) => Self {
                    note: Some(format!("no GPU adapter ({reason})")),
                    ..cpu
                },
            }),
        }
    }

    /// Open a device on `adapter` the way Burn's wgpu runtime would (the adapter's features, see
    /// [`device_features`], and its full limits), with cooperative matrices where the adapter
    /// has them ([`seedscope_gpu::open_device`]), and hand it to Burn.
    async fn wgpu((instance, adapter): (wgpu::Instance, wgpu::Adapter)) -> Result<Self, NoAdapter> {
        let (device, queue) = seedscope_gpu::open_device(
            &adapter,
            "seedscope",
            adapter.limits(),
            device_features(adapter.features()),
        )
        .await
        .map_err(|e| NoAdapter(e.to_string()))?;
        Self::from_wgpu(instance, adapter, device, queue)
    }

    /// Hand a device that is already open (in the browser: the one the page draws with, which
    /// asked for the adapter's full limits and features) to Burn and the kernels.
    pub fn from_wgpu(
        instance: wgpu::Instance,
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self, NoAdapter> {
        let limits = device.limits();
        let info = adapter.get_info();
        let best = seedscope_gpu::CrossKernel::best(
            device.features(),
            &limits,
            &info,
            &adapter.cooperative_matrix_properties(),
        );
        // A cooperative kernel runs once on this device before a run relies on it.
        let cross = seedscope_gpu::GpuContext::new(device.clone(), queue.clone(), info.clone())
            .with_checked_cross(best)
            .cross;
        let setup = WgpuSetup {
            instance,
            adapter,
            device: device.clone(),
            queue: queue.clone(),
            backend: info.backend,
        };
        let burn_device = Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| NoAdapter(format!("Burn could not use the device: {e:?}")))?;
        Ok(Self {
            device: burn_device,
            kind: BackendKind::Wgpu,
            adapter: Some(info),
            note: None,
            max_buffer_bytes: Some(
                limits
                    .max_storage_buffer_binding_size
                    .min(limits.max_buffer_size),
            ),
            wgpu: Some(WgpuHandles {
                device,
                queue,
                cross,
            }),
        })
    }

    /// Whether the adapter is a software rasteriser (llvmpipe/lavapipe, SwiftShader, WARP),
    /// where heavy work belongs on the CPU path.
    pub fn is_software_adapter(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|a| a.device_type == wgpu::DeviceType::Cpu)
    }

    /// The co-moment kernel a run on this device uses: `None` on the CPU; the f32 kernel where
    /// `fp32` is asked for or the device has no cooperative matrices.
    pub fn cross_kernel(&self, fp32: bool) -> Option<seedscope_gpu::CrossKernel> {
        let h = self.wgpu.as_ref()?;
        Some(if fp32 {
            seedscope_gpu::CrossKernel::Fp32
        } else {
            h.cross
        })
    }

    /// One line for logs and manifests: `wgpu: llvmpipe (LLVM 15.0.6, 256 bits) [Vulkan, Cpu]`.
    pub fn describe(&self) -> String {
        match (&self.adapter, &self.note) {
            // Browsers keep the adapter's name to themselves.
            (Some(a), _) if a.name.is_empty() => {
                format!(
                    "wgpu: unnamed adapter [{:?}, {:?}]",
                    a.backend, a.device_type
                )
            }
            (Some(a), _) => format!("wgpu: {} [{:?}, {:?}]", a.name, a.backend, a.device_type),
            (None, Some(note)) => format!("cpu: Burn Flex (chosen automatically: {note})"),
            (None, None) => "cpu: Burn Flex".to_owned(),
        }
    }
}

/// The adapter wgpu picks with a high-performance preference, as Burn's default device does
/// ([`seedscope_gpu::find_adapter`]: OpenGL only where no primary backend has one).
async fn probe_adapter() -> Result<(wgpu::Instance, wgpu::Adapter), NoAdapter> {
    seedscope_gpu::find_adapter(wgpu::PowerPreference::HighPerformance)
        .await
        .map_err(|e| NoAdapter(e.to_string()))
}

/// The features Seedscope asks a device for: everything the adapter offers except mappable
/// primary buffers (slow on discrete GPUs) and wgpu's experimental features (mesh shaders,
/// cooperative matrices, ray tracing pipelines), which wgpu refuses to enable without an
/// unsafe opt-in. Requesting all of them made opening a device fail on NVIDIA's Vulkan driver;
/// cooperative matrices, which the co-moment kernel uses, are asked for on their own by
/// [`seedscope_gpu::open_device`] (and left out where the device cannot open with them).
pub fn device_features(adapter: wgpu::Features) -> wgpu::Features {
    adapter
        .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
        .difference(wgpu::Features::all_experimental_mask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_features_leave_out_experimental_and_mappable_primary_buffers() {
        let asked = device_features(wgpu::Features::all());
        assert!(!asked.intersects(wgpu::Features::all_experimental_mask()));
        assert!(!asked.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS));
        assert!(asked.contains(wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY));
    }
}
