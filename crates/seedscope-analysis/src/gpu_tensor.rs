//! The wgpu buffer behind a Burn tensor, so WGSL kernels read model outputs in place.

use burn::backend::Cube;
use burn::backend::wgpu::{AutoCompiler, CubeTensor, into_contiguous};
use burn::cubecl::wgpu::WgpuServer;
use burn::tensor::{DType, Tensor};

/// Run `f` with the storage buffer, byte offset and byte length of a contiguous f32 wgpu
/// tensor, after Burn's pending work on it has been submitted to the shared queue.
pub fn with_buffer<R>(
    t: Tensor<2>,
    f: impl FnOnce(&wgpu::Buffer, u64, u64) -> R,
) -> Result<(Tensor<2>, R), String> {
    let p: CubeTensor = t
        .try_into_primitive::<Cube>()
        .map_err(|e| format!("not a wgpu tensor: {e:?}"))?;
    let p = into_contiguous(p);
    if p.dtype != DType::F32 {
        return Err(format!("expected f32 activations, got {:?}", p.dtype));
    }
    let bytes = (p.meta.shape().num_elements() * 4) as u64;
    let managed = p
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(p.handle.clone())
        .map_err(|e| format!("{e:?}"))?;
    p.client.flush().map_err(|e| format!("{e:?}"))?;
    let res = managed.resource();
    let r = f(&res.buffer, res.offset, bytes);
    drop(managed);
    Ok((Tensor::from_primitive::<Cube>(p), r))
}
