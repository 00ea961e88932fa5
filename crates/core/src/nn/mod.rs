//! Layers shared by every Gemma model.

pub mod activation;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod rope;

pub use activation::{gelu_tanh, normal_icdf, softcap};
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::RmsNorm;
pub use rope::{RopeForHeads, RopeTables, rotate_half};
