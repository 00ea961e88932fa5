//! Layers shared by every Gemma model.

pub mod activation;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod matmul;
pub mod norm;
pub mod rope;

pub use activation::{gelu_tanh, normal_icdf, softcap, softcap_opt};
pub use embedding::Embedding;
pub use linear::Linear;
pub use matmul::matmul;
pub use norm::RmsNorm;
pub use rope::{RopeForHeads, RopeTables, rotate_half};

use crate::Backend;
use burn::prelude::*;

/// `t` as a constant: no gradient flows through it, and none is computed for it.
///
/// Burn's `detach` alone keeps a leaf's `require_grad`: detaching a trainable parameter gives a
/// new leaf that still requires a gradient, so backward computes a full gradient for that copy
/// and throws it away (for Gemma's tied 262144 × 640 embedding: a 86 GFLOP matmul and several
/// 640 MiB buffers per step). This also clears the flag.
pub fn constant<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.detach().set_require_grad(false)
}
