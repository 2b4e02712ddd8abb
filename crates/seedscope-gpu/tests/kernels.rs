//! The WGSL kernels against the f64 reference, on whatever adapter wgpu finds (lavapipe in CI).
//! A missing adapter fails these tests loudly: they exist to run the shaders.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, Normal};
use seedscope_gpu::{
    ActView, CrossKernel, CrossTile, GpuContext, Kernels, Moments, reference, twin,
};

fn ctx() -> GpuContext {
    GpuContext::request().unwrap_or_else(|e| {
        panic!("these tests run WGSL kernels and need a wgpu adapter (lavapipe will do): {e}")
    })
}

/// Random activations `[rows, n]` with per-column means and scales, some columns constant.
fn data(rows: usize, n: usize, seed: u64, mean: f32, constant: &[usize]) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let z = Normal::new(0.0f32, 1.0).expect("normal");
    let shared: Vec<f32> = (0..rows).map(|_| z.sample(&mut rng)).collect();
    let mut x = vec![0.0f32; rows * n];
    for j in 0..n {
        let (mu, scale, mix) = (
            mean * (1.0 + j as f32 * 0.1),
            0.5 + j as f32 * 0.05,
            (j % 5) as f32 * 0.2,
        );
        for t in 0..rows {
            x[t * n + j] = if constant.contains(&j) {
                mu
            } else {
                mu + scale * (mix * shared[t] + (1.0 - mix) * z.sample(&mut rng))
            };
        }
    }
    x
}

/// `rows` cut into blocks of `sizes[0]`, `sizes[1]`, … (cycling; the last block short):
/// `(first row, length)`.
fn blocks(rows: usize, sizes: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut t0 = 0;
    for &size in sizes.iter().cycle() {
        if t0 >= rows {
            break;
        }
        let len = size.min(rows - t0);
        out.push((t0, len));
        t0 += len;
    }
    out
}

/// Stream `a` and `b` through the kernels in blocks of the given sizes; return the finalized
/// tile reduction with the full tile.
fn run_gpu(
    ctx: &GpuContext,
    k: &Kernels,
    a: &[f32],
    na: usize,
    b: &[f32],
    nb: usize,
    block_sizes: &[usize],
) -> seedscope_gpu::TileReduction {
    let mut ma = Moments::new(ctx, na as u32).expect("moments");
    let mut mb = Moments::new(ctx, nb as u32).expect("moments");
    let tile = CrossTile::new(ctx, 0, na as u32, 0, nb as u32).expect("tile");
    let rows = a.len() / na;
    for (t0, len) in blocks(rows, block_sizes) {
        let ba = ctx
            .upload("a", &a[t0 * na..(t0 + len) * na])
            .expect("upload");
        let bb = ctx
            .upload("b", &b[t0 * nb..(t0 + len) * nb])
            .expect("upload");
        let (va, vb) = (ActView::whole(&ba, len, na), ActView::whole(&bb, len, nb));
        tile.merge_pair(ctx, k, va, &mut ma, vb, &mut mb)
            .expect("merge");
    }
    tile.finalize(ctx, k, &ma, &mb, true).expect("finalize")
}

/// Largest error on a correlation the cooperative kernel allows: it rounds each centred
/// activation to f16 (2^-11 relative) before its products, which sum in f32. Measured at worst
/// 6.1e-4 in the property test below (blocks of as few as two tokens), on lavapipe of Mesa 26.1.
const COOPERATIVE_TOL: f64 = 2e-3;

/// The co-moment kernels the device runs, each with the tolerance of a test that allows
/// `f32_tol` to the f32 kernel: the f32 kernel everywhere, and the device's cooperative one
/// where it has one.
fn each_kernel(ctx: &GpuContext, f32_tol: f64) -> Vec<(Kernels, f64)> {
    let mut out = vec![(Kernels::with_cross(ctx, CrossKernel::Fp32), f32_tol)];
    if ctx.cross != CrossKernel::Fp32 {
        out.push((Kernels::new(ctx), COOPERATIVE_TOL));
    }
    out
}

fn check(r: &seedscope_gpu::TileReduction, reference: &[f64], na: usize, nb: usize, tol: f64) {
    let tile = r.tile.as_ref().expect("tile");
    let worst = (0..na * nb)
        .map(|p| (tile[p] as f64 - reference[p]).abs())
        .fold(0.0, f64::max);
    eprintln!("{na}x{nb} tile: max |error| against f64 {worst:.2e}");
    for i in 0..na {
        for j in 0..nb {
            let (g, e) = (tile[i * nb + j] as f64, reference[i * nb + j]);
            assert!(g.is_finite(), "NaN at {i},{j}");
            assert!((g - e).abs() <= tol, "corr[{i},{j}] = {g}, reference {e}");
        }
        let row = &reference[i * nb..(i + 1) * nb];
        let best = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let worst = row.iter().copied().fold(f64::INFINITY, f64::min);
        assert!((r.max[i] as f64 - best).abs() <= tol, "max of row {i}");
        assert!((r.min[i] as f64 - worst).abs() <= tol, "min of row {i}");
        // The argmax points at a maximum (ties within tolerance are allowed).
        assert!(
            (row[r.argmax[i] as usize] - best).abs() <= 2.0 * tol,
            "argmax of row {i}"
        );
        assert!(
            (row[r.argmin[i] as usize] - worst).abs() <= 2.0 * tol,
            "argmin of row {i}"
        );
    }
    // Each column's best anchor row (the other neuron's own best match).
    assert_eq!((r.col_max.len(), r.col_argmax.len()), (nb, nb));
    for j in 0..nb {
        let best = (0..na)
            .map(|i| reference[i * nb + j])
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (r.col_max[j] as f64 - best).abs() <= tol,
            "max of column {j}"
        );
        let at = reference[r.col_argmax[j] as usize * nb + j];
        assert!((at - best).abs() <= 2.0 * tol, "argmax of column {j}");
    }
}

#[test]
fn kernels_match_the_f64_reference_on_odd_shapes_with_large_means() {
    let ctx = ctx();
    let (rows, na, nb) = (1000, 67, 130);
    let a = data(rows, na, 1, 300.0, &[3]);
    let b = data(rows, nb, 2, -50.0, &[0, 129]);
    let e = reference::correlations(&a, na, &b, nb);
    for (k, tol) in each_kernel(&ctx, 2e-5) {
        let r = run_gpu(&ctx, &k, &a, na, &b, nb, &[37, 256, 1, 100]);
        check(&r, &e, na, nb, tol);
        // Constant neurons correlate 0 with everything.
        let tile = r.tile.as_ref().expect("tile");
        assert!((0..nb).all(|j| tile[3 * nb + j] == 0.0));
        assert!((0..na).all(|i| tile[i * nb] == 0.0 && tile[i * nb + 129] == 0.0));
    }
    let k = Kernels::new(&ctx);
    // Moments against the reference too.
    let mut m = Moments::new(&ctx, na as u32).expect("moments");
    let buf = ctx.upload("a", &a).expect("upload");
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    m.update(&ctx, &k, &mut enc, ActView::whole(&buf, rows, na))
        .expect("update");
    ctx.queue.submit([enc.finish()]);
    let (mut mean_err, mut m2_err) = (0f64, 0f64);
    for ((gm, gm2), (em, em2)) in m
        .read(&ctx)
        .expect("read")
        .into_iter()
        .zip(reference::moments(&a, na))
    {
        mean_err = mean_err.max((gm - em).abs() / em.abs().max(1.0));
        m2_err = m2_err.max((gm2 - em2).abs() / em2.max(1.0));
        assert!(
            (gm - em).abs() <= 1e-6 * em.abs().max(1.0),
            "mean {gm} vs {em}"
        );
        assert!(
            // Measured: 1.5e-7 relative on the means, 1.1e-6 on M2.
            (gm2 - em2).abs() <= 1e-5 * em2.max(1.0),
            "M2 {gm2} vs {em2}"
        );
    }
    eprintln!("moments: relative error of means {mean_err:.2e}, of M2 {m2_err:.2e}");
}

/// `cross_coop.wgsl` (cooperative matrices, f16 inputs) against the f64 reference and against
/// its CPU twin, on the shapes of the f32 test. It needs an adapter that lists f16 × f16 → f32
/// fragments (NVIDIA tensor cores, AMD WMMA, Apple GPUs, lavapipe from Mesa 26.1 on: CI runs it
/// there through `scripts/lavapipe_coop.sh`); elsewhere it says so and checks nothing. The same
/// data through the f32 kernel on the same device is the comparison.
#[test]
fn the_cooperative_matrix_kernel_matches_the_f64_reference_where_the_adapter_has_one() {
    let ctx = ctx();
    let CrossKernel::Cooperative { size, invocations } = ctx.cross else {
        let why = format!(
            "the cooperative-matrix co-moment kernel needs an adapter with \
             EXPERIMENTAL_COOPERATIVE_MATRIX, SHADER_F16 and square f16 x f16 -> f32 fragments \
             of 16 or 8; {} ({:?}, {}) offers {:?}",
            ctx.info.name, ctx.info.backend, ctx.info.driver_info, ctx.cross
        );
        // scripts/lavapipe_coop.sh runs the tests on an adapter that has them.
        if std::env::var_os("SEEDSCOPE_EXPECT_COOPERATIVE").is_some() {
            panic!("SEEDSCOPE_EXPECT_COOPERATIVE is set, but {why}");
        }
        eprintln!(
            "NOT RUN: {why} (scripts/lavapipe_coop.sh runs it on lavapipe of Mesa 26.1 or later)"
        );
        return;
    };
    eprintln!("cooperative matrices {size}x{size}, {invocations} invocations per workgroup");
    let coop = Kernels::new(&ctx);
    let fp32 = Kernels::with_cross(&ctx, CrossKernel::Fp32);
    for (rows, na, nb, blocks, mean) in [
        (1000, 67, 130, vec![37, 256, 1, 100], 300.0),
        (4096, 200, 150, vec![4096], -3.0),
    ] {
        let a = data(rows, na, 5, mean, &[3]);
        let b = data(rows, nb, 6, -mean, &[0]);
        let e = reference::correlations(&a, na, &b, nb);
        let r = run_gpu(&ctx, &coop, &a, na, &b, nb, &blocks);
        // f16 inputs: each centred activation within 2^-11 relative.
        check(&r, &e, na, nb, COOPERATIVE_TOL);
        let f = run_gpu(&ctx, &fp32, &a, na, &b, nb, &blocks);
        check(&f, &e, na, nb, 2e-5);
    }
    // Against the twin: one block's co-moments, read back through a zero running total.
    let (rows, na, nb) = (300, 70, 90);
    let a = data(rows, na, 7, 10.0, &[]);
    let b = data(rows, nb, 8, -10.0, &[]);
    // Each matrix's f64 moments: the means (as f32, as the kernels hold them) and M2.
    let (ma, mb) = (reference::moments(&a, na), reference::moments(&b, nb));
    let mean = |m: &[(f64, f64)]| -> Vec<f32> { m.iter().map(|v| v.0 as f32).collect() };
    let twin = twin::cross_f16_block(&a, na, &mean(&ma), &b, nb, &mean(&mb));
    let r = run_gpu(&ctx, &coop, &a, na, &b, nb, &[rows]);
    let qa: Vec<f64> = ma.iter().map(|v| v.1).collect();
    let qb: Vec<f64> = mb.iter().map(|v| v.1).collect();
    let tile = r.tile.expect("tile");
    let mut worst = 0.0f64;
    for i in 0..na {
        for j in 0..nb {
            let want = twin[i * nb + j] as f64 / (qa[i] * qb[j]).sqrt();
            worst = worst.max((tile[i * nb + j] as f64 - want).abs());
        }
    }
    eprintln!("cooperative kernel against its twin: max |corr difference| {worst:.2e}");
    assert!(worst <= 1e-4, "kernel and twin differ by {worst}");
}

/// A cooperative kernel that cannot run on the device (here: one the adapter does not offer,
/// so its shader fails validation) fails its check with wgpu's reason, and the context falls
/// back to the f32 kernel instead of running it. Where the adapter has cooperative matrices
/// this failure cannot be provoked, and the test says so (lavapipe of Mesa 26.1, which lists
/// only 8 x 8 fragments, runs this 16 x 16 kernel, and it passes its check).
#[test]
fn a_cooperative_kernel_that_fails_its_check_leaves_the_f32_kernel() {
    let ctx = ctx();
    if ctx
        .device
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        eprintln!("NOT RUN: {} has cooperative matrices", ctx.info.name);
        return;
    }
    let unusable = CrossKernel::Cooperative {
        size: 16,
        invocations: 32,
    };
    let why = unusable
        .check(&ctx)
        .expect_err("an unusable kernel passed its check");
    eprintln!("check of an unusable cooperative kernel: {why}");
    assert!(why.contains("wgpu reported"), "{why}");
    assert_eq!(
        ctx.clone().with_checked_cross(unusable).cross,
        CrossKernel::Fp32
    );
    assert_eq!(CrossKernel::Fp32.check(&ctx), Ok(()));
}

#[test]
fn a_single_token_gives_zero_correlations_not_nan() {
    let ctx = ctx();
    let k = Kernels::new(&ctx);
    let a = data(1, 5, 3, 1.0, &[]);
    let b = data(1, 70, 4, 1.0, &[]);
    let r = run_gpu(&ctx, &k, &a, 5, &b, 70, &[1]);
    assert!(r.tile.as_ref().expect("tile").iter().all(|&v| v == 0.0));
    assert!(r.max.iter().all(|&v| v == 0.0));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12),
        ..ProptestConfig::default()
    })]

    /// Odd shapes (not multiples of the 64-wide tile or the 16-token step), odd block splits,
    /// through every co-moment kernel the device runs.
    #[test]
    fn the_gemm_kernel_is_right_for_any_shape(
        rows in 1usize..200, na in 1usize..150, nb in 1usize..150, block in 1usize..90,
        mean in -100.0f32..100.0, seed in 0u64..1000,
    ) {
        let ctx = ctx();
        let a = data(rows, na, seed, mean, &[]);
        let b = data(rows, nb, seed + 1, -mean, &[]);
        let e = reference::correlations(&a, na, &b, nb);
        for (k, tol) in each_kernel(&ctx, 5e-5) {
            let r = run_gpu(&ctx, &k, &a, na, &b, nb, &[block]);
            check(&r, &e, na, nb, tol);
        }
    }
}

/// histogram.wgsl counts like numpy.searchsorted(linspace(-10, 15, 256), x, side="left"),
/// across blocks, with values on both sides of the range, on edges and NaN; restore continues.
#[test]
fn the_histogram_kernel_bins_like_searchsorted() {
    use seedscope_gpu::{HIST_BINS, Histogram};
    let ctx = ctx();
    let kernels = Kernels::new(&ctx);
    let (rows, n) = (300usize, 7usize);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let z = Normal::new(0.0f32, 6.0).expect("normal");
    let edges = twin::hist_edges();
    let mut x: Vec<f32> = (0..rows * n)
        .map(|i| z.sample(&mut rng) + (i % n) as f32)
        .collect();
    // Exact edges, the ends, beyond them, and NaN.
    for (k, v) in [
        edges[0],
        edges[102],
        edges[255],
        -10.5,
        15.5,
        1e6,
        -1e6,
        f32::NAN,
    ]
    .into_iter()
    .enumerate()
    {
        x[k * n + 3] = v;
    }
    // The CPU path's own binning (the kernel's twin).
    let mut want = vec![0u32; n * HIST_BINS];
    twin::histogram_update(&mut want, &x, n, &edges);
    let hist = Histogram::new(&ctx, n as u32).expect("histogram");
    let first = ctx.upload("x", &x[..200 * n]).expect("upload");
    hist.update(&ctx, &kernels, &ActView::whole(&first, 200, n))
        .expect("update");
    let saved = hist.read(&ctx).expect("read");
    // A fresh histogram restored from the counts continues where the first left off.
    let resumed = Histogram::new(&ctx, n as u32).expect("histogram");
    resumed.restore(&ctx, &saved).expect("restore");
    let rest = ctx.upload("x", &x[200 * n..]).expect("upload");
    resumed
        .update(&ctx, &kernels, &ActView::whole(&rest, rows - 200, n))
        .expect("update");
    let got = resumed.read(&ctx).expect("read");
    let diff: Vec<(usize, usize, u32, u32)> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i / HIST_BINS, i % HIST_BINS, *a, *b))
        .collect();
    assert!(diff.is_empty(), "(neuron, bin, gpu, reference): {diff:?}");
    assert_eq!(got.iter().map(|&c| c as usize).sum::<usize>(), rows * n);
    // The special values landed where searchsorted puts them.
    assert_eq!(twin::hist_bin(edges[0], &edges), 0);
    assert_eq!(twin::hist_bin(edges[102], &edges), 102);
    assert_eq!(twin::hist_bin(15.5, &edges), 256);
    assert_eq!(twin::hist_bin(f32::NAN, &edges), 256);
}

/// pairs.wgsl: the co-moments of listed column pairs, streamed in odd blocks with the same
/// centring and merge as the dense tile, give the exact f64 correlations at those pairs.
#[test]
fn the_pairs_kernel_matches_the_f64_reference_at_its_pairs() {
    use seedscope_gpu::PairTile;
    let ctx = ctx();
    let k = Kernels::new(&ctx);
    let (rows, na, nb) = (500usize, 37usize, 70usize);
    let a = data(rows, na, 5, 200.0, &[2]);
    let b = data(rows, nb, 6, -30.0, &[]);
    let pairs: Vec<[u32; 2]> = (0..na)
        .flat_map(|i| [(i * 7) % nb, (i * 13 + 5) % nb, nb - 1].map(|j| [i as u32, j as u32]))
        .collect();
    let mut ma = Moments::new(&ctx, na as u32).expect("moments");
    let mut mb = Moments::new(&ctx, nb as u32).expect("moments");
    let tile = PairTile::new(&ctx, &pairs).expect("pairs");
    for (t0, len) in blocks(rows, &[33, 128, 1, 90]) {
        let ba = ctx
            .upload("a", &a[t0 * na..(t0 + len) * na])
            .expect("upload");
        let bb = ctx
            .upload("b", &b[t0 * nb..(t0 + len) * nb])
            .expect("upload");
        let (va, vb) = (ActView::whole(&ba, len, na), ActView::whole(&bb, len, nb));
        let n_prev = ma.count();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        ma.update(&ctx, &k, &mut enc, va).expect("moments");
        mb.update(&ctx, &k, &mut enc, vb).expect("moments");
        let block = seedscope_gpu::BlockPair {
            a: va,
            a_moments: &ma,
            b: vb,
            b_moments: &mb,
            n_prev,
        };
        tile.update(&ctx, &k, &mut enc, &block).expect("pairs");
        ctx.queue.submit([enc.finish()]);
    }
    let (sa, sb) = (ma.read(&ctx).expect("read"), mb.read(&ctx).expect("read"));
    let c = tile.totals().read(&ctx).expect("read");
    let e = reference::correlations(&a, na, &b, nb);
    let mut worst = 0f64;
    for (p, &[i, j]) in pairs.iter().enumerate() {
        let (i, j) = (i as usize, j as usize);
        let co = c[2 * p] as f64 - c[2 * p + 1] as f64;
        let den = (sa[i].1 * sb[j].1).sqrt();
        // Column 2 of `a` is constant: 0, as the paper's code sets it.
        let r = if i == 2 { 0.0 } else { co / den };
        worst = worst.max((r - e[i * nb + j]).abs());
        assert!(
            (r - e[i * nb + j]).abs() <= 2e-5,
            "pair ({i}, {j}): {r} vs {}",
            e[i * nb + j]
        );
    }
    eprintln!("pairs: max |error| against f64 {worst:.2e}");
}

/// anatomy.wgsl against its CPU twin (the function the CPU path runs): feature sums, top
/// activations with their token indices, per-position activity and the shifts, over odd blocks
/// and two column chunks.
#[test]
fn the_anatomy_kernel_matches_its_twin() {
    use seedscope_gpu::{Anatomy, AnatomyState, FeatureTables, NO_TOKEN};
    let ctx = ctx();
    let k = Kernels::new(&ctx);
    let (rows, width, vocab, n_feat, n_pos, top) = (300usize, 40usize, 50usize, 6u32, 8u32, 5u32);
    let x = data(rows, width, 9, 0.2, &[]);
    // Features: token t turns on feature f when t % (f + 2) == 0; the previous token turns on
    // feature (t % 3) + 3.
    let current: Vec<Vec<u32>> = (0..vocab)
        .map(|t| (0..n_feat).filter(|f| t % (*f as usize + 2) == 0).collect())
        .collect();
    let previous: Vec<Vec<u32>> = (0..vocab).map(|t| vec![(t % 3) as u32 + 3]).collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let tokens: Vec<u32> = (0..rows)
        .map(|_| rand::RngExt::random::<u32>(&mut rng) % vocab as u32)
        .collect();
    let info: Vec<u32> = (0..rows)
        .flat_map(|t| {
            let pos = (t % 16) as u32;
            let prev = if pos == 0 { NO_TOKEN } else { tokens[t - 1] };
            [pos % n_pos, tokens[t], prev, t as u32]
        })
        .collect();
    let tables = FeatureTables::new(&ctx, &current, &previous, n_feat).expect("tables");
    let chunks = [(0u32, 23u32), (23, 17)];
    let dev: Vec<Anatomy> = chunks
        .iter()
        .map(|&(c0, n)| Anatomy::new(&ctx, c0, n, top, n_pos, n_feat).expect("anatomy"))
        .collect();
    let mut twin_state = AnatomyState::empty(width as u32, top, n_pos, n_feat);
    for (t0, len) in blocks(rows, &[64, 7, 229]) {
        let block = &x[t0 * width..(t0 + len) * width];
        let part = &info[t0 * 4..(t0 + len) * 4];
        let buf = ctx.upload("x", block).expect("upload");
        for a in &dev {
            a.update(&ctx, &k, &tables, &ActView::whole(&buf, len, width), part)
                .expect("update");
        }
        twin::anatomy_update(
            &mut twin_state,
            &current,
            &previous,
            block,
            width,
            part,
            t0 == 0,
        );
    }
    let kk = top as usize;
    for (a, &(c0, n)) in dev.iter().zip(&chunks) {
        let g = a.read(&ctx).expect("read");
        let (c0, n) = (c0 as usize, n as usize);
        for c in 0..n {
            let w = c0 + c;
            assert_eq!(g.shift[c], twin_state.shift[w], "shift of column {w}");
            assert_eq!(
                g.top_val[c * kk..(c + 1) * kk],
                twin_state.top_val[w * kk..(w + 1) * kk],
                "top activations of column {w}"
            );
            assert_eq!(
                g.top_idx[c * kk..(c + 1) * kk],
                twin_state.top_idx[w * kk..(w + 1) * kk],
                "their tokens, column {w}"
            );
            for p in 0..n_pos as usize {
                assert_eq!(g.active[p * n + c], twin_state.active[p * width + w]);
            }
            for f in 0..n_feat as usize {
                let (gs, ts) = (g.sums[f * n + c], twin_state.sums[f * width + w]);
                assert!(
                    (gs - ts).abs() <= 1e-5 * ts.abs().max(1.0),
                    "feature {f} sum of column {w}: {gs} vs {ts}"
                );
            }
        }
    }
}
