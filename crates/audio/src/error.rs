//! Errors of the audio crate.

use std::path::PathBuf;

use automodel_core::{ConfigError, WeightError};

/// Errors of config parsing, weight loading, decoding and feature extraction.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audio {name}: {message}")]
    Audio { name: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
}

impl AudioError {
    /// A bad value of config field `field`.
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        AudioError::Config(ConfigError::field(field, message))
    }
}
