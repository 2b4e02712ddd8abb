//! Runs the operations of Seedscope's forward (matmul in f32 and f16, softmax, GELU, a layer
//! norm) on Burn's Vulkan backend, whose kernels its SPIR-V compiler emits where the adapter
//! has the Vulkan memory model, and checks each against the same computation on the host.
//! Exits non-zero on the first result outside its bound. Run with `BURN_DEVICE=vulkan`.

use burn::tensor::{Device, Distribution, FloatDType, Tensor, activation};

/// The tensor's values as f32.
fn values(t: Tensor<2>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

/// Largest absolute difference.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Print one check and fail the run if it is outside `bound`.
fn check(what: &str, diff: f32, bound: f32) {
    let ok = diff.is_finite() && diff <= bound;
    println!(
        "{} {what}: max |diff| {diff:.3e} (bound {bound:.0e})",
        if ok { "ok  " } else { "FAIL" }
    );
    if !ok {
        std::process::exit(1);
    }
}

fn main() {
    let device = Device::default();
    println!("device: {device:?}");
    let start = std::time::Instant::now();
    for (m, k, n) in [(64, 64, 64), (256, 128, 384), (512, 512, 512)] {
        let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let (av, bv) = (values(a.clone()), values(b.clone()));
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = av[i * k + p];
                for j in 0..n {
                    want[i * n + j] += x * bv[p * n + j];
                }
            }
        }
        let got = values(a.clone().matmul(b.clone()));
        check(
            &format!("matmul f32 {m}x{k}x{n}"),
            max_diff(&got, &want),
            1e-3,
        );
        let half = |t: &Tensor<2>| t.clone().cast(FloatDType::F16);
        let got = values(half(&a).matmul(half(&b)));
        // f16 inputs and output: a relative error of a few 2^-11 of the largest product.
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        check(
            &format!("matmul f16 {m}x{k}x{n}"),
            max_diff(&got, &want),
            4e-3 * scale,
        );
        let mut soft = vec![0f32; m * k];
        for (row, out) in av.chunks(k).zip(soft.chunks_mut(k)) {
            let top = row.iter().copied().fold(f32::MIN, f32::max);
            let z: f32 = row.iter().map(|v| (v - top).exp()).sum();
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v - top).exp() / z;
            }
        }
        check(
            &format!("softmax {m}x{k}"),
            max_diff(&values(activation::softmax(a.clone(), 1)), &soft),
            1e-6,
        );
        let erf_gelu: Vec<f32> = av
            .iter()
            .map(|&x| {
                let x = x as f64;
                (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
            })
            .collect();
        check(
            &format!("gelu {m}x{k}"),
            max_diff(&values(activation::gelu(a.clone())), &erf_gelu),
            1e-4,
        );
        let centred = a.clone() - a.clone().mean_dim(1);
        let norm = centred
            .clone()
            .div((centred.powi_scalar(2).mean_dim(1) + 1e-5).sqrt());
        let mut want_norm = vec![0f32; m * k];
        for (row, out) in av.chunks(k).zip(want_norm.chunks_mut(k)) {
            let mean = row.iter().sum::<f32>() / k as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / k as f32;
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v - mean) / (var + 1e-5).sqrt();
            }
        }
        check(
            &format!("layer norm {m}x{k}"),
            max_diff(&values(norm), &want_norm),
            1e-4,
        );
    }
    println!(
        "all checks passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The error function (Numerical Recipes' erfc fit, fractional error below 1.2e-7).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { 1.0 - r } else { r - 1.0 }
}
