//! The rotation baseline in closed form ([`crate::plan::derives_baseline`]): the correlations
//! of anchor columns with a layer's rotated columns, from their real co-moments with the layer
//! and the layer's own covariance, without the rotated activations.

use ndarray::ArrayView2;
use seedscope_gpu::TileReduction;
use seedscope_model::matmul::matmul;

use super::{inv_scale, reduce_rows};
use crate::AnalysisError;

/// One layer's rotation and the scale of each of its rotated columns.
#[derive(Debug, Clone)]
pub struct RotatedLayer {
    /// The rotation in f64, `[d, d]` row-major.
    r: Vec<f64>,
    /// `1/sqrt(M2)` of each rotated column, 0 for a constant one (as the accumulators' own
    /// scales).
    scales: Vec<f64>,
}

impl RotatedLayer {
    /// The layer of rotation `r` (`[d, d]` row-major; rotated column `i` is `Σ_j r[i, j] x_j`)
    /// over `n` rows whose columns have means `means` (`d`) and co-moments `sigma` (`[d, d]`,
    /// centred sums of products). A rotated column's mean is `r_i · means` and its centred sum
    /// of squares `r_i Σ r_iᵀ`.
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
        let r: Vec<f64> = r.iter().map(|&v| f64::from(v)).collect();
        let mut r_sigma = vec![0.0; d * d];
        matmul(square(&r, d), square(sigma, d), &mut r_sigma);
        let scales = r
            .chunks_exact(d.max(1))
            .zip(r_sigma.chunks_exact(d.max(1)))
            .map(|(row, rs)| {
                let m2 = rs.iter().zip(row).map(|(a, b)| a * b).sum::<f64>();
                let mean = row.iter().zip(means).map(|(a, b)| a * b).sum::<f64>();
                inv_scale(mean, m2, n)
            })
            .collect();
        Ok(Self { r, scales })
    }

    /// Columns of the layer.
    pub fn width(&self) -> usize {
        self.scales.len()
    }

    /// What the accumulators' reduction of the rotated tile would give: anchor columns of
    /// scales `ia` whose real co-moments with the layer are `c` (`[ia.len(), d]`), rotated as
    /// `c rᵀ`.
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
        let c = ArrayView2::from_shape((ia.len(), d), c).expect("checked above");
        let mut rotated = vec![0.0; ia.len() * d];
        matmul(c, square(&self.r, d).t(), &mut rotated);
        Ok(reduce_rows(
            &rotated,
            ia,
            &self.scales,
            with_tile.then(Vec::new),
        ))
    }
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
        // Measured 6.0e-8.
        assert!(err < 6e-7, "{err}");
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
        assert!(rows_err < 6e-7, "{rows_err}");
        // Shapes that do not fit are errors, not panics.
        assert!(RotatedLayer::new(&r[1..], &sigma, &means, n).is_err());
        assert!(layer.reduce(&real[1..], &ia, false).is_err());
    }
}
