//! Convolutions with TensorFlow "SAME" padding, channel-wise RMS norm, and conv-norm-act.

use automodel_core::init::{Init, ParamSource};
use automodel_core::nn::gelu_tanh;
use automodel_core::params::{HfParam, ParamList, join};
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

impl<B: Backend> Conv2d<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        in_chs: usize,
        out_chs: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        bias: bool,
    ) -> Self {
        let weight = src.tensor(
            &join(name, "weight"),
            [out_chs, in_chs / groups, kernel, kernel],
            Init::Normal,
        );
        let bias = bias
            .then(|| Param::from_tensor(src.tensor(&join(name, "bias"), [out_chs], Init::Zeros)));
        Self {
            weight: Param::from_tensor(weight),
            bias,
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

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        out.push(join(name, "weight"), HfParam::D4(self.weight.val()));
        if let Some(b) = &self.bias {
            out.push(join(name, "bias"), HfParam::D1(b.val()));
        }
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
    pub fn new(src: &ParamSource<'_, B>, name: &str, chs: usize, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(src.tensor(&join(name, "weight"), [chs], Init::Ones)),
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.weight.dims()[0];
        let ms = x.clone().powi_scalar(2).mean_dim(1);
        let y = x * (ms + self.eps).sqrt().recip();
        y * self.weight.val().reshape([1, c, 1, 1])
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        out.push(join(name, "weight"), HfParam::D1(self.weight.val()));
    }
}

/// timm `ConvNormAct` with `RmsNormAct2d`: keys `{name}.conv.*`, `{name}.bn.weight`.
#[derive(Module, Debug)]
pub struct ConvNormAct<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: RmsNorm2d<B>,
    #[module(skip)]
    pub act: bool,
}

impl<B: Backend> ConvNormAct<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        in_chs: usize,
        out_chs: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        act: bool,
        eps: f64,
    ) -> Self {
        Self {
            conv: Conv2d::new(
                src,
                &join(name, "conv"),
                in_chs,
                out_chs,
                kernel,
                stride,
                groups,
                false,
            ),
            bn: RmsNorm2d::new(src, &join(name, "bn"), out_chs, eps),
            act,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.bn.forward(self.conv.forward(x));
        if self.act { gelu_tanh(y) } else { y }
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.conv.params(&join(name, "conv"), out);
        self.bn.params(&join(name, "bn"), out);
    }
}

/// timm `LayerScale2d`: per-channel `gamma`.
pub fn layer_scale<B: Backend>(x: Tensor<B, 4>, gamma: &Param<Tensor<B, 1>>) -> Tensor<B, 4> {
    let c = gamma.dims()[0];
    x * gamma.val().reshape([1, c, 1, 1])
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
