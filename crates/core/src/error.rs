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
    #[error("the checkpoint does not match the model ({} problem(s)):\n  {}", .problems.len(), .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Mismatch { problems: Vec<KeyProblem> },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
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
