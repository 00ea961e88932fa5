//! GGUF files (llama.cpp's format): reading, dequantization and mapping to Hugging Face names.
//!
//! * [`reader`]: header, metadata key/values, tensor table, alignment — every length and offset is
//!   checked, so a truncated or malformed file gives an error, never a panic;
//! * [`dequant`]: F32, F16, BF16, Q8_0, Q5_0, Q4_K and Q6_K blocks to f32 (ggml's formulas);
//! * [`gemma3`]: llama.cpp tensor names → HF names for Gemma 3 (norm weights are stored as
//!   `1 + w` by the converter and are shifted back), and the HF config from the metadata;
//! * [`writer`]: GGUF files with F32 tensors (small exact files for tests and tools).

pub mod dequant;
pub mod export;
pub mod gemma3;
pub mod gemma3n;
pub mod quant;
pub mod reader;
pub mod writer;

pub use reader::{GgmlType, GgufError, GgufFile, GgufValue};
pub use writer::GgufWriter;
