//! automodel: Gemma 3n for Rust.
//!
//! [`Gemma3nForConditionalGeneration`] composes the text decoder (`automodel-text`), the vision
//! tower (`automodel-vision`) and the audio tower (`automodel-audio`) with the two multimodal
//! embedders, merges image and audio soft tokens into the prompt, loads Hugging Face checkpoints
//! and generates. [`convert::gguf_to_hf`] turns a Gemma 3 GGUF file into a Hugging Face folder.

pub mod config;
pub mod convert;
pub mod embedder;
pub mod error;
pub mod hub;
pub mod model;
pub mod processor;

pub use automodel_core::device::{DeviceSpec, OnDevice, run_on};
pub use automodel_core::{AutodiffBackend, Backend};
pub use automodel_text::ForwardOptions;
pub use automodel_text::generate::{self, Generate, GenerateOutput, GenerationConfig};
pub use config::Gemma3nConfig;
pub use error::ModelError;
pub use model::{
    AudioInput, ConditionalOutput, Gemma3nForConditionalGeneration, Gemma3nModel, MultimodalInput,
};
pub use processor::Gemma3nProcessor;
