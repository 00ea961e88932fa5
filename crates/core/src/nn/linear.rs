//! A bias-free linear layer that loads and saves Hugging Face `[out, in]` weights.

use burn::module::Param;
use burn::prelude::*;

use crate::init::{Init, Initializer};

/// `y = x·Wᵀ` with `W` stored by HF as `[out, in]`; kept here as `[in, out]` so the forward is a
/// plain matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (the transpose of the HF tensor).
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Linear<B> {
    /// A `d_in → d_out` layer, weights `N(0, std²)` (or shapes only).
    pub fn new(init: &Initializer<B>, d_in: usize, d_out: usize) -> Self {
        Self {
            weight: init.param([d_in, d_out], Init::Normal),
        }
    }

    /// From an HF-layout `[out, in]` weight.
    pub fn from_hf_weight(w: Tensor<B, 2>) -> Self {
        let device = w.device();
        let dtype = w.dtype();
        // Materialise the transpose so the forward matmul reads contiguous memory.
        let t = Tensor::from_data(w.transpose().into_data(), (&device, dtype));
        Self {
            weight: Param::from_tensor(t),
        }
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

    /// The one place a linear layer computes: `x · w` with `w` `[in, out]`.
    fn apply<const D: usize>(&self, x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
        x.matmul(w.unsqueeze::<D>())
    }
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
