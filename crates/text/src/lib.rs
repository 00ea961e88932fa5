//! Gemma text decoders on Burn: the Gemma 3n MatFormer decoder ([`gemma3n`]) and plain Gemma 3
//! ([`gemma3`]), built from shared blocks: [`attention`] (GQA, q/k/v norms, RoPE,
//! sliding/global masks built on the device, KV sharing), [`mlp`] (gated, optional gaussian
//! top-k sparsity), [`cache`] (KV cache), [`generate`] (the one decoding loop) and [`train`] (the
//! training entry point every model implements).

pub mod attention;
pub mod cache;
pub mod config;
pub mod error;
pub mod gemma3;
pub mod gemma3n;
pub mod generate;
pub mod mlp;
pub mod train;

pub use cache::KvCache;
pub use config::{KvSharing, LayerType, OneOrMany};
pub use error::TextError;
pub use gemma3n::matformer;
pub use gemma3n::{
    CausalLmOutput, ForwardOptions, Gemma3nForCausalLM, Gemma3nTextConfig, Gemma3nTextModel,
    TextModelOutput,
};
pub use generate::{Generate, GenerateOutput, GenerationConfig};
pub use train::{CausalLm, TrainBatch, TrainOptions, TrainOutput};
