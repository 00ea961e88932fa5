//! Errors of the audio crate.

use automodel_core::{ConfigError, ReadError, WeightError};

/// Errors of config parsing, weight loading, decoding and feature extraction.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Read(#[from] ReadError),
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
