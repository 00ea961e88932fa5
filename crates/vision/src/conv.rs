//! Convolutions with TensorFlow "SAME" padding, channel-wise RMS norm, and conv-norm-act.

use automodel_core::Backend;
use automodel_core::init::{Init, Initializer};
use automodel_core::nn::gelu_tanh;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};

/// A 2-D convolution with timm's `padding='same'`: symmetric static padding when the stride is 1
/// (odd kernels), otherwise the dynamic asymmetric padding of `Conv2dSame` (extra pixel at the
/// bottom/right). Computes in float32 whatever the parameter dtype (Gemma 3n conv activations
/// overflow half precision).
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out, in / groups, k, k]`.
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub groups: usize,
}

/// The shape of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub in_chs: usize,
    pub out_chs: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// A dense `kernel × kernel` convolution.
    pub fn full(in_chs: usize, out_chs: usize, kernel: usize, stride: usize) -> Self {
        Self {
            in_chs,
            out_chs,
            kernel,
            stride,
            groups: 1,
            bias: false,
        }
    }

    /// A 1×1 convolution.
    pub fn pointwise(in_chs: usize, out_chs: usize) -> Self {
        Self::full(in_chs, out_chs, 1, 1)
    }

    /// A depthwise convolution (one group per channel).
    pub fn depthwise(chs: usize, kernel: usize, stride: usize) -> Self {
        Self {
            groups: chs,
            ..Self::full(chs, chs, kernel, stride)
        }
    }

    /// With a bias.
    pub fn with_bias(self) -> Self {
        Self { bias: true, ..self }
    }
}

impl<B: Backend> Conv2d<B> {
    pub fn new(init: &Initializer<B>, spec: ConvSpec) -> Self {
        let ConvSpec {
            in_chs,
            out_chs,
            kernel,
            stride,
            groups,
            bias,
        } = spec;
        Self {
            weight: init.param([out_chs, in_chs / groups, kernel, kernel], Init::Normal),
            bias: bias.then(|| init.param([out_chs], Init::Zeros)),
            stride,
            groups,
        }
    }

    /// Kernel size.
    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    /// `[N, C, H, W]` → `[N, out, H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        // Pad in f32 too: Burn 0.21's `pad` on a bf16 flex tensor builds f32 storage and panics.
        let x = x.cast(DType::F32);
        let k = self.kernel();
        let [_, _, h, w] = x.dims();
        let (x, pad) = if self.stride == 1 && k % 2 == 1 {
            (x, (k - 1) / 2)
        } else {
            let (t, b) = same_pad(h, k, self.stride);
            let (l, r) = same_pad(w, k, self.stride);
            (x.pad((l, r, t, b), PadMode::Constant(0.0)), 0)
        };
        let weight = self.weight.val().cast(DType::F32);
        let bias = self.bias.as_ref().map(|b| b.val().cast(DType::F32));
        let options = ConvOptions::new([self.stride, self.stride], [pad, pad], [1, 1], self.groups);
        conv2d(x, weight, bias, options).cast(dtype)
    }
}

/// `Conv2dSame` padding (before, after) for one dimension of size `n`.
pub fn same_pad(n: usize, k: usize, s: usize) -> (usize, usize) {
    let total = ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// timm `RmsNorm2d`: `x · (mean_c(x²) + eps)^-½ · w[c]` over the channel dimension, computed in
/// the input dtype (no upcast).
#[derive(Module, Debug)]
pub struct RmsNorm2d<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm2d<B> {
    pub fn new(init: &Initializer<B>, chs: usize, eps: f64) -> Self {
        Self {
            weight: init.param([chs], Init::Ones),
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.weight.dims()[0];
        let ms = x.clone().powi_scalar(2).mean_dim(1);
        let y = x * (ms + self.eps).sqrt().recip();
        y * self.weight.val().reshape([1, c, 1, 1])
    }
}

/// timm `ConvNormAct` with `RmsNormAct2d`: keys `conv.*`, `bn.weight`.
#[derive(Module, Debug)]
pub struct ConvNormAct<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: RmsNorm2d<B>,
    #[module(skip)]
    pub act: bool,
}

impl<B: Backend> ConvNormAct<B> {
    /// The convolution `spec`, its norm, and GELU when `act`.
    pub fn new(init: &Initializer<B>, spec: ConvSpec, act: bool, eps: f64) -> Self {
        Self {
            conv: Conv2d::new(init, spec),
            bn: RmsNorm2d::new(init, spec.out_chs, eps),
            act,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.bn.forward(self.conv.forward(x));
        if self.act { gelu_tanh(y) } else { y }
    }
}

/// timm `LayerScale2d`: a per-channel `gamma`.
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    pub fn new(init: &Initializer<B>, chs: usize) -> Self {
        Self {
            gamma: init.param([chs], Init::Ones),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.gamma.dims()[0];
        x * self.gamma.val().reshape([1, c, 1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding() {
        assert_eq!(same_pad(128, 3, 2), (0, 1));
        assert_eq!(same_pad(768, 5, 2), (1, 2));
        assert_eq!(same_pad(7, 3, 2), (1, 1));
        assert_eq!(same_pad(8, 3, 1), (1, 1));
    }
}
