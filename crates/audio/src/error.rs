//! Errors of the audio crate.

use std::path::PathBuf;

use automodel_core::WeightError;

/// Errors of config parsing, weight loading, decoding and feature extraction.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
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
    Weights(#[from] WeightError),
    #[error("audio {name}: {message}")]
    Audio { name: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
}

impl AudioError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        AudioError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
