//! Reading a YAML recipe: its sections by Automodel's names, each checked strictly (an unknown
//! key or a bad value is an error naming the recipe file, the key path and the nearest valid
//! key), with `--set key.path=value` overrides applied first.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A recipe file, parsed but not yet interpreted.
pub struct Recipe {
    pub path: PathBuf,
    pub root: Value,
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

impl Recipe {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the recipe", path.display()))?;
        Self::parse(path, &text)
    }

    /// A recipe from its text (`path` names it in errors and anchors relative paths).
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let root: Value = serde_yaml_ng::from_str(text)
            .with_context(|| format!("{}: not valid YAML", path.display()))?;
        if !root.is_object() {
            bail!("{}: a recipe is a mapping of sections", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
        })
    }

    /// Refuse a section the schema does not have, naming the nearest.
    pub fn check_sections(&self) -> anyhow::Result<()> {
        for key in self.root.as_object().expect("a mapping").keys() {
            if !SECTIONS.contains(&key.as_str()) {
                let hint = nearest(key, SECTIONS.iter().copied())
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                bail!(
                    "{}: unknown section `{key}`{hint}; a recipe has: {}",
                    self.path.display(),
                    SECTIONS.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Apply `--set a.b.c=value` (the value is read as YAML: `6`, `1e-4`, `true`, `[1, 2]`,
    /// `null`, or a string).
    pub fn set(&mut self, assignment: &str) -> anyhow::Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .with_context(|| format!("--set {assignment}: expected KEY.PATH=VALUE"))?;
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("--set {assignment}: `{key}` is not a key path like section.key");
        }
        if !SECTIONS.contains(&parts[0]) {
            let hint = nearest(parts[0], SECTIONS.iter().copied())
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            bail!("--set {assignment}: unknown section `{}`{hint}", parts[0]);
        }
        let v: Value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.to_string()));
        let mut node = &mut self.root;
        for (i, p) in parts.iter().enumerate() {
            let obj = match node {
                Value::Object(o) => o,
                Value::Null => {
                    *node = Value::Object(Default::default());
                    node.as_object_mut().expect("just made")
                }
                _ => bail!(
                    "--set {assignment}: `{}` is not a mapping",
                    parts[..i].join(".")
                ),
            };
            if i + 1 == parts.len() {
                obj.insert(p.to_string(), v);
                return Ok(());
            }
            node = obj.entry(p.to_string()).or_insert(Value::Null);
        }
        unreachable!("the loop returns at the last part")
    }

    /// The recipe's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder relative paths in the recipe are resolved against.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Section `name` as `T`, `None` when absent.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let Some(v) = self.root.get(name).filter(|v| !v.is_null()) else {
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
                anyhow::anyhow!(
                    "{}: {key}: {}",
                    self.path.display(),
                    with_suggestion(e.inner().to_string())
                )
            })
    }

    /// The resolved recipe as YAML (what a checkpoint keeps as `config.yaml`).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.root).unwrap_or_default()
    }

    /// A path the recipe names under `key`: a name `cargo xtask fetch-model` knows
    /// (`gemma-3-270m`), or a GGUF file or Hugging Face folder (relative to the recipe).
    pub fn resolve_model(&self, key: &str, s: &str) -> anyhow::Result<PathBuf> {
        if let Some(p) = automodel_core::cache::known_model(s) {
            if !p.is_file() {
                bail!(
                    "{}: {key} `{s}` is not fetched yet: run `cargo xtask fetch-model {s}`",
                    self.path.display()
                );
            }
            return Ok(p);
        }
        let p = match s.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
            None => self.base().join(s),
        };
        if !p.exists() {
            bail!(
                "{}: {key} `{s}`: no such file or folder (expected a GGUF file, a Hugging Face folder, or one of: {})",
                self.path.display(),
                automodel_core::cache::KNOWN_MODELS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(p)
    }

    /// The `model` section.
    pub fn model(&self) -> anyhow::Result<ModelSection> {
        let m: ModelSection = self
            .section("model")?
            .with_context(|| format!("{}: the `model` section is missing", self.path.display()))?;
        match (&m.pretrained_model_name_or_path, &m.config) {
            (Some(_), Some(_)) => bail!(
                "{}: model: give either pretrained_model_name_or_path or config (random weights), not both",
                self.path.display()
            ),
            (None, None) => bail!(
                "{}: model.pretrained_model_name_or_path is missing",
                self.path.display()
            ),
            (None, Some(_)) if m.tokenizer.is_none() => bail!(
                "{}: model.config builds random weights and needs model.tokenizer (a GGUF file, a Hugging Face folder or a known name)",
                self.path.display()
            ),
            _ => {}
        }
        Ok(m)
    }

    /// Where the checkpoint (or, for a model built from `model.config`, the tokenizer) is.
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        let m = self.model()?;
        match (&m.pretrained_model_name_or_path, &m.tokenizer) {
            (Some(p), _) => self.resolve_model("model.pretrained_model_name_or_path", p),
            (None, Some(t)) => self.resolve_model("model.tokenizer", t),
            (None, None) => unreachable!("checked by model()"),
        }
    }

    /// The `data` command's text side: the checkpoint's, or for `model.config` the tokenizer's
    /// with the processor of the config's folder.
    pub fn text_side(&self, has_media: bool) -> anyhow::Result<automodel_data::TextSide> {
        let m = self.model()?;
        let path = self.model_path()?;
        Ok(match &m.config {
            Some(c) => automodel_data::TextSide::for_config(&path, &self.base().join(c))?,
            None => automodel_data::TextSide::open(&path, has_media)?,
        })
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
    pub pretrained_model_name_or_path: Option<String>,
    /// Instead: a folder with `config.json` (and optionally `preprocessor_config.json`) to build
    /// with random weights (tiny models for tests and demos).
    pub config: Option<String>,
    /// With `config`: where the tokenizer comes from.
    pub tokenizer: Option<String>,
    pub torch_dtype: TorchDtype,
    pub matformer: Option<MatformerSection>,
    /// Seed of the random weights of a `config` model.
    pub init_seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_suggestions() {
        let mut r = Recipe::parse(
            Path::new("r.yaml"),
            "step_scheduler:\n  max_steps: 40\nmodel:\n  pretrained_model_name_or_path: x\n",
        )
        .unwrap();
        r.set("step_scheduler.max_steps=6").unwrap();
        r.set("peft.dim=16").unwrap();
        r.set("optimizer.betas=[0.9, 0.95]").unwrap();
        r.set("checkpoint.enabled=false").unwrap();
        assert_eq!(r.root["step_scheduler"]["max_steps"], 6);
        assert_eq!(r.root["peft"]["dim"], 16);
        assert_eq!(r.root["optimizer"]["betas"][1], 0.95);
        assert_eq!(r.root["checkpoint"]["enabled"], false);
        let e = r.set("step_schedular.max_steps=1").unwrap_err().to_string();
        assert!(e.contains("did you mean `step_scheduler`"), "{e}");
        assert!(r.set("max_steps").is_err());
        r.set("model.pretrained_model_name_or_path.x=1")
            .expect_err("not a mapping");
        assert_eq!(nearest("lrr", ["lr", "betas", "eps"]), Some("lr"));
        assert_eq!(nearest("zzzzzz", ["lr", "betas"]), None);
        assert_eq!(
            with_suggestion(
                "unknown field `max_step`, expected one of `max_steps`, `num_epochs`".into()
            ),
            "unknown field `max_step`, expected one of `max_steps`, `num_epochs` (did you mean `max_steps`?)"
        );
    }
}
