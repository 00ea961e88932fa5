//! Plain Gemma 3 text: [`config`] (HF `Gemma3TextConfig`) and [`model`] (`Gemma3ForCausalLM`).

pub mod config;
pub mod model;

pub use config::Gemma3TextConfig;
pub use model::{Gemma3DecoderLayer, Gemma3ForCausalLM, Gemma3Output, Gemma3TextModel};
