//! The paper's "random rotation" baseline: per layer a d_mlp × d_mlp Gaussian matrix with
//! unit-norm rows (not orthogonal), mixing each layer of the other model within itself.

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};

/// The rotation of layer `layer` of model `model` under `seed`: `[d, d]` row-major, every row
/// of unit L2 norm. A rotated neuron is `Σ_j R[i, j] x_j`. Deterministic in its arguments (the
/// manifest records the seed, so a bundle can be reproduced).
pub fn rotation_matrix(d: usize, seed: u64, model: usize, layer: usize) -> Vec<f32> {
    let stream = seed
        ^ (model as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (layer as u64)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(17);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(stream);
    let mut r = vec![0.0f32; d * d];
    for row in r.chunks_exact_mut(d.max(1)) {
        let mut norm = 0.0f64;
        let draws: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        for v in &draws {
            norm += v * v;
        }
        let inv = if norm > 0.0 { 1.0 / norm.sqrt() } else { 0.0 };
        for (o, v) in row.iter_mut().zip(draws) {
            *o = (v * inv) as f32;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unit_norm_and_seeds_differ() {
        let a = rotation_matrix(64, 1, 0, 0);
        for row in a.chunks_exact(64) {
            let n: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
        assert_eq!(a, rotation_matrix(64, 1, 0, 0));
        assert_ne!(a, rotation_matrix(64, 2, 0, 0));
        assert_ne!(a, rotation_matrix(64, 1, 1, 0));
        assert_ne!(a, rotation_matrix(64, 1, 0, 1));
    }
}
