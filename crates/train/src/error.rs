//! What can go wrong in a run.

use std::path::PathBuf;

/// A trainer error: each names the file, the setting or the step it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting that cannot work (the message names it).
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The recipe cannot be read or cannot work.
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    /// The device cannot be used (not built in, no adapter).
    #[error(transparent)]
    Device(#[from] automodel_core::device::DeviceError),
    #[error(transparent)]
    Data(#[from] automodel_data::DataError),
    #[error(transparent)]
    Peft(#[from] automodel_peft::PeftError),
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
    /// The model's forward or generation failed.
    #[error("model: {0}")]
    Model(String),
    /// The workers of a data-parallel run lost each other (the message names the rank and
    /// what it waited for).
    #[error("data parallel: {0}")]
    Parallel(String),
    /// A stop was asked for (Ctrl-C, SIGTERM: [`crate::interrupt`]); the run stopped after
    /// `step` and saved a checkpoint when checkpoints are on.
    #[error("{}", interrupted_message(*step, checkpoint.as_deref(), run_dir))]
    Interrupted {
        step: usize,
        checkpoint: Option<PathBuf>,
        run_dir: PathBuf,
    },
    /// Several steps in a row had a non-finite loss or gradient.
    #[error(
        "{count} steps in a row (through step {step}) had a non-finite loss or gradient; stopping. {last_good}"
    )]
    Diverged {
        step: usize,
        count: usize,
        last_good: String,
    },
}

impl TrainError {
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        TrainError::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

fn interrupted_message(
    step: usize,
    checkpoint: Option<&std::path::Path>,
    run: &std::path::Path,
) -> String {
    match checkpoint {
        Some(c) => format!(
            "interrupted: stopped after step {step} and saved {}; to continue, run the same command with --resume --output-dir {}",
            c.display(),
            run.display()
        ),
        None => format!(
            "interrupted: stopped after step {step}; no checkpoint was saved (checkpoint.enabled is false)"
        ),
    }
}
