//! Rotary position embeddings, "rotate-half" convention, with explicit position ids.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};

/// Inverse frequencies of default (unscaled) RoPE for one base θ, in float32 as HF computes them.
#[derive(Debug, Clone)]
pub struct RopeTables {
    inv_freq: Vec<f32>,
}

impl RopeTables {
    /// `inv_freq[i] = 1 / θ^(2i/dim)` in float32, `i = 0..dim/2`.
    pub fn new(theta: f64, dim: usize) -> Self {
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                1.0f32 / (theta as f32).powf(exponent)
            })
            .collect();
        Self { inv_freq }
    }

    /// Rotary width (= head dim).
    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// `cos` and `sin` tables `[B, T, 1, dim]` for positions `[B][T]`: angles and their cos/sin
    /// in float32, then cast to `dtype` (HF casts before applying the rotation).
    pub fn cos_sin<B: Backend>(
        &self,
        positions: &[Vec<i64>],
        device: &B::Device,
        dtype: DType,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, |p| p.len());
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(b * t * dim);
        let mut sin = Vec::with_capacity(b * t * dim);
        for row in positions {
            assert_eq!(row.len(), t, "position rows must have equal length");
            for &p in row {
                let start = cos.len();
                for &f in &self.inv_freq {
                    let a = (p as f32) * f;
                    cos.push((a as f64).cos() as f32);
                    sin.push((a as f64).sin() as f32);
                }
                cos.extend_from_within(start..start + half);
                sin.extend_from_within(start..start + half);
            }
        }
        let mk = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [b, t, 1, dim]), (device, DType::F32))
                .cast(dtype)
        };
        (mk(cos), mk(sin))
    }
}

/// `rotate_half([x1, x2]) = [−x2, x1]` over the last dimension.
pub fn rotate_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    let x1 = x.clone().narrow(D - 1, 0, d / 2);
    let x2 = x.narrow(D - 1, d / 2, d - d / 2);
    Tensor::cat(vec![x2.neg(), x1], D - 1)
}

/// Apply RoPE to `x` `[B, T, H, D]` with tables `[B, T, 1, D]`.
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::CpuBackend;

    #[test]
    fn rotation_preserves_norm_and_matches_formula() {
        let dev = Default::default();
        let t = RopeTables::new(10_000.0, 4);
        let (cos, sin) = t.cos_sin::<B>(&[vec![0, 3]], &dev, DType::F32);
        let x =
            Tensor::<B, 4>::from_floats([[[[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 3.0, 4.0]]]], &dev);
        let y = apply_rope(x, &cos, &sin)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // position 0 is the identity
        assert_eq!(&y[..4], &[1.0, 2.0, 3.0, 4.0]);
        // position 3: pairs (x0, x2) rotate by 3·1, (x1, x3) by 3·0.01
        let (a0, a1): (f64, f64) = (3.0, 3.0 * 0.01);
        let want = [
            1.0 * a0.cos() - 3.0 * a0.sin(),
            2.0 * a1.cos() - 4.0 * a1.sin(),
            3.0 * a0.cos() + 1.0 * a0.sin(),
            4.0 * a1.cos() + 2.0 * a1.sin(),
        ];
        for (g, w) in y[4..].iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
