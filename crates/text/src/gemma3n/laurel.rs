//! LAuReL: a low-rank residual branch beside attention.

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::{Linear, RmsNorm};
use burn::prelude::*;

use super::config::Gemma3nTextConfig;

/// `x + RMSNorm(x·Lᵀ·Rᵀ)` with a rank-`laurel_rank` bottleneck (HF `Gemma3nTextLaurelBlock`).
#[derive(Module, Debug)]
pub struct Laurel<B: Backend> {
    pub linear_left: Linear<B>,
    pub linear_right: Linear<B>,
    pub post_laurel_norm: RmsNorm<B>,
}

impl<B: Backend> Laurel<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nTextConfig) -> Self {
        let (h, r) = (cfg.hidden_size, cfg.laurel_rank);
        Self {
            linear_left: Linear::new(init, h, r),
            linear_right: Linear::new(init, r, h),
            post_laurel_norm: RmsNorm::new(init, h, cfg.rms_norm_eps, false),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let low = self
            .linear_right
            .forward(self.linear_left.forward(x.clone()));
        x + self.post_laurel_norm.forward(low)
    }
}
