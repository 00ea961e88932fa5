//! LoRA adapters for Gemma 3n (text decoder, audio tower, embedders) and Gemma 3 that Hugging
//! Face PEFT writes and reads.
//!
//! * [`config`]: `LoraConfig` (recipe names and PEFT names), targets with PEFT's semantics.
//! * [`target`]: suffix lists, full-match regexes, `"all-linear"`, Automodel's `*` wildcards.
//! * [`inject`]: adapters on the matching linears (`y = x·Wᵀ + scale·B·A·dropout(x)`), the rest
//!   frozen, a coverage report by component; a target that matches nothing is an error naming
//!   the nearest modules.
//! * [`files`]: `adapter_config.json` + `adapter_model.safetensors`, both directions.
//! * [`merge`]: `W + scale·B·A`, in memory (then save a plain checkpoint).
//! * [`freeze`]: `freeze_config` for full fine-tuning, with a report of what trains.
//! * [`model`]: the three model classes and the names PEFT knows them by.

pub mod config;
pub mod error;
pub mod files;
pub mod freeze;
pub mod inject;
pub mod merge;
pub mod model;
pub mod target;

pub use config::{LoraConfig, LoraDtype, LoraInit, Targets};
pub use error::PeftError;
pub use files::{load_adapter, read_adapter_config, save_adapter};
pub use freeze::{FreezeConfig, apply_freeze};
pub use inject::{Component, Coverage, Plan, apply_lora, coverage};
pub use merge::merge;
pub use model::PeftModel;
