//! The kernels' CPU twins: the algorithm of `histogram.wgsl` and `anatomy.wgsl` on the host.
//! The CPU path of the analysis runs these very functions, and each kernel is tested against
//! its twin (`tests/kernels.rs`), so what the test checks is what production computes.
//! (`moments.wgsl`, `cross.wgsl`, `finalize.wgsl` and `pairs.wgsl` are checked against the
//! exact f64 correlations of [`crate::reference`].) [`cross_f16_block`] is the arithmetic of
//! `cross_coop.wgsl`'s block product, which bounds that kernel's error over many tokens
//! (`tests/numerics.rs`) on machines whose adapters have no cooperative matrices.

use crate::{AnatomyState, NO_TOKEN};

/// A block-centred activation as `cross_coop.wgsl` feeds it to the matrix units: clamped to
/// the finite f16 range and rounded to f16 (to nearest).
pub fn coop_input(v: f32) -> f32 {
    half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32()
}

/// `cross_coop.wgsl`'s product of one block on the host: `out[i * nb + j] = Σ_t
/// f16(a[t, i] − a_mean[i]) · f16(b[t, j] − b_mean[j])` with f32 sums (a product of two f16
/// values is exact in f32), `a` `[rows, na]` and `b` `[rows, nb]` row-major. The kernel then
/// merges it like `cross.wgsl`'s f32 product (Chan's correction, Kahan pairs).
pub fn cross_f16_block(
    a: &[f32],
    na: usize,
    a_mean: &[f32],
    b: &[f32],
    nb: usize,
    b_mean: &[f32],
) -> Vec<f32> {
    let rows = a.len().checked_div(na).unwrap_or(0);
    let mut out = vec![0.0f32; na * nb];
    let mut y = vec![0.0f32; nb];
    for t in 0..rows {
        for (j, v) in y.iter_mut().enumerate() {
            *v = coop_input(b[t * nb + j] - b_mean[j]);
        }
        for i in 0..na {
            let x = coop_input(a[t * na + i] - a_mean[i]);
            for (o, &v) in out[i * nb..(i + 1) * nb].iter_mut().zip(&y) {
                *o += x * v;
            }
        }
    }
    out
}

/// The 256 fixed edges `numpy.linspace(-10, 15, 256)` rounded to f32 (the kernel receives
/// these values, so both paths compare against the same numbers).
pub fn hist_edges() -> Vec<f32> {
    (0..256)
        .map(|i| (-10.0 + 25.0 * i as f64 / 255.0) as f32)
        .collect()
}

/// The bin of `x` among the sorted `edges`, as `numpy.searchsorted(edges, x, side="left")`
/// (the number of edges below `x`); NaN goes after every edge. `histogram.wgsl` finds it by
/// binary search; here a guess from the first and last edge (exact up to rounding for evenly
/// spaced edges, as [`hist_edges`] are) is moved until it is that number, so the answer is
/// the same for any sorted edges and costs two comparisons instead of eight unpredictable
/// branches.
pub fn hist_bin(x: f32, edges: &[f32]) -> usize {
    let n = edges.len();
    if x.is_nan() {
        return n;
    }
    let (Some(&lo), Some(&hi)) = (edges.first(), edges.last()) else {
        return 0;
    };
    let span = hi - lo;
    // `as usize` saturates: below the first edge it is 0, above the last (or ±inf) n.
    let mut g = if span > 0.0 {
        (((x - lo) / span * (n - 1) as f32).ceil() as usize).min(n)
    } else {
        0
    };
    while g > 0 && edges[g - 1] >= x {
        g -= 1;
    }
    while g < n && edges[g] < x {
        g += 1;
    }
    g
}

/// `histogram.wgsl` on the host: count every value of `x` (`[rows, width]`, row-major) into
/// `counts` (`[width, HIST_BINS]`).
pub fn histogram_update(counts: &mut [u32], x: &[f32], width: usize, edges: &[f32]) {
    histogram_update_columns(counts, x, width, 0, edges);
}

/// [`histogram_update`] for a run of columns: `counts` holds the histograms of columns
/// `first..first + counts.len() / bins` of `x`, and only those are counted. Callers on several
/// threads give each a disjoint run (integer counts: the same totals at any split).
pub fn histogram_update_columns(
    counts: &mut [u32],
    x: &[f32],
    width: usize,
    first: usize,
    edges: &[f32],
) {
    let bins = edges.len() + 1;
    let cols = first..first + counts.len() / bins;
    for row in x.chunks_exact(width.max(1)) {
        for (j, &v) in row[cols.clone()].iter().enumerate() {
            counts[j * bins + hist_bin(v, edges)] += 1;
        }
    }
}

/// `anatomy.wgsl` on the host, with f64 sums: accumulate `x` (`[rows, width]`, row-major) into
/// `s`, where `info` holds four u32 per row (position bucket, token id, previous token id or
/// [`NO_TOKEN`], global token index), `current[t]` / `previous[t]` list the features token `t`
/// turns on at its own position and at the next one, and `first` says this is the first block
/// (its first row sets the shifts).
#[allow(clippy::too_many_arguments)]
pub fn anatomy_update(
    s: &mut AnatomyState,
    current: &[Vec<u32>],
    previous: &[Vec<u32>],
    x: &[f32],
    width: usize,
    info: &[u32],
    first: bool,
) {
    anatomy_update_columns(s, current, previous, (x, width), 0..width, info, first);
}

/// [`anatomy_update`] of columns `cols` of the rows of `x` (`width` values each) into `s`,
/// which holds those columns only: what one thread does when the columns are split.
pub fn anatomy_update_columns(
    s: &mut AnatomyState,
    current: &[Vec<u32>],
    previous: &[Vec<u32>],
    (x, width): (&[f32], usize),
    cols: std::ops::Range<usize>,
    info: &[u32],
    first: bool,
) {
    let n = cols.len();
    let k = s.top_val.len() / n.max(1);
    let rows = x.len() / width.max(1);
    if first && rows > 0 {
        s.shift.copy_from_slice(&x[cols.clone()]);
    }
    // Each step goes over the row's columns in one loop (active counts and feature sums
    // vectorise). Every value lands where the kernel puts it, in the same order per entry.
    let mut d = vec![0.0f64; n];
    for (r, inf) in info.chunks_exact(4).enumerate().take(rows) {
        let (pos, tok, prev, index) = (inf[0] as usize, inf[1], inf[2], inf[3]);
        let row = &x[r * width + cols.start..r * width + cols.end];
        let cur = current.get(tok as usize).map_or(&[][..], |v| v);
        let prv = if prev == NO_TOKEN {
            &[][..]
        } else {
            previous.get(prev as usize).map_or(&[][..], |v| v)
        };
        for (a, &v) in s.active[pos * n..(pos + 1) * n].iter_mut().zip(row) {
            *a += u32::from(v > 0.0);
        }
        if k > 0 {
            for (c, &v) in row.iter().enumerate() {
                // Most values are below the column's k-th: one comparison rejects them.
                if v > s.top_val[c * k + k - 1] {
                    insert_ranked(
                        &mut s.top_val[c * k..(c + 1) * k],
                        &mut s.top_idx[c * k..(c + 1) * k],
                        v,
                        index,
                        |x, y| x > y,
                    );
                }
            }
        }
        if cur.is_empty() && prv.is_empty() {
            continue;
        }
        for ((d, &v), &shift) in d.iter_mut().zip(row).zip(&s.shift) {
            *d = (v - shift) as f64;
        }
        for &f in cur.iter().chain(prv) {
            let f = f as usize;
            for (sum, &d) in s.sums[f * n..(f + 1) * n].iter_mut().zip(&d) {
                *sum += d;
            }
        }
    }
}

/// Insert `v` (with its index `i`) into the ranked list `vals` (`idx` alongside), which keeps
/// the `vals.len()` values that come first by `before` in that order, if it belongs there.
/// An equal value goes after those already listed (the earlier token keeps its rank) and NaN
/// never enters. `anatomy.wgsl`'s top-k is this with `before = >`.
pub fn insert_ranked(
    vals: &mut [f32],
    idx: &mut [u32],
    v: f32,
    i: u32,
    before: impl Fn(f32, f32) -> bool,
) {
    let Some(&last) = vals.last() else {
        return;
    };
    if !before(v, last) {
        return;
    }
    let mut j = vals.len() - 1;
    while j > 0 && before(v, vals[j - 1]) {
        vals[j] = vals[j - 1];
        idx[j] = idx[j - 1];
        j -= 1;
    }
    vals[j] = v;
    idx[j] = i;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binning_matches_searchsorted() {
        let e = hist_edges();
        assert_eq!(hist_bin(-20.0, &e), 0);
        assert_eq!(hist_bin(-10.0, &e), 0);
        assert_eq!(hist_bin(e[102], &e), 102);
        assert_eq!(hist_bin(e[102] + 1e-3, &e), 103);
        assert_eq!(hist_bin(20.0, &e), 256);
        assert_eq!(hist_bin(f32::NAN, &e), 256);
    }

    /// The guessed-and-moved bin is the binary search's, at every edge, one ulp either side,
    /// between edges, at the infinities, and for edges that are not evenly spaced.
    #[test]
    fn guessed_bins_are_the_binary_searchs() {
        let even = hist_edges();
        let uneven: Vec<f32> = (0..40).map(|i| (i as f32 / 4.0).powi(3) - 50.0).collect();
        let lone = vec![1.5f32];
        for edges in [&even, &uneven, &lone, &Vec::new()] {
            let mut xs = vec![f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, 0.0];
            for &e in edges {
                xs.extend([e, e.next_up(), e.next_down(), e + 0.1, e - 0.1]);
            }
            xs.extend((0..20_000).map(|i| -60.0 + 1e-2 * i as f32 * 7.3 % 1000.0));
            for x in xs {
                let want = edges.partition_point(|&e| e < x);
                assert_eq!(hist_bin(x, edges), want, "x = {x:e}, {} edges", edges.len());
            }
        }
    }

    #[test]
    fn ranked_lists_keep_the_first_of_equals_and_never_take_nan() {
        let (mut top, mut top_i) = ([f32::NEG_INFINITY; 3], [u32::MAX; 3]);
        let (mut low, mut low_i) = ([f32::INFINITY; 3], [u32::MAX; 3]);
        for (i, v) in [0.5, f32::NAN, 0.9, 0.5, -0.2, 0.7, -0.2]
            .into_iter()
            .enumerate()
        {
            insert_ranked(&mut top, &mut top_i, v, i as u32, |x, y| x > y);
            insert_ranked(&mut low, &mut low_i, v, i as u32, |x, y| x < y);
        }
        assert_eq!((top, top_i), ([0.9, 0.7, 0.5], [2, 5, 0]));
        assert_eq!((low, low_i), ([-0.2, -0.2, 0.5], [4, 6, 0]));
        insert_ranked(&mut [], &mut [], 1.0, 0, |x, y| x > y);
    }
}
