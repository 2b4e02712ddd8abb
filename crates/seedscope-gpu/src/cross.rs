//! `shaders/cross_common.wgsl` with `cross.wgsl` or `cross_coop.wgsl`, and `finalize.wgsl`:
//! the running co-moment tile of anchor columns × other columns (a tiled GEMM of block-centred
//! activations merged with Chan's correction into Kahan pairs), and its Pearson correlations
//! reduced per anchor neuron. [`CrossKernel`] is which GEMM a device runs: f32 register tiles
//! everywhere, or cooperative matrices (tensor cores) with f16 inputs where the adapter has
//! them.

use bytemuck::{Pod, Zeroable};

use crate::context::dispatch;
use crate::totals::{BlockPair, Totals};
use crate::{ActView, GpuContext, GpuError, Kernels, MAX_GROUPS, Moments};

/// Output tile side of `cross.wgsl` (a 16x16 workgroup computes 128x128 entries, 8x8 each).
pub const CROSS_TILE: u32 = 128;

/// The GEMM inside a co-moment update: the same centring, Chan merge and Kahan pairs around
/// it, the same bindings, a different product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossKernel {
    /// `cross.wgsl`: f32 products, 8x8 register tiles per invocation. Every adapter.
    Fp32,
    /// `cross_coop.wgsl`: cooperative matrices `size`² (tensor cores, WMMA, SIMD-group
    /// matrices) on the block-centred activations rounded to f16, accumulated in f32;
    /// `invocations` per workgroup (the adapter's largest subgroup).
    Cooperative {
        /// Fragment side: 16 or 8.
        size: u32,
        /// Invocations per workgroup.
        invocations: u32,
    },
}

impl CrossKernel {
    /// The fastest kernel a device offers: cooperative matrices where the device was opened
    /// with `EXPERIMENTAL_COOPERATIVE_MATRIX` and `SHADER_F16`, the adapter lists square f16 ×
    /// f16 → f32 fragments of 16 (preferred) or 8, and its limits hold the kernel's workgroup;
    /// the f32 kernel otherwise.
    pub fn best(
        features: wgpu::Features,
        limits: &wgpu::Limits,
        info: &wgpu::AdapterInfo,
        configs: &[wgpu::CooperativeMatrixProperties],
    ) -> Self {
        use wgpu::CooperativeScalarType::{F16, F32};
        let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        if !features.contains(needed) {
            return Self::Fp32;
        }
        let invocations = info.subgroup_max_size;
        for size in [16, 8] {
            let listed = configs.iter().any(|c| {
                (c.m_size, c.n_size, c.k_size) == (size, size, size)
                    && c.ab_type == F16
                    && c.cr_type == F32
            });
            let kernel = Self::Cooperative { size, invocations };
            if listed
                && invocations > 0
                && invocations <= limits.max_compute_invocations_per_workgroup
                && invocations <= limits.max_compute_workgroup_size_x
                && kernel.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
            {
                return kernel;
            }
        }
        Self::Fp32
    }

    /// Output tile side of one workgroup.
    pub fn tile(self) -> u32 {
        match self {
            Self::Fp32 => CROSS_TILE,
            Self::Cooperative { size, .. } => 4 * size,
        }
    }

    /// Workgroup memory the kernel declares.
    pub fn workgroup_bytes(self) -> u32 {
        match self {
            Self::Fp32 => 2 * 2 * 8 * CROSS_TILE * 4,
            // Two [2 S][4 S] f16 slices and the [4 S]² f32 tile.
            Self::Cooperative { size, .. } => {
                2 * (2 * size) * (4 * size) * 2 + 16 * size * size * 4
            }
        }
    }

    /// The WGSL source: `cross_common.wgsl` (the update around the product) placed after the
    /// kernel's `enable` directives and before `cross.wgsl`, or `cross_coop.wgsl` built for the
    /// fragment size.
    pub fn source(self) -> String {
        const COMMON: &str = include_str!("../../../shaders/cross_common.wgsl");
        const COOP: &str = include_str!("../../../shaders/cross_coop.wgsl");
        const LAST_ENABLE: &str = "enable wgpu_cooperative_matrix;\n";
        match self {
            Self::Fp32 => format!("{COMMON}\n{}", include_str!("../../../shaders/cross.wgsl")),
            Self::Cooperative { size, .. } => {
                let (head, body) = COOP
                    .split_once(LAST_ENABLE)
                    .expect("cross_coop.wgsl enables cooperative matrices");
                let body = body
                    .replace("coop_mat16x16<", &format!("coop_mat{size}x{size}<"))
                    .replace("const S: u32 = 16u;", &format!("const S: u32 = {size}u;"));
                format!("{head}{LAST_ENABLE}\n{COMMON}{body}")
            }
        }
    }

    /// Run the kernel once on `ctx` before trusting it: a cooperative kernel must compile
    /// without a validation error and give the f32 kernel's correlations (within 1e-2, f16
    /// inputs) on a block of odd sizes with large means and a shared factor. The f32 kernel
    /// passes without running. An `Err` says what went wrong.
    pub fn check(self, ctx: &GpuContext) -> Result<(), String> {
        if self == Self::Fp32 {
            return Ok(());
        }
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let (rows, na, nb) = (300, 70, 90);
        let (a, b) = (check_block(rows, na, 1), check_block(rows, nb, 2));
        let run = |kernel: Self| -> Result<Vec<f32>, GpuError> {
            let kernels = Kernels::with_cross(ctx, kernel);
            let mut ma = Moments::new(ctx, na as u32)?;
            let mut mb = Moments::new(ctx, nb as u32)?;
            let tile = CrossTile::new(ctx, 0, na as u32, 0, nb as u32)?;
            let (ba, bb) = (ctx.upload("a", &a)?, ctx.upload("b", &b)?);
            let (va, vb) = (ActView::whole(&ba, rows, na), ActView::whole(&bb, rows, nb));
            tile.merge_pair(ctx, &kernels, va, &mut ma, vb, &mut mb)?;
            let r = tile.finalize(ctx, &kernels, &ma, &mb, true)?;
            Ok(r.tile.unwrap_or_default())
        };
        let outcome = run(self).and_then(|got| Ok((got, run(Self::Fp32)?)));
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("wgpu reported: {e}"));
        }
        let (got, want) = outcome.map_err(|e| e.to_string())?;
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        if got.len() != want.len() || worst > 1e-2 {
            return Err(format!(
                "its correlations differ from the f32 kernel's by {worst:.1e} on a test block"
            ));
        }
        Ok(())
    }

    /// One line for logs and manifests.
    pub fn describe(self) -> String {
        match self {
            Self::Fp32 => "f32 register tiles (cross.wgsl)".to_owned(),
            Self::Cooperative { size, invocations } => format!(
                "cooperative matrices {size}x{size}x{size}, f16 inputs, f32 accumulation, \
                 {invocations} invocations per workgroup (cross_coop.wgsl)"
            ),
        }
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
        // The smallest output tile of any kernel (cooperative 8x8 fragments: 32).
        if n_a.div_ceil(32) > MAX_GROUPS || n_b.div_ceil(32) > MAX_GROUPS {
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
            kernels.cross(),
            bytemuck::bytes_of(&params),
            vec![
                a.binding(),
                b.binding(),
                block.a_moments.block.as_entire_binding(),
                block.b_moments.block.as_entire_binding(),
                self.c.buffer.as_entire_binding(),
            ],
            {
                let tile = kernels.cross_kernel().tile();
                (self.n_b.div_ceil(tile), self.n_a.div_ceil(tile))
            },
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
            kernels.finalize(),
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

/// [`CrossKernel::check`]'s test activations `[rows, n]`: means of 50 and more, a shared factor
/// with loadings across (-1, 1), and noise (a deterministic hash, no RNG dependency).
fn check_block(rows: usize, n: usize, salt: u64) -> Vec<f32> {
    let unit = |x: u64| {
        let h = (x ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((h ^ (h >> 29)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    (0..rows * n)
        .map(|e| {
            let (t, j) = ((e / n) as u64, (e % n) as u64);
            let load = unit(j * 7 + salt * 1_000_003);
            50.0 + j as f32 + 3.0 * load * unit(t) + unit(e as u64 * 31 + salt)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::naga;

    fn config(
        size: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: size,
            n_size: size,
            k_size: size,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    fn info(subgroup: u32) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            subgroup_min_size: subgroup,
            subgroup_max_size: subgroup,
            ..wgpu::AdapterInfo::new(wgpu::DeviceType::DiscreteGpu, wgpu::Backend::Vulkan)
        }
    }

    /// Parse and validate a kernel's WGSL as naga does when wgpu compiles it, with the
    /// capabilities the device would have, set the overrides and write it as SPIR-V (what
    /// wgpu hands a Vulkan driver): the cooperative kernel compiles here though no adapter on
    /// this machine can run it.
    /// With `SEEDSCOPE_SPIRV_DIR` set, the SPIR-V is also written there as `name.spv` (for
    /// `spirv-val --target-env vulkan1.3`).
    fn compile(name: &str, src: &str, caps: naga::valid::Capabilities, invocations: u32) {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
        // The host sets the cooperative kernel's workgroup size; the f32 kernel has none.
        let mut constants = naga::back::PipelineConstants::new();
        if invocations > 0 {
            constants.insert("WG".to_owned(), invocations as f64);
        }
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                .expect("overrides");
        let options = naga::back::spv::Options {
            lang_version: (1, 4),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, None).expect("SPIR-V");
        if let Some(dir) = std::env::var_os("SEEDSCOPE_SPIRV_DIR") {
            let path = std::path::Path::new(&dir).join(format!("{name}.spv"));
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            std::fs::write(&path, bytes).expect("writing SPIR-V");
        }
    }

    #[test]
    fn both_co_moment_kernels_validate_and_compile_to_spirv() {
        use naga::valid::Capabilities as C;
        compile("cross", &CrossKernel::Fp32.source(), C::default(), 0);
        for size in [16, 8] {
            let kernel = CrossKernel::Cooperative {
                size,
                invocations: 32,
            };
            let src = kernel.source();
            assert!(src.contains(&format!("coop_mat{size}x{size}<f16, A>")));
            compile(
                &format!("cross_coop{size}"),
                &src,
                C::COOPERATIVE_MATRIX | C::SHADER_FLOAT16,
                32,
            );
        }
        // Without the capability the cooperative kernel is refused (the check is real).
        let src = CrossKernel::Cooperative {
            size: 16,
            invocations: 32,
        }
        .source();
        let module = naga::front::wgsl::parse_str(&src).expect("parse");
        assert!(
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), C::SHADER_FLOAT16)
                .validate(&module)
                .is_err()
        );
    }

    #[test]
    fn the_check_blocks_correlate() {
        let (rows, na, nb) = (300, 70, 90);
        let (a, b) = (check_block(rows, na, 1), check_block(rows, nb, 2));
        let r = crate::reference::correlations(&a, na, &b, nb);
        let strong = r.iter().filter(|v| v.abs() > 0.5).count();
        assert!(
            strong > r.len() / 10,
            "{strong} of {} pairs above 0.5",
            r.len()
        );
    }

    #[test]
    fn the_best_kernel_follows_the_adapters_list_and_limits() {
        use wgpu::CooperativeScalarType::{F16, F32};
        let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        let limits = wgpu::Limits {
            max_compute_workgroup_storage_size: 48 << 10,
            ..wgpu::Limits::default()
        };
        // NVIDIA and AMD list 16x16x16 f16 -> f32 (among others).
        let vulkan = [config(16, F16, F16), config(16, F16, F32)];
        assert_eq!(
            CrossKernel::best(coop, &limits, &info(32), &vulkan),
            CrossKernel::Cooperative {
                size: 16,
                invocations: 32
            }
        );
        // Metal lists 8x8x8, f32 and f16 inputs.
        let metal = [
            config(8, F32, F32),
            config(8, F16, F16),
            config(8, F16, F32),
        ];
        assert_eq!(
            CrossKernel::best(coop, &limits, &info(32), &metal),
            CrossKernel::Cooperative {
                size: 8,
                invocations: 32
            }
        );
        // Only f32 inputs or only f16 accumulation: no f16 -> f32 fragment, f32 kernel.
        assert_eq!(
            CrossKernel::best(
                coop,
                &limits,
                &info(32),
                &[config(8, F32, F32), config(16, F16, F16)]
            ),
            CrossKernel::Fp32
        );
        // The device opened without the features, or the workgroup memory too small for 16.
        assert_eq!(
            CrossKernel::best(wgpu::Features::SHADER_F16, &limits, &info(32), &vulkan),
            CrossKernel::Fp32
        );
        let small = wgpu::Limits::default();
        assert_eq!(small.max_compute_workgroup_storage_size, 16 << 10);
        assert_eq!(
            CrossKernel::best(coop, &small, &info(32), &vulkan),
            CrossKernel::Fp32
        );
        assert_eq!(
            CrossKernel::best(coop, &small, &info(32), &metal),
            CrossKernel::Cooperative {
                size: 8,
                invocations: 32
            }
        );
        // The workgroup is the largest subgroup; none reported, no cooperative kernel.
        assert_eq!(
            CrossKernel::best(coop, &limits, &info(64), &vulkan),
            CrossKernel::Cooperative {
                size: 16,
                invocations: 64
            }
        );
        assert_eq!(
            CrossKernel::best(coop, &limits, &info(0), &vulkan),
            CrossKernel::Fp32
        );
        assert_eq!(
            CrossKernel::Cooperative {
                size: 16,
                invocations: 32
            }
            .workgroup_bytes(),
            24 << 10
        );
        assert_eq!(CrossKernel::Fp32.workgroup_bytes(), 16 << 10);
    }
}
