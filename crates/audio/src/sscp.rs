//! Sub-sample convolution projection: two strided 3×3 convs, each followed by a cumulative
//! group norm and ReLU, then a linear projection to the model width.

use automodel_core::Backend;
use automodel_core::init::{Init, Initializer};
use automodel_core::nn::Linear;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use crate::config::Gemma3nAudioConfig;

/// Statistics accumulated over time and pooled over every (freq, channel) feature of the steps so
/// far, in float32 (HF `Gemma3nAudioCumulativeGroupNorm`, no masking). Input `[B, T, F, C]`.
#[derive(Module, Debug)]
pub struct CumulativeGroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> CumulativeGroupNorm<B> {
    pub fn new(init: &Initializer<B>, chs: usize, eps: f64) -> Self {
        Self {
            weight: init.param([chs], Init::Ones),
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let [b, t, f, c] = x.dims();
        let x = x.cast(DType::F32);
        let device = x.device();
        let per_step = (f * c) as f64;
        // counts (t+1)·F·C as [1, T, 1, 1]
        let counts = Tensor::<B, 1, Int>::arange(1..t as i64 + 1, &device)
            .float()
            .cast(DType::F32)
            .reshape([1, t, 1, 1])
            * per_step;
        let sums = x.clone().sum_dim(3).sum_dim(2); // [B, T, 1, 1]
        let mean = sums.cumsum(1) / counts.clone();
        let centered = x - mean.clone();
        let sq = centered.clone().powi_scalar(2).sum_dim(3).sum_dim(2);
        let var = sq.cumsum(1) / counts;
        let y = centered * (var + self.eps).sqrt().recip();
        let y = y * self.weight.val().cast(DType::F32).reshape([1, 1, 1, c]);
        let _ = b;
        y.cast(dtype)
    }
}

/// A bias-free 2-D convolution weight `[out, in, kt, kf]` (HF's `nn.Conv2d(bias=False)`).
#[derive(Module, Debug)]
pub struct ConvWeight<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
}

/// One conv block of the SSCP: zero-pad (freq 1/1, time 0/k−1), strided conv, norm, ReLU.
#[derive(Module, Debug)]
pub struct SscpConvBlock<B: Backend> {
    pub conv: ConvWeight<B>,
    pub norm: CumulativeGroupNorm<B>,
    #[module(skip)]
    pub stride: [usize; 2],
}

impl<B: Backend> SscpConvBlock<B> {
    pub fn new(
        init: &Initializer<B>,
        channels: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        eps: f64,
    ) -> Self {
        let [c_in, c_out] = channels;
        Self {
            conv: ConvWeight {
                weight: init.param([c_out, c_in, kernel[0], kernel[1]], Init::Normal),
            },
            norm: CumulativeGroupNorm::new(init, c_out, eps),
            stride,
        }
    }

    /// `[B, C, T, F]` → `[B, C', T', F']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let kt = self.conv.weight.dims()[2];
        let x = x
            .cast(DType::F32)
            .pad((1, 1, 0, kt - 1), burn::tensor::ops::PadMode::Constant(0.0));
        let w = self.conv.weight.val().cast(DType::F32);
        let y = conv2d(x, w, None, ConvOptions::new(self.stride, [0, 0], [1, 1], 1)).cast(dtype);
        let y = self
            .norm
            .forward(y.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2]);
        relu(y)
    }
}

/// HF `Gemma3nAudioSubSampleConvProjection`: two conv blocks, then a linear projection.
#[derive(Module, Debug)]
pub struct SubSampleConvProjection<B: Backend> {
    pub conv_0: SscpConvBlock<B>,
    pub conv_1: SscpConvBlock<B>,
    pub input_proj_linear: Linear<B>,
}

impl<B: Backend> SubSampleConvProjection<B> {
    /// From a validated config (exactly two conv blocks).
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        let block = |i: usize, c_in: usize| {
            let (k, s) = (&cfg.sscp_conv_kernel_size[i], &cfg.sscp_conv_stride_size[i]);
            SscpConvBlock::new(
                init,
                [c_in, cfg.sscp_conv_channel_size[i]],
                [k[0], k[1]],
                [s[0], s[1]],
                cfg.sscp_conv_group_norm_eps,
            )
        };
        let conv_0 = block(0, 1);
        let conv_1 = block(1, cfg.sscp_conv_channel_size[0]);
        // frequency width after each block (padding 1/1)
        let f = [&conv_0, &conv_1].iter().fold(cfg.input_feat_size, |f, c| {
            let k = c.conv.weight.dims()[3];
            (f + 2 - k) / c.stride[1] + 1
        });
        let input_proj_linear =
            Linear::new(init, f * cfg.sscp_conv_channel_size[1], cfg.hidden_size);
        Self {
            conv_0,
            conv_1,
            input_proj_linear,
        }
    }

    fn blocks(&self) -> [&SscpConvBlock<B>; 2] {
        [&self.conv_0, &self.conv_1]
    }

    /// Mel features `[B, T, F]` → `[B, T', hidden]`.
    pub fn forward(&self, mel: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = mel.unsqueeze_dim::<4>(1);
        for c in self.blocks() {
            x = c.forward(x);
        }
        let [b, c, t, f] = x.dims();
        let x = x.permute([0, 2, 3, 1]).reshape([b, t, f * c]);
        self.input_proj_linear.forward(x)
    }
}
