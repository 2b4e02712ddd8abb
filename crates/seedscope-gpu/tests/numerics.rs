//! The accumulation scheme over 10 million tokens with large activation means: the WGSL
//! kernels (block-centred, Kahan-merged; the f32 kernel, and the cooperative one where the
//! adapter has it) against an exact f64 two-pass reference.
//! The naive Σxy − n·x̄ȳ in f32 would lose every digit here (means 1000× the spread).

use seedscope_gpu::{
    ActView, CrossKernel, CrossTile, GpuContext, Kernels, Moments, reference, twin,
};

const TOKENS: usize = 10_000_000;
const BLOCK: usize = seedscope_gpu::MAX_BLOCK_ROWS as usize;
const NA: usize = 8;
const NB: usize = 8;

/// Deterministic block `k`: columns with means 1000 + 100 j, unit-ish spread, a shared factor
/// with per-column loadings so correlations span (-1, 1).
fn block(k: usize, rows: usize, n: usize, salt: u64) -> Vec<f32> {
    let stream = |seed: u64| {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    };
    // The shared factor is the same for both matrices (so they correlate); the noise is not.
    let mut shared = stream(k as u64 + 1);
    let mut noise = stream((k as u64 + 1) << 8 ^ salt);
    let mut x = vec![0.0f32; rows * n];
    for t in 0..rows {
        let f = shared();
        for j in 0..n {
            let load = ((j as f64 * 0.37 + salt as f64 * 0.11).sin()).clamp(-0.95, 0.95);
            let v = 1000.0 + 100.0 * j as f64 + load * f + (1.0 - load * load).sqrt() * noise();
            x[t * n + j] = v as f32;
        }
    }
    x
}

fn blocks() -> impl Iterator<Item = (usize, usize)> {
    (0..TOKENS.div_ceil(BLOCK)).map(|k| (k, BLOCK.min(TOKENS - k * BLOCK)))
}

/// Every co-moment kernel the device runs over the 10 M tokens, each held to 3e-5: the f32
/// kernel and, where the adapter has cooperative matrices, the cooperative one (issue 20 asks
/// at most 1e-3 of it; its f16 rounding averages out over the tokens, and what is left is the
/// f32 accumulation both kernels share).
#[test]
fn ten_million_tokens_with_large_means_stay_near_f64_through_every_kernel() {
    let ctx = GpuContext::request()
        .unwrap_or_else(|e| panic!("needs a wgpu adapter (lavapipe will do): {e}"));
    let exact = exact_correlations();
    // The correlations are not trivial (the test would be weak if all were ~0).
    assert!(exact.iter().any(|v| v.abs() > 0.5));
    let mut kernels = vec![CrossKernel::Fp32];
    if ctx.cross != CrossKernel::Fp32 {
        kernels.push(ctx.cross);
    }
    for kernel in kernels {
        let got = ten_million_tokens(&ctx, &Kernels::with_cross(&ctx, kernel));
        let worst = (0..NA * NB)
            .map(|p| (got[p] as f64 - exact[p]).abs())
            .fold(0.0f64, f64::max);
        println!(
            "{}: max |corr error| over {TOKENS} tokens: {worst:.2e}",
            kernel.describe()
        );
        // Measured on lavapipe: 2.9e-6 with the f32 kernel, 3.2e-6 with cooperative matrices
        // (Mesa 26.1, scripts/lavapipe_coop.sh).
        assert!(worst <= 3e-5, "{kernel:?}: max abs error {worst}");
    }
}

/// The correlation tile of the test data through the kernels `k`, block by block.
fn ten_million_tokens(ctx: &GpuContext, k: &Kernels) -> Vec<f32> {
    let mut ma = Moments::new(ctx, NA as u32).expect("moments");
    let mut mb = Moments::new(ctx, NB as u32).expect("moments");
    let tile = CrossTile::new(ctx, 0, NA as u32, 0, NB as u32).expect("tile");
    for (bk, rows) in blocks() {
        let (a, b) = (block(bk, rows, NA, 1), block(bk, rows, NB, 2));
        let ba = ctx.upload("a", &a).expect("upload");
        let bb = ctx.upload("b", &b).expect("upload");
        let (va, vb) = (ActView::whole(&ba, rows, NA), ActView::whole(&bb, rows, NB));
        tile.merge_pair(ctx, k, va, &mut ma, vb, &mut mb)
            .expect("merge");
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    }
    tile.finalize(ctx, k, &ma, &mb, true)
        .expect("finalize")
        .tile
        .expect("tile")
}

/// The exact f64 correlations of the test data over all tokens: pass 1 the means, pass 2 the
/// centred co-moments and sums of squares.
fn exact_correlations() -> Vec<f64> {
    let n = TOKENS as f64;
    let (mut sa, mut sb) = (vec![0.0f64; NA], vec![0.0f64; NB]);
    for (bk, rows) in blocks() {
        let (a, b) = (block(bk, rows, NA, 1), block(bk, rows, NB, 2));
        for t in 0..rows {
            (0..NA).for_each(|i| sa[i] += a[t * NA + i] as f64 / n);
            (0..NB).for_each(|j| sb[j] += b[t * NB + j] as f64 / n);
        }
    }
    let (mut qa, mut qb, mut c) = (vec![0.0f64; NA], vec![0.0f64; NB], vec![0.0f64; NA * NB]);
    for (bk, rows) in blocks() {
        let (a, b) = (block(bk, rows, NA, 1), block(bk, rows, NB, 2));
        for t in 0..rows {
            for i in 0..NA {
                let x = a[t * NA + i] as f64 - sa[i];
                qa[i] += x * x;
                for j in 0..NB {
                    c[i * NB + j] += x * (b[t * NB + j] as f64 - sb[j]);
                }
            }
            for j in 0..NB {
                let y = b[t * NB + j] as f64 - sb[j];
                qb[j] += y * y;
            }
        }
    }
    (0..NA * NB)
        .map(|p| c[p] / (qa[p / NB] * qb[p % NB]).sqrt())
        .collect()
}

/// The cooperative-matrix kernel's arithmetic (`cross_coop.wgsl`: block-centred activations
/// rounded to f16, f32 sums within a block) over 10 million tokens, through its CPU twin: the
/// block means rounded to f32 as `moments.wgsl` gives them, each block's product from
/// [`twin::cross_f16_block`], merged with Chan's formula (in f64, as the Kahan pairs hold it),
/// against the exact f64 correlations. This is the error the kernel adds to the f32 path's,
/// measured on any machine (the kernel itself runs only where an adapter has cooperative
/// matrices: `tests/kernels.rs` and the GPU test above).
#[test]
fn f16_products_over_ten_million_tokens_stay_within_1e_3_of_f64() {
    let mut n_prev = 0.0f64;
    let (mut ma, mut mb) = (vec![0.0f64; NA], vec![0.0f64; NB]);
    let (mut qa, mut qb, mut c) = (vec![0.0f64; NA], vec![0.0f64; NB], vec![0.0f64; NA * NB]);
    for (bk, rows) in blocks() {
        let (a, b) = (block(bk, rows, NA, 1), block(bk, rows, NB, 2));
        let (am, bm) = (reference::moments(&a, NA), reference::moments(&b, NB));
        let a_mean: Vec<f32> = am.iter().map(|m| m.0 as f32).collect();
        let b_mean: Vec<f32> = bm.iter().map(|m| m.0 as f32).collect();
        let blk = twin::cross_f16_block(&a, NA, &a_mean, &b, NB, &b_mean);
        let n_blk = rows as f64;
        let n_new = n_prev + n_blk;
        let w = n_prev * n_blk / n_new;
        // The block's f32 means and the running means, as the kernels hold them.
        let da: Vec<f64> = (0..NA).map(|i| a_mean[i] as f64 - ma[i]).collect();
        let db: Vec<f64> = (0..NB).map(|j| b_mean[j] as f64 - mb[j]).collect();
        for i in 0..NA {
            for j in 0..NB {
                c[i * NB + j] += blk[i * NB + j] as f64 + da[i] * db[j] * w;
            }
            qa[i] += am[i].1 + da[i] * da[i] * w;
            ma[i] += da[i] * n_blk / n_new;
        }
        for j in 0..NB {
            qb[j] += bm[j].1 + db[j] * db[j] * w;
            mb[j] += db[j] * n_blk / n_new;
        }
        n_prev = n_new;
    }
    let exact = exact_correlations();
    let mut worst = 0.0f64;
    for p in 0..NA * NB {
        let got = c[p] / (qa[p / NB] * qb[p % NB]).sqrt();
        worst = worst.max((got - exact[p]).abs());
    }
    println!("f16 products: max |corr error| over {TOKENS} tokens: {worst:.2e}");
    // The bound the kernel is held to is 1e-3; measured: see the README (Engine).
    assert!(worst <= 1e-3, "max abs error {worst}");
    assert!(exact.iter().any(|v| v.abs() > 0.5));
}
