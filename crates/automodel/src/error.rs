//! Errors of the facade.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a Gemma 3n model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
    #[error(transparent)]
    Text(#[from] automodel_text::TextError),
    #[error(transparent)]
    Vision(#[from] automodel_vision::VisionError),
    #[error(transparent)]
    Audio(#[from] automodel_audio::AudioError),
    #[error(transparent)]
    Gguf(#[from] automodel_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] automodel_tokenizer::TokenizerError),
    #[error("invalid input: {0}")]
    Input(String),
}
