//! The backends models run on, and the few operations a backend may run its own way.
//!
//! [`Backend`] is Burn's backend trait extended with this project's fused operations, in Burn's
//! backend-extension style (as in Burn's custom-kernel examples): every operation has a generic
//! implementation in Burn tensor ops, in [`generic`], which is what CUDA and wgpu run; Burn's
//! CPU backend (`Flex`) overrides some of them with one parallel pass over host memory; and
//! `Autodiff<B>` runs its inner backend's implementation and attaches the gradient. No test of
//! the backend's type chooses the maths: the implementation belongs to the backend's `impl`.
//!
//! | operation | generic (any backend) | Flex (host memory) |
//! |---|---|---|
//! | [`Backend::gelu_tanh`] | ten element-wise ops | one pass writing `y` (and `y'`) |
//! | [`Backend::matmul`] | Burn's matmul | one row split over the threads |
//! | [`Backend::head_loss`] | soft-cap, log-sum-exp, softmax − one-hot as ops | one pass per row, `G_w` accumulated in place |
//! | [`Backend::adamw`] | AdamW as ops | in place, one pass |
//!
//! Both forms compute the same formula in the same order; the tests run both on the CPU.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::Tensor;

pub use crate::adamw::{AdamWInput, AdamWState, AdamWStep};

/// Burn's backend with the fused operations this project uses (see the module docs).
pub trait Backend: burn::tensor::backend::Backend {
    /// PyTorch's `gelu(approximate="tanh")` ([`crate::nn::gelu_tanh`]).
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        generic::gelu_tanh(x)
    }

    /// tanh-GELU's value and derivative (PyTorch's `GeluBackward`), for an autodiff backend
    /// above this one to attach as the gradient.
    fn gelu_tanh_with_derivative<const D: usize>(
        x: Tensor<Self, D>,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        generic::gelu_tanh_with_derivative(x)
    }

    /// `x · w` for `x` `[rows, k]` and `w` `[k, n]` ([`crate::nn::matmul`]).
    fn matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        x.matmul(w)
    }

    /// The tied LM head's summed cross-entropy over `hidden` `[N, H]` (the labelled rows) and
    /// `table` `[V, H]`, computed in chunks of `chunk` rows without `[N, V]` logits, and its
    /// gradients when asked ([`crate::loss::lm_head_loss`] attaches them). Neither input is
    /// tracked by autodiff.
    fn head_loss(input: HeadLossInput<'_, Self>) -> HeadLoss<Self> {
        generic::head_loss(input)
    }

    /// One AdamW update of a float32 parameter and its moments ([`AdamWStep`]).
    fn adamw<const D: usize>(input: AdamWInput<'_, Self, D>) -> AdamWState<Self, D> {
        generic::adamw(input)
    }

    /// The largest tensor, in bytes, a kernel on `device` can address, where that is less than
    /// the device's memory (`None`: no such limit). A Vulkan device binds each tensor as one
    /// storage buffer of at most `maxStorageBufferRange` bytes (128 MiB on Mesa's llvmpipe,
    /// 4 GiB on most GPUs); past it the kernels read and write the wrong memory without an
    /// error. Loading refuses a weight above it ([`crate::weights::WeightLoader`]), and the
    /// LM head's loss keeps its logits chunks below it.
    fn max_tensor_bytes(_device: &Self::Device) -> Option<u64> {
        None
    }
}

/// A [`Backend`] with gradients whose inner backend is a [`Backend`] too.
pub trait AutodiffBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> + Backend
{
}

impl<T> AutodiffBackend for T
where
    T: burn::tensor::backend::AutodiffBackend + Backend,
    T::InnerBackend: Backend,
{
}

/// Which gradients [`Backend::head_loss`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadGrads {
    /// `d loss / d hidden`.
    pub hidden: bool,
    /// `d loss / d table` (skipped for a frozen table).
    pub table: bool,
}

/// What [`Backend::head_loss`] takes: the hidden states `[N, H]` of the labelled rows, the
/// head's `table` `[V, H]`, every row's target id, the logit soft-cap, the gradients wanted and
/// the rows per chunk.
#[derive(Debug, Clone)]
pub struct HeadLossInput<'a, B: burn::tensor::backend::Backend> {
    pub hidden: Tensor<B, 2>,
    pub table: Tensor<B, 2>,
    pub targets: &'a [i64],
    pub softcap: Option<f64>,
    pub want: HeadGrads,
    pub chunk: usize,
}

impl<'a, B: burn::tensor::backend::Backend> HeadLossInput<'a, B> {
    fn map<C: burn::tensor::backend::Backend>(
        self,
        f: impl Fn(Tensor<B, 2>) -> Tensor<C, 2>,
    ) -> HeadLossInput<'a, C> {
        HeadLossInput {
            hidden: f(self.hidden),
            table: f(self.table),
            targets: self.targets,
            softcap: self.softcap,
            want: self.want,
            chunk: self.chunk,
        }
    }
}

/// What [`Backend::head_loss`] returns.
#[derive(Debug, Clone)]
pub struct HeadLoss<B: burn::tensor::backend::Backend> {
    /// The summed loss, float32 `[1]`.
    pub loss: Tensor<B, 1>,
    /// `G_h` `[N, H]` in the hidden states' dtype.
    pub hidden: Option<Tensor<B, 2>>,
    /// `G_w` `[V, H]`, float32, contiguous.
    pub table: Option<Tensor<B, 2>>,
}

impl<B: burn::tensor::backend::Backend> HeadLoss<B> {
    fn map<C: burn::tensor::backend::Backend>(
        self,
        f1: impl Fn(Tensor<B, 1>) -> Tensor<C, 1>,
        f2: impl Fn(Tensor<B, 2>) -> Tensor<C, 2>,
    ) -> HeadLoss<C> {
        HeadLoss {
            loss: f1(self.loss),
            hidden: self.hidden.map(&f2),
            table: self.table.map(&f2),
        }
    }
}

/// The generic implementations: Burn tensor ops, for any backend.
pub mod generic {
    use burn::tensor::Tensor;
    use burn::tensor::backend::Backend;

    use super::{AdamWInput, AdamWState, HeadLoss, HeadLossInput};

    /// tanh-GELU as PyTorch's kernel computes it: `β·(x + κ·x·x·x)`, then `0.5·x·(1 + tanh)`
    /// (x³ as two multiplications; Burn's `gelu_approximate` uses `powf`, which rounds
    /// differently).
    pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        let inner = (x.clone() + x.clone() * x.clone() * x.clone() * GELU_KAPPA) * GELU_BETA;
        x * 0.5 * (inner.tanh() + 1.0)
    }

    /// tanh-GELU and PyTorch's `GeluBackward` (tanh) derivative
    /// `0.5·(1 + t) + 0.5·x·(1 − t²)·β·(1 + 3κx²)`.
    pub fn gelu_tanh_with_derivative<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let x2 = x.clone() * x.clone();
        let inner = (x.clone() + x2.clone() * x.clone() * GELU_KAPPA) * GELU_BETA;
        let t = inner.tanh();
        let half_x = x.clone() * 0.5;
        let y = half_x.clone() * (t.clone() + 1.0);
        let inner_d = (x2 * GELU_KAPPA_3).add_scalar(1.0) * GELU_BETA;
        let d = (t.clone() + 1.0) * 0.5 + half_x * (t.clone() * t).neg().add_scalar(1.0) * inner_d;
        (y, d)
    }

    /// `√(2/π)`, rounded to float32 as PyTorch's kernel holds it.
    pub(crate) const GELU_BETA: f64 =
        (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32 as f64;
    pub(crate) const GELU_KAPPA: f64 = 0.044715f32 as f64;
    /// `3κ`, rounded as float32 arithmetic rounds it.
    const GELU_KAPPA_3: f64 = (3.0f32 * 0.044715f32) as f64;

    /// [`super::Backend::head_loss`] with Burn ops.
    pub fn head_loss<B: Backend>(input: HeadLossInput<'_, B>) -> HeadLoss<B> {
        crate::loss::head_loss_in_chunks(input, false)
    }

    /// [`super::AdamWStep`] as Burn tensor ops (any float dtype).
    pub fn adamw<B: Backend, const D: usize>(input: AdamWInput<'_, B, D>) -> AdamWState<B, D> {
        let (s, m, v) = (input.step, input.exp_avg, input.exp_avg_sq);
        let g = input.grad.mul_scalar(s.grad_scale);
        let p = input.param.mul_scalar(s.decay);
        let m = if s.weight < 0.5 {
            m.clone() + (g.clone() - m).mul_scalar(s.weight)
        } else {
            g.clone() - (g.clone() - m).mul_scalar(s.one_minus_weight)
        };
        let v = v.mul_scalar(s.beta2) + g.clone().mul_scalar(s.one_minus_beta2).mul(g);
        let d = v
            .clone()
            .sqrt()
            .div_scalar(s.bias_correction2_sqrt)
            .add_scalar(s.eps);
        let p = p + m.clone().mul_scalar(s.neg_step_size).div(d);
        AdamWState {
            param: p,
            exp_avg: m,
            exp_avg_sq: v,
        }
    }
}

/// Burn's CPU backend: float32 work in one parallel pass over host memory (other dtypes take
/// the generic ops).
impl Backend for burn::backend::Flex {
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        crate::nn::activation::host::gelu_tanh(x, false).0
    }

    fn gelu_tanh_with_derivative<const D: usize>(
        x: Tensor<Self, D>,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        match crate::nn::activation::host::gelu_tanh(x, true) {
            (y, Some(d)) => (y, d),
            (_, None) => unreachable!("asked for the derivative"),
        }
    }

    fn matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        crate::nn::matmul::host::matmul(x, w)
    }

    fn head_loss(input: HeadLossInput<'_, Self>) -> HeadLoss<Self> {
        let host = input.hidden.dtype() == burn::tensor::DType::F32;
        crate::loss::head_loss_in_chunks(input, host)
    }

    fn adamw<const D: usize>(input: AdamWInput<'_, Self, D>) -> AdamWState<Self, D> {
        crate::adamw::host::adamw(input)
    }
}

/// Autodiff runs the inner backend's implementation on the tensors' values and attaches the
/// gradient: GELU as `y + (x·y' − detach(x·y'))` (value `y`, gradient `dy·y'`); the matmul's
/// fused form only when neither side is tracked; the loss and AdamW work on untracked tensors.
impl<B: Backend, C: CheckpointStrategy> Backend for Autodiff<B, C> {
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        // Burn tells leaves that require a gradient from other tensors, not a tracked
        // intermediate from an untracked one, so every input gets the derivative attached.
        let (y, d) = B::gelu_tanh_with_derivative(x.clone().inner());
        let s = x * Tensor::from_inner(d);
        Tensor::from_inner(y) + (s.clone() - s.detach())
    }

    fn gelu_tanh_with_derivative<const D: usize>(
        x: Tensor<Self, D>,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        let (y, d) = B::gelu_tanh_with_derivative(x.inner());
        (Tensor::from_inner(y), Tensor::from_inner(d))
    }

    fn matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if tracked(&x) || tracked(&w) {
            x.matmul(w)
        } else {
            Tensor::from_inner(B::matmul(x.inner(), w.inner()))
        }
    }

    fn head_loss(input: HeadLossInput<'_, Self>) -> HeadLoss<Self> {
        B::head_loss(input.map(Tensor::inner)).map(Tensor::from_inner, Tensor::from_inner)
    }

    fn adamw<const D: usize>(input: AdamWInput<'_, Self, D>) -> AdamWState<Self, D> {
        B::adamw(input.map(Tensor::inner)).map(Tensor::from_inner)
    }

    fn max_tensor_bytes(device: &Self::Device) -> Option<u64> {
        B::max_tensor_bytes(device)
    }
}

/// Whether autodiff records operations on `t` (a parameter, or anything computed from one):
/// `is_require_grad` answers for leaves only.
fn tracked<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<Autodiff<B, C>, D>,
) -> bool {
    match t.clone().into_primitive() {
        burn::tensor::TensorPrimitive::Float(p) => !p.node.requirement.is_none(),
        burn::tensor::TensorPrimitive::QFloat(_) => false,
    }
}

/// Burn's CUDA backend (with fusion): the generic implementations.
#[cfg(feature = "cuda")]
impl Backend for burn::backend::Cuda {}

/// Burn's wgpu backend (with fusion; Vulkan, Metal, DX12): the generic implementations.
#[cfg(feature = "wgpu")]
impl Backend for burn::backend::Wgpu {
    /// CubeCL's largest allocation on the device: the storage-buffer binding limit (a quarter
    /// of the device's memory where the driver offers 64-bit indexing).
    fn max_tensor_bytes(device: &Self::Device) -> Option<u64> {
        use cubecl_runtime::runtime::Runtime;
        let client = burn::backend::wgpu::WgpuRuntime::client(device);
        Some(client.properties().memory.max_page_size)
    }
}
