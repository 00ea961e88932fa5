//! `LoraConfig`: plain data, read from recipes (Automodel's names) and from PEFT's
//! `adapter_config.json` (PEFT's names).

use automodel_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Which linear layers get an adapter, with PEFT's semantics: a list matches module-name
/// suffixes at a `.` boundary (an entry with `*` is a wildcard pattern over the whole name, as
/// Automodel's), a single string is a regular expression that must match the whole name, and
/// `"all-linear"` is every linear layer except the output head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    List(Vec<String>),
    /// A full-match regular expression, or `"all-linear"`.
    Pattern(String),
}

/// How `lora_A` starts (`lora_B` always starts at zero, so the adapter starts as a no-op).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// PEFT's default: Kaiming-uniform with `a = √5`, i.e. `U(−1/√in, 1/√in)`.
    #[default]
    Peft,
    /// Automodel's default: Xavier-normal, `N(0, 2/(in + r))`.
    Xavier,
    /// PEFT's `"gaussian"`: `N(0, 1/r²)`.
    Gaussian,
}

/// Storage dtype of the adapter matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraDtype {
    #[default]
    Float32,
    Bfloat16,
}

/// A LoRA setup (recipe section `peft`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank.
    #[serde(alias = "dim")]
    pub r: usize,
    /// Scale numerator: `alpha / r` (or `alpha / √r` with `use_rslora`).
    #[serde(alias = "lora_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input (training only).
    #[serde(alias = "lora_dropout")]
    pub dropout: f64,
    pub target_modules: Option<Targets>,
    pub exclude_modules: Option<Targets>,
    /// Every linear layer (Automodel's switch; excludes nothing).
    pub match_all_linear: bool,
    pub use_rslora: bool,
    #[serde(alias = "lora_A_init")]
    pub init: LoraInit,
    /// Whole modules trained and saved in full (e.g. `embed_audio`), matched like a target list.
    pub modules_to_save: Vec<String>,
    pub lora_dtype: LoraDtype,
}

impl Default for LoraConfig {
    /// Automodel's defaults: rank 8, alpha 32, no dropout, every `*_proj` linear.
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            match_all_linear: false,
            use_rslora: false,
            init: LoraInit::Peft,
            modules_to_save: Vec::new(),
            lora_dtype: LoraDtype::Float32,
        }
    }
}

impl LoraConfig {
    /// The adapter's scale: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Refuse values and combinations that cannot be meant.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.r == 0 {
            return Err(ConfigError::field("r", "the rank must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(ConfigError::field(
                "alpha",
                format!("{} must be a positive number", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::field(
                "dropout",
                format!("{} must be in [0, 1)", self.dropout),
            ));
        }
        if self.match_all_linear
            && (self.target_modules.is_some() || self.exclude_modules.is_some())
        {
            return Err(ConfigError::field(
                "match_all_linear",
                "selects every linear layer; it cannot be combined with target_modules or exclude_modules",
            ));
        }
        for (field, t) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            match t {
                Some(Targets::List(v)) if v.is_empty() => {
                    return Err(ConfigError::field(field, "is an empty list"));
                }
                Some(Targets::Pattern(p)) if p != crate::target::ALL_LINEAR => {
                    crate::target::full_match_regex(p).map_err(|e| ConfigError::field(field, e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automodel_and_peft_names_parse_and_bad_combinations_are_refused() {
        let c: LoraConfig = serde_json::from_value(serde_json::json!({
            "dim": 16, "lora_alpha": 32, "target_modules": ["q_proj", "*.v_proj"], "use_rslora": true
        }))
        .unwrap();
        assert_eq!((c.r, c.alpha), (16, 32.0));
        assert!((c.scale() - 8.0).abs() < 1e-12);
        c.validate().unwrap();
        let c: LoraConfig =
            serde_json::from_value(serde_json::json!({"target_modules": "all-linear"})).unwrap();
        assert_eq!(
            c.target_modules,
            Some(Targets::Pattern("all-linear".into()))
        );
        for (v, field) in [
            (serde_json::json!({"r": 0}), "r"),
            (serde_json::json!({"dropout": 1.0}), "dropout"),
            (
                serde_json::json!({"match_all_linear": true, "target_modules": ["q_proj"]}),
                "match_all_linear",
            ),
            (
                serde_json::json!({"target_modules": "(unclosed"}),
                "target_modules",
            ),
            (
                serde_json::json!({"exclude_modules": []}),
                "exclude_modules",
            ),
        ] {
            let c: LoraConfig = serde_json::from_value(v).unwrap();
            assert_eq!(c.validate().unwrap_err().field_name(), Some(field));
        }
        assert!(serde_json::from_value::<LoraConfig>(serde_json::json!({"rank": 4})).is_err());
    }
}
