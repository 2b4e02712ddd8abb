//! The small statistics every part of Seedscope uses, written once: quantiles (numpy's linear
//! interpolation), percentiles of a score (scipy's `kind='rank'`), Pearson correlation of
//! paired values, weighted moments, and counts of universal neurons per layer.

/// `q`-quantile (0..=1) of the finite `v` by linear interpolation (numpy's default); NaN if
/// there are none.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    if i + 1 < s.len() {
        s[i] + (s[i + 1] - s[i]) * f
    } else {
        s[i]
    }
}

/// The median of the finite `v` (NaN if there are none).
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The percentile (0-100) of `value` among `values` as `scipy.stats.percentileofscore(kind=
/// 'rank')`: with `left` values below and `right` at most `value`, `(left + right + [right >
/// left]) · 50 / n`. NaNs are left out (and a NaN value gives NaN).
pub fn percentile_of_score(values: &[f64], value: f64) -> f64 {
    Ranks::new(values).percentile(value)
}

/// Values sorted once, for many [`percentile_of_score`] lookups among them.
#[derive(Debug, Clone)]
pub struct Ranks {
    sorted: Vec<f64>,
}

impl Ranks {
    /// The non-NaN `values`, sorted.
    pub fn new(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Self { sorted }
    }

    /// [`percentile_of_score`] of `value` among the values.
    pub fn percentile(&self, value: f64) -> f64 {
        if value.is_nan() {
            return f64::NAN;
        }
        let left = self.sorted.partition_point(|&x| x < value);
        let right = self.sorted.partition_point(|&x| x <= value);
        (left + right + usize::from(right > left)) as f64 * 50.0 / self.sorted.len().max(1) as f64
    }
}

/// Pearson correlation of paired values (NaN with fewer than two pairs, or no spread).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let (mx, my) = (
        x.iter().sum::<f64>() / n as f64,
        y.iter().sum::<f64>() / n as f64,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Mean, variance, skew and (non-excess) kurtosis of a distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Mean.
    pub mean: f64,
    /// Population variance.
    pub var: f64,
    /// m3 / var^1.5.
    pub skew: f64,
    /// m4 / var² (a Gaussian gives 3).
    pub kurt: f64,
}

/// The [`Moments`] of `(value, weight)` pairs (a histogram's bin centres and counts, or
/// values with weight one), in two passes.
pub fn weighted_moments<I>(pairs: I) -> Moments
where
    I: IntoIterator<Item = (f64, f64)>,
    I::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    let (mut n, mut sum) = (0.0, 0.0);
    for (x, w) in pairs.clone() {
        n += w;
        sum += w * x;
    }
    let n = f64::max(n, f64::MIN_POSITIVE);
    let mean = sum / n;
    let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
    for (x, w) in pairs {
        let d = x - mean;
        let d2 = d * d;
        m2 += w * d2;
        m3 += w * d2 * d;
        m4 += w * d2 * d2;
    }
    Moments::of_sums(n, mean, [m2, m3, m4])
}

/// The [`Moments`] of f32 values (each of weight one), in two passes of f64 sums over
/// [`LANES`] interleaved lanes, so they vectorise (one running sum is a chain of dependent
/// adds: a neuron's 50,257 vocabulary cosines took longer to sum than to compute).
pub fn moments(values: &[f32]) -> Moments {
    let n = (values.len() as f64).max(f64::MIN_POSITIVE);
    let (chunks, tail) = (
        values.chunks_exact(LANES),
        values.chunks_exact(LANES).remainder(),
    );
    let mut sum = [0.0f64; LANES];
    for c in chunks.clone() {
        for l in 0..LANES {
            sum[l] += c[l] as f64;
        }
    }
    let mean = (sum.iter().sum::<f64>() + tail.iter().map(|&x| x as f64).sum::<f64>()) / n;
    let (mut m2, mut m3, mut m4) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] as f64 - mean;
            let d2 = d * d;
            m2[l] += d2;
            m3[l] += d2 * d;
            m4[l] += d2 * d2;
        }
    }
    let [mut m2, mut m3, mut m4] = [m2, m3, m4].map(|m| m.iter().sum::<f64>());
    for &x in tail {
        let d = x as f64 - mean;
        m2 += d * d;
        m3 += d * d * d;
        m4 += d * d * d * d;
    }
    Moments::of_sums(n, mean, [m2, m3, m4])
}

impl Moments {
    /// From the total weight `n`, the mean and the centred sums of the 2nd, 3rd and 4th powers.
    fn of_sums(n: f64, mean: f64, [m2, m3, m4]: [f64; 3]) -> Self {
        let var = m2 / n;
        Moments {
            mean,
            var,
            skew: m3 / n / var.powf(1.5),
            kurt: m4 / n / (var * var),
        }
    }
}

/// Interleaved partial sums of [`moments`].
const LANES: usize = 8;

/// Per layer `(universal, total)` of `(layer, universal)` pairs (layers past `n_layers` are
/// left out).
pub fn universal_counts(
    neurons: impl IntoIterator<Item = (usize, bool)>,
    n_layers: usize,
) -> Vec<(usize, usize)> {
    let mut counts = vec![(0usize, 0usize); n_layers];
    for (layer, universal) in neurons {
        if let Some(c) = counts.get_mut(layer) {
            c.0 += usize::from(universal);
            c.1 += 1;
        }
    }
    counts
}

/// The fraction of universal neurons overall and per layer, from per-layer counts.
pub fn universal_fractions(counts: &[(usize, usize)]) -> (f64, Vec<f64>) {
    let (u, t) = counts.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    (
        u as f64 / t.max(1) as f64,
        counts
            .iter()
            .map(|(u, t)| *u as f64 / (*t).max(1) as f64)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_scipys_rank_kind() {
        // scipy.stats.percentileofscore([1, 2, 3, 4], x, kind='rank') for x = 0.5, 3, 9, 2.5.
        let v = [1.0, 2.0, 3.0, 4.0, f64::NAN];
        assert_eq!(percentile_of_score(&v, 0.5), 0.0);
        assert_eq!(percentile_of_score(&v, 3.0), 75.0);
        assert_eq!(percentile_of_score(&v, 9.0), 100.0);
        assert_eq!(percentile_of_score(&v, 2.5), 50.0);
        // Ties average their ranks: [1, 2, 2, 3] at 2 gives 62.5.
        assert_eq!(percentile_of_score(&[1.0, 2.0, 2.0, 3.0], 2.0), 62.5);
        assert!(percentile_of_score(&v, f64::NAN).is_nan());
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.25, 0.5, 1]) = 1, 1.75, 2.5, 4.
        let v = [4.0, 1.0, 3.0, 2.0, f64::NAN];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert!((quantile(&v, 0.1) - 1.3).abs() < 1e-12);
        assert_eq!(median(&v), 2.5);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn pearson_needs_two_pairs_and_spread() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]) - 0.9933992677987828).abs() < 1e-15);
        assert!(pearson(&[1.0], &[2.0]).is_nan());
        assert!(pearson(&[1.0, 1.0], &[2.0, 3.0]).is_nan());
        // Unequal lengths: the common prefix.
        assert_eq!(
            pearson(&[1.0, 2.0, 3.0, 9.0], &[2.0, 4.0, 7.0]),
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0])
        );
    }

    #[test]
    fn weighted_moments_of_a_symmetric_pair() {
        let m = weighted_moments([(-1.0, 5.0), (1.0, 5.0)]);
        assert_eq!((m.mean, m.var, m.skew, m.kurt), (0.0, 1.0, 0.0, 1.0));
    }

    #[test]
    fn moments_of_f32_values_are_the_weighted_moments_of_weight_one() {
        for n in [1usize, 7, 8, 9, 100, 50_257] {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1009) as f32 / 1009.0 - 0.3 + (i % 13 == 0) as u8 as f32)
                .collect();
            let (got, want) = (
                moments(&v),
                weighted_moments(v.iter().map(|&x| (x as f64, 1.0))),
            );
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            assert!(close(got.mean, want.mean), "n {n}: {got:?} vs {want:?}");
            assert!(close(got.var, want.var), "n {n}: {got:?} vs {want:?}");
            if n > 1 {
                assert!(close(got.skew, want.skew), "n {n}: {got:?} vs {want:?}");
                assert!(close(got.kurt, want.kurt), "n {n}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn universal_counts_by_layer() {
        let c = universal_counts([(0, true), (0, false), (1, false), (5, true)], 2);
        assert_eq!(c, vec![(1, 2), (0, 1)]);
        let (all, per) = universal_fractions(&c);
        assert!((all - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(per, vec![0.5, 0.0]);
    }
}
