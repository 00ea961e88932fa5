//! Sub-sample convolution projection: two strided 3×3 convs, each followed by a cumulative
//! group norm and ReLU, then a linear projection to the model width.

use automodel_core::init::{Init, ParamSource};
use automodel_core::nn::Linear;
use automodel_core::params::{HfParam, ParamList, join};
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
    pub fn new(src: &ParamSource<'_, B>, name: &str, chs: usize, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(src.tensor(&join(name, "weight"), [chs], Init::Ones)),
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

/// One conv block of the SSCP: zero-pad (freq 1/1, time 0/2), strided conv, norm, ReLU.
#[derive(Module, Debug)]
pub struct SscpConvBlock<B: Backend> {
    /// `[out, in, kt, kf]`.
    pub conv: Param<Tensor<B, 4>>,
    pub norm: CumulativeGroupNorm<B>,
    #[module(skip)]
    pub stride: [usize; 2],
}

impl<B: Backend> SscpConvBlock<B> {
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        eps: f64,
    ) -> Self {
        Self {
            conv: Param::from_tensor(src.tensor(
                &join(name, "conv.weight"),
                [c_out, c_in, kernel[0], kernel[1]],
                Init::Normal,
            )),
            norm: CumulativeGroupNorm::new(src, &join(name, "norm"), c_out, eps),
            stride,
        }
    }

    /// `[B, C, T, F]` → `[B, C', T', F']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let x = x
            .cast(DType::F32)
            .pad((1, 1, 0, 2), burn::tensor::ops::PadMode::Constant(0.0));
        let w = self.conv.val().cast(DType::F32);
        let y = conv2d(x, w, None, ConvOptions::new(self.stride, [0, 0], [1, 1], 1)).cast(dtype);
        let y = self
            .norm
            .forward(y.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2]);
        relu(y)
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        out.push(join(name, "conv.weight"), HfParam::D4(self.conv.val()));
        out.push(
            join(name, "norm.weight"),
            HfParam::D1(self.norm.weight.val()),
        );
    }
}

/// HF `Gemma3nAudioSubSampleConvProjection`.
#[derive(Module, Debug)]
pub struct SubSampleConvProjection<B: Backend> {
    pub convs: Vec<SscpConvBlock<B>>,
    pub input_proj_linear: Linear<B>,
}

impl<B: Backend> SubSampleConvProjection<B> {
    pub fn new(src: &ParamSource<'_, B>, name: &str, cfg: &Gemma3nAudioConfig) -> Self {
        let mut c_in = 1;
        let mut f = cfg.input_feat_size;
        let mut convs = Vec::new();
        for (i, &c_out) in cfg.sscp_conv_channel_size.iter().enumerate() {
            let k = [
                cfg.sscp_conv_kernel_size[i][0],
                cfg.sscp_conv_kernel_size[i][1],
            ];
            let s = [
                cfg.sscp_conv_stride_size[i][0],
                cfg.sscp_conv_stride_size[i][1],
            ];
            convs.push(SscpConvBlock::new(
                src,
                &join(name, &format!("conv_{i}")),
                c_in,
                c_out,
                k,
                s,
                cfg.sscp_conv_group_norm_eps,
            ));
            f = (f + 2 - k[1]) / s[1] + 1;
            c_in = c_out;
        }
        let input_proj_linear = Linear::new(
            src,
            &join(name, "input_proj_linear"),
            f * c_in,
            cfg.hidden_size,
        );
        Self {
            convs,
            input_proj_linear,
        }
    }

    /// Mel features `[B, T, F]` → `[B, T', hidden]`.
    pub fn forward(&self, mel: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = mel.unsqueeze_dim::<4>(1);
        for c in &self.convs {
            x = c.forward(x);
        }
        let [b, c, t, f] = x.dims();
        let x = x.permute([0, 2, 3, 1]).reshape([b, t, f * c]);
        self.input_proj_linear.forward(x)
    }

    /// Output length of the SSCP for `t` input frames.
    pub fn output_len(&self, mut t: usize) -> usize {
        for c in &self.convs {
            let k = c.conv.dims()[2];
            t = (t + 2 - k) / c.stride[0] + 1;
        }
        t
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        for (i, c) in self.convs.iter().enumerate() {
            c.params(&join(name, &format!("conv_{i}")), out);
        }
        self.input_proj_linear
            .params(&join(name, "input_proj_linear"), out);
    }
}
