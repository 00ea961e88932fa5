//! `automodel-cli finetune [--config RECIPE] [--set key.path=value]... [--output-dir DIR]
//! [--resume] [--device cpu|cuda[:N]|wgpu[:N|:cpu]]`: full fine-tuning or LoRA of Gemma 3 / Gemma 3n from a
//! YAML recipe (Automodel's section names). Without `--config` it runs `recipes/default.yaml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use automodel::Gemma3nForConditionalGeneration;
use automodel_core::AutodiffBackend;
use automodel_core::device::{DeviceSpec, OnDevice, run_on};
use automodel_data::{DataConfig, Dataset, Loader, Record, Sample};
use automodel_peft::{FreezeConfig, LoraConfig};
use automodel_text::Gemma3nForCausalLM;
use automodel_text::matformer::MatformerSpec;
use automodel_train::{
    CheckpointConfig, EvaluationConfig, Export, LrSchedulerConfig, OptimizerConfig, Settings,
    StepScheduler, Summary, TrainModel, Trainer, Validation,
};
use burn::module::AutodiffModule;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::Loaded;
use crate::recipe::{ModelSection, Recipe, TorchDtype};

/// The built-in default recipe (also in `recipes/default.yaml`).
pub const DEFAULT_RECIPE: &str = include_str!("../../../recipes/default.yaml");

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The recipe (YAML). Default: `recipes/default.yaml` (LoRA on Gemma 3 270M, built-in
    /// instruction task, CPU, a few minutes).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a recipe key, e.g. `--set step_scheduler.max_steps=6 --set peft.dim=16`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,
    /// The run folder (checkpoints, logs). Default: `checkpoint.checkpoint_dir`, else
    /// `runs/<recipe>-<date>-<time>`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue the run in the run folder (default: the newest `runs/<recipe>-*`) from its
    /// latest complete checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Where to train: `cpu`, `cuda[:N]` or `wgpu[:N|:cpu]` (builds with `--features cuda` / `wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Read and check the recipe, print what the run would do, and exit (a model or dataset
    /// that is not there yet is only noted).
    #[arg(long)]
    pub check: bool,
}

/// Recipe `clip_grad_norm`: `max_norm` 1.0 when the section is absent; `max_norm: null` turns
/// clipping off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClipGradNorm {
    max_norm: Option<f64>,
}

/// Recipe `distributed`: one device only, until data-parallel training exists.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct Distributed {
    strategy: Option<String>,
    dp_size: Option<usize>,
    dp_replicate_size: Option<usize>,
    tp_size: Option<usize>,
    cp_size: Option<usize>,
    pp_size: Option<usize>,
    ep_size: Option<usize>,
    sequence_parallel: bool,
    activation_checkpointing: bool,
}

impl Distributed {
    fn check(&self, recipe: &Path) -> anyhow::Result<()> {
        for (k, v) in [
            ("dp_size", self.dp_size),
            ("dp_replicate_size", self.dp_replicate_size),
            ("tp_size", self.tp_size),
            ("cp_size", self.cp_size),
            ("pp_size", self.pp_size),
            ("ep_size", self.ep_size),
        ] {
            if v.is_some_and(|n| n > 1) {
                bail!(
                    "{}: distributed.{k} = {}: training on more than one device is not supported yet (data, tensor, context, pipeline and expert parallelism are not implemented); set it to 1 or remove it",
                    recipe.display(),
                    v.unwrap_or(1)
                );
            }
        }
        if self.sequence_parallel {
            bail!(
                "{}: distributed.sequence_parallel needs tensor parallelism, which is not supported yet",
                recipe.display()
            );
        }
        Ok(())
    }
}

/// Everything a run needs, read and checked before any weight is loaded.
struct Plan {
    recipe: Recipe,
    model: ModelSection,
    model_path: PathBuf,
    dataset: DataConfig,
    validation: Option<DataConfig>,
    settings: Settings,
    peft: Option<LoraConfig>,
    freeze: FreezeConfig,
    run_dir: PathBuf,
    resume: bool,
    activation_checkpointing: bool,
}

/// `runs/<stem>-<UTC date>-<time>`.
fn default_run_dir(stem: &str) -> PathBuf {
    let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    PathBuf::from("runs").join(format!("{stem}-{now}"))
}

/// The newest `runs/<stem>-*` folder that holds a checkpoint.
fn newest_run(stem: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("runs")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}-")))
                && automodel_train::checkpoint::latest(p).is_some()
        })
        .collect();
    v.sort();
    v.pop()
}

fn plan(a: &FinetuneArgs) -> anyhow::Result<Plan> {
    let mut recipe = match &a.config {
        Some(p) => Recipe::read(p)?,
        None if Path::new("recipes/default.yaml").is_file() => {
            Recipe::read(Path::new("recipes/default.yaml"))?
        }
        None => Recipe::parse(Path::new("recipes/default.yaml"), DEFAULT_RECIPE)?,
    };
    recipe.check_sections()?;
    for s in &a.set {
        recipe.set(s)?;
    }
    let r = &recipe;
    let file = r.path.display().to_string();
    let model = r.model()?;
    let model_path = match r.model_path() {
        Ok(p) => p,
        Err(e) if a.check => {
            eprintln!("note: {e:#}");
            PathBuf::new()
        }
        Err(e) => return Err(e),
    };
    if model.torch_dtype == TorchDtype::Float16 {
        bail!(
            "{file}: model.torch_dtype float16 is refused: Gemma 3n overflows float16 (activations reach inf/NaN); use bfloat16 (float32 master weights and moments are kept by the optimizer) or float32"
        );
    }
    let dataset: DataConfig = r
        .section("dataset")?
        .with_context(|| format!("{file}: the `dataset` section is missing"))?;
    dataset
        .validate()
        .with_context(|| format!("{file}: dataset"))?;
    let validation: Option<DataConfig> = r.section("validation_dataset")?;
    if let Some(v) = &validation {
        v.validate()
            .with_context(|| format!("{file}: validation_dataset"))?;
    }
    let step_scheduler: StepScheduler = r.section("step_scheduler")?.unwrap_or_default();
    step_scheduler
        .grad_acc_steps()
        .with_context(|| file.clone())?;
    let optimizer: OptimizerConfig = r.section("optimizer")?.unwrap_or_default();
    optimizer.validate().with_context(|| file.clone())?;
    let lr_scheduler: LrSchedulerConfig = r.section("lr_scheduler")?.unwrap_or_default();
    if let Some(n) = step_scheduler.max_steps {
        automodel_train::LrSchedule::new(optimizer.lr, lr_scheduler.clone(), n)
            .with_context(|| file.clone())?;
    }
    let max_grad_norm = match r.section::<ClipGradNorm>("clip_grad_norm")? {
        None => Some(1.0),
        Some(c) => c.max_norm,
    };
    if let Some(m) = max_grad_norm
        && !(m.is_finite() && m > 0.0)
    {
        bail!(
            "{file}: clip_grad_norm.max_norm: {m} is not a positive number (null turns clipping off)"
        );
    }
    let checkpoint: CheckpointConfig = r.section("checkpoint")?.unwrap_or_default();
    let evaluation: EvaluationConfig = r.section("evaluation")?.unwrap_or_default();
    let distributed: Distributed = r.section("distributed")?.unwrap_or_default();
    distributed.check(&r.path)?;
    let seed: u64 = r.section("seed")?.unwrap_or(42);
    let peft: Option<LoraConfig> = r.section("peft")?;
    let freeze: FreezeConfig = r.section("freeze_config")?.unwrap_or_default();
    let stem = r
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run")
        .to_string();
    let run_dir = match (&a.output_dir, &checkpoint.checkpoint_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => r.base().join(d),
        (None, None) if a.resume => newest_run(&stem).with_context(|| {
            format!("--resume: no run of this recipe under runs/{stem}-*; pass --output-dir RUN")
        })?,
        (None, None) => default_run_dir(&stem),
    };
    Ok(Plan {
        settings: Settings {
            step_scheduler,
            optimizer,
            lr_scheduler,
            max_grad_norm,
            checkpoint,
            evaluation,
            seed,
        },
        model,
        model_path,
        dataset,
        validation,
        peft,
        freeze,
        run_dir,
        resume: a.resume,
        activation_checkpointing: distributed.activation_checkpointing,
        recipe,
    })
}

pub fn finetune(a: FinetuneArgs) -> anyhow::Result<()> {
    let plan = plan(&a)?;
    if a.check {
        print_plan(&plan);
        return Ok(());
    }
    eprintln!("run directory {}", plan.run_dir.display());
    let summary = if plan.activation_checkpointing {
        automodel_core::device::run_on_checkpointed(a.device, Job(plan))??
    } else {
        run_on(a.device, Job(plan))??
    };
    print_summary(&summary);
    Ok(())
}

/// What `--check` prints: the resolved run.
fn print_plan(p: &Plan) {
    let s = &p.settings;
    let ss = &s.step_scheduler;
    println!("recipe          {} (checked)", p.recipe.path.display());
    println!("model           {}", p.model_path.display());
    println!(
        "training        {}",
        match &p.peft {
            Some(l) => format!("LoRA r {} alpha {} (scale {})", l.r, l.alpha, l.scale()),
            None => "full fine-tuning".to_string(),
        }
    );
    println!(
        "steps           {} of {} rows ({} per micro-batch, {} accumulated)",
        ss.max_steps.map_or_else(
            || format!("{} epoch(s)", ss.num_epochs.unwrap_or(1)),
            |n| n.to_string()
        ),
        ss.global_batch_size,
        ss.local_batch_size,
        ss.global_batch_size / ss.local_batch_size.max(1)
    );
    println!(
        "optimizer       AdamW lr {:e} betas {:?} eps {:e} weight_decay {}; schedule {:?}, warm-up {}",
        s.optimizer.lr,
        s.optimizer.betas,
        s.optimizer.eps,
        s.optimizer.weight_decay,
        s.lr_scheduler.lr_decay_style,
        s.lr_scheduler.lr_warmup_steps
    );
    println!(
        "clip_grad_norm  {}",
        s.max_grad_norm.map_or("off".into(), |m| m.to_string())
    );
    println!("run directory   {}", p.run_dir.display());
}

fn print_summary(s: &Summary) {
    println!("run directory   {}", s.run_dir.display());
    if let (Some(a), Some(b)) = (s.first_loss, s.last_loss) {
        println!("loss            {a:.4} → {b:.4} over {} steps", s.steps);
    }
    if let Some(v) = s.val_loss {
        println!("val_loss        {v:.4}");
    }
    if let Some(m) = &s.metric {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "{m:<15} {} before → {} after",
            f(s.metric_before),
            f(s.metric_after)
        );
    }
    if let Some(c) = &s.last_checkpoint {
        println!("checkpoint      {}", c.display());
        println!("model           {}", c.join("model").display());
    }
}

struct Job(Plan);

impl OnDevice for Job {
    type Output = anyhow::Result<Summary>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<Summary> {
        let p = self.0;
        let dtype = match p.model.torch_dtype {
            TorchDtype::Float32 => DType::F32,
            TorchDtype::Bfloat16 => DType::BF16,
            TorchDtype::Float16 => unreachable!("refused by plan()"),
        };
        automodel_core::device::check_dtype::<B>(&device, dtype)
            .with_context(|| format!("{}: model.torch_dtype", p.recipe.path().display()))?;
        let loaded = match &p.model.config {
            None => crate::load::<B>(&p.model_path, &device, dtype)?,
            Some(c) => {
                let dir = p.recipe.base().join(c);
                let cfg = automodel::Gemma3nConfig::from_file(dir.join("config.json"))?;
                automodel_core::seed::<B>(&device, p.model.init_seed.unwrap_or(p.settings.seed));
                Loaded::Gemma3n(Gemma3nForConditionalGeneration::from_config(
                    &cfg, &device, dtype,
                )?)
            }
        };
        let spec = p.model.matformer.as_ref().map(|m| MatformerSpec {
            ffn_widths: m.ffn_widths.clone(),
            skip_layers: m.skip_layers.clone(),
        });
        let file = p.recipe.path.display().to_string();
        let no_matformer = |spec: &Option<MatformerSpec>| -> anyhow::Result<()> {
            if spec.is_some() {
                bail!("{file}: model.matformer needs a Gemma 3n model");
            }
            Ok(())
        };
        match loaded {
            Loaded::Gemma3(m, tok) => {
                no_matformer(&spec)?;
                let n = m.config.max_position_embeddings;
                let source = p.model_path.clone();
                let side: SideFiles = if source.is_file() {
                    Box::new(move |dir| {
                        automodel::convert::write_tokenizer_files(&tok, n, dir)
                            .map(|_| ())
                            .map_err(|e| automodel_train::TrainError::Model(e.to_string()))
                    })
                } else {
                    copy_side_files(source)
                };
                train(m, p, device, side)
            }
            Loaded::Gemma3nText(m, _) => {
                // sliced on the inner backend: the sliced tensors become fresh leaves
                let m = match &spec {
                    Some(s) => {
                        let mut inner = m.valid();
                        inner.model = automodel_text::matformer::slice_model(inner.model, s)?;
                        Gemma3nForCausalLM::<B>::from_inner(inner)
                    }
                    None => m,
                };
                let side = copy_side_files(p.model_path.clone());
                train(m, p, device, side)
            }
            Loaded::Gemma3n(m) => {
                let m = match &spec {
                    Some(s) => Gemma3nForConditionalGeneration::<B>::from_inner(
                        m.valid().with_matformer(s)?,
                    ),
                    None => m,
                };
                let side: SideFiles = if p.model.config.is_some() {
                    let tok = p.model_path.clone();
                    Box::new(move |dir| {
                        if tok.is_dir() {
                            automodel_core::weights::copy_side_files(&tok, dir)?;
                        }
                        Ok(())
                    })
                } else {
                    copy_side_files(p.model_path.clone())
                };
                train(m, p, device, side)
            }
        }
    }
}

use automodel_train::trainer::SideFiles;

fn copy_side_files(src: PathBuf) -> SideFiles {
    Box::new(move |dir| {
        automodel_core::weights::copy_side_files(&src, dir)?;
        Ok(())
    })
}

/// Read a dataset section's records.
fn read(recipe: &Recipe, name: &str, cfg: &DataConfig) -> anyhow::Result<Vec<Record>> {
    cfg.read(recipe.base())
        .with_context(|| format!("{}: {name}", recipe.path.display()))
}

/// Encode a dataset section's records into a loader (validation data in file order).
fn loader(
    recipe: &Recipe,
    validation: bool,
    cfg: &DataConfig,
    records: Vec<Record>,
    batch_size: usize,
) -> anyhow::Result<Loader> {
    let file = recipe.path.display();
    let name = if validation {
        "validation_dataset"
    } else {
        "dataset"
    };
    let encoder = Arc::new(encoder(recipe, cfg)?);
    let data = Dataset::prepare(records, &encoder, cfg.bad_samples)
        .with_context(|| format!("{file}: {name}"))?;
    if data.report.skipped_count() > 0 {
        tracing::warn!("{name}: {}", data.report);
    }
    let mut lc = cfg.loader_config(batch_size);
    if validation {
        lc.shuffle = false;
    }
    Loader::new(encoder, Arc::new(data), lc).with_context(|| format!("{file}: {name}"))
}

/// An encoder for a dataset section: the checkpoint's text side (opened per dataset: building
/// the tokenizer is cheap next to the data) with the section's settings and template.
fn encoder(recipe: &Recipe, cfg: &DataConfig) -> anyhow::Result<automodel_data::Encoder> {
    Ok(recipe.text_side(true)?.encoder(
        cfg.encode_config(),
        cfg.chat_template
            .as_ref()
            .map(|p| recipe.base().join(p))
            .as_deref(),
    )?)
}

fn train<B: AutodiffBackend, M: TrainModel<B>>(
    model: M,
    p: Plan,
    device: B::Device,
    side_files: SideFiles,
) -> anyhow::Result<Summary> {
    let file = p.recipe.path.display().to_string();
    // the adapters' random initialisation follows the recipe's seed
    automodel_core::seed::<B>(&device, p.settings.seed);
    let (model, export) = match &p.peft {
        Some(cfg) => {
            let (t, prefix) = model.tree();
            let lin = automodel_core::tree::linear_paths(t, prefix);
            let modules = automodel_peft::inject::module_paths(t, prefix);
            let plan = automodel_peft::inject::plan(cfg, &lin, &modules)
                .with_context(|| format!("{file}: peft"))?;
            let (model, cov) =
                automodel_peft::apply_lora(model, cfg).with_context(|| format!("{file}: peft"))?;
            eprintln!(
                "LoRA r {} alpha {}: {} trainable parameters",
                cfg.r,
                cfg.alpha,
                cov.trainable()
            );
            let base = p
                .model
                .pretrained_model_name_or_path
                .clone()
                .unwrap_or_default();
            (
                model,
                Export::Lora {
                    config: cfg.clone(),
                    plan,
                    base_model: base,
                },
            )
        }
        None => {
            let (model, cov) = automodel_peft::apply_freeze(model, &p.freeze);
            eprintln!("full fine-tuning: {} trainable parameters", cov.trainable());
            (model, Export::Full)
        }
    };
    let ss = &p.settings.step_scheduler;
    let records = read(&p.recipe, "dataset", &p.dataset)?;
    let train_loader = loader(&p.recipe, false, &p.dataset, records, ss.local_batch_size)?;
    let validation = match &p.validation {
        Some(v) => {
            let records = read(&p.recipe, "validation_dataset", v)?;
            // the prompts of the generation metric (only these samples are kept twice)
            let n = p.settings.evaluation.num_samples;
            let samples: Vec<Sample> = records
                .iter()
                .filter_map(|r| r.sample.clone().ok())
                .take(n)
                .collect();
            let loader = loader(&p.recipe, true, v, records, ss.local_batch_size)?;
            Some(Validation::new(loader, &samples, n)?)
        }
        None => None,
    };
    let trainer = Trainer {
        model,
        device,
        settings: p.settings.clone(),
        train: train_loader,
        validation,
        run_dir: p.run_dir.clone(),
        export,
        side_files,
        recipe: p.recipe.to_yaml(),
    };
    eprintln!(
        "{} steps of {} rows ({} per micro-batch) on {} training samples",
        trainer.total_steps()?,
        ss.global_batch_size,
        ss.local_batch_size,
        trainer.train.data.len()
    );
    Ok(trainer.run(p.resume)?)
}
