//! Reading JSON configs with errors that name the file and the field.
//!
//! Every crate wraps [`ConfigError`] in its own error type; a config reader parses with
//! [`deserialize`] (serde errors carry the path of the offending field, e.g.
//! `text_config.layer_types[3]`), checks values with [`ConfigError::field`], and reads files with
//! [`read_config`], which adds the file to every error.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A config that cannot be read, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{}config field `{field}`: {message}", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Field {
        /// The file, once known.
        path: Option<PathBuf>,
        /// Dotted path of the field, e.g. `text_config.hidden_size`.
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// A bad value of `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            path: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field this error is about, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Name the file (for field errors that do not name one yet).
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Field {
                path: None,
                field,
                message,
            } => ConfigError::Field {
                path: Some(file.to_path_buf()),
                field,
                message,
            },
            other => other,
        }
    }

    /// Put the field under `section` (`hidden_size` → `text_config.hidden_size`).
    pub fn under(self, section: &str) -> Self {
        match self {
            ConfigError::Field {
                path,
                field,
                message,
            } if !section.is_empty() => ConfigError::Field {
                path,
                field: if field.is_empty() {
                    section.to_string()
                } else {
                    format!("{section}.{field}")
                },
                message,
            },
            other => other,
        }
    }
}

/// The largest sizes a config may declare. Far above every released Gemma (vocabulary 262,400,
/// hidden size 3,840, 62 layers, context 131,072), they stop a corrupt or hostile config from
/// sizing a model nobody can allocate before any weight is compared with it.
pub mod limits {
    /// `vocab_size` (and the per-layer-input vocabulary).
    pub const VOCAB: usize = 1 << 24;
    /// `hidden_size` and the other widths of the residual stream.
    pub const HIDDEN: usize = 1 << 16;
    /// `intermediate_size` of a feed-forward block.
    pub const INTERMEDIATE: usize = 1 << 18;
    /// `num_hidden_layers`.
    pub const LAYERS: usize = 1024;
    /// `num_attention_heads`, `num_key_value_heads`.
    pub const HEADS: usize = 1024;
    /// `head_dim`.
    pub const HEAD_DIM: usize = 1 << 12;
    /// `max_position_embeddings` and `sliding_window`.
    pub const POSITIONS: usize = 1 << 24;
}

/// Each `(field, value, max)`: an error naming the first field whose value exceeds `max`.
pub fn check_max(fields: &[(&str, usize, usize)]) -> Result<(), ConfigError> {
    for &(name, v, max) in fields {
        if v > max {
            return Err(ConfigError::field(
                name,
                format!("{v} is larger than {max}, the most this library accepts"),
            ));
        }
    }
    Ok(())
}

/// Read and parse a JSON file.
pub fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ConfigError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Read the JSON file `path` and parse it with `parse`; every field error names the file.
pub fn read_config<T>(
    path: &Path,
    parse: impl FnOnce(&Value) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    parse(&read_json(path)?).map_err(|e| e.in_file(path))
}

/// Deserialize `value`; a type error names the field it is in.
pub fn deserialize<T: DeserializeOwned>(value: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::field(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        hidden_size: usize,
        layers: Vec<String>,
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"text_config": {"hidden_size": "big", "layers": []}}"#,
        )
        .unwrap();
        let err = read_config(&path, |v| {
            deserialize::<Cfg>(&v["text_config"]).map_err(|e| e.under("text_config"))
        })
        .unwrap_err();
        assert_eq!(err.field_name(), Some("text_config.hidden_size"));
        let text = err.to_string();
        assert!(
            text.contains("config.json: config field `text_config.hidden_size`"),
            "{text}"
        );
        let err =
            deserialize::<Cfg>(&serde_json::json!({"hidden_size": 1, "layers": [1]})).unwrap_err();
        assert_eq!(err.field_name(), Some("layers[0]"));
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(read_json(&path), Err(ConfigError::Json { .. })));
        let missing = read_json(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.json"), "{missing}");
    }
}
