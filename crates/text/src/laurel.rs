//! LAuReL: a low-rank residual branch beside attention.

use automodel_core::init::ParamSource;
use automodel_core::nn::{Linear, RmsNorm};
use automodel_core::params::{ParamList, join};
use burn::prelude::*;

use crate::config::Gemma3nTextConfig;

/// `x + RMSNorm(x·Lᵀ·Rᵀ)` with a rank-`laurel_rank` bottleneck (HF `Gemma3nTextLaurelBlock`).
#[derive(Module, Debug)]
pub struct Laurel<B: Backend> {
    pub linear_left: Linear<B>,
    pub linear_right: Linear<B>,
    pub post_laurel_norm: RmsNorm<B>,
}

impl<B: Backend> Laurel<B> {
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nTextConfig) -> Self {
        let (h, r) = (cfg.hidden_size, cfg.laurel_rank);
        Self {
            linear_left: Linear::new(src, &join(name, "linear_left"), h, r),
            linear_right: Linear::new(src, &join(name, "linear_right"), r, h),
            post_laurel_norm: RmsNorm::new(
                src,
                &join(name, "post_laurel_norm"),
                h,
                cfg.rms_norm_eps,
                false,
            ),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let low = self
            .linear_right
            .forward(self.linear_left.forward(x.clone()));
        x + self.post_laurel_norm.forward(low)
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.linear_left.params(&join(name, "linear_left"), out);
        self.linear_right.params(&join(name, "linear_right"), out);
        self.post_laurel_norm
            .params(&join(name, "post_laurel_norm"), out);
    }
}
