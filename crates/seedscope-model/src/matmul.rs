//! Matrix products of the CPU path through the `gemm` crate (the GEMM Burn's CPU backend, faer
//! and candle use): it picks its micro-kernel at run time (AVX-512 where the CPU has it and the
//! build enables `gemm`'s `x86-v4`, AVX2/FMA, NEON, wasm SIMD). [`matmul`] splits the work over
//! rayon's threads (the co-moments, the weight statistics); [`matmul_serial`] runs on the
//! calling thread, for work that is already split in parallel tasks (one attention head each).
//! The one `unsafe` call of the CPU path lives here, behind functions that check every extent
//! they pass.

use ndarray::{ArrayView2, ArrayViewMut2, s};

/// The element types [`matmul`] takes: f32 (the co-moments, the vocabulary projection) and f64
/// (the unembedding's Gram matrix). Sealed: `gemm` computes these (it panics on types it
/// does not know).
pub trait Scalar: sealed::Sealed + Copy + Send + Sync + 'static {
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A row-major `[rows, cols]` matrix as a row-major `[cols, rows]` one, in tiles, so neither side
/// is read or written a value per cache line. The GEMM packs its operands in every product, and
/// from a transposed view it gathers them a column at a time: a weight or a rotation that is
/// multiplied many times is laid out once instead (a torch `Linear`'s `[out, in]` weight, a
/// rotation's `Rᵀ`).
pub fn transpose<T: Copy + Default>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    assert_eq!(x.len(), rows * cols, "a {rows} x {cols} matrix");
    let mut out = vec![T::default(); rows * cols];
    for c0 in (0..cols).step_by(TILE) {
        for r in 0..rows {
            let src = &x[r * cols + c0..r * cols + (c0 + TILE).min(cols)];
            for (c, &v) in (c0..).zip(src) {
                out[c * rows + r] = v;
            }
        }
    }
    out
}

/// `out = a b`, `out` row-major `[a.nrows(), b.ncols()]`; `a` and `b` are views of any strides
/// (a transpose, or a column slice of a wider block, as they are). On rayon's threads.
///
/// # Panics
/// If the inner dimensions differ or `out` is not `a.nrows() * b.ncols()` long: a caller's
/// bug, checked before any memory is touched.
pub fn matmul<T: Scalar>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, out: &mut [T]) {
    threaded(a, b, out, Write::Set);
}

/// `out += a b`, `out` row-major `[a.nrows(), b.ncols()]` (a linear layer's output, filled
/// with its bias first). On rayon's threads.
///
/// # Panics
/// As [`matmul`].
pub fn matmul_add<T: Scalar>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, out: &mut [T]) {
    threaded(a, b, out, Write::Add);
}

/// `out = aᵀ a` for `a` `[k, m]` (the Gram matrix of its columns: a covariance, for centred
/// rows), `out` row-major `[m, m]`. It is symmetric, so only the blocks on and above the diagonal
/// are multiplied, a band of rows at a time (five eighths of [`matmul`]'s work at 512 columns,
/// nine sixteenths from 3,072), and the blocks below are their mirror. The bands are
/// independent GEMMs, one per rayon task (one threaded GEMM per band paid more in waiting than
/// the halved work saved).
///
/// # Panics
/// If `out` is not `m * m` long.
pub fn gram<T: Scalar>(a: ArrayView2<'_, T>, out: &mut [T]) {
    grams(vec![(a, out)]);
}

/// [`gram`] of several matrices at once, every band of every product one rayon task, the
/// widest first: a few small products (the embedded family's eight 512-column covariances
/// of a block) keep every thread busy to the end, where one at a time left a thread waiting
/// at the end of each.
///
/// # Panics
/// If an `out` is not `m * m` long for its `a` `[k, m]`.
pub fn grams<T: Scalar>(mut jobs: Vec<(ArrayView2<'_, T>, &mut [T])>) {
    grams_upper(&mut jobs);
    for (a, out) in jobs {
        mirror_upper(out, a.ncols());
    }
}

/// [`grams`] on and above the diagonal only: every entry `(i, j)` with `j >= i` of each `out`
/// is written (and those below it in the diagonal blocks of the bands); the rest is left as
/// it was. For sums that are read only there, or mirrored once after many
/// ([`mirror_upper`]), not after each product.
///
/// # Panics
/// If an `out` is not `m * m` long for its `a` `[k, m]`.
pub fn grams_upper<T: Scalar>(jobs: &mut [(ArrayView2<'_, T>, &mut [T])]) {
    use rayon::prelude::*;
    let band_of = |m: usize| m.div_ceil(GRAM_BANDS).max(GRAM_MIN_BAND);
    let mut bands = Vec::new();
    for (a, out) in jobs.iter_mut() {
        let m = a.ncols();
        assert_eq!(
            out.len(),
            m * m,
            "aᵀ a: out holds {} values, not {m} × {m}",
            out.len()
        );
        if m == 0 {
            continue;
        }
        let band = band_of(m);
        for (i, rows) in out.chunks_mut(band * m).enumerate() {
            bands.push((a.view(), i * band, rows));
        }
    }
    // Widest (first) bands first, so the narrow ones fill in at the end.
    bands.sort_by_key(|(a, r0, _)| std::cmp::Reverse(a.ncols() - r0));
    bands
        .into_par_iter()
        .with_max_len(1)
        .for_each(|(a, r0, rows)| {
            let m = a.ncols();
            let r1 = r0 + rows.len() / m;
            let mut rows =
                ArrayViewMut2::from_shape((r1 - r0, m), rows).expect("a band of whole rows");
            product_into(
                a.slice(s![.., r0..r1]).t(),
                a.slice(s![.., r0..]),
                rows.slice_mut(s![.., r0..]),
                Write::Set,
                ::gemm::Parallelism::None,
            );
        });
}

/// Copy every entry above the diagonal of the row-major `[m, m]` matrix `a` to its mirror
/// below it, in square tiles (a row of the lower triangle reads a column of the upper one).
///
/// # Panics
/// If `a` is not `m * m` long.
pub fn mirror_upper<T: Copy>(a: &mut [T], m: usize) {
    const TILE: usize = 64;
    assert_eq!(a.len(), m * m, "a holds {} values, not {m} × {m}", a.len());
    for i0 in (0..m).step_by(TILE) {
        for j0 in (0..=i0).step_by(TILE) {
            for i in i0..(i0 + TILE).min(m) {
                for j in j0..(j0 + TILE).min(i) {
                    a[i * m + j] = a[j * m + i];
                }
            }
        }
    }
}

/// [`gram`] multiplies bands of `m / GRAM_BANDS` rows, or of [`GRAM_MIN_BAND`] where that is
/// more (narrower ones slow the GEMM more than they save).
const GRAM_BANDS: usize = 8;
/// The narrowest band [`gram`] multiplies.
const GRAM_MIN_BAND: usize = 128;

/// [`matmul`] or [`matmul_add`]: `out` as a row-major view, the product on rayon's threads.
fn threaded<T: Scalar>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, out: &mut [T], write: Write) {
    let (m, n) = (a.nrows(), b.ncols());
    assert_eq!(
        out.len(),
        m * n,
        "a b: out holds {} values, not {m} × {n}",
        out.len()
    );
    let out = ArrayViewMut2::from_shape((m, n), out).expect("length checked above");
    product_into(a, b, out, write, ::gemm::Parallelism::Rayon(0));
}

/// `out = a b` on the calling thread, into a view of any strides (one head's columns of a
/// wider output, say).
///
/// # Panics
/// If the inner dimensions differ or `out` is not `[a.nrows(), b.ncols()]`.
pub fn matmul_serial<T: Scalar>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    out: ArrayViewMut2<'_, T>,
) {
    product_into(a, b, out, Write::Set, ::gemm::Parallelism::None);
}

/// How a product goes into its output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// `out = a b`: the old values are never read.
    Set,
    /// `out += a b`.
    Add,
}

/// `out = a b` or `out += a b` with `gemm` at the given parallelism, after checking every
/// extent.
fn product_into<T: Scalar>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    mut out: ArrayViewMut2<'_, T>,
    write: Write,
    parallelism: ::gemm::Parallelism,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k, "a b: a has {k} columns, b {} rows", b.nrows());
    assert_eq!(
        out.dim(),
        (m, n),
        "a b: out is {:?}, not {m} × {n}",
        out.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if write == Write::Set {
            out.fill(T::ZERO);
        }
        return;
    }
    let (sa, sb) = (a.strides(), b.strides());
    let so = [out.strides()[0], out.strides()[1]];
    // SAFETY: `gemm` reads lhs(i, l) at `a_ptr + i·sa[0] + l·sa[1]` for i < m, l < k, which is
    // a[i, l], and rhs(l, j) at `b_ptr + l·sb[0] + j·sb[1]` for j < n, which is b[l, j]: both
    // are elements of the views (ndarray keeps every index within its dims inside the
    // allocation; `as_ptr` is the element at [0, 0]). It writes dst(i, j) at
    // `out_ptr + i·so[0] + j·so[1]`, i < m, j < n, which is out[i, j] (dims checked above): a
    // mutable view's elements are distinct and borrowed only here; with `read_dst = false`
    // their old values are never read, with `true` each is read once before it is written.
    #[allow(unsafe_code)]
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            so[1],
            so[0],
            write == Write::Add,
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            match write {
                Write::Set => T::ZERO,
                Write::Add => T::ONE,
            },
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled transpose is the transpose, for shapes on and off the tile.
    #[test]
    fn a_transpose_in_tiles_is_the_transpose() {
        for (rows, cols) in [(0, 0), (0, 3), (1, 5), (5, 1), (32, 32), (33, 70), (70, 33)] {
            let x: Vec<u32> = (0..(rows * cols) as u32).collect();
            let t = transpose(&x, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        x[r * cols + c],
                        "{rows} x {cols}: ({r}, {c})"
                    );
                }
            }
        }
    }
    use ndarray::Array2;

    fn filled(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(r, c)| {
            (((r * 131 + c * 71 + salt * 17) % 97) as f64 - 48.0) / 16.0
        })
    }

    #[test]
    fn matches_ndarray_on_transposes_column_slices_and_odd_shapes() {
        for (rows, wa, wb) in [(1, 1, 1), (7, 5, 3), (129, 70, 33), (300, 200, 260)] {
            let (a, b) = (filled(rows, wa, 1), filled(rows, wb, 2));
            // aᵀ b of a column slice of each, as the accumulator passes a tile's columns.
            let (a, b) = (a.slice(s![.., 1.min(wa - 1)..]), b.slice(s![.., ..wb]));
            let want = a.t().dot(&b);
            let mut got = vec![f64::NAN; want.len()];
            matmul(a.t(), b, &mut got);
            let mut got32 = vec![f32::NAN; want.len()];
            let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
            matmul(a32.t(), b32.view(), &mut got32);
            for (w, (g, g32)) in want.iter().zip(got.iter().zip(&got32)) {
                assert!((w - g).abs() < 1e-9, "{rows}x{wa}x{wb}: f64 {g} vs {w}");
                assert!(
                    (w - *g32 as f64).abs() < 1e-3,
                    "{rows}x{wa}x{wb}: f32 {g32} vs {w}"
                );
            }
        }
    }

    /// Several Gram matrices of different widths at once are each the full product.
    #[test]
    fn grams_are_each_the_full_product() {
        let shapes = [(40, 300), (40, 1), (40, 0), (40, 129)];
        let blocks: Vec<Array2<f64>> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(rows, m))| filled(rows, m, i))
            .collect();
        let mut outs: Vec<Vec<f64>> = shapes.iter().map(|&(_, m)| vec![f64::NAN; m * m]).collect();
        grams(
            blocks
                .iter()
                .zip(outs.iter_mut())
                .map(|(a, o)| (a.view(), o.as_mut_slice()))
                .collect(),
        );
        for (a, got) in blocks.iter().zip(&outs) {
            let m = a.ncols();
            for ((i, j), w) in a.t().dot(a).indexed_iter() {
                assert!((w - got[i * m + j]).abs() < 1e-9, "{m} [{i}, {j}]");
            }
        }
    }

    /// On and above the diagonal, [`grams_upper`] is the full product, and it leaves the
    /// entries below the bands' diagonal blocks as they were; [`mirror_upper`] completes it.
    #[test]
    fn the_upper_gram_is_the_product_above_the_diagonal_and_its_mirror_the_rest() {
        for (rows, m) in [(9, 1), (40, 129), (33, 300)] {
            let a = filled(rows, m, 5);
            let want = a.t().dot(&a);
            let mut got = vec![f64::NAN; m * m];
            grams_upper(&mut [(a.view(), got.as_mut_slice())]);
            for ((i, j), w) in want.indexed_iter() {
                let g = got[i * m + j];
                if j >= i {
                    assert!((w - g).abs() < 1e-9, "{m} [{i}, {j}]: {g} vs {w}");
                } else if i - j > 128 {
                    assert!(g.is_nan(), "{m} [{i}, {j}] written below the bands");
                }
            }
            mirror_upper(&mut got, m);
            for ((i, j), w) in want.indexed_iter() {
                let g = got[i * m + j];
                assert!((w - g).abs() < 1e-9, "{m} [{i}, {j}]: {g} vs {w}");
                assert_eq!(g, got[j * m + i], "{m} [{i}, {j}] not symmetric");
            }
        }
    }

    /// The Gram matrix from its bands is the full product, mirror included, at widths of one
    /// band, of several with a short last one, and of one column.
    #[test]
    fn gram_is_the_full_product_of_a_block_with_itself() {
        for (rows, m) in [(9, 1), (50, 100), (70, 300), (33, 1030)] {
            let a = filled(rows, m + 3, 8);
            // A column slice, as the accumulator passes one layer of a wider block.
            let a = a.slice(s![.., 2..m + 2]);
            let want = a.t().dot(&a);
            let mut got = vec![f64::NAN; m * m];
            gram(a, &mut got);
            for ((i, j), w) in want.indexed_iter() {
                let g = got[i * m + j];
                assert!((w - g).abs() < 1e-9, "{rows}x{m} [{i}, {j}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_is_a_zero_product() {
        let (a, b) = (Array2::<f32>::zeros((3, 0)), Array2::<f32>::zeros((0, 2)));
        let mut out = vec![1.0; 6];
        matmul(a.view(), b.view(), &mut out);
        assert_eq!(out, vec![0.0; 6]);
    }

    #[test]
    fn an_added_product_keeps_what_was_there() {
        let (a, b) = (filled(70, 33, 5), filled(33, 129, 6));
        let before = filled(70, 129, 7);
        let want = &before + &a.dot(&b);
        let mut got = before.iter().copied().collect::<Vec<_>>();
        matmul_add(a.view(), b.t().t(), &mut got);
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() < 1e-9, "{g} vs {w}");
        }
        // No inner dimension: nothing added.
        let mut kept = vec![2.5; 6];
        matmul_add(
            Array2::<f64>::zeros((3, 0)).view(),
            Array2::<f64>::zeros((0, 2)).view(),
            &mut kept,
        );
        assert_eq!(kept, vec![2.5; 6]);
    }

    #[test]
    fn serial_product_writes_a_strided_view_and_nothing_else() {
        let (a, b) = (filled(9, 6, 3), filled(6, 5, 4));
        let want = a.dot(&b);
        // Into the odd columns of a wider output, transposed: strides (1, 2·9) not (5, 1).
        let mut wide = Array2::<f64>::from_elem((5, 2 * 9), -7.0);
        matmul_serial(
            a.view(),
            b.view(),
            wide.slice_mut(s![.., 1..;2]).reversed_axes(),
        );
        for ((r, c), &v) in wide.indexed_iter() {
            if c % 2 == 1 {
                assert!((v - want[[c / 2, r]]).abs() < 1e-12, "[{r}, {c}]");
            } else {
                assert_eq!(v, -7.0, "[{r}, {c}] untouched");
            }
        }
    }
}
