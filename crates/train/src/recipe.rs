//! A fine-tuning recipe: Automodel's sections, typed. [`Recipe::from_file`] reads a YAML file
//! (with `key.path=value` overrides applied first), each section strictly (an unknown key or a
//! bad value is an error naming the file, the key path and the nearest valid key);
//! [`Recipe::validate`] checks every value and every combination before any weight is loaded;
//! [`crate::run::run`] carries it out.

use std::path::{Path, PathBuf};

use automodel_data::DataConfig;
use automodel_peft::{FreezeConfig, LoraConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    CheckpointConfig, EvaluationConfig, LrSchedulerConfig, OptimizerConfig, Settings, StepScheduler,
};

/// The built-in default recipe (`recipes/default.yaml`): LoRA on Gemma 3 270M with the
/// built-in instruction task.
pub const DEFAULT_RECIPE: &str = include_str!("../../../recipes/default.yaml");

/// The sections a recipe may have.
pub const SECTIONS: &[&str] = &[
    "model",
    "dataset",
    "validation_dataset",
    "step_scheduler",
    "optimizer",
    "lr_scheduler",
    "clip_grad_norm",
    "peft",
    "freeze_config",
    "checkpoint",
    "distributed",
    "evaluation",
    "seed",
];

/// A recipe that cannot be read or cannot work: the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", .file.display(), .key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct RecipeError {
    pub file: PathBuf,
    /// The key path (`peft.dim`), when the error is about one.
    pub key: Option<String>,
    pub message: String,
}

impl RecipeError {
    fn new(file: &Path, key: Option<&str>, message: impl std::fmt::Display) -> Self {
        Self {
            file: file.to_path_buf(),
            key: key.map(str::to_string),
            message: message.to_string(),
        }
    }
}

/// The candidate closest to `word`, if any is close.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (word.len().max(c.len()) / 2).max(2) || c.contains(word))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(word: &str, candidates: impl IntoIterator<Item = &'static str>) -> String {
    nearest(word, candidates)
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the nearest valid key added.
fn with_suggestion(msg: String) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg;
    };
    let Some((word, tail)) = rest.split_once('`') else {
        return msg;
    };
    let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    match nearest(word, candidates) {
        Some(n) => format!("{msg} (did you mean `{n}`?)"),
        None => msg,
    }
}

/// Precision of the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TorchDtype {
    #[default]
    #[serde(alias = "torch.float32", alias = "fp32", alias = "f32")]
    #[serde(rename = "float32")]
    Float32,
    #[serde(alias = "torch.bfloat16", alias = "bf16")]
    #[serde(rename = "bfloat16")]
    Bfloat16,
    #[serde(alias = "torch.float16", alias = "fp16", alias = "f16")]
    #[serde(rename = "float16")]
    Float16,
}

/// MatFormer Mix-n-Match: train a sub-model of a larger Gemma 3n checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatformerSection {
    /// One FFN width per kept layer (empty: keep the widths).
    pub ffn_widths: Vec<usize>,
    /// Original indices of the layers to drop.
    pub skip_layers: Vec<usize>,
}

/// Recipe `model`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A GGUF file, a Hugging Face folder, or a name `cargo xtask fetch-model` knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained_model_name_or_path: Option<String>,
    /// Instead: a folder with `config.json` (and optionally `preprocessor_config.json`) to build
    /// with random weights (tiny models for tests and demos), or a released Gemma 3n, `E2B` or
    /// `E4B`, at its real sizes with weights from the counter formula (the same bits
    /// `reference/counter_weights.py` computes: PyTorch can build the same model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// With `model.config: E2B|E4B`: that many decoder layers instead of the released 30/35
    /// (every width kept; KV sharing and sparsity cut in proportion), for quick runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_hidden_layers: Option<usize>,
    /// With `config`: where the tokenizer comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    pub torch_dtype: TorchDtype,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matformer: Option<MatformerSection>,
    /// With `config`: the seed of the random weights (default: the recipe's `seed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
}

/// Recipe `clip_grad_norm`: `max_norm` 1.0 when the section is absent; `max_norm: null` turns
/// clipping off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipGradNorm {
    pub max_norm: Option<f64>,
}

impl Default for ClipGradNorm {
    fn default() -> Self {
        Self {
            max_norm: Some(1.0),
        }
    }
}

/// Recipe `distributed` (Automodel's names): `strategy` `ddp` (or none); `dp_size`, when
/// given, must be the number of workers `automodel-cli launch` started; every other size is 1.
/// Anything else is refused with what exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Distributed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_replicate_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tp_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cp_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pp_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ep_size: Option<usize>,
    pub sequence_parallel: bool,
    /// Recompute activations in backward instead of keeping them (Burn's balanced
    /// checkpointing): less memory, more time.
    pub activation_checkpointing: bool,
}

/// A recipe, every section typed. Build one with [`Recipe::from_file`] or [`Recipe::parse`],
/// change it with [`Recipe::set`] (or its fields), check it with [`Recipe::validate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// The recipe's file: named in errors; relative paths are resolved against its folder.
    #[serde(skip)]
    pub path: PathBuf,
    pub model: ModelSection,
    pub dataset: DataConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_dataset: Option<DataConfig>,
    pub step_scheduler: StepScheduler,
    pub optimizer: OptimizerConfig,
    pub lr_scheduler: LrSchedulerConfig,
    pub clip_grad_norm: ClipGradNorm,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peft: Option<LoraConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_config: Option<FreezeConfig>,
    pub checkpoint: CheckpointConfig,
    pub distributed: Distributed,
    pub evaluation: EvaluationConfig,
    pub seed: u64,
}

fn default_seed() -> u64 {
    42
}

/// Section `name` of `root` as `T` (`None` when absent or null); errors name the key path.
fn section<T: DeserializeOwned>(
    file: &Path,
    root: &Value,
    name: &str,
) -> Result<Option<T>, RecipeError> {
    let Some(v) = root.get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    serde_path_to_error::deserialize(v.clone())
        .map(Some)
        .map_err(|e| {
            let at = e.path().to_string();
            let key = if at == "." {
                name.to_string()
            } else {
                format!("{name}.{at}")
            };
            RecipeError::new(file, Some(&key), with_suggestion(e.inner().to_string()))
        })
}

/// Apply `a.b.c=value` to `root` (the value is read as YAML: `6`, `1e-4`, `true`, `[1, 2]`,
/// `null`, or a string).
fn set_key(file: &Path, root: &mut Value, assignment: &str) -> Result<(), RecipeError> {
    let bad = |m: String| RecipeError::new(file, None, format!("--set {assignment}: {m}"));
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected KEY.PATH=VALUE".into()))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!("`{key}` is not a key path like section.key")));
    }
    if !SECTIONS.contains(&parts[0]) {
        return Err(bad(format!(
            "unknown section `{}`{}",
            parts[0],
            did_you_mean(parts[0], SECTIONS.iter().copied())
        )));
    }
    let v: Value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.to_string()));
    let mut node = root;
    for (i, p) in parts.iter().enumerate() {
        if node.is_null() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(obj) = node else {
            return Err(bad(format!("`{}` is not a mapping", parts[..i].join("."))));
        };
        if i + 1 == parts.len() {
            obj.insert(p.to_string(), v);
            return Ok(());
        }
        node = obj.entry(p.to_string()).or_insert(Value::Null);
    }
    unreachable!("the loop returns at the last part")
}

impl Recipe {
    /// Read the YAML file `path`, apply `overrides` (`key.path=value`) and type every section.
    pub fn from_file(path: impl AsRef<Path>, overrides: &[String]) -> Result<Self, RecipeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| RecipeError::new(path, None, format!("cannot read the recipe: {e}")))?;
        Self::parse(path, &text, overrides)
    }

    /// The built-in default recipe (`recipes/default.yaml` as compiled in), named `path`.
    pub fn default_recipe(
        path: impl AsRef<Path>,
        overrides: &[String],
    ) -> Result<Self, RecipeError> {
        Self::parse(path.as_ref(), DEFAULT_RECIPE, overrides)
    }

    /// A recipe from its YAML text (`path` names it in errors and anchors relative paths).
    pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Self, RecipeError> {
        let mut root: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| RecipeError::new(path, None, format!("not valid YAML: {e}")))?;
        let Some(obj) = root.as_object() else {
            return Err(RecipeError::new(
                path,
                None,
                "a recipe is a mapping of sections",
            ));
        };
        for key in obj.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                return Err(RecipeError::new(
                    path,
                    None,
                    format!(
                        "unknown section `{key}`{}; a recipe has: {}",
                        did_you_mean(key, SECTIONS.iter().copied()),
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        for o in overrides {
            set_key(path, &mut root, o)?;
        }
        Self::from_value(path, &root)
    }

    fn from_value(path: &Path, root: &Value) -> Result<Self, RecipeError> {
        let missing =
            |s: &str| RecipeError::new(path, None, format!("the `{s}` section is missing"));
        let mut validation_dataset: Option<DataConfig> = section(path, root, "validation_dataset")?;
        // validation runs in file order unless the recipe says otherwise
        let val_shuffle = root
            .get("validation_dataset")
            .and_then(|v| v.get("shuffle"))
            .and_then(Value::as_bool);
        if let Some(v) = &mut validation_dataset {
            v.shuffle = val_shuffle.unwrap_or(false);
        }
        Ok(Self {
            path: path.to_path_buf(),
            model: section(path, root, "model")?.ok_or_else(|| missing("model"))?,
            dataset: section(path, root, "dataset")?.ok_or_else(|| missing("dataset"))?,
            validation_dataset,
            step_scheduler: section(path, root, "step_scheduler")?.unwrap_or_default(),
            optimizer: section(path, root, "optimizer")?.unwrap_or_default(),
            lr_scheduler: section(path, root, "lr_scheduler")?.unwrap_or_default(),
            clip_grad_norm: section(path, root, "clip_grad_norm")?.unwrap_or_default(),
            peft: section(path, root, "peft")?,
            freeze_config: section(path, root, "freeze_config")?,
            checkpoint: section(path, root, "checkpoint")?.unwrap_or_default(),
            distributed: section(path, root, "distributed")?.unwrap_or_default(),
            evaluation: section(path, root, "evaluation")?.unwrap_or_default(),
            seed: section(path, root, "seed")?.unwrap_or_else(default_seed),
        })
    }

    /// Apply one `key.path=value` override to the recipe as it stands.
    pub fn set(&mut self, assignment: &str) -> Result<(), RecipeError> {
        let mut root = serde_json::to_value(&*self).expect("a recipe serialises");
        set_key(&self.path, &mut root, assignment)?;
        *self = Self::from_value(&self.path, &root)?;
        Ok(())
    }

    /// The folder relative paths in the recipe are resolved against.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The recipe's file stem (`default` for `recipes/default.yaml`).
    pub fn stem(&self) -> &str {
        self.path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("run")
    }

    fn err(&self, key: &str, message: impl std::fmt::Display) -> RecipeError {
        RecipeError::new(&self.path, Some(key), message)
    }

    /// Check every section's values and their combinations; touches no file (see
    /// [`Recipe::model_path`] for the model's).
    pub fn validate(&self) -> Result<(), RecipeError> {
        let m = &self.model;
        match (&m.pretrained_model_name_or_path, &m.config) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "model",
                    "give either pretrained_model_name_or_path or config (random weights), not both",
                ));
            }
            (None, None) => {
                return Err(self.err("model.pretrained_model_name_or_path", "is missing"));
            }
            (None, Some(_)) if m.tokenizer.is_none() => {
                return Err(self.err(
                    "model.tokenizer",
                    "model.config builds random weights and needs a tokenizer (a GGUF file, a Hugging Face folder or a known name)",
                ));
            }
            (Some(_), None) if m.tokenizer.is_some() => {
                return Err(self.err(
                    "model.tokenizer",
                    "is used with model.config only: a pretrained checkpoint brings its own tokenizer (remove the key)",
                ));
            }
            (_, c) if m.num_hidden_layers.is_some() && self.released_name().is_none() => {
                return Err(self.err(
                    "model.num_hidden_layers",
                    format!(
                        "cuts a released configuration (model.config: E2B or E4B); model.config is {}",
                        c.as_deref().map_or("absent".into(), |c| format!("`{c}`"))
                    ),
                ));
            }
            (Some(_), None) if m.init_seed.is_some() => {
                return Err(self.err(
                    "model.init_seed",
                    "seeds the random weights of model.config; a pretrained checkpoint has its weights (remove the key)",
                ));
            }
            _ => {}
        }
        if self.released_name().is_some() {
            self.released_config()?;
        }
        if m.torch_dtype == TorchDtype::Float16 {
            return Err(self.err(
                "model.torch_dtype",
                "float16 is refused: Gemma 3n overflows float16 (activations reach inf/NaN); use bfloat16 (float32 master weights and moments are kept by the optimizer) or float32",
            ));
        }
        self.dataset
            .validate()
            .map_err(|e| self.err("dataset", e))?;
        if let Some(v) = &self.validation_dataset {
            v.validate()
                .map_err(|e| self.err("validation_dataset", e))?;
        }
        let ss = &self.step_scheduler;
        ss.grad_acc_steps()
            .map_err(|e| RecipeError::new(&self.path, None, e))?;
        self.optimizer
            .validate()
            .map_err(|e| RecipeError::new(&self.path, None, e))?;
        if let Some(n) = ss.max_steps {
            crate::LrSchedule::new(self.optimizer.lr, self.lr_scheduler.clone(), n)
                .map_err(|e| RecipeError::new(&self.path, None, e))?;
        }
        if let Some(x) = self.clip_grad_norm.max_norm
            && !(x.is_finite() && x > 0.0)
        {
            return Err(self.err(
                "clip_grad_norm.max_norm",
                format!("{x} is not a positive number (null turns clipping off)"),
            ));
        }
        if let Some(p) = &self.peft {
            p.validate().map_err(|e| {
                let key = match e.field_name() {
                    // Automodel's name for the rank (PEFT's `r`, also accepted)
                    Some("r") => "peft.dim".to_string(),
                    Some(f) => format!("peft.{f}"),
                    None => "peft".to_string(),
                };
                let msg = match e {
                    automodel_core::ConfigError::Field { message, .. } => message,
                    other => other.to_string(),
                };
                self.err(&key, msg)
            })?;
            if self.freeze_config.is_some() {
                return Err(self.err(
                    "freeze_config",
                    "applies to full fine-tuning; with peft every base weight is frozen and only the adapters train (remove one of the two sections)",
                ));
            }
        }
        self.check_distributed()
    }

    fn check_distributed(&self) -> Result<(), RecipeError> {
        let d = &self.distributed;
        if let Some(s) = &d.strategy
            && s != "ddp"
        {
            return Err(self.err(
                "distributed.strategy",
                format!(
                    "`{s}` is not available: `ddp` (data parallel) is the one strategy; FSDP2, Megatron-FSDP, tensor, context, pipeline and expert parallelism are not implemented"
                ),
            ));
        }
        if d.dp_size == Some(0) {
            return Err(self.err(
                "distributed.dp_size",
                "0: at least one worker (the launcher's --nproc-per-node × --nnodes)",
            ));
        }
        for (k, v) in [
            ("dp_replicate_size", d.dp_replicate_size),
            ("tp_size", d.tp_size),
            ("cp_size", d.cp_size),
            ("pp_size", d.pp_size),
            ("ep_size", d.ep_size),
        ] {
            if let Some(n) = v.filter(|&n| n != 1) {
                return Err(self.err(
                    &format!("distributed.{k}"),
                    format!(
                        "{n}: only data parallelism exists (dp_size, with `automodel-cli launch`); tensor, context, pipeline, expert and replicated-shard parallelism are not implemented: set it to 1 or remove it"
                    ),
                ));
            }
        }
        if d.sequence_parallel {
            return Err(self.err(
                "distributed.sequence_parallel",
                "needs tensor parallelism, which is not implemented",
            ));
        }
        Ok(())
    }

    /// What the run would do, as `finetune --check` prints it: the model, LoRA or full
    /// fine-tuning, steps and batches, the optimizer and schedule, clipping, the run folder.
    pub fn describe(&self, model: &Path, run_dir: &Path) -> String {
        let s = self.settings();
        let ss = &s.step_scheduler;
        let training = match &self.peft {
            Some(l) => format!("LoRA r {} alpha {} (scale {})", l.r, l.alpha, l.scale()),
            None => "full fine-tuning".to_string(),
        };
        let steps = ss.max_steps.map_or_else(
            || format!("{} epoch(s)", ss.num_epochs.unwrap_or(1)),
            |n| n.to_string(),
        );
        let o = &s.optimizer;
        [
            format!("recipe          {} (checked)", self.path.display()),
            format!("model           {}", model.display()),
            format!("training        {training}"),
            format!(
                "steps           {steps} of {} rows ({} per micro-batch, {} accumulated)",
                ss.global_batch_size,
                ss.local_batch_size,
                ss.global_batch_size / ss.local_batch_size.max(1)
            ),
            format!(
                "optimizer       AdamW lr {:e} betas {:?} eps {:e} weight_decay {}; schedule {:?}, warm-up {}",
                o.lr,
                o.betas,
                o.eps,
                o.weight_decay,
                s.lr_scheduler.lr_decay_style,
                s.lr_scheduler.lr_warmup_steps
            ),
            format!(
                "clip_grad_norm  {}",
                s.max_grad_norm.map_or("off".into(), |m| m.to_string())
            ),
            format!("run directory   {}\n", run_dir.display()),
        ]
        .join("\n")
    }

    /// The trainer's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            step_scheduler: self.step_scheduler.clone(),
            optimizer: self.optimizer.clone(),
            lr_scheduler: self.lr_scheduler.clone(),
            max_grad_norm: self.clip_grad_norm.max_norm,
            checkpoint: self.checkpoint.clone(),
            evaluation: self.evaluation.clone(),
            seed: self.seed,
        }
    }

    /// The resolved recipe as YAML, every default written out (what a checkpoint keeps as
    /// `config.yaml`; it reads back as the same recipe).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a recipe serialises")
    }

    /// A model path the recipe names under `key`: a name `cargo xtask fetch-model` knows
    /// (`gemma-3-270m`), or a GGUF file or Hugging Face folder (relative to the recipe).
    pub fn resolve_model(&self, key: &str, s: &str) -> Result<PathBuf, RecipeError> {
        if let Some(p) = automodel_core::cache::known_model(s) {
            if !p.is_file() {
                return Err(self.err(
                    key,
                    format!("`{s}` is not fetched yet (`finetune` fetches it; so does `cargo xtask fetch-model {s}`)"),
                ));
            }
            return Ok(p);
        }
        let p = match s.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
            None => self.base().join(s),
        };
        if !p.exists() {
            return Err(self.err(
                key,
                format!(
                    "`{s}`: no such file or folder (expected a GGUF file, a Hugging Face folder, or one of: {})",
                    automodel_core::cache::KNOWN_MODELS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(p)
    }

    /// Fetch the models the recipe names by short name (`gemma-3-270m`) that are not in the
    /// cache yet ([`automodel_models::fetch`]); `progress` hears each step.
    pub fn fetch_missing(&self, mut progress: impl FnMut(&str)) -> Result<(), crate::TrainError> {
        let m = &self.model;
        for (key, name) in [
            (
                "model.pretrained_model_name_or_path",
                &m.pretrained_model_name_or_path,
            ),
            ("model.tokenizer", &m.tokenizer),
        ] {
            if let Some(n) = name
                && automodel_core::cache::known_model(n).is_some_and(|p| !p.is_file())
            {
                automodel_models::fetch::fetch(n, &mut progress)
                    .map_err(|e| self.err(key, format!("`{n}` is not in the cache: {e}")))?;
            }
        }
        Ok(())
    }

    /// Where the checkpoint (or, for a model built from `model.config`, the tokenizer) is: a
    /// GGUF file or a Hugging Face folder, told by the contents (a file inside a folder, e.g.
    /// `model.safetensors`, stands for its folder; see [`automodel_models::ModelSource`]).
    pub fn model_path(&self) -> Result<PathBuf, RecipeError> {
        let m = &self.model;
        let (key, p) = match (&m.pretrained_model_name_or_path, &m.tokenizer) {
            (Some(p), _) => ("model.pretrained_model_name_or_path", p),
            (None, Some(t)) => ("model.tokenizer", t),
            (None, None) => {
                return Err(self.err("model.pretrained_model_name_or_path", "is missing"));
            }
        };
        let path = self.resolve_model(key, p)?;
        automodel_models::ModelSource::detect(&path)
            .map(|s| s.path().to_path_buf())
            .map_err(|e| self.err(key, e))
    }

    /// The released configuration `model.config` names (`E2B`, `E4B`), if it names one.
    pub fn released_name(&self) -> Option<&str> {
        self.model
            .config
            .as_deref()
            .filter(|c| automodel_gemma3n::Gemma3nConfig::RELEASED.contains(c))
    }

    /// The configuration of `model.config: E2B|E4B`, cut to `model.num_hidden_layers`.
    pub fn released_config(&self) -> Result<Option<automodel_gemma3n::Gemma3nConfig>, RecipeError> {
        let Some(name) = self.released_name() else {
            return Ok(None);
        };
        automodel_gemma3n::Gemma3nConfig::released_with_layers(name, self.model.num_hidden_layers)
            .map(Some)
            .map_err(|e| self.err("model.num_hidden_layers", e))
    }

    /// The text side the datasets are encoded with: the checkpoint's, or for `model.config`
    /// the tokenizer's with the processor of the config's folder (a released configuration's
    /// own settings for `E2B`/`E4B`).
    pub fn text_side(
        &self,
        has_media: bool,
    ) -> Result<automodel_data::TextSide, crate::TrainError> {
        let path = self.model_path()?;
        if let Some(cfg) = self.released_config()? {
            return Ok(automodel_data::TextSide::for_gemma3n(&path, &cfg, None)?);
        }
        Ok(match &self.model.config {
            Some(c) => automodel_data::TextSide::for_config(&path, &self.base().join(c))?,
            None => automodel_data::TextSide::open(&path, has_media)?,
        })
    }

    /// An encoder for a dataset section: the checkpoint's text side (see [`Self::text_side`])
    /// with the section's settings and chat template.
    pub fn encoder(
        &self,
        cfg: &DataConfig,
        has_media: bool,
    ) -> Result<automodel_data::Encoder, crate::TrainError> {
        Ok(self.text_side(has_media)?.encoder(
            cfg.encode_config(),
            cfg.chat_template
                .as_ref()
                .map(|p| self.base().join(p))
                .as_deref(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "model:\n  pretrained_model_name_or_path: x\ndataset:\n  builtin: instruct\nstep_scheduler:\n  max_steps: 40\n";

    fn parse(extra: &str, overrides: &[&str]) -> Result<Recipe, RecipeError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Recipe::parse(Path::new("r.yaml"), &format!("{MINIMAL}{extra}"), &o)
    }

    #[test]
    fn overrides_and_suggestions() {
        let r = parse(
            "",
            &[
                "step_scheduler.max_steps=6",
                "peft.dim=16",
                "optimizer.betas=[0.9, 0.95]",
                "checkpoint.enabled=false",
            ],
        )
        .unwrap();
        assert_eq!(r.step_scheduler.max_steps, Some(6));
        assert_eq!(r.peft.as_ref().unwrap().r, 16);
        assert_eq!(r.optimizer.betas, [0.9, 0.95]);
        assert!(!r.checkpoint.enabled);
        let e = parse("", &["step_schedular.max_steps=1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `step_scheduler`"), "{e}");
        assert!(parse("", &["max_steps"]).is_err());
        let e = parse("", &["model.pretrained_model_name_or_path.x=1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a mapping") || e.contains("model.pretrained_model_name_or_path"),
            "{e}"
        );
        let e = parse("optimizer:\n  lrr: 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.yaml: optimizer.lrr") && e.contains("did you mean `lr`"),
            "{e}"
        );
        let e = parse("stepscheduler: {}\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown section `stepscheduler`"), "{e}");
        assert_eq!(nearest("lrr", ["lr", "betas", "eps"]), Some("lr"));
        assert_eq!(nearest("zzzzzz", ["lr", "betas"]), None);
        // a recipe set from code reads like one set on the command line
        let mut r = parse("", &[]).unwrap();
        r.set("step_scheduler.max_steps=6").unwrap();
        assert_eq!(r.step_scheduler.max_steps, Some(6));
    }

    #[test]
    fn validate_names_the_key_of_every_refusal() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "",
                &["peft.dim=0"],
                "r.yaml: peft.dim: the rank must be at least 1",
            ),
            ("peft:\n  r: 0\n", &[], "peft.dim: the rank"),
            ("peft:\n  dim: 8\n  alpha: -1\n", &[], "peft.alpha"),
            (
                "peft:\n  dim: 8\nfreeze_config:\n  freeze_embeddings: true\n",
                &[],
                "freeze_config: applies to full fine-tuning",
            ),
            (
                "",
                &["model.tokenizer=y"],
                "model.tokenizer: is used with model.config only",
            ),
            (
                "",
                &["model.init_seed=3"],
                "model.init_seed: seeds the random weights",
            ),
            (
                "",
                &["distributed.strategy=fsdp2"],
                "distributed.strategy: `fsdp2` is not available",
            ),
            ("", &["distributed.dp_size=0"], "distributed.dp_size: 0"),
            (
                "",
                &["distributed.tp_size=2"],
                "distributed.tp_size: 2: only data parallelism",
            ),
            (
                "",
                &["distributed.sequence_parallel=true"],
                "distributed.sequence_parallel",
            ),
            (
                "",
                &["model.torch_dtype=float16"],
                "model.torch_dtype: float16 is refused",
            ),
            (
                "",
                &["clip_grad_norm.max_norm=0"],
                "clip_grad_norm.max_norm: 0",
            ),
            ("", &["model.config=c"], "model: give either"),
            (
                "",
                &["model.num_hidden_layers=4"],
                "model.num_hidden_layers: cuts a released configuration",
            ),
            (
                "",
                &[
                    "model.pretrained_model_name_or_path=null",
                    "model.config=E2B",
                    "model.tokenizer=t",
                    "model.num_hidden_layers=31",
                ],
                "31 must be in 1..=30 for E2B",
            ),
            // keys that would be ignored are refused, naming the section
            (
                "",
                &["dataset.columns.prompt=question"],
                "dataset: columns maps the field names of files",
            ),
            (
                "validation_dataset:\n  builtin: instruct\n  columns:\n    completion: answer\n",
                &[],
                "validation_dataset: columns maps",
            ),
            (
                "",
                &[
                    "dataset.builtin=null",
                    "dataset.path=data.jsonl",
                    "dataset.num_samples=8",
                ],
                "dataset: num_samples sizes a built-in dataset",
            ),
        ];
        for (extra, o, want) in cases {
            let e = parse(extra, o)
                .and_then(|r| r.validate())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra} {o:?}: {e}");
        }
        // what is accepted
        for o in [
            "dataset.num_samples=8",
            "distributed.strategy=ddp",
            "distributed.dp_size=1",
            "peft.dim=8",
            "clip_grad_norm.max_norm=null",
        ] {
            parse("", &[o])
                .unwrap()
                .validate()
                .unwrap_or_else(|e| panic!("{o}: {e}"));
        }
        let r = parse("", &["clip_grad_norm.max_norm=null"]).unwrap();
        assert_eq!(r.settings().max_grad_norm, None);
        assert_eq!(parse("", &[]).unwrap().settings().max_grad_norm, Some(1.0));
    }

    #[test]
    fn validation_data_is_in_file_order_unless_asked() {
        let r = parse("validation_dataset:\n  builtin: instruct\n", &[]).unwrap();
        assert!(!r.validation_dataset.as_ref().unwrap().shuffle);
        assert!(r.dataset.shuffle, "training data is shuffled by default");
        let r = parse(
            "validation_dataset:\n  builtin: instruct\n  shuffle: true\n",
            &[],
        )
        .unwrap();
        assert!(r.validation_dataset.as_ref().unwrap().shuffle);
    }

    #[test]
    fn the_resolved_yaml_reads_back_as_the_same_recipe() {
        let r = parse(
            "validation_dataset:\n  builtin: instruct\npeft:\n  dim: 8\n  alpha: 16\ndistributed:\n  strategy: ddp\n",
            &["optimizer.lr=3e-4"],
        )
        .unwrap();
        let back = Recipe::parse(Path::new("r.yaml"), &r.to_yaml(), &[]).unwrap();
        assert_eq!(back.model, r.model);
        assert_eq!(back.dataset, r.dataset);
        assert_eq!(back.validation_dataset, r.validation_dataset);
        assert_eq!(back.optimizer, r.optimizer);
        assert_eq!(back.peft, r.peft);
        assert_eq!(back.distributed, r.distributed);
        assert_eq!(back.settings().seed, 42);
        let default = Recipe::default_recipe("recipes/default.yaml", &[]).unwrap();
        default.validate().unwrap();
        assert_eq!(default.stem(), "default");
    }
}
