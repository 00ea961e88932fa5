//! Rotary position embeddings, "rotate-half" convention, with explicit position ids.

use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

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

    /// `cos` and `sin` tables `[B, T, 1, dim]` for position ids `[B, T]`, computed on the
    /// positions' device: angles `position · inv_freq` and their cos/sin in float32, then cast to
    /// `dtype` (HF casts before applying the rotation).
    pub fn cos_sin<B: Backend>(
        &self,
        positions: Tensor<B, 2, Int>,
        dtype: DType,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t] = positions.dims();
        let device = positions.device();
        let half = self.inv_freq.len();
        let inv = Tensor::<B, 1>::from_data(
            TensorData::new(self.inv_freq.clone(), [half]),
            (&device, DType::F32),
        )
        .reshape([1, 1, half])
        .expand([b, t, half]);
        let angles = positions
            .float()
            .cast(DType::F32)
            .reshape([b, t, 1])
            .expand([b, t, half])
            * inv;
        let table = |x: Tensor<B, 3>| {
            Tensor::cat(vec![x.clone(), x], 2)
                .reshape([b, t, 1, 2 * half])
                .cast(dtype)
        };
        (table(angles.clone().cos()), table(angles.sin()))
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
        let (cos, sin) = t.cos_sin(Tensor::<B, 2, Int>::from_ints([[0, 3]], &dev), DType::F32);
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
