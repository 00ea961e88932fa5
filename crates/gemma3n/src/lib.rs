//! Gemma 3n composed: [`Gemma3nForConditionalGeneration`] joins the text decoder
//! (`automodel-text`), the vision tower (`automodel-vision`) and the audio tower
//! (`automodel-audio`) with the two multimodal embedders, merges image and audio soft tokens into
//! the prompt, loads Hugging Face checkpoints and generates; [`Gemma3nProcessor`] turns text,
//! images and audio into its inputs.

pub mod config;
pub mod embedder;
pub mod error;
pub mod model;
pub mod processor;

pub use config::Gemma3nConfig;
pub use error::ModelError;
pub use model::{
    AudioInput, ConditionalOutput, Gemma3nForConditionalGeneration, Gemma3nModel, MultimodalInput,
};
pub use processor::Gemma3nProcessor;
