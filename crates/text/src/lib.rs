//! The Gemma 3n MatFormer text decoder on Burn.
//!
//! One file per sub-module: [`config`] (HF `text_config`), [`altup`], [`laurel`],
//! [`attention`] (GQA, q/k/v norms, RoPE, sliding/global masks, KV sharing), [`mlp`] (gaussian
//! top-k sparsity), [`layer`] (one decoder layer), [`model`] (`Gemma3nTextModel`,
//! `Gemma3nForCausalLM`), [`cache`] (KV cache), [`generate`] (greedy decoding) and
//! [`matformer`] (Mix-n-Match sub-model extraction).

pub mod altup;
pub mod attention;
pub mod cache;
pub mod config;
pub mod error;
pub mod gemma3;
pub mod generate;
pub mod laurel;
pub mod layer;
pub mod matformer;
pub mod mlp;
pub mod model;

pub use cache::KvCache;
pub use config::{Gemma3nTextConfig, KvSharing, LayerType};
pub use error::TextError;
pub use model::{
    CausalLmOutput, ForwardOptions, Gemma3nForCausalLM, Gemma3nTextModel, TextModelOutput,
};
