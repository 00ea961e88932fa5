//! The Gemma RMSNorm.

use crate::Backend;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

use crate::init::{Init, Initializer};

/// `y = x · (mean(x²) + eps)^-½ · scale`, computed in float32 and cast back to the input dtype
/// (HF `Gemma3nRMSNorm` / `Gemma3RMSNorm`).
///
/// * `scale = w` for Gemma 3n (weights initialised to one), `scale = 1 + w` for Gemma 1–3
///   (`plus_one`, weights initialised to zero);
/// * no weight at all for Gemma 3n's `v_norm` and the embedders' post-projection norm.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub eps: f64,
    #[module(skip)]
    pub plus_one: bool,
}

impl<B: Backend> RmsNorm<B> {
    /// A scale of width `dim`, fresh: ones (`w` convention) or zeros (`1 + w`).
    pub fn new(init: &Initializer<B>, dim: usize, eps: f64, plus_one: bool) -> Self {
        let fill = if plus_one { Init::Zeros } else { Init::Ones };
        Self {
            weight: Some(init.param([dim], fill)),
            eps,
            plus_one,
        }
    }

    /// A norm without a learned scale.
    pub fn without_scale(eps: f64) -> Self {
        Self {
            weight: None,
            eps,
            plus_one: false,
        }
    }

    /// Normalise over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let ms = x32.clone().powi_scalar(2).mean_dim(D - 1);
        let y = x32 * (ms + self.eps).powf_scalar(-0.5);
        let y = match &self.weight {
            None => y,
            Some(w) => {
                let mut w = w.val().cast(DType::F32);
                if self.plus_one {
                    w = w + 1.0;
                }
                y * w.unsqueeze::<D>()
            }
        };
        y.cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::CpuBackend;

    #[test]
    fn normalises_in_f32_with_either_convention() {
        let dev = Default::default();
        let x = Tensor::<B, 2>::from_floats([[1.0, 2.0, 3.0, 4.0]], &dev);
        let rms = ((1.0f64 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6).sqrt();
        let init = Initializer::<B>::random(&dev, DType::F32, 0.02);
        let mut n = RmsNorm::<B>::new(&init, 4, 1e-6, false);
        n.weight = Some(Param::from_tensor(Tensor::from_floats(
            [1.0, 2.0, 0.5, 0.0],
            &dev,
        )));
        let got = n.forward(x.clone()).into_data().to_vec::<f32>().unwrap();
        let want = [1.0 / rms, 4.0 / rms, 1.5 / rms, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
        let p1 = RmsNorm::<B>::new(&init, 4, 1e-6, true);
        let got = p1.forward(x.clone()).into_data().to_vec::<f32>().unwrap();
        assert!((got[3] as f64 - 4.0 / rms).abs() < 1e-6);
        let bf = RmsNorm::<B>::without_scale(1e-6).forward(x.cast(DType::BF16));
        assert_eq!(bf.dtype(), DType::BF16);
    }
}
