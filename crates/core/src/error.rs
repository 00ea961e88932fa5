//! Typed errors of the shared crate.

use std::path::PathBuf;

/// One problem found while matching checkpoint tensors against a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The model needs this key and no file has it.
    Missing { key: String, expected: Vec<usize> },
    /// The file has this key under the model's prefix and the model has no use for it.
    Unexpected { key: String },
    /// Shapes disagree.
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The tensor exists but its data cannot be read.
    Unreadable { key: String, message: String },
    /// The stored dtype is not a float type we can read.
    Dtype { key: String, found: String },
    /// The tensor is larger than the device can address in one buffer
    /// ([`crate::Backend::max_tensor_bytes`]).
    TooLarge { key: String, bytes: u64, max: u64 },
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProblem::Missing { key, expected } => {
                write!(f, "missing `{key}` (expected shape {expected:?})")
            }
            KeyProblem::Unexpected { key } => write!(f, "unexpected `{key}`"),
            KeyProblem::Shape {
                key,
                expected,
                found,
            } => {
                write!(f, "`{key}` has shape {found:?}, expected {expected:?}")
            }
            KeyProblem::Unreadable { key, message } => {
                write!(f, "`{key}` cannot be read: {message}")
            }
            KeyProblem::Dtype { key, found } => {
                write!(
                    f,
                    "`{key}` has dtype {found}, expected a float type (F32, F16, BF16, F64)"
                )
            }
            KeyProblem::TooLarge { key, bytes, max } => write!(
                f,
                "`{key}` takes {} MiB, and the device addresses at most {} MiB in one tensor \
                 (its storage-buffer limit; Mesa's software Vulkan has 128 MiB): run it on \
                 a device with a larger limit, or on the CPU",
                bytes.div_ceil(1 << 20),
                max >> 20
            ),
        }
    }
}

/// Errors of checkpoint reading and writing.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error(
        "no checkpoint found at {path} (expected a .safetensors file, or a folder with model.safetensors or model.safetensors.index.json)"
    )]
    NotFound { path: PathBuf },
    #[error("tensor `{key}` is not in the checkpoint")]
    NoSuchTensor { key: String },
    #[error("the checkpoint cannot be loaded into the model ({} problem(s)):\n  {}", .problems.len(), summarize(.problems))]
    Mismatch { problems: Vec<KeyProblem> },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    /// An error about the checkpoint at `path`. (`error` is part of the message, not a
    /// separate cause: a cause would print the same text twice in an error chain.)
    #[error("{}: {error}", .path.display())]
    In {
        path: PathBuf,
        error: Box<WeightError>,
    },
}

/// At most this many problems are listed one per line; the rest are counted.
const LISTED_PROBLEMS: usize = 12;

/// The layer index in a key (`model.layers.17.mlp…` → 17).
fn layer_of(key: &str) -> Option<usize> {
    let rest = &key[key.find("layers.")? + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// The problems, one per line up to [`LISTED_PROBLEMS`], then a count by kind; when whole layers
/// are missing or unexpected, which ones (a layer count that disagrees with the checkpoint).
fn summarize(problems: &[KeyProblem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|p| p.to_string())
        .collect();
    if problems.len() > LISTED_PROBLEMS {
        let count = |f: fn(&KeyProblem) -> bool| problems.iter().filter(|p| f(p)).count();
        lines.push(format!(
            "… and {} more ({} missing, {} unexpected, {} of another shape, {} unreadable)",
            problems.len() - LISTED_PROBLEMS,
            count(|p| matches!(p, KeyProblem::Missing { .. })),
            count(|p| matches!(p, KeyProblem::Unexpected { .. })),
            count(|p| matches!(p, KeyProblem::Shape { .. })),
            count(|p| matches!(p, KeyProblem::Unreadable { .. } | KeyProblem::Dtype { .. })),
        ));
    }
    let layers = |missing: bool| -> Option<(usize, usize)> {
        let ids: std::collections::BTreeSet<usize> = problems
            .iter()
            .filter_map(|p| match p {
                KeyProblem::Missing { key, .. } if missing => layer_of(key),
                KeyProblem::Unexpected { key } if !missing => layer_of(key),
                _ => None,
            })
            .collect();
        Some((*ids.first()?, *ids.last()?))
    };
    if problems.len() <= LISTED_PROBLEMS {
        return lines.join("\n  ");
    }
    if let Some((a, b)) = layers(true) {
        lines.push(format!(
            "keys of layers {a}–{b} are missing: does the config's layer count match the checkpoint?"
        ));
    }
    if let Some((a, b)) = layers(false) {
        lines.push(format!(
            "the checkpoint has layers {a}–{b} that the model does not: does the config's layer count match the checkpoint?"
        ));
    }
    lines.join("\n  ")
}

/// Errors of a media tower's crate (`automodel-vision`'s `VisionError`, `automodel-audio`'s
/// `AudioError`): its config, its weights, reading and decoding its inputs.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An input that cannot be decoded: `kind` says which (`"image"`, `"audio"`), `name` which
    /// one.
    #[error("{kind} {name}: {message}")]
    Decode {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("invalid input: {0}")]
    Input(String),
}

impl MediaError {
    /// A bad value of config field `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        MediaError::Config(crate::ConfigError::field(field, message))
    }
}

/// A file that cannot be read (media, side files).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The bytes of `path`, or an error naming it.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError {
        path: path.to_path_buf(),
        source,
    })
}
