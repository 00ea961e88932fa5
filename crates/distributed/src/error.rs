//! What can go wrong between workers.

use std::time::Duration;

/// An error of the data-parallel layer: the worker's environment, or a collective operation.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// An environment variable of the launcher's is missing or malformed.
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    /// A collective operation did not finish in time: a worker died, hangs, or never came.
    #[error(
        "rank {rank}: {what} did not complete within {timeout:?}: another worker has stopped, hangs or never started (the launcher names it); the timeout is the launcher's --timeout"
    )]
    Timeout {
        rank: usize,
        what: String,
        timeout: Duration,
    },
    /// burn-collective refused or failed an operation.
    #[error("rank {rank}: {what} failed: {message}")]
    Collective {
        rank: usize,
        what: String,
        message: String,
    },
}
