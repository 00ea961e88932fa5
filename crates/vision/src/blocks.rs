//! The three MobileNet-V5 block types: EdgeResidual, Universal Inverted Residual and Mobile
//! multi-query attention.

use automodel_core::init::{Init, ParamSource};
use automodel_core::nn::gelu_tanh;
use automodel_core::params::{HfParam, ParamList, join};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::config::{BlockArgs, make_divisible};
use crate::conv::{Conv2d, ConvNormAct, RmsNorm2d, layer_scale};

/// EdgeResidual / FusedMBConv: full k×k expansion conv (carries the stride) → GELU → 1×1 projection.
#[derive(Module, Debug)]
pub struct EdgeResidual<B: Backend> {
    pub conv_exp: Conv2d<B>,
    pub bn1: RmsNorm2d<B>,
    pub conv_pwl: Conv2d<B>,
    pub bn2: RmsNorm2d<B>,
    #[module(skip)]
    pub has_skip: bool,
}

/// Universal Inverted Residual: optional start depthwise conv, 1×1 expansion, optional mid
/// depthwise conv (carries the stride), 1×1 projection, optional end depthwise conv, layer scale.
#[derive(Module, Debug)]
pub struct Uir<B: Backend> {
    pub dw_start: Option<ConvNormAct<B>>,
    pub pw_exp: ConvNormAct<B>,
    pub dw_mid: Option<ConvNormAct<B>>,
    pub pw_proj: ConvNormAct<B>,
    pub dw_end: Option<ConvNormAct<B>>,
    pub layer_scale: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub has_skip: bool,
}

/// Mobile attention: RMS norm → multi-query attention (one shared K/V head, K/V optionally
/// down-sampled by a strided depthwise conv) → layer scale, with a residual.
#[derive(Module, Debug)]
pub struct MobileAttention<B: Backend> {
    pub norm: RmsNorm2d<B>,
    pub query_proj: Conv2d<B>,
    pub key_down: Option<Conv2d<B>>,
    pub key_norm: Option<RmsNorm2d<B>>,
    pub key_proj: Conv2d<B>,
    pub value_down: Option<Conv2d<B>>,
    pub value_norm: Option<RmsNorm2d<B>>,
    pub value_proj: Conv2d<B>,
    pub output_proj: Conv2d<B>,
    pub layer_scale: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub key_dim: usize,
    #[module(skip)]
    pub value_dim: usize,
    #[module(skip)]
    pub has_skip: bool,
}

/// One encoder block.
#[derive(Module, Debug)]
pub enum Block<B: Backend> {
    EdgeResidual(EdgeResidual<B>),
    Uir(Uir<B>),
    Attention(MobileAttention<B>),
}

impl<B: Backend> EdgeResidual<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        in_chs: usize,
        out_chs: usize,
        exp_kernel: usize,
        exp_ratio: f64,
        pw_kernel: usize,
        stride: usize,
        force_in_chs: usize,
        noskip: bool,
        eps: f64,
    ) -> Self {
        let base = if force_in_chs > 0 {
            force_in_chs
        } else {
            in_chs
        };
        let mid = make_divisible(base as f64 * exp_ratio);
        Self {
            conv_exp: Conv2d::new(
                src,
                &join(name, "conv_exp"),
                in_chs,
                mid,
                exp_kernel,
                stride,
                1,
                false,
            ),
            bn1: RmsNorm2d::new(src, &join(name, "bn1"), mid, eps),
            conv_pwl: Conv2d::new(
                src,
                &join(name, "conv_pwl"),
                mid,
                out_chs,
                pw_kernel,
                1,
                1,
                false,
            ),
            bn2: RmsNorm2d::new(src, &join(name, "bn2"), out_chs, eps),
            has_skip: in_chs == out_chs && stride == 1 && !noskip,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = gelu_tanh(self.bn1.forward(self.conv_exp.forward(x.clone())));
        let y = self.bn2.forward(self.conv_pwl.forward(y));
        if self.has_skip { y + x } else { y }
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.conv_exp.params(&join(name, "conv_exp"), out);
        self.bn1.params(&join(name, "bn1"), out);
        self.conv_pwl.params(&join(name, "conv_pwl"), out);
        self.bn2.params(&join(name, "bn2"), out);
    }
}

impl<B: Backend> Uir<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        in_chs: usize,
        out_chs: usize,
        start: usize,
        mid_k: usize,
        end: usize,
        exp_ratio: f64,
        stride: usize,
        noskip: bool,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        let mid = make_divisible(in_chs as f64 * exp_ratio);
        let cna = |n: &str, i, o, k, s, g, act| {
            ConvNormAct::new(src, &join(name, n), i, o, k, s, g, act, eps)
        };
        Self {
            // The start depthwise conv only takes the stride when there is no mid conv.
            dw_start: (start > 0).then(|| {
                cna(
                    "dw_start",
                    in_chs,
                    in_chs,
                    start,
                    if mid_k > 0 { 1 } else { stride },
                    in_chs,
                    false,
                )
            }),
            pw_exp: cna("pw_exp", in_chs, mid, 1, 1, 1, true),
            dw_mid: (mid_k > 0).then(|| cna("dw_mid", mid, mid, mid_k, stride, mid, true)),
            pw_proj: cna("pw_proj", mid, out_chs, 1, 1, 1, false),
            dw_end: (end > 0).then(|| cna("dw_end", out_chs, out_chs, end, 1, out_chs, false)),
            layer_scale: layer_scale.then(|| {
                Param::from_tensor(src.tensor(
                    &join(name, "layer_scale.gamma"),
                    [out_chs],
                    Init::Ones,
                ))
            }),
            has_skip: in_chs == out_chs && stride == 1 && !noskip,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut y = x.clone();
        if let Some(c) = &self.dw_start {
            y = c.forward(y);
        }
        y = self.pw_exp.forward(y);
        if let Some(c) = &self.dw_mid {
            y = c.forward(y);
        }
        y = self.pw_proj.forward(y);
        if let Some(c) = &self.dw_end {
            y = c.forward(y);
        }
        if let Some(g) = &self.layer_scale {
            y = layer_scale(y, g);
        }
        if self.has_skip { y + x } else { y }
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        if let Some(c) = &self.dw_start {
            c.params(&join(name, "dw_start"), out);
        }
        self.pw_exp.params(&join(name, "pw_exp"), out);
        if let Some(c) = &self.dw_mid {
            c.params(&join(name, "dw_mid"), out);
        }
        self.pw_proj.params(&join(name, "pw_proj"), out);
        if let Some(c) = &self.dw_end {
            c.params(&join(name, "dw_end"), out);
        }
        if let Some(g) = &self.layer_scale {
            out.push(join(name, "layer_scale.gamma"), HfParam::D1(g.val()));
        }
    }
}

impl<B: Backend> MobileAttention<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        chs: usize,
        out_chs: usize,
        num_heads: usize,
        key_dim: usize,
        value_dim: usize,
        kv_stride: usize,
        dw_kernel: usize,
        noskip: bool,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        let a = |n: &str| join(name, &format!("attn.{n}"));
        let down = kv_stride > 1;
        Self {
            norm: RmsNorm2d::new(src, &join(name, "norm"), chs, eps),
            query_proj: Conv2d::new(
                src,
                &a("query.proj"),
                chs,
                num_heads * key_dim,
                1,
                1,
                1,
                false,
            ),
            key_down: down.then(|| {
                Conv2d::new(
                    src,
                    &a("key.down_conv"),
                    chs,
                    chs,
                    dw_kernel,
                    kv_stride,
                    chs,
                    false,
                )
            }),
            key_norm: down.then(|| RmsNorm2d::new(src, &a("key.norm"), chs, eps)),
            key_proj: Conv2d::new(src, &a("key.proj"), chs, key_dim, 1, 1, 1, false),
            value_down: down.then(|| {
                Conv2d::new(
                    src,
                    &a("value.down_conv"),
                    chs,
                    chs,
                    dw_kernel,
                    kv_stride,
                    chs,
                    false,
                )
            }),
            value_norm: down.then(|| RmsNorm2d::new(src, &a("value.norm"), chs, eps)),
            value_proj: Conv2d::new(src, &a("value.proj"), chs, value_dim, 1, 1, 1, false),
            output_proj: Conv2d::new(
                src,
                &a("output.proj"),
                num_heads * value_dim,
                out_chs,
                1,
                1,
                1,
                false,
            ),
            layer_scale: layer_scale.then(|| {
                Param::from_tensor(src.tensor(
                    &join(name, "layer_scale.gamma"),
                    [out_chs],
                    Init::Ones,
                ))
            }),
            num_heads,
            key_dim,
            value_dim,
            has_skip: chs == out_chs && !noskip,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, _c, h, w] = x.dims();
        let (nh, kd, vd) = (self.num_heads, self.key_dim, self.value_dim);
        let xn = self.norm.forward(x.clone());
        // q: [N, nh·kd, H, W] → [N, nh, H·W, kd] (channel = head·kd + d)
        let q = self
            .query_proj
            .forward(xn.clone())
            .reshape([n, nh, kd, h * w])
            .swap_dims(2, 3);
        let kv = |down: &Option<Conv2d<B>>, norm: &Option<RmsNorm2d<B>>, proj: &Conv2d<B>| {
            let mut t = xn.clone();
            if let (Some(d), Some(nm)) = (down, norm) {
                t = nm.forward(d.forward(t));
            }
            let t = proj.forward(t);
            let [_, dim, hh, ww] = t.dims();
            t.reshape([n, 1, dim, hh * ww]).swap_dims(2, 3) // [N, 1, M, dim]
        };
        let k = kv(&self.key_down, &self.key_norm, &self.key_proj);
        let v = kv(&self.value_down, &self.value_norm, &self.value_proj);
        let m = k.dims()[2];
        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3).expand([n, nh, kd, m])) * (kd as f64).powf(-0.5);
        let probs = softmax(scores.cast(DType::F32), 3).cast(dtype);
        let o = probs.matmul(v.expand([n, nh, m, vd])); // [N, nh, H·W, vd]
        let o = o
            .swap_dims(1, 2)
            .reshape([n, h, w, nh * vd])
            .permute([0, 3, 1, 2]);
        let mut y = self.output_proj.forward(o);
        if let Some(g) = &self.layer_scale {
            y = layer_scale(y, g);
        }
        if self.has_skip { y + x } else { y }
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        let a = |n: &str| join(name, &format!("attn.{n}"));
        self.norm.params(&join(name, "norm"), out);
        self.query_proj.params(&a("query.proj"), out);
        if let (Some(d), Some(nm)) = (&self.key_down, &self.key_norm) {
            d.params(&a("key.down_conv"), out);
            nm.params(&a("key.norm"), out);
        }
        self.key_proj.params(&a("key.proj"), out);
        if let (Some(d), Some(nm)) = (&self.value_down, &self.value_norm) {
            d.params(&a("value.down_conv"), out);
            nm.params(&a("value.norm"), out);
        }
        self.value_proj.params(&a("value.proj"), out);
        self.output_proj.params(&a("output.proj"), out);
        if let Some(g) = &self.layer_scale {
            out.push(join(name, "layer_scale.gamma"), HfParam::D1(g.val()));
        }
    }
}

impl<B: Backend> Block<B> {
    /// Build block `name` from its arguments, given its input channels.
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        in_chs: usize,
        args: &BlockArgs,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        match *args {
            BlockArgs::EdgeResidual {
                exp_kernel_size,
                exp_ratio,
                pw_kernel_size,
                stride,
                out_chs,
                force_in_chs,
                noskip,
            } => Block::EdgeResidual(EdgeResidual::new(
                src,
                name,
                in_chs,
                out_chs,
                exp_kernel_size,
                exp_ratio,
                pw_kernel_size,
                stride,
                force_in_chs,
                noskip,
                eps,
            )),
            BlockArgs::Uir {
                dw_kernel_size_start,
                dw_kernel_size_mid,
                dw_kernel_size_end,
                exp_ratio,
                stride,
                out_chs,
                noskip,
            } => Block::Uir(Uir::new(
                src,
                name,
                in_chs,
                out_chs,
                dw_kernel_size_start,
                dw_kernel_size_mid,
                dw_kernel_size_end,
                exp_ratio,
                stride,
                noskip,
                layer_scale,
                eps,
            )),
            BlockArgs::Mqa {
                num_heads,
                key_dim,
                value_dim,
                kv_stride,
                dw_kernel_size,
                out_chs,
                noskip,
                ..
            } => Block::Attention(MobileAttention::new(
                src,
                name,
                in_chs,
                out_chs,
                num_heads,
                key_dim,
                value_dim,
                kv_stride,
                dw_kernel_size,
                noskip,
                layer_scale,
                eps,
            )),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::EdgeResidual(b) => b.forward(x),
            Block::Uir(b) => b.forward(x),
            Block::Attention(b) => b.forward(x),
        }
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        match self {
            Block::EdgeResidual(b) => b.params(name, out),
            Block::Uir(b) => b.params(name, out),
            Block::Attention(b) => b.params(name, out),
        }
    }
}
