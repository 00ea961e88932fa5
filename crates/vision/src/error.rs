//! Errors of the vision crate.

/// Errors of config parsing, weight loading and image processing (the error every media tower
/// shares; an image that cannot be decoded is [`MediaError::Decode`] of kind `"image"`).
///
/// [`MediaError::Decode`]: automodel_core::MediaError::Decode
pub type VisionError = automodel_core::MediaError;
