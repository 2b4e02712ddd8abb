//! The f64 reference: straightforward two-pass Pearson correlations, for tests of every kernel
//! and of the streaming CPU path.

/// Pearson correlation of every column of `a` (`[rows, n_a]`, row-major) with every column of
/// `b` (`[rows, n_b]`), in f64 with exact two-pass centring: `[n_a, n_b]`, row-major. A column
/// with zero variance (or a standard deviation below [`crate::REL_ZERO_STD`] of its |mean|)
/// correlates 0 with everything, as in the paper's code.
pub fn correlations(a: &[f32], n_a: usize, b: &[f32], n_b: usize) -> Vec<f64> {
    let rows = a.len().checked_div(n_a).unwrap_or(0);
    let centred = |x: &[f32], n: usize| -> (Vec<f64>, Vec<f64>) {
        let mut mean = vec![0.0f64; n];
        for r in x.chunks_exact(n) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
        let mut c = vec![0.0f64; x.len()];
        let mut ss = vec![0.0f64; n];
        for (cr, r) in c.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            for j in 0..n {
                cr[j] = r[j] as f64 - mean[j];
                ss[j] += cr[j] * cr[j];
            }
        }
        let inv = ss
            .iter()
            .zip(&mean)
            .map(|(&s, &m)| {
                let floor = crate::REL_ZERO_STD as f64 * m;
                if s <= 0.0 || s <= floor * floor * rows as f64 {
                    0.0
                } else {
                    1.0 / s.sqrt()
                }
            })
            .collect();
        (c, inv)
    };
    if n_a == 0 || n_b == 0 {
        return vec![0.0; n_a * n_b];
    }
    let (ca, ia) = centred(a, n_a);
    let (cb, ib) = centred(b, n_b);
    let mut out = vec![0.0f64; n_a * n_b];
    for (ra, rb) in ca.chunks_exact(n_a).zip(cb.chunks_exact(n_b)) {
        for i in 0..n_a {
            let x = ra[i];
            let row = &mut out[i * n_b..(i + 1) * n_b];
            for (o, &y) in row.iter_mut().zip(rb) {
                *o += x * y;
            }
        }
    }
    for i in 0..n_a {
        for j in 0..n_b {
            out[i * n_b + j] = (out[i * n_b + j] * ia[i] * ib[j]).clamp(-1.0, 1.0);
        }
    }
    out
}

/// Per-column mean and centred sum of squares (M2) in f64.
pub fn moments(x: &[f32], n: usize) -> Vec<(f64, f64)> {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let mut mean = vec![0.0f64; n];
    for r in x.chunks_exact(n.max(1)) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
    let mut m2 = vec![0.0f64; n];
    for r in x.chunks_exact(n.max(1)) {
        for j in 0..n {
            let d = r[j] as f64 - mean[j];
            m2[j] += d * d;
        }
    }
    mean.into_iter().zip(m2).collect()
}
