//! A bias-free linear layer that loads and saves Hugging Face `[out, in]` weights.

use burn::module::Param;
use burn::prelude::*;

use crate::init::{Init, ParamSource};
use crate::params::{HfParam, ParamList};

/// `y = x·Wᵀ` with `W` stored by HF as `[out, in]`; kept here as `[in, out]` so the forward is a
/// plain matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (the transpose of the HF tensor).
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Linear<B> {
    /// `{name}.weight` (`[d_out, d_in]` in a checkpoint), or a random `N(0, std²)` matrix.
    pub fn new(src: &ParamSource<'_, B>, name: &str, d_in: usize, d_out: usize) -> Self {
        match src {
            ParamSource::Checkpoint(_) => Self::from_hf_weight(src.tensor(
                &format!("{name}.weight"),
                [d_out, d_in],
                Init::Normal,
            )),
            ParamSource::Random { .. } | ParamSource::Shapes { .. } => Self {
                weight: Param::from_tensor(src.tensor(name, [d_in, d_out], Init::Normal)),
            },
        }
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
