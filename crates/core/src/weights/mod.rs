//! Safetensors checkpoints: reading (single file or sharded), matching against a model, writing.
//!
//! Reading memory-maps every shard and parses each header once. [`WeightLoader`] hands tensors to
//! model constructors by Hugging Face key, converts any stored float dtype into the requested
//! one, and records every problem (missing key, wrong shape, unreadable dtype, and — in
//! [`WeightLoader::finish`] — keys nobody asked for) so that one error lists them all.
//!
//! | file | what |
//! |---|---|
//! | `files` | [`SafeTensorsFiles`] (memory-mapped, single or sharded) and [`TensorSource`] |
//! | `loader` | [`WeightLoader`]: tensors by key into a model, every problem collected |
//! | `save` | [`TensorMap`]: tensors written as one file or HF shards with an index |
//! | `counter` | [`CounterWeights`]: weights computed from a hash of name, seed and index (no file) |
//! | `folder` | atomic files and whole folders, the side files of a model folder |

mod counter;
mod files;
mod folder;
mod loader;
mod save;

pub use counter::{COUNTER_FORMULA, CounterWeights, counter_rule, counter_values};
pub use files::{RawTensor, SafeTensorsFiles, TensorSource, checkpoint_dir, open_checkpoint};
pub use folder::{
    SIDE_FILES, copy_recursively, copy_side_files, is_model_file, replace_atomically, write_atomic,
    write_folder,
};
pub use loader::WeightLoader;
pub use safetensors::Dtype;
pub use save::TensorMap;

/// Name of the index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

#[cfg(test)]
mod tests;
