//! The three MobileNet-V5 block types: EdgeResidual, Universal Inverted Residual and Mobile
//! multi-query attention. Field paths are timm's keys (`attn.key.down_conv.weight`,
//! `layer_scale.gamma`); each block is built from its timm block arguments.

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::gelu_tanh;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::config::{BlockArgs, ErArgs, MqaArgs, UirArgs, make_divisible};
use crate::conv::{Conv2d, ConvNormAct, ConvSpec, LayerScale, RmsNorm2d};

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
    pub layer_scale: Option<LayerScale<B>>,
    #[module(skip)]
    pub has_skip: bool,
}

/// A 1×1 projection (timm's `query`/`output` sub-modules of the attention).
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub proj: Conv2d<B>,
}

/// A key or value branch: optional strided depthwise down-sampling with its norm, then a 1×1
/// projection to one shared head.
#[derive(Module, Debug)]
pub struct KvBranch<B: Backend> {
    pub down_conv: Option<Conv2d<B>>,
    pub norm: Option<RmsNorm2d<B>>,
    pub proj: Conv2d<B>,
}

/// timm `MultiQueryAttention2d`: many query heads, one key/value head.
#[derive(Module, Debug)]
pub struct MultiQueryAttention<B: Backend> {
    pub query: Projection<B>,
    pub key: KvBranch<B>,
    pub value: KvBranch<B>,
    pub output: Projection<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub key_dim: usize,
    #[module(skip)]
    pub value_dim: usize,
}

/// Mobile attention: RMS norm → multi-query attention → layer scale, with a residual.
#[derive(Module, Debug)]
pub struct MobileAttention<B: Backend> {
    pub norm: RmsNorm2d<B>,
    pub attn: MultiQueryAttention<B>,
    pub layer_scale: Option<LayerScale<B>>,
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
    pub fn new(init: &Initializer<B>, in_chs: usize, a: &ErArgs, eps: f64) -> Self {
        let base = if a.force_in_chs > 0 {
            a.force_in_chs
        } else {
            in_chs
        };
        let mid = make_divisible(base as f64 * a.exp_ratio);
        Self {
            conv_exp: Conv2d::new(
                init,
                ConvSpec::full(in_chs, mid, a.exp_kernel_size, a.stride),
            ),
            bn1: RmsNorm2d::new(init, mid, eps),
            conv_pwl: Conv2d::new(init, ConvSpec::full(mid, a.out_chs, a.pw_kernel_size, 1)),
            bn2: RmsNorm2d::new(init, a.out_chs, eps),
            has_skip: in_chs == a.out_chs && a.stride == 1 && !a.noskip,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = gelu_tanh(self.bn1.forward(self.conv_exp.forward(x.clone())));
        let y = self.bn2.forward(self.conv_pwl.forward(y));
        if self.has_skip { y + x } else { y }
    }
}

impl<B: Backend> Uir<B> {
    pub fn new(
        init: &Initializer<B>,
        in_chs: usize,
        a: &UirArgs,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        let mid = make_divisible(in_chs as f64 * a.exp_ratio);
        let (start, mid_k, end, out) = (
            a.dw_kernel_size_start,
            a.dw_kernel_size_mid,
            a.dw_kernel_size_end,
            a.out_chs,
        );
        let cna = |spec, act| ConvNormAct::new(init, spec, act, eps);
        Self {
            // The start depthwise conv only takes the stride when there is no mid conv.
            dw_start: (start > 0).then(|| {
                let stride = if mid_k > 0 { 1 } else { a.stride };
                cna(ConvSpec::depthwise(in_chs, start, stride), false)
            }),
            pw_exp: cna(ConvSpec::pointwise(in_chs, mid), true),
            dw_mid: (mid_k > 0).then(|| cna(ConvSpec::depthwise(mid, mid_k, a.stride), true)),
            pw_proj: cna(ConvSpec::pointwise(mid, out), false),
            dw_end: (end > 0).then(|| cna(ConvSpec::depthwise(out, end, 1), false)),
            layer_scale: layer_scale.then(|| LayerScale::new(init, out)),
            has_skip: in_chs == out && a.stride == 1 && !a.noskip,
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
            y = g.forward(y);
        }
        if self.has_skip { y + x } else { y }
    }
}

impl<B: Backend> KvBranch<B> {
    fn new(init: &Initializer<B>, chs: usize, dim: usize, a: &MqaArgs, eps: f64) -> Self {
        let down = a.kv_stride > 1;
        Self {
            down_conv: down.then(|| {
                Conv2d::new(
                    init,
                    ConvSpec::depthwise(chs, a.dw_kernel_size, a.kv_stride),
                )
            }),
            norm: down.then(|| RmsNorm2d::new(init, chs, eps)),
            proj: Conv2d::new(init, ConvSpec::pointwise(chs, dim)),
        }
    }

    /// `[N, C, H, W]` → `[N, 1, M, dim]` (one head, `M` positions).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let n = x.dims()[0];
        let mut t = x;
        if let (Some(d), Some(nm)) = (&self.down_conv, &self.norm) {
            t = nm.forward(d.forward(t));
        }
        let t = self.proj.forward(t);
        let [_, dim, hh, ww] = t.dims();
        t.reshape([n, 1, dim, hh * ww]).swap_dims(2, 3)
    }
}

impl<B: Backend> MultiQueryAttention<B> {
    fn new(init: &Initializer<B>, chs: usize, a: &MqaArgs, eps: f64) -> Self {
        Self {
            query: Projection {
                proj: Conv2d::new(init, ConvSpec::pointwise(chs, a.num_heads * a.key_dim)),
            },
            key: KvBranch::new(init, chs, a.key_dim, a, eps),
            value: KvBranch::new(init, chs, a.value_dim, a, eps),
            output: Projection {
                proj: Conv2d::new(
                    init,
                    ConvSpec::pointwise(a.num_heads * a.value_dim, a.out_chs),
                ),
            },
            num_heads: a.num_heads,
            key_dim: a.key_dim,
            value_dim: a.value_dim,
        }
    }

    fn forward(&self, xn: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, _c, h, w] = xn.dims();
        let (nh, kd, vd) = (self.num_heads, self.key_dim, self.value_dim);
        // q: [N, nh·kd, H, W] → [N, nh, H·W, kd] (channel = head·kd + d)
        let q = self
            .query
            .proj
            .forward(xn.clone())
            .reshape([n, nh, kd, h * w])
            .swap_dims(2, 3);
        let k = self.key.forward(xn.clone());
        let v = self.value.forward(xn);
        let m = k.dims()[2];
        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3).expand([n, nh, kd, m])) * (kd as f64).powf(-0.5);
        let probs = softmax(scores.cast(DType::F32), 3).cast(dtype);
        let o = probs.matmul(v.expand([n, nh, m, vd])); // [N, nh, H·W, vd]
        let o = o
            .swap_dims(1, 2)
            .reshape([n, h, w, nh * vd])
            .permute([0, 3, 1, 2]);
        self.output.proj.forward(o)
    }
}

impl<B: Backend> MobileAttention<B> {
    pub fn new(
        init: &Initializer<B>,
        chs: usize,
        a: &MqaArgs,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        Self {
            norm: RmsNorm2d::new(init, chs, eps),
            attn: MultiQueryAttention::new(init, chs, a, eps),
            layer_scale: layer_scale.then(|| LayerScale::new(init, a.out_chs)),
            has_skip: chs == a.out_chs && !a.noskip,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut y = self.attn.forward(self.norm.forward(x.clone()));
        if let Some(g) = &self.layer_scale {
            y = g.forward(y);
        }
        if self.has_skip { y + x } else { y }
    }
}

impl<B: Backend> Block<B> {
    /// The block `args` describes, given its input channels.
    pub fn new(
        init: &Initializer<B>,
        in_chs: usize,
        args: &BlockArgs,
        layer_scale: bool,
        eps: f64,
    ) -> Self {
        match args {
            BlockArgs::EdgeResidual(a) => {
                Block::EdgeResidual(EdgeResidual::new(init, in_chs, a, eps))
            }
            BlockArgs::Uir(a) => Block::Uir(Uir::new(init, in_chs, a, layer_scale, eps)),
            BlockArgs::Mqa(a) => {
                Block::Attention(MobileAttention::new(init, in_chs, a, layer_scale, eps))
            }
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::EdgeResidual(b) => b.forward(x),
            Block::Uir(b) => b.forward(x),
            Block::Attention(b) => b.forward(x),
        }
    }
}
