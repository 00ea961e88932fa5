//! A bias-free linear layer that loads and saves Hugging Face `[out, in]` weights.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use crate::params::{HfParam, ParamList};
use crate::weights::WeightLoader;

/// `y = x·Wᵀ` with `W` stored by HF as `[out, in]`; kept here as `[in, out]` so the forward is a
/// plain matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (the transpose of the HF tensor).
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Linear<B> {
    /// Load `{name}.weight` (`[d_out, d_in]` in the file).
    pub fn load(loader: &WeightLoader<'_, B>, name: &str, d_in: usize, d_out: usize) -> Self {
        let w = loader.tensor(&format!("{name}.weight"), [d_out, d_in]);
        Self::from_hf_weight(w)
    }

    /// From an HF-layout `[out, in]` weight.
    pub fn from_hf_weight(w: Tensor<B, 2>) -> Self {
        let device = w.device();
        let dtype = w.dtype();
        // Materialise the transpose so the forward matmul reads contiguous memory.
        let t = Tensor::from_data(w.transpose().into_data(), (&device, dtype));
        Self {
            weight: Param::from_tensor(t),
        }
    }

    /// Random normal init `N(0, std²)`.
    pub fn init(d_in: usize, d_out: usize, std: f64, device: &B::Device, dtype: DType) -> Self {
        let w = Tensor::<B, 2>::random([d_in, d_out], Distribution::Normal(0.0, std), device)
            .cast(dtype);
        Self {
            weight: Param::from_tensor(w),
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The weight in HF layout `[out, in]`.
    pub fn hf_weight(&self) -> Tensor<B, 2> {
        self.weight.val().transpose()
    }

    /// Apply to `[..., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        x.matmul(self.weight.val().unsqueeze::<D>())
    }

    /// Register `{name}.weight`.
    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        out.push(format!("{name}.weight"), HfParam::Linear(self.weight.val()));
    }
}
