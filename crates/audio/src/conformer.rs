//! One conformer block: half-step feed-forward, local attention, light-weight causal conv,
//! half-step feed-forward, clamp, RMS norm.

use automodel_core::init::{Init, ParamSource};
use automodel_core::nn::{Linear, RmsNorm};
use automodel_core::params::{HfParam, ParamList, join};
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
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Self {
            pre_layer_norm: RmsNorm::new(src, &join(name, "pre_layer_norm"), h, eps, false),
            ffw_layer_1: Linear::new(src, &join(name, "ffw_layer_1"), h, 4 * h),
            ffw_layer_2: Linear::new(src, &join(name, "ffw_layer_2"), 4 * h, h),
            post_layer_norm: RmsNorm::new(src, &join(name, "post_layer_norm"), h, eps, false),
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

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.pre_layer_norm
            .params(&join(name, "pre_layer_norm"), out);
        self.ffw_layer_1.params(&join(name, "ffw_layer_1"), out);
        self.ffw_layer_2.params(&join(name, "ffw_layer_2"), out);
        self.post_layer_norm
            .params(&join(name, "post_layer_norm"), out);
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
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Self {
            pre_attn_norm: RmsNorm::new(src, &join(name, "pre_attn_norm"), h, eps, false),
            attn: LocalAttention::new(src, &join(name, "attn"), cfg),
            post: Linear::new(src, &join(name, "post"), h, h),
            post_norm: RmsNorm::new(src, &join(name, "post_norm"), h, eps, false),
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

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.pre_attn_norm.params(&join(name, "pre_attn_norm"), out);
        self.attn.params(&join(name, "attn"), out);
        self.post.params(&join(name, "post"), out);
        self.post_norm.params(&join(name, "post_norm"), out);
    }
}

/// Light-weight conv: `x + W_end·silu(RMSNorm(causal_dwconv(GLU(W_start·RMSNorm(x)))))`.
#[derive(Module, Debug)]
pub struct LightConv<B: Backend> {
    pub pre_layer_norm: RmsNorm<B>,
    pub linear_start: Linear<B>,
    /// `[H, 1, k]` depthwise kernel.
    pub depthwise_conv1d: Param<Tensor<B, 3>>,
    pub conv_norm: RmsNorm<B>,
    pub linear_end: Linear<B>,
    #[module(skip)]
    pub clip: f64,
}

impl<B: Backend> LightConv<B> {
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nAudioConfig) -> Self {
        let (h, eps, k) = (cfg.hidden_size, cfg.rms_norm_eps, cfg.conf_conv_kernel_size);
        Self {
            pre_layer_norm: RmsNorm::new(src, &join(name, "pre_layer_norm"), h, eps, false),
            linear_start: Linear::new(src, &join(name, "linear_start"), h, 2 * h),
            depthwise_conv1d: Param::from_tensor(src.tensor(
                &join(name, "depthwise_conv1d.weight"),
                [h, 1, k],
                Init::Normal,
            )),
            conv_norm: RmsNorm::new(src, &join(name, "conv_norm"), h, eps, false),
            linear_end: Linear::new(src, &join(name, "linear_end"), h, h),
            clip: cfg.gradient_clipping,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, _, h] = x.dims();
        let k = self.depthwise_conv1d.dims()[2];
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
        let w = self.depthwise_conv1d.val().cast(DType::F32);
        let y = conv1d(yt, w, None, ConvOptions::new([1], [0], [1], h))
            .cast(dtype)
            .swap_dims(1, 2);
        let y = silu(self.conv_norm.forward(clamp(y, self.clip)));
        x + self.linear_end.forward(y)
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.pre_layer_norm
            .params(&join(name, "pre_layer_norm"), out);
        self.linear_start.params(&join(name, "linear_start"), out);
        out.push(
            join(name, "depthwise_conv1d.weight"),
            HfParam::D3(self.depthwise_conv1d.val()),
        );
        self.conv_norm.params(&join(name, "conv_norm"), out);
        self.linear_end.params(&join(name, "linear_end"), out);
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
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nAudioConfig) -> Self {
        Self {
            ffw_layer_start: FeedForward::new(src, &join(name, "ffw_layer_start"), cfg),
            attention: AttentionBlock::new(src, &join(name, "attention"), cfg),
            lconv1d: LightConv::new(src, &join(name, "lconv1d"), cfg),
            ffw_layer_end: FeedForward::new(src, &join(name, "ffw_layer_end"), cfg),
            norm: RmsNorm::new(
                src,
                &join(name, "norm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
                false,
            ),
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

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.ffw_layer_start
            .params(&join(name, "ffw_layer_start"), out);
        self.attention.params(&join(name, "attention"), out);
        self.lconv1d.params(&join(name, "lconv1d"), out);
        self.ffw_layer_end.params(&join(name, "ffw_layer_end"), out);
        self.norm.params(&join(name, "norm"), out);
    }
}
