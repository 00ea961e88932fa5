//! Errors of the data crate.

use std::path::PathBuf;

use automodel_core::{ConfigError, ReadError};

/// Why one sample cannot be used. Readers add where it came from ([`DataError::Sample`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("{0}")]
    Malformed(String),
    #[error("unknown role `{0}` (expected system, user or assistant)")]
    UnknownRole(String),
    #[error("no assistant turn to learn from")]
    NoAssistant,
    #[error("message {0}: empty assistant turn")]
    EmptyAssistant(usize),
    #[error("{0}")]
    Media(String),
    #[error("{tokens} tokens exceed max_length {max}")]
    TooLong { tokens: usize, max: usize },
    #[error("no label token is left within max_length {0}")]
    NoLabels(usize),
    #[error("chat template: {0}")]
    Template(String),
}

impl SampleError {
    /// Name the message a part belongs to.
    pub(crate) fn in_message(self, i: usize) -> Self {
        match self {
            SampleError::Malformed(m) => SampleError::Malformed(format!("message {i}: {m}")),
            other => other,
        }
    }

    /// A short reason, for statistics (`too long`, `no assistant turn`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            SampleError::Malformed(_) => "malformed",
            SampleError::UnknownRole(_) => "unknown role",
            SampleError::NoAssistant => "no assistant turn",
            SampleError::EmptyAssistant(_) => "empty assistant turn",
            SampleError::Media(_) => "unreadable media",
            SampleError::TooLong { .. } => "too long",
            SampleError::NoLabels(_) => "no label token",
            SampleError::Template(_) => "chat template",
        }
    }
}

/// Where a sample came from: a file and a line (JSONL), an index (JSON array, Parquet row), or
/// a built-in dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line of a JSONL file, or 0-based record index.
    pub position: usize,
    pub is_line: bool,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_line {
            write!(f, "{}:{}", self.file.display(), self.position)
        } else {
            write!(f, "{} record {}", self.file.display(), self.position)
        }
    }
}

/// Errors of reading, rendering, tokenizing and batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{origin}: {error}")]
    Sample { origin: Origin, error: SampleError },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Tokenizer(#[from] automodel_tokenizer::TokenizerError),
    #[error(transparent)]
    Model(#[from] automodel_gemma3n::ModelError),
    #[error("{0}")]
    Invalid(String),
}
