//! Errors of the vision crate.

use automodel_core::{ConfigError, ReadError, WeightError};

/// Errors of config parsing, weight loading and image processing.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
}

impl VisionError {
    /// A bad value of config field `field`.
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        VisionError::Config(ConfigError::field(field, message))
    }
}
