//! A bias-free linear layer that loads and saves Hugging Face `[out, in]` weights, with an
//! optional LoRA adapter.
// The adapter fields carry PEFT's key names (`lora_A`, `lora_B`); the derive's generated code
// uses them as identifiers too.
#![allow(non_snake_case)]

use crate::Backend;
use burn::module::Param;
use burn::prelude::*;

use burn::tensor::{Distribution, Int};

use crate::init::{Init, Initializer};
use crate::nn::lora::LoraMatrix;

/// `y = x·Wᵀ` with `W` stored by HF as `[out, in]`; kept here as `[in, out]` so the forward is a
/// plain matmul. With a LoRA adapter (PEFT's `lora_A` `[r, in]` and `lora_B` `[out, r]`, kept
/// transposed too): `y = x·Wᵀ + scale · dropout(x)·Aᵀ·Bᵀ`, W never merged.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (the transpose of the HF tensor).
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_in, r]` when adapted.
    pub lora_A: LoraMatrix<B>,
    /// `[r, d_out]` when adapted; carries the scale and the dropout probability.
    pub lora_B: LoraMatrix<B>,
}

impl<B: Backend> Linear<B> {
    /// A `d_in → d_out` layer, weights `N(0, std²)` (or shapes only).
    pub fn new(init: &Initializer<B>, d_in: usize, d_out: usize) -> Self {
        Self::from_weight(init.param([d_in, d_out], Init::Normal))
    }

    /// Around an `[in, out]` weight, without an adapter.
    fn from_weight(weight: Param<Tensor<B, 2>>) -> Self {
        Self {
            weight,
            lora_A: LoraMatrix::empty(),
            lora_B: LoraMatrix::empty(),
        }
    }

    /// From an HF-layout `[out, in]` weight.
    pub fn from_hf_weight(w: Tensor<B, 2>) -> Self {
        let device = w.device();
        let dtype = w.dtype();
        // Materialise the transpose so the forward matmul reads contiguous memory.
        let t = Tensor::from_data(w.transpose().into_data(), (&device, dtype));
        Self::from_weight(Param::from_tensor(t))
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The weight in HF layout `[out, in]`.
    pub fn hf_weight(&self) -> Tensor<B, 2> {
        self.weight.val().transpose()
    }

    /// Apply to `[..., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, self.weight.val())
    }

    /// Apply with the weight clamped to `±clamp.limit()` (AltUp's coefficients in training).
    pub fn forward_clamped<const D: usize>(&self, x: Tensor<B, D>, clamp: Clamp) -> Tensor<B, D> {
        let w = self.weight.val();
        let w = match clamp {
            Clamp::StraightThrough(c) => w.clone() + (w.clone().clamp(-c, c) - w).detach(),
            Clamp::Functional(c) => w.clamp(-c, c),
        };
        self.apply(x, w)
    }

    /// The one place a linear layer computes: `x · w` with `w` `[in, out]`, plus the adapter.
    fn apply<const D: usize>(&self, x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
        let base = crate::nn::matmul(x.clone(), w);
        let (Some(a), Some(b)) = (self.lora_A.val(), self.lora_B.val()) else {
            return base;
        };
        let dtype = base.dtype();
        let x = dropout(x.cast(a.dtype()), self.lora_B.dropout);
        let low = x.matmul(a.unsqueeze::<D>()).matmul(b.unsqueeze::<D>());
        base + (low * self.lora_B.scale).cast(dtype)
    }

    /// Keep only the outputs `idx` (columns of the weight and of `lora_B`): MatFormer slicing.
    pub fn select_outputs(self, idx: Tensor<B, 1, Int>) -> Self {
        let cut = |t: Tensor<B, 2>| t.select(1, idx.clone());
        Self {
            weight: Param::from_tensor(cut(self.weight.val())),
            lora_A: self.lora_A,
            lora_B: self.lora_B.map_matrix(cut),
        }
    }

    /// Keep the first `n` outputs.
    pub fn narrow_outputs(self, n: usize) -> Self {
        let cut = |t: Tensor<B, 2>| t.narrow(1, 0, n);
        Self {
            weight: Param::from_tensor(cut(self.weight.val())),
            lora_A: self.lora_A,
            lora_B: self.lora_B.map_matrix(cut),
        }
    }

    /// Keep the first `n` inputs (rows of the weight and of `lora_A`).
    pub fn narrow_inputs(self, n: usize) -> Self {
        let cut = |t: Tensor<B, 2>| t.narrow(0, 0, n);
        Self {
            weight: Param::from_tensor(cut(self.weight.val())),
            lora_A: self.lora_A.map_matrix(cut),
            lora_B: self.lora_B,
        }
    }

    /// Whether a LoRA adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.lora_A.weight.is_some() && self.lora_B.weight.is_some()
    }

    /// The adapter's update `scale · (A·B)` in the kept layout `[in, out]`, when there is one.
    pub fn adapter_delta(&self) -> Option<Tensor<B, 2>> {
        let (a, b) = (self.lora_A.val()?, self.lora_B.val()?);
        Some(a.matmul(b) * self.lora_B.scale)
    }

    /// Fold the adapter into the weight (`W + scale·(B·A)` in HF terms) and drop it.
    pub fn merge_adapter(self) -> Self {
        let Some(delta) = self.adapter_delta() else {
            return self;
        };
        let w = self.weight.val();
        let merged = (w.clone() + delta.cast(w.dtype())).detach();
        Self::from_weight(Param::initialized(self.weight.id, merged))
    }
}

/// Inverted dropout with probability `p`, active only where gradients are tracked (Burn's
/// convention: an autodiff backend trains, its inner backend evaluates).
fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if p <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let keep = Tensor::<B, D>::random(x.shape(), Distribution::Bernoulli(1.0 - p), &x.device());
    let dtype = x.dtype();
    x * keep.cast(dtype) / (1.0 - p)
}

/// How [`Linear::forward_clamped`] clamps its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clamp {
    /// The forward sees clamped values, the gradient passes as if unclamped (HF clamps the
    /// weight in place before using it: AltUp `prediction_coefs`).
    StraightThrough(f64),
    /// `clamp(w)` as an ordinary op: no gradient to clamped entries (AltUp `correction_coefs`).
    Functional(f64),
}
