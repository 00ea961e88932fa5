//! Errors of the text crate.

use automodel_core::{ConfigError, WeightError};

/// Errors of config parsing, weight loading, inputs and MatFormer extraction.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("MatFormer: {0}")]
    Matformer(String),
}

impl TextError {
    /// A bad value of config field `field`.
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        TextError::Config(ConfigError::field(field, message))
    }
}
