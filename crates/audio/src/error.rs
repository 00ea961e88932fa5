//! Errors of the audio crate.

/// Errors of config parsing, weight loading, decoding and feature extraction (the error every
/// media tower shares; a clip that cannot be decoded is [`MediaError::Decode`] of kind
/// `"audio"`).
///
/// [`MediaError::Decode`]: automodel_core::MediaError::Decode
pub type AudioError = automodel_core::MediaError;
