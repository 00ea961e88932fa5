//! Users' datasets into training batches, the way NeMo Automodel's Gemma 3n recipes build them:
//!
//! - [`format`] / [`parquet`]: JSONL, JSON arrays and Parquet files of Hugging Face message lists,
//!   prompt/completion pairs or plain text, with a column mapping;
//! - [`template`]: the checkpoint's Jinja chat template (or the built-in Gemma one);
//! - [`labels`]: answer-only labels from a sentinel-derived assistant marker;
//! - [`encode`] / [`dataset`]: ids and labels per sample, the `max_length` policy, bad samples
//!   skipped (counted) or refused;
//! - [`batch`] / [`loader`]: right padding, text-only packing, a seeded order that resumes
//!   mid-epoch, background workers decoding media ahead of the step;
//! - [`builtin`]: deterministic datasets generated in code;
//! - [`stats`]: what `automodel-cli data` prints.

pub mod batch;
pub mod builtin;
pub mod checkpoint;
pub mod conversation;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod format;
pub mod labels;
pub mod loader;
pub mod parquet;
pub mod source;
pub mod stats;
pub mod template;

pub use batch::{Decoded, HostBatch, PackStrategy, pack};
pub use checkpoint::TextSide;
pub use conversation::{Conversation, Media, Message, Part, Role};
pub use dataset::{BadSamples, Dataset, Prepared, Report};
pub use encode::{EncodeConfig, Encoded, Encoder, LabelMode, Overlong};
pub use error::{DataError, Origin, SampleError};
pub use format::{Columns, Record, Sample};
pub use labels::AnswerSpans;
pub use loader::{Batches, Loader, LoaderConfig, Packing, Position};
pub use source::{DataConfig, Source};
pub use template::ChatTemplate;
