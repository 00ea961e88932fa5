//! The training loop: micro-batches accumulated into optimizer steps, global-norm clipping,
//! AdamW, the schedule, non-finite steps skipped, validation (loss and a generation metric),
//! logs, checkpoints and resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use automodel_core::AutodiffBackend;
use automodel_data::{Conversation, Encoded, HostBatch, Loader, Position, Role, Sample};
use automodel_peft::{LoraConfig, Plan};
use automodel_text::{CausalLm, TrainBatch, TrainOptions};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointConfig, TrainState};
use crate::error::TrainError;
use crate::grad_watch::SpikeWatch;
use crate::log::{
    JsonLines, Progress, StepRecord, ValRecord, grad_norm_curve, loss_curve, now, peak_mem_gib,
};
use crate::metrics::{EvaluationConfig, Metric, wer};
use crate::model::TrainModel;
use crate::optim::{Optimizer, OptimizerConfig, clip_factor, grad_norms};
use crate::parallel;
use crate::schedule::{LrSchedule, LrSchedulerConfig};
use automodel_core::memory::ResidentLimit;
use automodel_distributed::Collective;

/// Recipe `step_scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepScheduler {
    /// Rows per optimizer step (over all micro-batches).
    pub global_batch_size: usize,
    /// Rows per forward/backward (micro-batch); `global_batch_size / local_batch_size`
    /// micro-batches are accumulated per step.
    pub local_batch_size: usize,
    /// Optimizer steps of the run (default: `num_epochs` epochs).
    pub max_steps: Option<usize>,
    pub num_epochs: Option<usize>,
    /// Save a checkpoint every N steps (and at the end).
    pub ckpt_every_steps: Option<usize>,
    /// Validate every N steps (and at the end).
    pub val_every_steps: Option<usize>,
    /// Stop after this many non-finite steps in a row.
    pub max_bad_steps: usize,
}

impl Default for StepScheduler {
    fn default() -> Self {
        Self {
            global_batch_size: 8,
            local_batch_size: 8,
            max_steps: None,
            num_epochs: None,
            ckpt_every_steps: None,
            val_every_steps: None,
            max_bad_steps: 3,
        }
    }
}

impl StepScheduler {
    /// Micro-batches per optimizer step.
    pub fn grad_acc_steps(&self) -> Result<usize, TrainError> {
        let (g, l) = (self.global_batch_size, self.local_batch_size);
        if l == 0 || g == 0 || g % l != 0 {
            return Err(TrainError::Config(format!(
                "step_scheduler: global_batch_size ({g}) must be a positive multiple of local_batch_size ({l})"
            )));
        }
        if self.max_steps == Some(0) || self.num_epochs == Some(0) {
            return Err(TrainError::Config(
                "step_scheduler: max_steps and num_epochs must be at least 1".into(),
            ));
        }
        if self.ckpt_every_steps == Some(0) || self.val_every_steps == Some(0) {
            return Err(TrainError::Config(
                "step_scheduler: ckpt_every_steps and val_every_steps must be at least 1".into(),
            ));
        }
        Ok(g / l)
    }
}

/// Everything the loop needs to know besides the model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub step_scheduler: StepScheduler,
    pub optimizer: OptimizerConfig,
    pub lr_scheduler: LrSchedulerConfig,
    /// Global gradient-norm clipping (`None` = off).
    pub max_grad_norm: Option<f64>,
    pub checkpoint: CheckpointConfig,
    pub evaluation: EvaluationConfig,
    pub seed: u64,
}

/// How the trained model is exported into each checkpoint's `model/`.
pub enum Export {
    /// The adapter in PEFT's format.
    Lora {
        config: LoraConfig,
        plan: Plan,
        base_model: String,
    },
    /// The full model as a Hugging Face folder.
    Full,
}

/// The validation data: a loader for the loss and prompts for the generation metric.
pub struct Validation {
    pub loader: Loader,
    /// `(prompt, reference answer)` pairs.
    pub prompts: Vec<(HostBatch, String)>,
}

impl Validation {
    /// Build the prompts of the first `n` chat samples: the conversation up to its last
    /// assistant turn, with the model's turn opened, and that turn's text as the reference.
    pub fn new(loader: Loader, samples: &[Sample], n: usize) -> Result<Self, TrainError> {
        let enc = loader.encoder.clone();
        let mut prompts = Vec::new();
        for s in samples.iter().filter_map(|s| match s {
            Sample::Chat(c) => Some(c),
            Sample::Text(_) => None,
        }) {
            if prompts.len() >= n {
                break;
            }
            let Some(last) = s.messages.iter().rposition(|m| m.role == Role::Assistant) else {
                continue;
            };
            let prompt = Conversation {
                messages: s.messages[..last].to_vec(),
            };
            let e: Encoded = enc.encode_prompt(&prompt).map_err(|e| {
                TrainError::Config(format!("a validation prompt cannot be encoded: {e}"))
            })?;
            let b = enc
                .collate(&[(0, &e)])
                .map_err(|e| TrainError::Config(format!("a validation prompt: {e}")))?;
            prompts.push((b, s.messages[last].text_content()));
        }
        Ok(Self { loader, prompts })
    }
}

/// What a run reports at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The generation metric before training and at the end.
    pub metric: Option<String>,
    pub metric_before: Option<f64>,
    pub metric_after: Option<f64>,
    pub val_loss: Option<f64>,
    pub last_checkpoint: Option<PathBuf>,
    pub resumed_from: Option<PathBuf>,
}

/// The summary as `finetune` prints it: one `name  value` line per figure.
impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "run directory   {}", self.run_dir.display())?;
        if let (Some(a), Some(b)) = (self.first_loss, self.last_loss) {
            writeln!(
                f,
                "loss            {a:.4} → {b:.4} over {} steps",
                self.steps
            )?;
        }
        if let Some(v) = self.val_loss {
            writeln!(f, "val_loss        {v:.4}")?;
        }
        if let Some(m) = &self.metric {
            let v = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            let (b, a) = (v(self.metric_before), v(self.metric_after));
            writeln!(f, "{m:<15} {b} before → {a} after")?;
        }
        if let Some(c) = &self.last_checkpoint {
            writeln!(f, "checkpoint      {}", c.display())?;
            writeln!(f, "model           {}", c.join("model").display())?;
        }
        Ok(())
    }
}

/// Writes the tokenizer (and other side) files into a checkpoint's `model/` folder.
pub type SideFiles = Box<dyn Fn(&Path) -> Result<(), TrainError>>;

/// One validation: the loss and its label-token count, and the metric.
struct Validated {
    loss: Option<(f64, usize)>,
    metric: Option<f64>,
}

/// A training job.
pub struct Trainer<B: AutodiffBackend, M: TrainModel<B>> {
    pub model: M,
    pub device: B::Device,
    pub settings: Settings,
    pub train: Loader,
    pub validation: Option<Validation>,
    pub run_dir: PathBuf,
    pub export: Export,
    /// Writes the tokenizer (and other side) files into a `model/` folder.
    pub side_files: SideFiles,
    /// The resolved recipe, saved into each checkpoint as `config.yaml`.
    pub recipe: String,
    /// This worker's place in a data-parallel job (`None`: one process). Every worker runs
    /// its share of each step's micro-batches; rank 0 alone writes logs and checkpoints.
    pub parallel: Option<Collective<B::InnerBackend>>,
}

impl<B: AutodiffBackend, M: TrainModel<B>> Trainer<B, M> {
    /// The number of optimizer steps of the run.
    pub fn total_steps(&self) -> Result<usize, TrainError> {
        let s = &self.settings.step_scheduler;
        let acc = s.grad_acc_steps()?;
        Ok(match s.max_steps {
            Some(n) => n,
            None => s.num_epochs.unwrap_or(1) * self.train.batches_per_epoch().div_ceil(acc),
        })
    }

    fn save_checkpoint(
        &self,
        optim: &Optimizer<B>,
        state: &TrainState,
    ) -> Result<PathBuf, TrainError> {
        let dir = checkpoint::save(&self.run_dir, state.epoch, state.step, |tmp| {
            let model_dir = tmp.join("model");
            std::fs::create_dir_all(&model_dir).map_err(|e| TrainError::file(&model_dir, e))?;
            match &self.export {
                Export::Lora {
                    config,
                    plan,
                    base_model,
                } => {
                    automodel_peft::save_adapter(
                        &self.model,
                        config,
                        plan,
                        &model_dir,
                        base_model,
                    )?;
                }
                Export::Full => {
                    let shard = self.settings.checkpoint.max_shard_mb.map(|m| m * 1_000_000);
                    self.model.save_model(&model_dir, shard)?;
                }
            }
            (self.side_files)(&model_dir)?;
            optim.save(&self.model, &tmp.join("optim"))?;
            automodel_core::weights::write_atomic(
                &tmp.join("config.yaml"),
                self.recipe.as_bytes(),
            )?;
            // written last: its presence marks the checkpoint complete
            checkpoint::write_json(&tmp.join("train_state.json"), state)
        })?;
        if let Some(k) = self.settings.checkpoint.max_recent_checkpoints {
            checkpoint::prune(&self.run_dir, k)?;
        }
        Ok(dir)
    }

    /// Validation loss (token-weighted mean over one pass of the validation data) and the
    /// generation metric.
    fn validate(&self) -> Result<Validated, TrainError> {
        let Some(v) = &self.validation else {
            return Ok(Validated {
                loss: None,
                metric: None,
            });
        };
        let inner = self.model.valid();
        let (mut sum, mut count) = (0.0f64, 0usize);
        let n = v.loader.batches_per_epoch();
        for item in v.loader.iter(Position::default()).take(n) {
            let (_, b) = item?;
            let out = inner
                .forward_train(&b.to_device(&self.device), TrainOptions::eval())
                .map_err(|e| TrainError::Model(e.to_string()))?;
            if let Some(l) = out.loss {
                sum += l.sum.into_scalar().elem::<f64>();
                count += l.num_label_tokens;
            }
        }
        let loss = (count > 0).then(|| (sum / count as f64, count));
        let metric = self.settings.evaluation.metric;
        if metric == Metric::None || v.prompts.is_empty() {
            return Ok(Validated { loss, metric: None });
        }
        let tok = &v.loader.encoder.tokenizer;
        let stop: Vec<i64> = tok.stop_ids().into_iter().map(i64::from).collect();
        let mut pairs = Vec::new();
        for (prompt, reference) in &v.prompts {
            let ids = M::greedy(
                &inner,
                prompt,
                self.settings.evaluation.max_new_tokens,
                &stop,
            )?;
            let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
            let text = tok
                .decode(&ids, true)
                .map_err(|e| TrainError::Model(format!("decoding an answer: {e}")))?;
            pairs.push((text, reference.clone()));
        }
        let value = match metric {
            Metric::ExactMatch => {
                pairs
                    .iter()
                    .filter(|(p, r)| automodel_data::builtin::exact_match(p, r))
                    .count() as f64
                    / pairs.len() as f64
            }
            Metric::Wer => wer(pairs.iter().map(|(p, r)| (p.as_str(), r.as_str()))),
            Metric::None => unreachable!("handled above"),
        };
        for (p, r) in pairs.iter().take(3) {
            tracing::info!("validation sample: answer {p:?}, reference {r:?}");
        }
        Ok(Validated {
            loss,
            metric: Some(value),
        })
    }

    /// Run (or, with `resume`, continue) the training.
    pub fn run(mut self, resume: bool) -> Result<Summary, TrainError> {
        let settings = self.settings.clone();
        let ss = &settings.step_scheduler;
        let acc = ss.grad_acc_steps()?;
        let (rank, world) = self
            .parallel
            .as_ref()
            .map_or((0, 1), |c| (c.world().rank, c.world().world_size));
        // rank 0 writes logs, checkpoints and the progress; the others only train
        let main = rank == 0;
        parallel::check_share(acc, world, ss.global_batch_size, ss.local_batch_size)?;
        let total = self.total_steps()?;
        let schedule =
            LrSchedule::new(settings.optimizer.lr, settings.lr_scheduler.clone(), total)?;
        let mut optim = Optimizer::<B>::new(settings.optimizer.clone(), "")?;
        if main {
            std::fs::create_dir_all(&self.run_dir)
                .map_err(|e| TrainError::file(&self.run_dir, e))?;
        }
        let mut summary = Summary {
            run_dir: self.run_dir.clone(),
            metric: (settings.evaluation.metric != Metric::None && self.validation.is_some())
                .then(|| settings.evaluation.metric.name().to_string()),
            ..Default::default()
        };
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            data: Position::default(),
            seed: settings.seed,
            losses: Vec::new(),
            best_val: None,
            bad_in_a_row: 0,
            global_batch_size: Some(ss.global_batch_size),
            local_batch_size: Some(ss.local_batch_size),
            world_size: Some(world),
        };
        let mut val_points: Vec<(usize, f64)> = Vec::new();
        let latest = checkpoint::latest(&self.run_dir);
        if resume && latest.is_none() && main {
            // a pre-empted job relaunched with the same command: killed before its first
            // complete checkpoint, it starts again rather than failing for ever
            tracing::warn!(
                "--resume: {} holds no complete checkpoint; starting from the beginning",
                self.run_dir.display()
            );
            eprintln!(
                "warning: --resume: {} holds no complete checkpoint; starting from the beginning",
                self.run_dir.display()
            );
        }
        if let (true, Some(dir)) = (resume, latest.clone()) {
            state = checkpoint::read_state(&dir)?;
            check_resumable(&dir, &state, ss, world)?;
            if state.seed != settings.seed {
                tracing::warn!(
                    "the recipe's seed ({}) differs from the checkpoint's ({}); the checkpoint's is used",
                    settings.seed,
                    state.seed
                );
            }
            self.model = optim.load(self.model, &dir.join("optim"))?;
            tracing::info!("resumed from {} (step {})", dir.display(), state.step);
            summary.resumed_from = Some(dir);
            state.world_size = Some(world);
            for f in ["training.jsonl", "validation.jsonl"]
                .into_iter()
                .filter(|_| main)
            {
                crate::log::truncate_after(&self.run_dir.join(f), state.step)?;
            }
        } else if !resume && latest.is_some() {
            return Err(TrainError::file(
                &self.run_dir,
                "already holds a run's checkpoints: pass --resume to continue it, or choose another output folder",
            ));
        } else if main {
            for f in ["training.jsonl", "validation.jsonl"] {
                let _ = std::fs::remove_file(self.run_dir.join(f));
            }
        }
        let log = |name: &str| {
            main.then(|| JsonLines::open(self.run_dir.join(name)))
                .transpose()
        };
        let (mut train_log, mut val_log) = (log("training.jsonl")?, log("validation.jsonl")?);
        if let Some(text) = val_log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(&l.path).ok())
        {
            for l in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
                    && let (Some(s), Some(x)) = (v["step"].as_u64(), v["val_loss"].as_f64())
                {
                    val_points.push((s as usize, x));
                }
            }
        }
        let evaluation = settings.evaluation.clone();
        if state.step == 0 && evaluation.before_training && self.validation.is_some() {
            let Validated { loss, metric } = self.validate()?;
            summary.metric_before = metric;
            if let Some((l, n)) = loss {
                val_points.push((0, l));
                if let Some(log) = &mut val_log {
                    log.write(&ValRecord::new(
                        0,
                        0,
                        schedule.at(0),
                        (l, n),
                        evaluation.metric,
                        metric,
                    ))?;
                }
            }
            if main {
                eprintln!(
                    "before training: val_loss {}{}",
                    loss.map_or("-".into(), |(l, _)| format!("{l:.4}")),
                    fmt_metric(&summary.metric, metric)
                );
            }
        }
        let progress = if main {
            Progress::new(total, state.step)
        } else {
            Progress::hidden()
        };
        let mut batches = self.train.iter(state.data);
        let mut last_good: Option<PathBuf> = checkpoint::latest(&self.run_dir);
        // the allocator's kept pages, returned once they outgrow the step's working set
        let mut resident = ResidentLimit::default();
        // warns when the gradient norm jumps, naming the component
        let mut spikes = SpikeWatch::default();
        while state.step < total {
            // the whole step: waiting for batches, forward, backward, optimizer
            let t0 = Instant::now();
            let mut micro = Vec::with_capacity(acc);
            for _ in 0..acc {
                let (pos, b) = batches
                    .next()
                    .expect("the loader yields batches without end")?;
                micro.push((pos, b));
            }
            let epoch = state.data.epoch;
            let n_labels: usize = micro.iter().map(|(_, b)| b.num_label_tokens).sum();
            let n_tokens: usize = micro.iter().map(|(_, b)| b.num_tokens).sum();
            let lr = schedule.at(state.step);
            // every micro-batch draws its random numbers (dropout) from a seed of its own, so
            // a worker running micro-batch j draws what one process would
            let (device, seed, step) = (&self.device, state.seed, state.step);
            let mine = parallel::share(acc, rank, world).map(|j| {
                automodel_core::seed::<B>(device, micro_seed(seed, step, j));
                micro[j].1.to_device(device)
            });
            let sync = self.parallel.as_ref().map(|c| (c, device));
            let (
                model,
                StepOutcome {
                    loss,
                    grad_norm: norm,
                    grad_norm_by_component,
                    applied: finite,
                    stop,
                },
            ) = train_step_on(
                self.model,
                &mut optim,
                mine,
                n_labels,
                lr,
                settings.max_grad_norm,
                sync,
            )?;
            self.model = model;
            resident.after_step();
            if finite {
                state.bad_in_a_row = 0;
            } else {
                state.bad_in_a_row += 1;
                progress.println(&format!(
                    "warning: step {} has a non-finite loss ({loss}) or gradient norm ({norm}); skipped",
                    state.step + 1
                ));
                if state.bad_in_a_row >= ss.max_bad_steps.max(1) {
                    return Err(TrainError::Diverged {
                        step: state.step + 1,
                        count: state.bad_in_a_row,
                        last_good: match &last_good {
                            Some(p) => format!("The last good checkpoint is {}.", p.display()),
                            None => "No checkpoint was saved yet.".into(),
                        },
                    });
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            state.step += 1;
            state.data = micro.last().expect("at least one micro-batch").0;
            state.epoch = epoch;
            state.losses.push(loss);
            summary.first_loss.get_or_insert(loss);
            summary.last_loss = Some(loss);
            let rec = StepRecord {
                step: state.step,
                epoch,
                timestamp: now(),
                loss,
                grad_norm: norm,
                grad_norm_by_component,
                lr,
                mem: peak_mem_gib(),
                tps: n_tokens as f64 / secs.max(1e-9),
                num_tokens_per_step: n_tokens,
                num_label_tokens: n_labels,
                skipped: !finite,
            };
            if let Some(warning) = spikes.observe(state.step, norm, &rec.grad_norm_by_component)
                && main
            {
                tracing::warn!("{warning}");
                progress.println(&format!("warning: {warning}"));
            }
            if let Some(log) = &mut train_log {
                log.write(&rec)?;
            }
            progress.step(&rec);
            let last = state.step == total;
            let is_val = ss
                .val_every_steps
                .is_some_and(|n| state.step.is_multiple_of(n))
                || last;
            if is_val && self.validation.is_some() {
                let Validated { loss: l, metric } = self.validate()?;
                if let Some((l, n)) = l {
                    summary.val_loss = Some(l);
                    val_points.push((state.step, l));
                    if state.best_val.as_ref().is_none_or(|(b, _)| l < *b) {
                        state.best_val = Some((l, checkpoint::name(state.epoch, state.step)));
                    }
                    if let Some(log) = &mut val_log {
                        log.write(&ValRecord::new(
                            state.step,
                            epoch,
                            lr,
                            (l, n),
                            evaluation.metric,
                            metric,
                        ))?;
                    }
                    progress.println(&format!(
                        "[val] step {} | loss {l:.4} | lr {lr:.2e} | num_label_tokens {n}{}",
                        state.step,
                        fmt_metric(&summary.metric, metric)
                    ));
                }
                if last {
                    summary.metric_after = metric;
                }
            }
            let is_ckpt = ss
                .ckpt_every_steps
                .is_some_and(|n| state.step.is_multiple_of(n))
                || (last && settings.checkpoint.save_final)
                || stop;
            if is_ckpt && settings.checkpoint.enabled && main {
                let dir = self.save_checkpoint(&optim, &state)?;
                if let Some((_, name)) = &state.best_val
                    && *name == checkpoint::name(state.epoch, state.step)
                {
                    checkpoint::point(&self.run_dir, checkpoint::LOWEST_VAL, name)?;
                }
                progress.println(&format!("checkpoint {}", dir.display()));
                last_good = Some(dir.clone());
                summary.last_checkpoint = Some(dir);
            }
            if (last || is_ckpt) && main {
                let train_pts: Vec<(usize, f64)> = state
                    .losses
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i + 1, *l))
                    .collect();
                loss_curve(&self.run_dir.join("loss.svg"), &train_pts, &val_points)?;
                if let Some(log) = &train_log {
                    grad_norm_curve(&self.run_dir.join("grad_norm.svg"), &log.path)?;
                }
            }
            if stop && !last {
                progress.finish();
                return Err(TrainError::Interrupted {
                    step: state.step,
                    checkpoint: (settings.checkpoint.enabled && main)
                        .then(|| checkpoint::latest(&self.run_dir))
                        .flatten(),
                    run_dir: self.run_dir.clone(),
                });
            }
        }
        progress.finish();
        summary.steps = state.step;
        if summary.last_checkpoint.is_none() {
            summary.last_checkpoint = checkpoint::latest(&self.run_dir);
        }
        if main {
            crate::checkpoint::write_json(&self.run_dir.join("summary.json"), &summary)?;
        }
        Ok(summary)
    }
}

/// What one optimizer step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The loss: the sum over every micro-batch's label tokens over `n_labels`.
    pub loss: f64,
    /// The global L2 norm of the gradients, before clipping.
    pub grad_norm: f64,
    /// The norm of each component's gradients ([`crate::grad_watch::component_of`]).
    pub grad_norm_by_component: BTreeMap<String, f64>,
    /// False when the loss or the norm was not finite: the parameters were left unchanged.
    pub applied: bool,
    /// A stop was asked for ([`crate::interrupt`]; in a data-parallel run, by any worker):
    /// the trainer saves a checkpoint and stops after this step.
    pub stop: bool,
}

/// One optimizer step of the trainer: forward and backward over each micro-batch (each one's
/// loss sum divided by `n_labels`, the label tokens of all of them, and the gradients
/// accumulated), the global gradient norm, clipping to `max_grad_norm`, AdamW at `lr`, and the
/// AltUp coefficient clamp. A non-finite loss or norm leaves the model as it was.
/// The micro-batches are taken one at a time, so only one is on the device at once.
pub fn train_step<B: AutodiffBackend, M: TrainModel<B>>(
    model: M,
    optim: &mut Optimizer<B>,
    micro: impl IntoIterator<Item = TrainBatch<B>>,
    n_labels: usize,
    lr: f64,
    max_grad_norm: Option<f64>,
) -> Result<(M, StepOutcome), TrainError> {
    train_step_on(model, optim, micro, n_labels, lr, max_grad_norm, None)
}

/// [`train_step`] as one worker of a data-parallel job: `micro` is this worker's share of
/// the step's micro-batches and `n_labels` the label tokens of all of them; the gradients
/// and the loss are summed over the workers (`sync`) before the norm, so every worker takes
/// the same step.
pub fn train_step_on<B: AutodiffBackend, M: TrainModel<B>>(
    mut model: M,
    optim: &mut Optimizer<B>,
    micro: impl IntoIterator<Item = TrainBatch<B>>,
    n_labels: usize,
    lr: f64,
    max_grad_norm: Option<f64>,
    sync: Option<(&Collective<B::InnerBackend>, &B::Device)>,
) -> Result<(M, StepOutcome), TrainError> {
    let mut accumulator = GradientsAccumulator::<M>::new();
    // summed on the device: one host read per step, not one per micro-batch
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    // where the step's time goes (debug log): forward, backward, norm, optimizer
    let mut phases = [0.0f64; 4];
    let mut clock = Instant::now();
    let mut lap = |i: usize| {
        phases[i] += clock.elapsed().as_secs_f64();
        clock = Instant::now();
    };
    for b in micro {
        let out = model
            .forward_train(&b, TrainOptions::train())
            .map_err(|e| TrainError::Model(e.to_string()))?;
        let Some(l) = out.loss else { continue };
        let part = l.sum / n_labels.max(1) as f64;
        let value = part.clone().inner();
        loss_sum = Some(match loss_sum {
            Some(s) => s + value,
            None => value,
        });
        lap(0);
        let grads = GradientsParams::from_grads(part.backward(), &model);
        accumulator.accumulate(&model, grads);
        lap(1);
    }
    let mut grads = accumulator.grads();
    // asked here, as late as possible, so that every worker's answer is in the exchange
    let stop = crate::interrupt::requested();
    let (loss, stop) = match sync {
        Some((c, device)) => parallel::all_reduce(&model, &mut grads, loss_sum, c, device, stop)?,
        None => (
            loss_sum.map_or(0.0, |s| s.into_scalar().elem::<f64>()),
            stop,
        ),
    };
    let norms = grad_norms(&model, &grads);
    let grad_norm = norms.total;
    lap(2);
    let applied = loss.is_finite() && grad_norm.is_finite();
    if applied {
        model = optim.step(lr, model, &mut grads, clip_factor(grad_norm, max_grad_norm));
        model = model.after_optimizer_step();
    }
    lap(3);
    tracing::debug!(
        "step: forward {:.3} s, backward {:.3} s, gradient norm {:.3} s, optimizer {:.3} s",
        phases[0],
        phases[1],
        phases[2],
        phases[3]
    );
    Ok((
        model,
        StepOutcome {
            loss,
            grad_norm,
            grad_norm_by_component: norms.components,
            applied,
            stop,
        },
    ))
}

/// The seed of micro-batch `j` of optimizer step `step`: `seed + step` for the first, as every
/// step was seeded before micro-batches had seeds of their own.
fn micro_seed(seed: u64, step: usize, j: usize) -> u64 {
    seed.wrapping_add(step as u64)
        .wrapping_add((j as u64) << 32)
}

/// Refuse to resume a checkpoint whose steps were made of other batches: the data position
/// counts micro-batches of `local_batch_size` rows, and a step is `global_batch_size` rows.
/// The number of workers may change.
fn check_resumable(
    dir: &Path,
    state: &TrainState,
    ss: &StepScheduler,
    world: usize,
) -> Result<(), TrainError> {
    for (key, was, now) in [
        (
            "global_batch_size",
            state.global_batch_size,
            ss.global_batch_size,
        ),
        (
            "local_batch_size",
            state.local_batch_size,
            ss.local_batch_size,
        ),
    ] {
        if let Some(was) = was
            && was != now
        {
            return Err(TrainError::file(
                dir,
                format!(
                    "--resume: this checkpoint was trained with step_scheduler.{key} {was}, the recipe now says {now}; resume with {key}={was} (the data position and the steps depend on it)"
                ),
            ));
        }
    }
    if let Some(was) = state.world_size
        && was != world
    {
        tracing::info!(
            "resuming a run of {was} worker(s) with {world}: the global batch is unchanged, so the run continues as it would have"
        );
    }
    Ok(())
}

fn fmt_metric(name: &Option<String>, v: Option<f64>) -> String {
    match (name, v) {
        (Some(n), Some(v)) => format!(" | {n} {v:.3}"),
        _ => String::new(),
    }
}
