//! Reading a YAML recipe: its sections by Automodel's names, each checked strictly (an unknown
//! key or a bad value is an error naming the recipe file and the key path).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A recipe file, parsed but not yet interpreted.
pub struct Recipe {
    pub path: PathBuf,
    pub root: Value,
}

impl Recipe {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the recipe", path.display()))?;
        let root: Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{}: not valid YAML", path.display()))?;
        if !root.is_object() {
            bail!("{}: a recipe is a mapping of sections", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
        })
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
                anyhow::anyhow!("{}: {key}: {}", self.path.display(), e.inner())
            })
    }

    /// `model.pretrained_model_name_or_path`: a name `cargo xtask fetch-model` knows
    /// (`gemma-3-270m`), or a GGUF file or Hugging Face folder (relative to the recipe).
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        let key = "model.pretrained_model_name_or_path";
        let v = self
            .root
            .get("model")
            .and_then(|m| m.get("pretrained_model_name_or_path"))
            .with_context(|| format!("{}: {key} is missing", self.path.display()))?;
        let s = v
            .as_str()
            .with_context(|| format!("{}: {key} must be a string", self.path.display()))?;
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
}
