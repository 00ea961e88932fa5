//! The Gemma 3n audio tower — a USM-style conformer — its log-mel front end and audio decoding,
//! on Burn.
//!
//! * [`decode`]: WAV/FLAC/MP3/OGG-Vorbis through symphonia, mono mix-down, resampling to 16 kHz;
//! * [`features`]: `Gemma3nAudioFeatureExtractor` (pre-emphasis, framing, FFT with overdrive,
//!   HTK mel, log, padding and validity mask);
//! * [`sscp`]: sub-sample convolution projection with the cumulative group norm;
//! * [`attention`]: chunked local attention with relative positions, logit cap, per-dim scale;
//! * [`conformer`]: feed-forward, attention, light-weight conv blocks;
//! * [`encoder`]: the whole tower (`model.audio_tower.*`).

pub mod attention;
pub mod config;
pub mod conformer;
pub mod decode;
pub mod encoder;
pub mod error;
pub mod features;
pub mod sscp;

pub use config::Gemma3nAudioConfig;
pub use encoder::{AudioEncoder, AudioOutput};
pub use error::AudioError;
