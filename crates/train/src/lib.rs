//! Fine-tuning Gemma 3n and Gemma 3 from a recipe: what `automodel-cli finetune` runs.
//!
//! * [`optim`]: AdamW with PyTorch's semantics and defaults, global-norm clipping, state by
//!   parameter name, float32 master weights for low-precision parameters.
//! * [`schedule`]: warm-up, then constant, linear, cosine or WSD.
//! * [`trainer`]: gradient accumulation with the loss normalised by the global batch's label
//!   tokens, non-finite steps skipped, AltUp coefficients clamped, validation, logging,
//!   checkpoints, resume.
//! * [`interrupt`]: Ctrl-C and SIGTERM stop a run after its step, with a checkpoint.
//! * [`checkpoint`]: Automodel's layout, written atomically; `LATEST` and `LOWEST_VAL`.
//! * [`grad_watch`]: each parameter's component, per-component gradient norms, and the warning
//!   when the gradient norm jumps above its running median.
//! * [`metrics`]: exact match and word error rate.
//! * [`log`]: `training.jsonl`/`validation.jsonl`, the progress bar, the loss curve.
//! * [`parallel`]: data parallelism over workers (`automodel-distributed`): each worker's
//!   share of a step's micro-batches and the all-reduce of the gradients.
//! * [`model`]: what the trainer needs of a model ([`TrainModel`]).
//! * [`recipe`]: Automodel's recipe sections, typed and validated before any weight is loaded.
//! * [`run`]: a recipe carried out (`run(recipe, options, device) -> Summary`).

pub mod adamw;
pub mod checkpoint;
pub mod error;
pub mod grad_watch;
pub mod interrupt;
pub mod log;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use checkpoint::CheckpointConfig;
pub use error::TrainError;
pub use metrics::{EvaluationConfig, Metric};
pub use model::TrainModel;
pub use optim::{Optimizer, OptimizerConfig};
pub use recipe::{Recipe, RecipeError};
pub use run::{RunOptions, run, run_on};
pub use schedule::{DecayStyle, LrSchedule, LrSchedulerConfig};
pub use trainer::{
    Export, Settings, StepOutcome, StepScheduler, Summary, Trainer, Validation, train_step,
};
