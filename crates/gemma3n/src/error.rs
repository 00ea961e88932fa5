//! Errors of the facade.

/// Everything that can go wrong loading or running a Gemma 3n model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] automodel_core::ConfigError),
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
    #[error(transparent)]
    Text(#[from] automodel_text::TextError),
    /// The vision or audio tower's (`VisionError` and `AudioError` are one type).
    #[error(transparent)]
    Media(#[from] automodel_core::MediaError),
    #[error(transparent)]
    Gguf(#[from] automodel_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] automodel_tokenizer::TokenizerError),
    #[error(transparent)]
    Export(#[from] automodel_gguf::export::ExportError),
    #[error("invalid input: {0}")]
    Input(String),
}
