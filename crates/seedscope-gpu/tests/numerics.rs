//! The accumulation scheme over 10 million tokens with large activation means: the WGSL
//! kernels (f32, block-centred, Kahan-merged) against an exact f64 two-pass reference.
//! The naive Σxy − n·x̄ȳ in f32 would lose every digit here (means 1000× the spread).

use seedscope_gpu::{ActView, CrossTile, GpuContext, Kernels, Moments};

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

#[test]
fn ten_million_tokens_with_large_means_stay_within_3e_5_of_f64() {
    let ctx = GpuContext::request()
        .unwrap_or_else(|e| panic!("needs a wgpu adapter (lavapipe will do): {e}"));
    let k = Kernels::new(&ctx);
    let mut ma = Moments::new(&ctx, NA as u32).expect("moments");
    let mut mb = Moments::new(&ctx, NB as u32).expect("moments");
    let tile = CrossTile::new(&ctx, 0, NA as u32, 0, NB as u32).expect("tile");
    // Exact f64 reference, streaming: pass 1 means, pass 2 centred co-moments.
    let (mut sa, mut sb) = (vec![0.0f64; NA], vec![0.0f64; NB]);
    for (bk, rows) in blocks() {
        let (a, b) = (block(bk, rows, NA, 1), block(bk, rows, NB, 2));
        for t in 0..rows {
            (0..NA).for_each(|i| sa[i] += a[t * NA + i] as f64);
            (0..NB).for_each(|j| sb[j] += b[t * NB + j] as f64);
        }
        let ba = ctx.upload("a", &a).expect("upload");
        let bb = ctx.upload("b", &b).expect("upload");
        let (va, vb) = (ActView::whole(&ba, rows, NA), ActView::whole(&bb, rows, NB));
        tile.merge_pair(&ctx, &k, va, &mut ma, vb, &mut mb)
            .expect("merge");
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    }
    let n = TOKENS as f64;
    sa.iter_mut().for_each(|v| *v /= n);
    sb.iter_mut().for_each(|v| *v /= n);
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
    let got = tile
        .finalize(&ctx, &k, &ma, &mb, true)
        .expect("finalize")
        .tile
        .expect("tile");
    let mut worst = 0.0f64;
    for i in 0..NA {
        for j in 0..NB {
            let e = c[i * NB + j] / (qa[i] * qb[j]).sqrt();
            worst = worst.max((got[i * NB + j] as f64 - e).abs());
        }
    }
    println!("max |corr error| over {TOKENS} tokens: {worst:.2e}");
    // Measured 2.9e-6 on lavapipe.
    assert!(worst <= 3e-5, "max abs error {worst}");
    // The correlations are not trivial (the test would be weak if all were ~0).
    assert!(c.iter().any(|v| (v / n).abs() > 0.1));
}
