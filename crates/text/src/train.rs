//! The one training entry point: a batch of tensors in, the summed loss (and, on request, the
//! logits) out. Gemma 3, the Gemma 3n causal LM and the multimodal Gemma 3n implement
//! [`CausalLm`]; the trainer only sees this trait.

use automodel_core::Backend;
use automodel_core::loss::LossSum;
use burn::prelude::*;
use burn::tensor::{Bool, Int};

use crate::error::TextError;

/// One training (or evaluation) batch, every tensor on the model's device.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// `[B, T]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[B, T]`: 0 = padding, otherwise the segment a token belongs to (1 for an ordinary batch;
    /// a packed row numbers its samples 1, 2, … and attention never crosses them).
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[B, T]`, unshifted (position `p` is predicted from `..p`); `-100` = no loss.
    pub labels: Tensor<B, 2, Int>,
    /// `[B, T]`; default `0..T` per row (packed rows restart at each sample).
    pub position_ids: Option<Tensor<B, 2, Int>>,
    /// `[N, 3, H, W]` in `[0, 1]` (Gemma 3n).
    pub pixel_values: Option<Tensor<B, 4>>,
    /// Log-mel features `[B', F, M]` and the valid-frame mask `[B', F]` (true = real frame, HF's
    /// `input_features_mask`) (Gemma 3n).
    pub audio: Option<(Tensor<B, 3>, Tensor<B, 2, Bool>)>,
}

impl<B: Backend> TrainBatch<B> {
    /// A text batch without padding.
    pub fn text(input_ids: Tensor<B, 2, Int>, labels: Tensor<B, 2, Int>) -> Self {
        let mask = input_ids.ones_like();
        Self {
            input_ids,
            attention_mask: mask,
            labels,
            position_ids: None,
            pixel_values: None,
            audio: None,
        }
    }

    /// `[B, T]`.
    pub fn dims(&self) -> [usize; 2] {
        self.input_ids.dims()
    }

    /// Check that masks, labels and positions have the ids' shape.
    pub fn validate(&self) -> Result<(), TextError> {
        let want = self.dims();
        let mut named = vec![
            ("attention_mask", self.attention_mask.dims()),
            ("labels", self.labels.dims()),
        ];
        if let Some(p) = &self.position_ids {
            named.push(("position_ids", p.dims()));
        }
        for (name, dims) in named {
            if dims != want {
                return Err(TextError::Input(format!(
                    "{name} is {dims:?}, expected {want:?} like input_ids"
                )));
            }
        }
        Ok(())
    }
}

/// What a training forward should do besides the loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOptions {
    /// Training-mode behaviour of the modules (AltUp coefficient clipping, dropout).
    pub training: bool,
    /// Prepare the loss for `backward()` (the head's gradients are computed with the loss).
    pub with_grad: bool,
    /// Also return the full logits `[B, T, V]` (tests and parity; costly for a large vocabulary).
    pub return_logits: bool,
}

impl TrainOptions {
    /// A training step: training-mode modules, gradients.
    pub fn train() -> Self {
        Self {
            training: true,
            with_grad: true,
            return_logits: false,
        }
    }

    /// Evaluation: eval-mode modules, no gradients.
    pub fn eval() -> Self {
        Self::default()
    }

    /// Eval-mode modules with gradients (what the reference gradients were computed with).
    pub fn gradients() -> Self {
        Self {
            with_grad: true,
            ..Self::default()
        }
    }
}

/// Output of [`CausalLm::forward_train`].
#[derive(Debug, Clone)]
pub struct TrainOutput<B: Backend> {
    /// The summed loss over label tokens and their count; `None` when nothing is labelled.
    pub loss: Option<LossSum<B>>,
    /// `[B, T, V]` when asked for.
    pub logits: Option<Tensor<B, 3>>,
}

/// A causal language model that can be trained.
pub trait CausalLm<B: Backend> {
    type Error: From<TextError>;

    /// Forward over a batch: the loss from a memory-lean head (only labelled positions, in
    /// chunks; see [`automodel_core::loss::lm_head_loss`]).
    fn forward_train(
        &self,
        batch: &TrainBatch<B>,
        opts: TrainOptions,
    ) -> Result<TrainOutput<B>, Self::Error>;

    /// What the model does after each applied optimizer step (Gemma 3n clamps its AltUp
    /// prediction coefficients, as HF's training forward does); by default nothing.
    fn after_optimizer_step(self) -> Self
    where
        Self: Sized,
    {
        self
    }
}
