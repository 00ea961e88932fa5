//! Errors of the text crate.

use std::path::PathBuf;

use automodel_core::WeightError;

/// Errors of config parsing, weight loading, inputs and MatFormer extraction.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
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
    #[error("invalid input: {0}")]
    Input(String),
    #[error("MatFormer: {0}")]
    Matformer(String),
}

impl TextError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        TextError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
