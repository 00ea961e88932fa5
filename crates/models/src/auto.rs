//! The registry: [`AutoModel::from_pretrained`] opens a GGUF file or a Hugging Face folder and
//! builds the class its `model_type` names, as transformers' `AutoModel` does. Adding a model
//! class means one variant here and its arm in each `match` of this file.

use std::io::Read;
use std::path::{Path, PathBuf};

use automodel_core::Backend;
use automodel_gemma3n::{Gemma3nConfig, Gemma3nForConditionalGeneration, ModelError};
use automodel_text::gemma3::{Gemma3ForCausalLM, Gemma3TextConfig};
use automodel_text::{Gemma3nForCausalLM, Gemma3nTextConfig};
use automodel_tokenizer::GemmaTokenizer;
use burn::tensor::DType;
use serde_json::Value;

/// The `model_type`s [`AutoModel`] builds, and the class each one is.
pub const MODEL_TYPES: [(&str, &str); 3] = [
    ("gemma3n", "Gemma3nForConditionalGeneration"),
    ("gemma3n_text", "Gemma3nForCausalLM"),
    ("gemma3_text", "Gemma3ForCausalLM"),
];

/// A model of any class automodel-rs knows, with its tokenizer where the class does not carry
/// one (the full Gemma 3n's processor is opened from its folder).
#[allow(clippy::large_enum_variant)]
pub enum AutoModel<B: Backend> {
    /// Gemma 3 (`gemma3_text`, or a GGUF file) and its tokenizer.
    Gemma3(Gemma3ForCausalLM<B>, GemmaTokenizer),
    /// The Gemma 3n text decoder (`gemma3n_text`) and its tokenizer.
    Gemma3nText(Gemma3nForCausalLM<B>, GemmaTokenizer),
    /// The full Gemma 3n (`gemma3n`): text, images and audio.
    Gemma3n(Gemma3nForConditionalGeneration<B>),
}

/// What a model path holds, told by its contents (magic bytes), not its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file (Gemma 3).
    Gguf(PathBuf),
    /// A Hugging Face folder (`config.json`, safetensors, tokenizer files).
    Folder(PathBuf),
}

impl ModelSource {
    /// Tell what `path` is: a file that starts with GGUF's magic is a GGUF file whatever its
    /// extension; a folder is a Hugging Face folder; a file inside one (`config.json`,
    /// `model.safetensors`, …) stands for its folder.
    pub fn detect(path: &Path) -> Result<Self, ModelError> {
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if !path.exists() {
            return Err(ModelError::Input(format!(
                "{}: no such file or folder (expected a GGUF file or a Hugging Face folder)",
                path.display()
            )));
        }
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| ModelError::Input(format!("{}: cannot read: {e}", path.display())))?;
        if n == 4 && &magic == b"GGUF" {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        match path.parent().filter(|p| p.join("config.json").is_file()) {
            Some(dir) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                tracing::info!(
                    file = %path.display(),
                    folder = %dir.display(),
                    "reading the Hugging Face folder that holds this file"
                );
                Ok(Self::Folder(dir.to_path_buf()))
            }
            None => Err(ModelError::Input(format!(
                "{}: neither a GGUF file (it does not start with the GGUF magic) nor a file of a Hugging Face folder (no config.json beside it)",
                path.display()
            ))),
        }
    }

    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::Folder(p) => p,
        }
    }
}

/// `config.json`'s `model_type`, checked against [`MODEL_TYPES`].
pub fn model_type(config_json: &Path) -> Result<(&'static str, Value), ModelError> {
    let cfg = automodel_core::config::read_json(config_json)?;
    let Some(obj) = cfg.as_object() else {
        return Err(ModelError::Input(format!(
            "{}: expected a JSON object with a `model_type`, found {}",
            config_json.display(),
            match &cfg {
                Value::Null => "null",
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                Value::Object(_) => unreachable!(),
            }
        )));
    };
    let found = obj.get("model_type").and_then(Value::as_str);
    match MODEL_TYPES.iter().find(|(t, _)| Some(*t) == found) {
        Some((t, _)) => Ok((t, cfg)),
        None => Err(ModelError::Input(format!(
            "{}: model_type {} is not supported (supported: {})",
            config_json.display(),
            found.map_or("missing".to_string(), |t| format!("`{t}`")),
            MODEL_TYPES.map(|(t, _)| t).join(", ")
        ))),
    }
}

fn tokenizer_of(dir: &Path) -> Result<GemmaTokenizer, ModelError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(ModelError::Input(format!(
            "{}: a Hugging Face folder needs tokenizer.json",
            path.display()
        )));
    }
    Ok(GemmaTokenizer::from_file(path)?)
}

impl<B: Backend> AutoModel<B> {
    /// Load `path` (a GGUF file or a Hugging Face folder, see [`ModelSource::detect`]) as the
    /// class its `model_type` names, weights in `dtype`.
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let dir = match ModelSource::detect(path.as_ref())? {
            ModelSource::Gguf(p) => {
                let (model, tok) = crate::convert::load_gguf::<B>(&p, device, dtype)?;
                return Ok(Self::Gemma3(model, tok));
            }
            ModelSource::Folder(d) => d,
        };
        let (kind, _) = model_type(&dir.join("config.json"))?;
        Ok(match kind {
            "gemma3n" => Self::Gemma3n(Gemma3nForConditionalGeneration::from_pretrained(
                &dir, device, dtype,
            )?),
            "gemma3n_text" => Self::Gemma3nText(
                Gemma3nForCausalLM::from_pretrained(&dir, None, device, dtype)?,
                tokenizer_of(&dir)?,
            ),
            "gemma3_text" => Self::Gemma3(
                Gemma3ForCausalLM::from_pretrained(&dir, device, dtype)?,
                tokenizer_of(&dir)?,
            ),
            other => unreachable!("{other} is in MODEL_TYPES"),
        })
    }

    /// Load by Hugging Face Hub repo id (`org/name`, revision default `main`): the local Hub
    /// cache first, then a download with the `hub` feature (see [`crate::hub`]).
    pub fn from_hub(
        repo: &str,
        revision: Option<&str>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Self::from_pretrained(crate::hub::resolve(repo, revision)?, device, dtype)
    }

    /// Random weights for the `config.json` in `dir` (tiny models for tests and demos). The
    /// text classes carry `tokenizer`, which they need; the full Gemma 3n ignores it (its
    /// processor is opened from a folder).
    pub fn from_config(
        dir: &Path,
        tokenizer: Option<GemmaTokenizer>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let (kind, cfg) = model_type(&path)?;
        let tok = || {
            tokenizer.clone().ok_or_else(|| {
                ModelError::Input(format!(
                    "{}: a {kind} model built from its config needs a tokenizer",
                    path.display()
                ))
            })
        };
        Ok(match kind {
            "gemma3n" => Self::Gemma3n(Gemma3nForConditionalGeneration::from_config(
                &Gemma3nConfig::from_file(&path)?,
                device,
                dtype,
            )?),
            "gemma3n_text" => Self::Gemma3nText(
                Gemma3nForCausalLM::init(&Gemma3nTextConfig::from_value(&cfg)?, device, dtype)?,
                tok()?,
            ),
            "gemma3_text" => Self::Gemma3(
                Gemma3ForCausalLM::init(&Gemma3TextConfig::from_value(&cfg)?, device, dtype)?,
                tok()?,
            ),
            other => unreachable!("{other} is in MODEL_TYPES"),
        })
    }

    /// The `model_type` of the class.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gemma3(..) => "gemma3_text",
            Self::Gemma3nText(..) => "gemma3n_text",
            Self::Gemma3n(_) => "gemma3n",
        }
    }

    /// The Hugging Face class name.
    pub fn class_name(&self) -> &'static str {
        let t = self.model_type();
        MODEL_TYPES
            .iter()
            .find(|(m, _)| *m == t)
            .map(|(_, c)| *c)
            .expect("every variant is in MODEL_TYPES")
    }

    /// Write `config.json` and the weights as a Hugging Face folder (one `model.safetensors`, or
    /// shards of at most `max_shard_bytes` with an index), each file atomically. Returns the
    /// files written.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: Option<usize>,
    ) -> Result<Vec<PathBuf>, ModelError> {
        Ok(match self {
            Self::Gemma3(m, _) => m.save_pretrained(dir, max_shard_bytes)?,
            Self::Gemma3nText(m, _) => m.save_pretrained(dir, max_shard_bytes)?,
            Self::Gemma3n(m) => m.save_pretrained(dir, max_shard_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_by_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // a GGUF file without the extension
        std::fs::write(d.join("model.bin"), b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(
            ModelSource::detect(&d.join("model.bin")).unwrap(),
            ModelSource::Gguf(d.join("model.bin"))
        );
        // a file of a Hugging Face folder stands for the folder
        std::fs::write(d.join("config.json"), "{}").unwrap();
        std::fs::write(d.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
        assert_eq!(
            ModelSource::detect(&d.join("model.safetensors")).unwrap(),
            ModelSource::Folder(d.to_path_buf())
        );
        assert_eq!(
            ModelSource::detect(d).unwrap(),
            ModelSource::Folder(d.to_path_buf())
        );
        let lone = tempfile::tempdir().unwrap();
        std::fs::write(lone.path().join("x.gguf"), b"not gguf").unwrap();
        let e = ModelSource::detect(&lone.path().join("x.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GGUF magic") && e.contains("x.gguf"), "{e}");
        let e = ModelSource::detect(&d.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file or folder"), "{e}");
    }

    #[test]
    fn config_json_must_name_a_known_model_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        for (text, want) in [
            ("null", "found null"),
            ("[1, 2]", "found an array"),
            ("{}", "model_type missing is not supported"),
            (
                r#"{"model_type": "llama"}"#,
                "model_type `llama` is not supported (supported: gemma3n, gemma3n_text, gemma3_text)",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = model_type(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("config.json"), "{text}: {e}");
        }
        std::fs::write(&p, r#"{"model_type": "gemma3n_text"}"#).unwrap();
        assert_eq!(model_type(&p).unwrap().0, "gemma3n_text");
    }
}
