//! Putting LoRA adapters on a model's linear layers, freezing everything else, and reporting
//! what was adapted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use automodel_core::Backend;
use automodel_core::tree::{self, KeyPath};
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use crate::config::{LoraConfig, LoraDtype, LoraInit, Targets};
use crate::error::PeftError;
use crate::model::PeftModel;
use crate::target::{Matcher, nearest};

/// The modules of a model an adapter setup covers, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Module paths (PEFT's names, e.g. `model.language_model.layers.0.self_attn.q_proj`) that get
    /// an adapter.
    pub adapted: BTreeSet<String>,
    /// Module paths trained and saved in full (`modules_to_save`).
    pub saved: BTreeSet<String>,
}

/// Resolve `cfg` against the model's linear layers (`linears`) and all its module paths
/// (`modules`). A target or `modules_to_save` entry that matches nothing is an error that names
/// the nearest modules.
pub fn plan(
    cfg: &LoraConfig,
    linears: &[String],
    modules: &BTreeSet<String>,
) -> Result<Plan, PeftError> {
    cfg.validate()?;
    let compile = |field: &str, t: &Targets| {
        Matcher::new(t).map_err(|e| PeftError::Target(format!("{field}: {e}")))
    };
    let default_targets = Targets::List(vec!["*_proj".into()]);
    let targets = match (
        &cfg.target_modules,
        &cfg.exclude_modules,
        cfg.match_all_linear,
    ) {
        (_, _, true) => Matcher::All,
        (Some(t), _, _) => compile("target_modules", t)?,
        // excludes alone: every linear except those
        (None, Some(_), _) => Matcher::All,
        (None, None, _) => {
            tracing::warn!("no LoRA targets given; using Automodel's default `*_proj`");
            compile("target_modules", &default_targets)?
        }
    };
    let names = || linears.iter().map(String::as_str);
    if let Some(t) = &cfg.target_modules {
        let missing = targets.unmatched(names());
        if let Some(m) = missing.first() {
            return Err(PeftError::Target(format!(
                "target_modules: `{m}` matches no linear layer of the model; nearest: {}",
                nearest(m, names(), 5).join(", ")
            )));
        }
        let _ = t;
    }
    let exclude = cfg
        .exclude_modules
        .as_ref()
        .map(|t| compile("exclude_modules", t))
        .transpose()?;
    let adapted: BTreeSet<String> = names()
        .filter(|n| targets.matches(n) && !exclude.as_ref().is_some_and(|e| e.matches(n)))
        .map(String::from)
        .collect();
    if adapted.is_empty() {
        return Err(PeftError::Target(
            "the LoRA targets leave no linear layer to adapt".into(),
        ));
    }
    let mut saved = BTreeSet::new();
    for m in &cfg.modules_to_save {
        let t = Matcher::new(&Targets::List(vec![m.clone()]))
            .map_err(|e| PeftError::Target(format!("modules_to_save: {e}")))?;
        let hits: Vec<&String> = modules.iter().filter(|p| t.matches(p)).collect();
        if hits.is_empty() {
            return Err(PeftError::Target(format!(
                "modules_to_save: `{m}` matches no module of the model; nearest: {}",
                nearest(m, modules.iter().map(String::as_str), 5).join(", ")
            )));
        }
        saved.extend(hits.into_iter().cloned());
    }
    Ok(Plan { adapted, saved })
}

/// Every module path of a tree (the key of each parameter minus its last component, and their
/// ancestors).
pub fn module_paths<B: Backend, M: Module<B>>(m: &M, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in tree::param_infos(m, prefix) {
        let mut parts: Vec<&str> = p.key.split('.').collect();
        parts.pop();
        while !parts.is_empty() {
            out.insert(parts.join("."));
            parts.pop();
        }
    }
    out
}

/// Whether `key` is a LoRA matrix.
pub fn is_lora_key(key: &str) -> bool {
    key.contains(".lora_A.") || key.contains(".lora_B.")
}

/// Whether `key` lies under one of `modules`.
pub fn under_any(key: &str, modules: &BTreeSet<String>) -> bool {
    modules.iter().any(|m| {
        key.len() > m.len() && key.starts_with(m.as_str()) && key.as_bytes()[m.len()] == b'.'
    })
}

/// Fills the adapter slots of the planned linears (see `automodel_core::nn::lora`).
struct Injector<'a> {
    prefix: &'a str,
    adapted: &'a BTreeSet<String>,
    cfg: &'a LoraConfig,
    /// `[in, out]` of the linear being mapped.
    dims: Option<[usize; 2]>,
    path: KeyPath,
}

impl<B: Backend> ModuleMapper<B> for Injector<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.path.key(self.prefix);
        let value = param.val();
        let dims = value.dims();
        if !dims.contains(&0) {
            if D == 2 && self.path.is_linear_weight() {
                self.dims = Some([dims[0], dims[D - 1]]);
            }
            return param;
        }
        let Some((module, slot)) = split_slot(&key) else {
            return param;
        };
        let (Some([d_in, d_out]), true) = (self.dims, self.adapted.contains(module)) else {
            return param;
        };
        let device = value.device();
        let r = self.cfg.r;
        let dtype = match self.cfg.lora_dtype {
            LoraDtype::Float32 => DType::F32,
            LoraDtype::Bfloat16 => DType::BF16,
        };
        let fill: Option<(Vec<usize>, Tensor<B, 1>)> = match slot {
            "lora_A.weight" => {
                let dist = match self.cfg.init {
                    LoraInit::Peft => {
                        let b = 1.0 / (d_in as f64).sqrt();
                        Distribution::Uniform(-b, b)
                    }
                    LoraInit::Xavier => Distribution::Normal(0.0, (2.0 / (d_in + r) as f64).sqrt()),
                    LoraInit::Gaussian => Distribution::Normal(0.0, 1.0 / r as f64),
                };
                let t = Tensor::<B, 1>::random([d_in * r], dist, &device);
                Some((vec![d_in, r], t))
            }
            "lora_B.weight" => Some((vec![r, d_out], Tensor::zeros([r * d_out], &device))),
            "lora_B.scale" => Some((vec![1], Tensor::from_floats([self.cfg.scale()], &device))),
            "lora_B.dropout" => Some((vec![1], Tensor::from_floats([self.cfg.dropout], &device))),
            _ => None,
        };
        let Some((shape, t)) = fill else {
            return param;
        };
        let Ok(shape) = <[usize; D]>::try_from(shape) else {
            return param;
        };
        let t = t.reshape(shape);
        Param::from_tensor(if slot.ends_with("weight") {
            t.cast(dtype)
        } else {
            t
        })
    }
}

/// `a.b.q_proj.lora_A.weight` → (`a.b.q_proj`, `lora_A.weight`).
fn split_slot(key: &str) -> Option<(&str, &str)> {
    for slot in ["lora_A.", "lora_B."] {
        if let Some(i) = key.find(&format!(".{slot}")) {
            return Some((&key[..i], &key[i + 1..]));
        }
    }
    None
}

/// Put adapters on the planned linears of `model` and freeze everything but the adapters and
/// the `modules_to_save`. No gradient is computed for a frozen weight.
pub fn inject<B: Backend, M: PeftModel<B>>(model: M, cfg: &LoraConfig, plan: &Plan) -> M {
    model.map_tree(|t, prefix| {
        let t = t.map(&mut Injector {
            prefix,
            adapted: &plan.adapted,
            cfg,
            dims: None,
            path: KeyPath::default(),
        });
        tree::set_trainable(t, prefix, |k| is_lora_key(k) || under_any(k, &plan.saved))
    })
}

/// Put LoRA adapters on `model` as `cfg` says; logs and returns the coverage report.
pub fn apply_lora<B: Backend, M: PeftModel<B>>(
    model: M,
    cfg: &LoraConfig,
) -> Result<(M, Coverage), PeftError> {
    let (t, prefix) = model.tree();
    let linears = tree::linear_paths(t, prefix);
    let modules = module_paths(t, prefix);
    let plan = plan(cfg, &linears, &modules)?;
    let model = inject(model, cfg, &plan);
    let report = coverage(&model, &plan);
    tracing::info!(
        "LoRA coverage (r {}, scale {}):\n{report}",
        cfg.r,
        cfg.scale()
    );
    Ok((model, report))
}

/// A model part, for the coverage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Text,
    Vision,
    Audio,
    Embedders,
}

impl Component {
    /// The part a key belongs to.
    pub fn of(key: &str) -> Self {
        if key.contains("vision_tower") {
            Component::Vision
        } else if key.contains("audio_tower") {
            Component::Audio
        } else if key.contains("embed_vision") || key.contains("embed_audio") {
            Component::Embedders
        } else {
            Component::Text
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Text => "text",
            Component::Vision => "vision",
            Component::Audio => "audio",
            Component::Embedders => "embedders",
        })
    }
}

/// Per component: linear layers, adapted ones, trainable and total parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    pub rows: BTreeMap<Component, CoverageRow>,
}

/// One line of [`Coverage`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoverageRow {
    pub linears: usize,
    pub adapted: usize,
    pub trainable: usize,
    pub total: usize,
}

impl Coverage {
    /// Trainable parameters of the whole model.
    pub fn trainable(&self) -> usize {
        self.rows.values().map(|r| r.trainable).sum()
    }

    /// Adapted linear layers of the whole model.
    pub fn adapted(&self) -> usize {
        self.rows.values().map(|r| r.adapted).sum()
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>8} {:>8} {:>14} {:>14}",
            "component", "linears", "adapted", "trainable", "parameters"
        )?;
        for (c, r) in &self.rows {
            writeln!(
                f,
                "{:<10} {:>8} {:>8} {:>14} {:>14}",
                c.to_string(),
                r.linears,
                r.adapted,
                r.trainable,
                r.total
            )?;
        }
        write!(
            f,
            "{:<10} {:>8} {:>8} {:>14} {:>14}",
            "all",
            self.rows.values().map(|r| r.linears).sum::<usize>(),
            self.adapted(),
            self.trainable(),
            self.rows.values().map(|r| r.total).sum::<usize>()
        )
    }
}

/// What is adapted and trainable under `plan`, by component.
pub fn coverage<B: Backend, M: PeftModel<B>>(model: &M, plan: &Plan) -> Coverage {
    let (t, prefix) = model.tree();
    let mut rows: BTreeMap<Component, CoverageRow> = BTreeMap::new();
    let infos = tree::param_infos(t, prefix);
    let adapted: BTreeSet<&str> = infos
        .iter()
        .filter_map(|p| p.key.strip_suffix(".lora_A.weight"))
        .collect();
    for p in &infos {
        let row = rows.entry(Component::of(&p.key)).or_default();
        row.total += p.numel();
        if is_lora_key(&p.key) || under_any(&p.key, &plan.saved) {
            row.trainable += p.numel();
        }
        if p.linear && !is_lora_key(&p.key) {
            row.linears += 1;
            if adapted.contains(p.key.trim_end_matches(".weight")) {
                row.adapted += 1;
            }
        }
    }
    Coverage { rows }
}
