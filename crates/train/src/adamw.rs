//! One AdamW update of one parameter, in the order and precision of `torch.optim.AdamW`: the
//! update itself lives in `automodel_core::adamw` (a fused operation of the backend); this
//! module builds it from the optimizer's configuration.

pub use automodel_core::adamw::AdamWStep;

use crate::optim::OptimizerConfig;

/// The step `step` (1-based) of AdamW as `config` describes it, with learning rate `lr` and the
/// gradient scaled by `grad_scale` (the clipping factor).
pub fn adamw_step(config: &OptimizerConfig, lr: f64, step: usize, grad_scale: f64) -> AdamWStep {
    AdamWStep::new(
        config.betas,
        config.weight_decay,
        config.eps,
        lr,
        step,
        grad_scale,
    )
}
