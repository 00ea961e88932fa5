//! Learning-rate schedules (recipe `lr_scheduler`, Megatron's names as Automodel uses them):
//! a linear warm-up, then constant, linear or cosine decay to `min_lr`, or WSD (warm-up, stable,
//! decay: constant until the last `wsd_decay_steps`, then linear to `min_lr`).

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// How the rate falls after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayStyle {
    #[default]
    Constant,
    Linear,
    Cosine,
    Wsd,
}

/// Recipe `lr_scheduler`. Without the section the rate is the optimizer's `lr` at every step
/// (as in Automodel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedulerConfig {
    pub lr_decay_style: DecayStyle,
    /// Steps of linear warm-up: at step `s < lr_warmup_steps` the rate is
    /// `init_lr + (lr − init_lr)·(s + 1)/lr_warmup_steps`.
    pub lr_warmup_steps: usize,
    /// Where the warm-up starts (0 by default).
    pub init_lr: f64,
    /// Where decay ends.
    pub min_lr: f64,
    /// Steps the decay takes after the warm-up (default: the rest of the run).
    pub lr_decay_steps: Option<usize>,
    /// WSD: length of the final decay (default: a tenth of the run).
    pub wsd_decay_steps: Option<usize>,
}

impl Default for LrSchedulerConfig {
    fn default() -> Self {
        Self {
            lr_decay_style: DecayStyle::Constant,
            lr_warmup_steps: 0,
            init_lr: 0.0,
            min_lr: 0.0,
            lr_decay_steps: None,
            wsd_decay_steps: None,
        }
    }
}

/// The rate at each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub lr: f64,
    pub config: LrSchedulerConfig,
    pub total_steps: usize,
}

impl LrSchedule {
    pub fn new(lr: f64, config: LrSchedulerConfig, total_steps: usize) -> Result<Self, TrainError> {
        let bad = |m: String| Err(TrainError::Config(format!("lr_scheduler: {m}")));
        if !(lr.is_finite() && lr > 0.0) {
            return Err(TrainError::Config(format!(
                "optimizer.lr: {lr} is not a positive number"
            )));
        }
        if !(config.min_lr >= 0.0 && config.min_lr <= lr) {
            return bad(format!(
                "min_lr {} must lie in [0, lr = {lr}]",
                config.min_lr
            ));
        }
        if !(config.init_lr >= 0.0 && config.init_lr <= lr) {
            return bad(format!(
                "init_lr {} must lie in [0, lr = {lr}]",
                config.init_lr
            ));
        }
        if config.lr_warmup_steps > total_steps {
            return bad(format!(
                "lr_warmup_steps {} exceeds the run's {total_steps} steps",
                config.lr_warmup_steps
            ));
        }
        if config.lr_decay_style == DecayStyle::Wsd
            && config.wsd_decay_steps.is_some_and(|d| d > total_steps)
        {
            return bad(format!(
                "wsd_decay_steps {:?} exceeds the run's {total_steps} steps",
                config.wsd_decay_steps
            ));
        }
        Ok(Self {
            lr,
            config,
            total_steps,
        })
    }

    /// The rate of optimizer step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        let c = &self.config;
        let (max, min) = (self.lr, c.min_lr);
        let w = c.lr_warmup_steps;
        if step < w {
            return c.init_lr + (max - c.init_lr) * (step + 1) as f64 / w as f64;
        }
        let decay = c
            .lr_decay_steps
            .unwrap_or(self.total_steps.saturating_sub(w))
            .max(1);
        let p = ((step - w) as f64 / decay as f64).min(1.0);
        match c.lr_decay_style {
            DecayStyle::Constant => max,
            DecayStyle::Linear => min + (max - min) * (1.0 - p),
            DecayStyle::Cosine => {
                min + (max - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            DecayStyle::Wsd => {
                let tail = c
                    .wsd_decay_steps
                    .unwrap_or(self.total_steps.div_ceil(10))
                    .max(1);
                let start = self.total_steps.saturating_sub(tail).max(w);
                if step < start {
                    max
                } else {
                    let q = ((step - start + 1) as f64 / tail as f64).min(1.0);
                    min + (max - min) * (1.0 - q)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(style: DecayStyle, warm: usize, min: f64) -> LrSchedule {
        LrSchedule::new(
            1.0,
            LrSchedulerConfig {
                lr_decay_style: style,
                lr_warmup_steps: warm,
                min_lr: min,
                wsd_decay_steps: Some(2),
                ..Default::default()
            },
            10,
        )
        .unwrap()
    }

    #[test]
    fn warmup_then_each_decay_style() {
        // the golden optimizer steps: lr·min(1, (s+1)/3)
        let s = sched(DecayStyle::Constant, 3, 0.0);
        let got: Vec<f64> = (0..5).map(|i| s.at(i)).collect();
        let want = [1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let l = sched(DecayStyle::Linear, 0, 0.1);
        assert_eq!(l.at(0), 1.0);
        assert!((l.at(5) - 0.55).abs() < 1e-12);
        assert!((l.at(10) - 0.1).abs() < 1e-12);
        let c = sched(DecayStyle::Cosine, 2, 0.0);
        assert!((c.at(2) - 1.0).abs() < 1e-12);
        assert!((c.at(6) - 0.5).abs() < 1e-12, "half-way: {}", c.at(6));
        assert!(c.at(9) < 0.05);
        let w = sched(DecayStyle::Wsd, 1, 0.0);
        assert_eq!([w.at(1), w.at(7)], [1.0, 1.0]);
        assert!((w.at(8) - 0.5).abs() < 1e-12);
        assert!(w.at(9).abs() < 1e-12);
    }

    #[test]
    fn refuses_impossible_settings() {
        let bad = |c: LrSchedulerConfig| LrSchedule::new(1e-3, c, 10).unwrap_err().to_string();
        assert!(
            bad(LrSchedulerConfig {
                min_lr: 1.0,
                ..Default::default()
            })
            .contains("min_lr")
        );
        assert!(
            bad(LrSchedulerConfig {
                lr_warmup_steps: 11,
                ..Default::default()
            })
            .contains("lr_warmup_steps")
        );
        assert!(LrSchedule::new(0.0, LrSchedulerConfig::default(), 1).is_err());
    }
}
