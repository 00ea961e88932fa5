//! The Gemma 3n MatFormer text decoder, one file per sub-module: [`config`] (HF `text_config`),
//! [`altup`], [`laurel`], [`layer`] (one decoder layer), [`model`] (`Gemma3nTextModel`,
//! `Gemma3nForCausalLM`) and [`matformer`] (Mix-n-Match sub-model extraction). Attention, the MLP,
//! the cache and decoding are shared with Gemma 3 (`crate::attention`, `crate::mlp`, …).

pub mod altup;
pub mod config;
pub mod laurel;
pub mod layer;
pub mod matformer;
pub mod model;

pub use config::Gemma3nTextConfig;
pub use model::{
    CausalLmOutput, ForwardOptions, Gemma3nForCausalLM, Gemma3nTextModel, TextModelOutput,
};
