//! Rotary position embeddings, "rotate-half" convention, with explicit position ids.

use crate::Backend;
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

/// RoPE tables laid out for `x` `[B, T, H, D]` of a given head count: `cos` and `sin` repeated
/// over the heads into contiguous `[B, T, H, D]` tensors, `sin`'s first half negated (the sign
/// `rotate_half` puts on `x`'s second half). Applying them is then two same-shape
/// multiplications of contiguous tensors, forward and backward, where [`apply_rope`]'s
/// `[B, T, 1, D]` tables broadcast over the heads (which Burn's CPU backend walks element by
/// element, and whose backward reduces over the broadcast). The result is the same floats:
/// `(−x₂)·s` and `x₂·(−s)` round alike.
#[derive(Debug, Clone)]
pub struct RopeForHeads<B: Backend> {
    cos: Tensor<B, 4>,
    sin_signed: Tensor<B, 4>,
}

impl<B: Backend> RopeForHeads<B> {
    /// From [`RopeTables::cos_sin`]'s `[B, T, 1, D]` tables, for `heads` heads.
    pub fn new(cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, heads: usize) -> Self {
        let d = sin.dims()[3];
        let half = d / 2;
        let sin_signed = Tensor::cat(
            vec![
                sin.clone().narrow(3, 0, half).neg(),
                sin.clone().narrow(3, half, d - half),
            ],
            3,
        );
        let repeat = |t: Tensor<B, 4>| Tensor::cat(vec![t; heads], 2);
        Self {
            cos: repeat(cos.clone()),
            sin_signed: repeat(sin_signed),
        }
    }

    /// Head count the tables are laid out for.
    pub fn heads(&self) -> usize {
        self.cos.dims()[2]
    }

    /// RoPE of `x` `[B, T, H, D]` (`H` = [`Self::heads`]): `x·cos + rotate_half(x)·sin`, with
    /// `rotate_half(x)·sin` as `[x₂, x₁]·[−s, s]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = x.dims()[3];
        let half = d / 2;
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, d - half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        x * self.cos.clone() + swapped * self.sin_signed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::CpuBackend;

    #[test]
    fn tables_laid_out_for_the_heads_give_the_same_floats_and_gradients() {
        type A = burn::backend::Autodiff<B>;
        let dev = Default::default();
        let (b, t, h, d) = (2, 5, 3, 8);
        let tables = RopeTables::new(10_000.0, d);
        let pos = Tensor::<A, 2, Int>::from_ints([[0, 1, 2, 3, 4], [7, 9, 11, 13, 15]], &dev);
        let (cos, sin) = tables.cos_sin(pos, DType::F32);
        let laid = RopeForHeads::new(&cos, &sin, h);
        assert_eq!(laid.heads(), h);
        let xs: Vec<f32> = (0..b * t * h * d)
            .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let up: Vec<f32> = (0..b * t * h * d)
            .map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let run = |laid_out: bool| {
            let x = Tensor::<A, 4>::from_data(TensorData::new(xs.clone(), [b, t, h, d]), &dev)
                .require_grad();
            let mid = x.clone() * 1.0;
            let y = if laid_out {
                laid.apply(mid)
            } else {
                apply_rope(mid, &cos, &sin)
            };
            let u = Tensor::<A, 4>::from_data(TensorData::new(up.clone(), [b, t, h, d]), &dev);
            let g = (y.clone() * u).sum().backward();
            (
                y.into_data().to_vec::<f32>().unwrap(),
                x.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap(),
            )
        };
        let (new, old) = (run(true), run(false));
        assert_eq!(new.0, old.0, "values");
        assert_eq!(new.1, old.1, "gradients");
        // and position 0 is the identity
        assert_eq!(&new.0[..d], &xs[..d]);
    }

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
