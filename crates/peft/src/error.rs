//! Errors of the PEFT crate.

/// A LoRA configuration, target or adapter file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error(transparent)]
    Config(#[from] automodel_core::ConfigError),
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
    #[error(transparent)]
    Model(#[from] automodel_gemma3n::ModelError),
    #[error("{0}")]
    Target(String),
    #[error("{path}: {message}")]
    Adapter {
        path: std::path::PathBuf,
        message: String,
    },
}

impl From<automodel_text::TextError> for PeftError {
    fn from(e: automodel_text::TextError) -> Self {
        PeftError::Model(e.into())
    }
}
