//! `Gemma3nMultimodalEmbedder`: maps vision/audio hard tokens and soft features into the text
//! embedding space.

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::{Embedding, Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::Int;

/// `RMSNorm_noscale(RMSNorm_{hard|soft}(x) · Pᵀ)`.
#[derive(Module, Debug)]
pub struct MultimodalEmbedder<B: Backend> {
    pub embedding: Embedding<B>,
    pub hard_embedding_norm: RmsNorm<B>,
    pub soft_embedding_norm: RmsNorm<B>,
    pub embedding_projection: Linear<B>,
    pub embedding_post_projection_norm: RmsNorm<B>,
    #[module(skip)]
    pub vocab_offset: usize,
}

impl<B: Backend> MultimodalEmbedder<B> {
    pub fn new(
        init: &Initializer<B>,
        vocab_size: usize,
        vocab_offset: usize,
        mm_hidden: usize,
        text_hidden: usize,
        eps: f64,
    ) -> Self {
        Self {
            embedding: Embedding::new(init, vocab_size, mm_hidden, None),
            hard_embedding_norm: RmsNorm::new(init, mm_hidden, eps, false),
            soft_embedding_norm: RmsNorm::new(init, mm_hidden, eps, false),
            embedding_projection: Linear::new(init, mm_hidden, text_hidden),
            embedding_post_projection_norm: RmsNorm::without_scale(eps),
            vocab_offset,
        }
    }

    /// Hard tokens: `ids` `[B, T]` in `[vocab_offset, vocab_offset + vocab_size)`.
    pub fn hard(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let e = self.embedding.forward(ids - self.vocab_offset as i64);
        self.project(self.hard_embedding_norm.forward(e))
    }

    /// Soft features `[B, T, M]`.
    pub fn soft(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        self.project(self.soft_embedding_norm.forward(features))
    }

    fn project(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.embedding_post_projection_norm
            .forward(self.embedding_projection.forward(x))
    }
}
