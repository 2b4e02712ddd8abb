//! `seedscope bench-correlation`: throughput of one correlation update (block moments, the
//! centred cross-product GEMM and the merge into the running totals) on the CPU path and with
//! the WGSL kernels: `wgpu` runs the device's fastest co-moment kernel (cooperative matrices
//! where the adapter has them), `wgpu-fp32` the f32 kernel on the same device.
//! `scripts/bench_correlation.py` runs it next to numpy's `X.T @ Y` on the same matrices and
//! prints the ratios; `--peak-tflops` adds the fraction of the device's peak.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use ndarray::Array2;
use seedscope_analysis::accum::{Accumulate, CpuAccumulator};
use seedscope_analysis::plan::TileSpec;
use seedscope_gpu::{ActView, CrossKernel, CrossTile, GpuContext, Kernels, Moments};
use seedscope_model::matmul::matmul;

/// Options of `seedscope bench-correlation`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Anchor activations, f32 .npy [rows, n_a] (default: generated, --rows x --n-a).
    #[arg(long)]
    pub a: Option<PathBuf>,
    /// Other activations, f32 .npy [rows, n_b].
    #[arg(long)]
    pub b: Option<PathBuf>,
    /// Rows (tokens) per block when generating.
    #[arg(long, default_value_t = 4096)]
    pub rows: usize,
    /// Anchor neurons when generating.
    #[arg(long, default_value_t = 1024)]
    pub n_a: usize,
    /// Other neurons when generating.
    #[arg(long, default_value_t = 1024)]
    pub n_b: usize,
    /// `cpu` (the whole update), `wgpu` (the device's fastest co-moment kernel), `wgpu-fp32`
    /// (the f32 kernel), `gemm` or `matrixmultiply` (a GEMM alone: the `gemm` crate, or
    /// ndarray's matrixmultiply, as references), comma-separated.
    #[arg(long, default_value = "cpu,wgpu")]
    pub paths: String,
    /// The device's peak in TFLOP/s (from its data sheet: FP32 for `wgpu-fp32`, the matrix
    /// units' f16 rate for a cooperative kernel); adds `of_peak` to each line.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Timed updates (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
}

fn read_npy(path: &PathBuf) -> Result<Array2<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "{}: expected a 2-d array, got shape {shape:?}",
            path.display()
        );
    }
    let data: Vec<f32> = npy
        .into_vec()
        .with_context(|| format!("{}: expected float32 values", path.display()))?;
    Ok(Array2::from_shape_vec(
        (shape[0] as usize, shape[1] as usize),
        data,
    )?)
}

fn generate(rows: usize, n: usize, salt: u64) -> Array2<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ salt;
    Array2::from_shape_fn((rows, n), |_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 + 3.0
    })
}

/// Run the benchmark; prints one JSON line per path.
pub fn run(args: &Args) -> Result<()> {
    let a = match &args.a {
        Some(p) => read_npy(p)?,
        None => generate(args.rows, args.n_a, 1),
    };
    let b = match &args.b {
        Some(p) => read_npy(p)?,
        None => generate(args.rows, args.n_b, 2),
    };
    if a.nrows() != b.nrows() {
        bail!("the two matrices have {} and {} rows", a.nrows(), b.nrows());
    }
    let (rows, na, nb) = (a.nrows(), a.ncols(), b.ncols());
    let flop = 2.0 * rows as f64 * na as f64 * nb as f64;
    for path in args.paths.split(',') {
        let (secs, device) = match path {
            "cpu" => {
                let spec = TileSpec::dense(0, 0..na, 1, 0..nb);
                let mut acc = CpuAccumulator::new(vec![spec], &[na, nb]);
                let block = [Some(a.clone()), Some(b.clone())];
                acc.update(&block)?;
                let t = Instant::now();
                for _ in 0..args.iters {
                    acc.update(&block)?;
                }
                (
                    t.elapsed().as_secs_f64() / args.iters as f64,
                    "cpu (gemm crate, f64 merge)".to_owned(),
                )
            }
            // The same product through ndarray's matrixmultiply (the update's GEMM before the
            // `gemm` crate), for comparison.
            "matrixmultiply" => {
                let g = a.t().dot(&b);
                std::hint::black_box(&g);
                let t = Instant::now();
                for _ in 0..args.iters {
                    std::hint::black_box(a.t().dot(&b));
                }
                (
                    t.elapsed().as_secs_f64() / args.iters as f64,
                    "cpu: matrixmultiply aT b alone".to_owned(),
                )
            }
            // The update's GEMM alone (the `gemm` crate, as the CPU path calls it): what the
            // update spends beyond it, in the same process.
            "gemm" => {
                let mut out = vec![0.0f32; na * nb];
                matmul(a.t(), b.view(), &mut out);
                let t = Instant::now();
                for _ in 0..args.iters {
                    matmul(a.t(), b.view(), &mut out);
                    std::hint::black_box(&out);
                }
                (
                    t.elapsed().as_secs_f64() / args.iters as f64,
                    "cpu: gemm crate aT b alone".to_owned(),
                )
            }
            "wgpu" | "wgpu-fp32" => {
                let ctx = GpuContext::request()?;
                let kernel = if path == "wgpu" {
                    ctx.cross
                } else {
                    CrossKernel::Fp32
                };
                let k = Kernels::with_cross(&ctx, kernel);
                let a_std = a.as_standard_layout();
                let b_std = b.as_standard_layout();
                let ba = ctx.upload("a", a_std.as_slice().context("contiguous")?)?;
                let bb = ctx.upload("b", b_std.as_slice().context("contiguous")?)?;
                let (va, vb) = (ActView::whole(&ba, rows, na), ActView::whole(&bb, rows, nb));
                let mut ma = Moments::new(&ctx, na as u32)?;
                let mut mb = Moments::new(&ctx, nb as u32)?;
                let tile = CrossTile::new(&ctx, 0, na as u32, 0, nb as u32)?;
                let step = |ma: &mut Moments, mb: &mut Moments| -> Result<()> {
                    tile.merge_pair(&ctx, &k, va, ma, vb, mb)?;
                    ctx.device
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
                    Ok(())
                };
                step(&mut ma, &mut mb)?;
                let t = Instant::now();
                for _ in 0..args.iters {
                    step(&mut ma, &mut mb)?;
                }
                (
                    t.elapsed().as_secs_f64() / args.iters as f64,
                    format!(
                        "wgpu: {} [{:?}]; co-moments: {}",
                        ctx.info.name,
                        ctx.info.device_type,
                        kernel.describe()
                    ),
                )
            }
            other => {
                bail!("unknown path `{other}` (cpu, gemm, matrixmultiply, wgpu or wgpu-fp32)")
            }
        };
        let gflops = flop / secs / 1e9;
        let mut line = serde_json::json!({
            "path": path, "device": device, "rows": rows, "n_a": na, "n_b": nb,
            "seconds": secs, "gflops": gflops,
        });
        if let Some(peak) = args.peak_tflops {
            line["of_peak"] = serde_json::json!(gflops / (peak * 1e3));
        }
        println!("{line}");
    }
    Ok(())
}
