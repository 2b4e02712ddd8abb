//! The rotation baseline in closed form ([`crate::plan::derives_baseline`]): the correlations
//! of anchor columns with a layer's rotated columns, from their real co-moments with the layer
//! and the layer's own covariance, without the rotated activations.

use ndarray::ArrayView2;
use rayon::prelude::*;
use seedscope_gpu::TileReduction;
use seedscope_model::matmul::{matmul, matmul_add};

use super::{inv_scale, reduce_rows};
use crate::AnalysisError;

/// One layer's rotation and the scale of each of its rotated columns.
#[derive(Debug, Clone)]
pub struct RotatedLayer {
    /// The rotation as drawn, `[d, d]` row-major (f32, so it is exact in either precision).
    r: Vec<f32>,
    /// The Euclidean norm of each of its rows: what bounds the error of an f32 product with it.
    r_norms: Vec<f64>,
    /// `1/sqrt(M2)` of each rotated column, 0 for a constant one (as the accumulators' own
    /// scales).
    scales: Vec<f64>,
}

impl RotatedLayer {
    /// The layer of rotation `r` (`[d, d]` row-major; rotated column `i` is `Σ_j r[i, j] x_j`)
    /// over `n` rows whose columns have means `means` (`d`) and co-moments `sigma` (`[d, d]`,
    /// centred sums of products). A rotated column's mean is `r_i · means` and its centred sum
    /// of squares `r_i Σ r_iᵀ` ([`quadratic_forms`], in f64: every correlation of the column is
    /// divided by its root).
    pub fn new(r: &[f32], sigma: &[f64], means: &[f64], n: u64) -> Result<Self, AnalysisError> {
        let d = means.len();
        if r.len() != d * d || sigma.len() != d * d {
            return Err(AnalysisError::Invalid(format!(
                "a derived baseline needs a {d} x {d} rotation and covariance, got {} and {} \
                 values",
                r.len(),
                sigma.len()
            )));
        }
        let r64: Vec<f64> = r.iter().map(|&v| f64::from(v)).collect();
        let m2 = quadratic_forms(&r64, sigma, d);
        let (scales, r_norms) = r64
            .chunks_exact(d.max(1))
            .zip(m2)
            .map(|(row, m2)| {
                let mean = row.iter().zip(means).map(|(a, b)| a * b).sum::<f64>();
                (
                    inv_scale(mean, m2, n),
                    row.iter().map(|v| v * v).sum::<f64>().sqrt(),
                )
            })
            .unzip();
        Ok(Self {
            r: r.to_vec(),
            r_norms,
            scales,
        })
    }

    /// Columns of the layer.
    pub fn width(&self) -> usize {
        self.scales.len()
    }

    /// What the accumulators' reduction of the rotated tile would give: anchor columns of
    /// scales `ia` whose real co-moments with the layer are `c` (`[ia.len(), d]`), rotated as
    /// `c rᵀ`.
    ///
    /// The product runs in f32 (twice the f64 GEMM's rate on a CPU), each anchor row scaled by
    /// its `ia` first so that its values are correlation-sized. Its error has a bound: a dot
    /// product of `d` terms rounded in f32, in any order, is off by at most `γ_d Σ|x_k||r_k|`
    /// (`γ_d = d·u / (1 - d·u)`, `u = 2⁻²⁴`), which Cauchy-Schwarz bounds by `γ_d |x| |r|`,
    /// and rounding the row to f32 adds `u |x| |r|`. So each row's extremes are settled in f64:
    /// the columns whose value could, within their bound, be the row's largest (or smallest)
    /// are computed again as f64 dot products of the co-moments with the rotation, and the
    /// largest of those is the row's maximum, as an f64 product of the whole tile would give
    /// it. The tile's other correlations (a heatmap's, the candidates') are the f32 product's,
    /// within the same bound (about 1e-6 at GPT-2 width).
    pub fn reduce(
        &self,
        c: &[f64],
        ia: &[f64],
        with_tile: bool,
    ) -> Result<TileReduction, AnalysisError> {
        let d = self.width();
        if c.len() != ia.len() * d {
            return Err(AnalysisError::Invalid(format!(
                "a derived baseline's tile has {} values for {} x {d}",
                c.len(),
                ia.len()
            )));
        }
        let na = ia.len();
        let mut x = vec![0.0f32; na * d];
        let mut x_norms = vec![0.0f64; na];
        x.par_chunks_mut(d.max(1))
            .zip(c.par_chunks(d.max(1)))
            .zip(ia.par_iter().zip(x_norms.par_iter_mut()))
            .for_each(|((x, c), (&s, norm))| {
                let mut sq = 0.0;
                for (x, &c) in x.iter_mut().zip(c) {
                    let v = c * s;
                    *x = v as f32;
                    sq += v * v;
                }
                *norm = sq.sqrt();
            });
        let x = ArrayView2::from_shape((na, d), &x[..]).expect("na x d values");
        let r = ArrayView2::from_shape((d, d), &self.r[..]).expect("a d x d rotation");
        let mut rotated = vec![0.0f32; na * d];
        matmul(x, r.t(), &mut rotated);
        let mut red = reduce_rows(
            &rotated,
            &vec![1.0; na],
            &self.scales,
            with_tile.then(Vec::new),
        );
        self.settle(&mut red, &rotated, c, ia, &x_norms);
        Ok(red)
    }

    /// Settle each row's extremes of `red` in f64 ([`RotatedLayer::reduce`]): `rotated` is the
    /// f32 product of the anchor rows `c · ia` (norms `x_norms`) with the rotation.
    fn settle(
        &self,
        red: &mut TileReduction,
        rotated: &[f32],
        c: &[f64],
        ia: &[f64],
        x_norms: &[f64],
    ) {
        let d = self.width().max(1);
        // γ of d + 2 roundings (the product's d, the row's conversion, one to spare), and a
        // hundredth more for the f64 arithmetic of the bounds themselves.
        let u = f64::from(f32::EPSILON) / 2.0;
        let n = (d + 2) as f64;
        let gamma = n * u / (1.0 - n * u) * 1.01;
        let (s, rn) = (&self.scales, &self.r_norms);
        let exact = |i: usize, j: usize| -> f64 {
            let (ci, rj) = (&c[i * d..(i + 1) * d], &self.r[j * d..(j + 1) * d]);
            let dot: f64 = ci.iter().zip(rj).map(|(&a, &b)| a * f64::from(b)).sum();
            (dot * ia[i] * s[j]).clamp(-1.0, 1.0)
        };
        red.max
            .par_iter_mut()
            .zip(red.argmax.par_iter_mut())
            .zip(red.min.par_iter_mut().zip(red.argmin.par_iter_mut()))
            .enumerate()
            .for_each(|(i, ((max, argmax), (min, argmin)))| {
                let row = &rotated[i * d..(i + 1) * d];
                let bound = gamma * x_norms[i];
                let value = |j: usize| f64::from(row[j]) * s[j];
                let error = |j: usize| bound * rn[j] * s[j];
                // What the row's true maximum is at least, and its minimum at most.
                let (mut floor, mut ceiling) = (f64::NEG_INFINITY, f64::INFINITY);
                for j in 0..row.len() {
                    let (v, e) = (value(j), error(j));
                    floor = floor.max(v - e);
                    ceiling = ceiling.min(v + e);
                }
                // Every column that may reach them, in column order (a tie keeps the first, as
                // the reduction does). A value without error is exact already: a constant
                // rotated column's (scale 0) and every value of a constant anchor row (all 0),
                // so rows and layers of constant neurons cost no f64 products.
                let (mut best, mut bj, mut worst, mut wj) = (-2.0f64, 0, 2.0f64, 0);
                for j in 0..row.len() {
                    let (v, e) = (value(j), error(j));
                    let (up, down) = (v + e >= floor, v - e <= ceiling);
                    if !(up || down) {
                        continue;
                    }
                    let t = if e > 0.0 {
                        exact(i, j)
                    } else {
                        v.clamp(-1.0, 1.0)
                    };
                    if up && t > best {
                        (best, bj) = (t, j);
                    }
                    if down && t < worst {
                        (worst, wj) = (t, j);
                    }
                }
                if !row.is_empty() {
                    (*max, *argmax, *min, *argmin) =
                        (best as f32, bj as u32, worst as f32, wj as u32);
                }
            });
    }
}

/// Each row's `r_i Σ r_iᵀ` (`r`, `sigma`: `[d, d]` row-major, `sigma` symmetric), in f64,
/// from the blocks of Σ on and above its diagonal: with U its upper triangle (diagonal
/// included), `r Σ rᵀ = 2 r U rᵀ - Σ_k r_k² Σ_kk`, and a band of R U's columns needs only the
/// rows of Σ above the band and the upper triangle of its diagonal block, so the products
/// multiply a little over half of what `R Σ` would (9/16 at eight bands).
fn quadratic_forms(r: &[f64], sigma: &[f64], d: usize) -> Vec<f64> {
    use ndarray::s;
    let mut m2: Vec<f64> = r
        .chunks_exact(d.max(1))
        .map(|row| {
            -row.iter()
                .enumerate()
                .map(|(k, v)| v * v * sigma[k * d + k])
                .sum::<f64>()
        })
        .collect();
    let (rv, sv) = (square(r, d), square(sigma, d));
    let band = d.div_ceil(8).max(128).min(d.max(1));
    let mut ru = vec![0.0; d * band];
    let mut block = vec![0.0; band * band];
    for c0 in (0..d).step_by(band) {
        let c1 = (c0 + band).min(d);
        let w = c1 - c0;
        // The diagonal block's upper triangle.
        let block = &mut block[..w * w];
        for (a, row) in block.chunks_exact_mut(w).enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = if a <= b { sv[[c0 + a, c0 + b]] } else { 0.0 };
            }
        }
        // Columns c0..c1 of R U.
        let ru = &mut ru[..d * w];
        let block = ArrayView2::from_shape((w, w), &block[..]).expect("w x w values");
        matmul(rv.slice(s![.., c0..c1]), block, ru);
        if c0 > 0 {
            matmul_add(rv.slice(s![.., ..c0]), sv.slice(s![..c0, c0..c1]), ru);
        }
        m2.par_iter_mut()
            .zip(r.par_chunks_exact(d).zip(ru.par_chunks_exact(w)))
            .for_each(|(m2, (row, ru))| {
                *m2 += 2.0
                    * row[c0..c1]
                        .iter()
                        .zip(ru.iter())
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
            });
    }
    m2
}

/// `v` as a `[d, d]` view (`v` is `d * d` long).
fn square(v: &[f64], d: usize) -> ArrayView2<'_, f64> {
    ArrayView2::from_shape((d, d), v).expect("a d x d matrix")
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::accum::{Accumulate, CpuAccumulator, Finish};
    use crate::plan::TileSpec;

    /// The derived baseline gives what streaming the rotated activations gives: the same
    /// correlations (to the f32 rounding of the rotated block), extremes and best columns,
    /// over blocks with different means.
    #[test]
    fn the_derived_baseline_is_the_streamed_one() {
        let (na, d, rows) = (7, 9, 50);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
        let r = crate::rotation::rotation_matrix(d, 5, 1, 0);
        let rt = Array2::from_shape_vec((d, d), r.clone())
            .expect("r")
            .reversed_axes();
        // Stream 0: the anchor, 1: the other layer, 2: its rotation.
        let specs = vec![
            TileSpec::dense(0, 0..na, 1, 0..d),
            TileSpec::dense(0, 0..na, 2, 0..d),
            TileSpec::covariance(1, 0..d),
        ];
        let mut acc = CpuAccumulator::new(specs, &[na, d, d]);
        for shift in [0.0f32, 3.0, -1.5] {
            let b = Array2::from_shape_fn((rows, d), |(_, j)| {
                rng.random::<f32>() + shift * j as f32 / d as f32
            });
            // The anchor follows a few of the layer's columns, plus noise.
            let a = Array2::from_shape_fn((rows, na), |(t, i)| {
                b[[t, i % d]] * (i as f32 - 3.0) + 0.3 * rng.random::<f32>() + shift
            });
            let rotated = b.dot(&rt);
            acc.update(&[Some(a), Some(b), Some(rotated)])
                .expect("update");
        }
        let n = acc.count();
        let moments = |s| pollster::block_on(acc.mean_var(s)).expect("moments");
        let ia = pollster::block_on(acc.inv_scales(0)).expect("scales");
        let means: Vec<f64> = moments(1).iter().map(|x| x.0).collect();
        let sigma = pollster::block_on(acc.co_moments(2)).expect("covariance");
        let layer = RotatedLayer::new(&r, &sigma, &means, n).expect("layer");
        let real = pollster::block_on(acc.co_moments(0)).expect("real");
        let derived = layer.reduce(&real, &ia, true).expect("derived");
        let streamed = crate::accum::finalized(&acc, |k| match k {
            1 => Finish::WithTile,
            _ => Finish::Skip,
        })
        .swap_remove(1)
        .expect("the streamed tile");
        let (dt, st) = (derived.tile.expect("tile"), streamed.tile.expect("tile"));
        let err = dt
            .iter()
            .zip(&st)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        println!("derived vs streamed baseline: {err:.1e}");
        // The tile is the f32 product's (measured 5.3e-7; 6.0e-8 when it was an f64 one).
        assert!(err < 5e-6, "{err}");
        assert!(
            st.iter().any(|v| v.abs() > 0.3),
            "the tile is not all noise"
        );
        assert_eq!(derived.argmax, streamed.argmax);
        assert_eq!(derived.argmin, streamed.argmin);
        let rows_err = derived
            .max
            .iter()
            .zip(&streamed.max)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        println!("derived vs streamed extremes: {rows_err:.1e}");
        assert!(rows_err < 6e-7, "{rows_err}");
        // Shapes that do not fit are errors, not panics.
        assert!(RotatedLayer::new(&r[1..], &sigma, &means, n).is_err());
        assert!(layer.reduce(&real[1..], &ia, false).is_err());
    }

    /// Each row's extremes are those of the whole product in f64, also where the f32 product
    /// cannot tell two columns apart: here rotated column 1 is column 0 nudged by a few units
    /// in the last place of f32, and every anchor row follows column 0, so in each row the two
    /// are the largest values and a hair apart.
    #[test]
    fn extremes_are_settled_in_f64_where_the_f32_product_cannot_tell_columns_apart() {
        let (na, d, rows) = (64, 300, 700);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(11);
        let mut r = crate::rotation::rotation_matrix(d, 9, 0, 0);
        for k in 0..d {
            r[d + k] = r[k] * (1.0 + 4e-7 * (rng.random::<f32>() - 0.5));
        }
        let x = Array2::from_shape_fn((rows, d), |(_, j)| {
            rng.random::<f64>() * (1.0 + (j % 5) as f64)
        });
        let along: Vec<f64> = x
            .rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(&r[..d])
                    .map(|(a, &b)| a * f64::from(b))
                    .sum()
            })
            .collect();
        let a = Array2::from_shape_fn((rows, na), |(t, i)| {
            along[t] * (1.0 + i as f64 / 8.0) + 0.05 * rng.random::<f64>()
        });
        // Centred sums: the anchor's and the layer's co-moments, and the layer's covariance.
        let centre = |m: &Array2<f64>| {
            let mean = m.mean_axis(ndarray::Axis(0)).expect("rows");
            (m - &mean, mean)
        };
        let ((ac, _), (xc, mean)) = (centre(&a), centre(&x));
        let c = ac.t().dot(&xc);
        let sigma = xc.t().dot(&xc);
        let mut ia: Vec<f64> = ac
            .columns()
            .into_iter()
            .map(|col| 1.0 / col.dot(&col).sqrt())
            .collect();
        // As a constant anchor neuron's: every correlation 0.
        ia[5] = 0.0;
        let (c, sigma) = (c.as_standard_layout(), sigma.as_standard_layout());
        let (c, sigma) = (c.as_slice().expect("c"), sigma.as_slice().expect("sigma"));
        let layer = RotatedLayer::new(&r, sigma, mean.as_slice().expect("means"), rows as u64)
            .expect("layer");
        let got = layer.reduce(c, &ia, false).expect("reduce");
        // The whole product in f64, reduced as the accumulators reduce a tile.
        let r64: Vec<f64> = r.iter().map(|&v| f64::from(v)).collect();
        let c_view = ArrayView2::from_shape((na, d), c).expect("c");
        let want_tile = c_view.dot(&square(&r64, d).t());
        let want = reduce_rows(
            want_tile.as_slice().expect("tile"),
            &ia,
            &layer.scales,
            None,
        );
        assert_eq!(got.max, want.max);
        assert_eq!(got.argmax, want.argmax);
        assert_eq!(got.min, want.min);
        assert_eq!(got.argmin, want.argmin);
        // The f32 product alone does mistake the two columns somewhere (so the settling is
        // what made the rows agree), and the columns are the rows' best.
        let x32: Vec<f32> = c
            .chunks_exact(d)
            .zip(&ia)
            .flat_map(|(row, &s)| row.iter().map(move |&v| (v * s) as f32))
            .collect();
        let mut p = vec![0.0f32; na * d];
        let r_view = ArrayView2::from_shape((d, d), &r[..]).expect("r");
        matmul(
            ArrayView2::from_shape((na, d), &x32[..]).expect("x"),
            r_view.t(),
            &mut p,
        );
        let f32_only = reduce_rows(&p, &vec![1.0; na], &layer.scales, None);
        assert!(want.argmax.iter().all(|&j| j < 2), "{:?}", want.argmax);
        let mistaken = (0..na)
            .filter(|&i| f32_only.argmax[i] != want.argmax[i])
            .count();
        println!("rows whose best column the f32 product alone got wrong: {mistaken} of {na}");
        assert!(mistaken > 0);
        assert_eq!(
            (got.max[5], got.argmax[5], got.min[5], got.argmin[5]),
            (0.0, 0, 0.0, 0)
        );
        // A layer of constant neurons: every correlation 0, the first column at both ends.
        let constant =
            RotatedLayer::new(&r, &vec![0.0; d * d], &vec![1.0; d], rows as u64).expect("layer");
        let got = constant.reduce(c, &ia, false).expect("reduce");
        assert!(got.max.iter().chain(&got.min).all(|&v| v == 0.0));
        assert!(got.argmax.iter().chain(&got.argmin).all(|&j| j == 0));
    }

    /// The banded quadratic forms are those of the whole product `R Σ`, with bands of every
    /// kind: one narrower than a band, whole bands, and a last partial band.
    #[test]
    fn quadratic_forms_are_those_of_the_whole_product() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        for d in [1usize, 9, 300, 1100] {
            let x = Array2::from_shape_fn((d + 7, d), |(_, j)| {
                rng.random::<f64>() * (1.0 + (j % 3) as f64)
            });
            let sigma = x.t().dot(&x);
            let sigma = sigma.as_standard_layout();
            let sigma = sigma.as_slice().expect("sigma");
            let r: Vec<f64> = crate::rotation::rotation_matrix(d, 2, 0, 0)
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let rs = square(&r, d).dot(&square(sigma, d));
            let got = quadratic_forms(&r, sigma, d);
            for (i, (row, got)) in r.chunks_exact(d).zip(got).enumerate() {
                let want: f64 = row.iter().zip(rs.row(i)).map(|(a, b)| a * b).sum();
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs(),
                    "d {d}, row {i}: {got} vs {want}"
                );
            }
        }
    }
}
