//! A block of activations on the GPU: the wgpu buffer behind a Burn tensor, read in place by
//! the WGSL kernels (no copy to the host), in row chunks that fit one binding.

use seedscope_gpu::{ActView, GpuContext};

use crate::AnalysisError;

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

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}
