//! One conformer block: half-step feed-forward, local attention, light-weight causal conv,
//! half-step feed-forward, clamp, RMS norm.

use automodel_core::Backend;
use automodel_core::init::{Init, Initializer};
use automodel_core::nn::{Linear, RmsNorm};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{glu, silu};
use burn::tensor::module::conv1d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, TensorData};

use crate::attention::LocalAttention;
use crate::config::Gemma3nAudioConfig;

/// HF's activation clamp at ±`gradient_clipping` (1e10: a no-op in practice, kept for fidelity).
fn clamp<B: Backend, const D: usize>(x: Tensor<B, D>, limit: f64) -> Tensor<B, D> {
    x.clamp(-limit, limit)
}

/// `x + w · RMSNorm(W₂·silu(W₁·RMSNorm(x)))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub pre_layer_norm: RmsNorm<B>,
    pub ffw_layer_1: Linear<B>,
    pub ffw_layer_2: Linear<B>,
    pub post_layer_norm: RmsNorm<B>,
    #[module(skip)]
    pub residual_weight: f64,
    #[module(skip)]
    pub clip: f64,
}

impl<B: Backend> FeedForward<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Self {
            pre_layer_norm: RmsNorm::new(init, h, eps, false),
            ffw_layer_1: Linear::new(init, h, 4 * h),
            ffw_layer_2: Linear::new(init, 4 * h, h),
            post_layer_norm: RmsNorm::new(init, h, eps, false),
            residual_weight: cfg.conf_residual_weight,
            clip: cfg.gradient_clipping,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = self.pre_layer_norm.forward(clamp(x.clone(), self.clip));
        let y = self.ffw_layer_2.forward(silu(self.ffw_layer_1.forward(y)));
        let y = self.post_layer_norm.forward(clamp(y, self.clip));
        x + y * self.residual_weight
    }
}

/// `x + RMSNorm(post(attn(RMSNorm(x))))`.
#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub pre_attn_norm: RmsNorm<B>,
    pub attn: LocalAttention<B>,
    pub post: Linear<B>,
    pub post_norm: RmsNorm<B>,
    #[module(skip)]
    pub clip: f64,
}

impl<B: Backend> AttentionBlock<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Self {
            pre_attn_norm: RmsNorm::new(init, h, eps, false),
            attn: LocalAttention::new(init, cfg),
            post: Linear::new(init, h, h),
            post_norm: RmsNorm::new(init, h, eps, false),
            clip: cfg.gradient_clipping,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, padding: &[Vec<bool>]) -> Tensor<B, 3> {
        let y = self.attn.forward(
            self.pre_attn_norm.forward(clamp(x.clone(), self.clip)),
            padding,
        );
        let y = clamp(self.post.forward(y), self.clip);
        x + self.post_norm.forward(y)
    }
}

/// Light-weight conv: `x + W_end·silu(RMSNorm(causal_dwconv(GLU(W_start·RMSNorm(x)))))`.
#[derive(Module, Debug)]
pub struct LightConv<B: Backend> {
    pub pre_layer_norm: RmsNorm<B>,
    pub linear_start: Linear<B>,
    pub depthwise_conv1d: DepthwiseConv1d<B>,
    pub conv_norm: RmsNorm<B>,
    pub linear_end: Linear<B>,
    #[module(skip)]
    pub clip: f64,
}

/// A bias-free depthwise 1-D convolution kernel `[H, 1, k]` (HF's `nn.Conv1d(groups=H)`).
#[derive(Module, Debug)]
pub struct DepthwiseConv1d<B: Backend> {
    pub weight: Param<Tensor<B, 3>>,
}

impl<B: Backend> LightConv<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps, k) = (cfg.hidden_size, cfg.rms_norm_eps, cfg.conf_conv_kernel_size);
        Self {
            pre_layer_norm: RmsNorm::new(init, h, eps, false),
            linear_start: Linear::new(init, h, 2 * h),
            depthwise_conv1d: DepthwiseConv1d {
                weight: init.param([h, 1, k], Init::Normal),
            },
            conv_norm: RmsNorm::new(init, h, eps, false),
            linear_end: Linear::new(init, h, h),
            clip: cfg.gradient_clipping,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, _, h] = x.dims();
        let k = self.depthwise_conv1d.weight.dims()[2];
        let y = glu(
            self.linear_start
                .forward(self.pre_layer_norm.forward(x.clone())),
            2,
        );
        let dtype = y.dtype();
        // [B, T, H] → [B, H, T], causal (left) zero padding, depthwise conv, back.
        let yt = y
            .swap_dims(1, 2)
            .cast(DType::F32)
            .pad([(k - 1, 0)], PadMode::Constant(0.0));
        let w = self.depthwise_conv1d.weight.val().cast(DType::F32);
        let y = conv1d(yt, w, None, ConvOptions::new([1], [0], [1], h))
            .cast(dtype)
            .swap_dims(1, 2);
        let y = silu(self.conv_norm.forward(clamp(y, self.clip)));
        x + self.linear_end.forward(y)
    }
}

/// HF `Gemma3nAudioConformerBlock`.
#[derive(Module, Debug)]
pub struct ConformerBlock<B: Backend> {
    pub ffw_layer_start: FeedForward<B>,
    pub attention: AttentionBlock<B>,
    pub lconv1d: LightConv<B>,
    pub ffw_layer_end: FeedForward<B>,
    pub norm: RmsNorm<B>,
    #[module(skip)]
    pub clip: f64,
}

impl<B: Backend> ConformerBlock<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        Self {
            ffw_layer_start: FeedForward::new(init, cfg),
            attention: AttentionBlock::new(init, cfg),
            lconv1d: LightConv::new(init, cfg),
            ffw_layer_end: FeedForward::new(init, cfg),
            norm: RmsNorm::new(init, cfg.hidden_size, cfg.rms_norm_eps, false),
            clip: cfg.gradient_clipping,
        }
    }

    /// `padding` `[B][T]`: true = padded frame (zeroed before the conv module).
    pub fn forward(&self, x: Tensor<B, 3>, padding: &[Vec<bool>]) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let x = self.ffw_layer_start.forward(x);
        let x = self.attention.forward(x, padding);
        let keep: Vec<f32> = padding
            .iter()
            .flat_map(|r| r.iter().map(|&p| if p { 0.0 } else { 1.0 }))
            .collect();
        let keep =
            Tensor::<B, 3>::from_data(TensorData::new(keep, [b, t, 1]), (&x.device(), x.dtype()));
        let x = self.lconv1d.forward(x * keep);
        let x = self.ffw_layer_end.forward(x);
        self.norm.forward(clamp(x, self.clip))
    }
}
