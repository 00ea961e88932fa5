//! Errors of the vision crate.

use std::path::PathBuf;

use automodel_core::WeightError;

/// Errors of config parsing, weight loading and image processing.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
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
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
}

impl VisionError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        VisionError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
