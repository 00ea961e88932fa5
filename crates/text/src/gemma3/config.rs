//! HF `Gemma3TextConfig`: the fields plain Gemma 3 text uses, with HF names and defaults.

use std::path::Path;

use automodel_core::config::{ConfigError, deserialize, read_config};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attention::AttentionGeometry;
use crate::config::{DecoderSizes, LayerType, OneOrMany, positive};

/// HF `Gemma3TextConfig` (the fields the model uses; HF names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma3TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_activation: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_local_base_freq: f64,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    pub sliding_window: usize,
    pub layer_types: Option<Vec<LayerType>>,
    pub query_pre_attn_scalar: f64,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<OneOrMany<i64>>,
    pub pad_token_id: Option<i64>,
    pub initializer_range: f64,
}

impl Default for Gemma3TextConfig {
    /// HF defaults (Gemma 3 4B text).
    fn default() -> Self {
        Self {
            vocab_size: 262_208,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            hidden_activation: "gelu_pytorch_tanh".into(),
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_local_base_freq: 10_000.0,
            rope_parameters: None,
            rope_scaling: None,
            sliding_window: 4096,
            layer_types: None,
            query_pre_attn_scalar: 256.0,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            max_position_embeddings: 131_072,
            bos_token_id: Some(2),
            eos_token_id: Some(OneOrMany::One(1)),
            pad_token_id: Some(0),
            initializer_range: 0.02,
        }
    }
}

impl Gemma3TextConfig {
    /// From a parsed `config.json` (bare, or with a `text_config`).
    pub fn from_value(v: &Value) -> Result<Self, ConfigError> {
        let (inner, section) = match v.get("text_config") {
            Some(t) => (t, "text_config"),
            None => (v, ""),
        };
        let cfg: Self = deserialize(inner).map_err(|e| e.under(section))?;
        cfg.validate().map_err(|e| e.under(section))?;
        Ok(cfg)
    }

    /// Read `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_config(path.as_ref(), Self::from_value)
    }

    /// The config as Hugging Face writes it for `Gemma3ForCausalLM` (`model_type`
    /// `gemma3_text`): every field, the layer types spelled out, and both RoPE spellings
    /// (`rope_parameters` for transformers 5, `rope_theta`/`rope_local_base_freq` for 4.x).
    pub fn to_hf_json(&self) -> Value {
        let (local, global) = self.rope_thetas();
        let mut cfg = self.clone();
        cfg.layer_types = Some(self.layer_types());
        cfg.rope_theta = global;
        cfg.rope_local_base_freq = local;
        cfg.rope_parameters = Some(serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
            "full_attention": {"rope_type": "default", "rope_theta": global},
        }));
        let mut v = serde_json::to_value(&cfg).expect("serialisable");
        if let Some(o) = v.as_object_mut() {
            // HF types it `int` and transformers 5 refuses `256.0`
            if self.query_pre_attn_scalar.fract() == 0.0 {
                o.insert(
                    "query_pre_attn_scalar".into(),
                    (self.query_pre_attn_scalar as i64).into(),
                );
            }
            o.insert("model_type".into(), "gemma3_text".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["Gemma3ForCausalLM"]),
            );
            o.insert("tie_word_embeddings".into(), true.into());
            o.insert("attention_bias".into(), false.into());
            o.insert("dtype".into(), "float32".into());
        }
        v
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("sliding_window", self.sliding_window),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(ConfigError::field(name, "must be greater than 0"));
            }
        }
        DecoderSizes {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
            sliding_window: self.sliding_window,
            bos_token_id: self.bos_token_id,
            pad_token_id: self.pad_token_id,
            eos_token_id: self.eos_token_id.as_ref(),
        }
        .check(&[])?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ConfigError::field(
                "num_key_value_heads",
                "must divide num_attention_heads",
            ));
        }
        if let Some(t) = &self.layer_types
            && t.len() != self.num_hidden_layers
        {
            return Err(ConfigError::field(
                "layer_types",
                format!(
                    "has {} entries for {} layers",
                    t.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::field(
                "head_dim",
                format!("{} must be even for rotary embeddings", self.head_dim),
            ));
        }
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            (
                "final_logit_softcapping",
                self.final_logit_softcapping.unwrap_or(1.0),
            ),
        ] {
            if !positive(v) || !v.is_finite() {
                return Err(ConfigError::field(
                    name,
                    format!("{v} must be a positive number"),
                ));
            }
        }
        self.try_rope_thetas()?;
        if self.hidden_activation != "gelu_pytorch_tanh" && self.hidden_activation != "gelu_tanh" {
            return Err(ConfigError::field(
                "hidden_activation",
                format!(
                    "`{}` is not supported (Gemma 3 uses \"gelu_pytorch_tanh\")",
                    self.hidden_activation
                ),
            ));
        }
        if self.attn_logit_softcapping.is_some() {
            return Err(ConfigError::field(
                "attn_logit_softcapping",
                "attention soft-capping (Gemma 2) is not supported",
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::field(
                "rope_scaling",
                "RoPE scaling is not supported",
            ));
        }
        Ok(())
    }

    /// Layer kinds (HF default: every sixth layer global).
    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layer_types
            .clone()
            .unwrap_or_else(|| crate::config::every_nth_global(self.num_hidden_layers, 6))
    }

    /// RoPE bases, head size and window, as attention needs them.
    pub fn attention_geometry(&self) -> AttentionGeometry {
        AttentionGeometry {
            rope_thetas: self.rope_thetas(),
            head_dim: self.head_dim,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            sliding_window: self.sliding_window,
        }
    }

    /// RoPE bases (sliding, full).
    pub fn rope_thetas(&self) -> (f64, f64) {
        self.try_rope_thetas()
            .expect("checked when the config was read (validate)")
    }

    /// [`Self::rope_thetas`], or what is wrong with them (the same rules as Gemma 3n's:
    /// `rope_parameters` over the legacy fields, `rope_type` `"default"` only).
    pub fn try_rope_thetas(&self) -> Result<(f64, f64), ConfigError> {
        crate::config::rope_thetas(
            self.rope_parameters.as_ref(),
            self.rope_local_base_freq,
            self.rope_theta,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_parameters_are_read_and_checked_as_gemma_3n_reads_them() {
        let mut v = serde_json::to_value(Gemma3TextConfig::default()).unwrap();
        v["rope_parameters"] = serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": 3.0},
            "full_attention": {"rope_type": "default", "rope_theta": 5.0},
        });
        let c = Gemma3TextConfig::from_value(&v).unwrap();
        assert_eq!(c.rope_thetas(), (3.0, 5.0));
        // a scaled RoPE is refused by name (Gemma 3 used to ignore `rope_type`)
        v["rope_parameters"]["full_attention"]["rope_type"] = "linear".into();
        let e = Gemma3TextConfig::from_value(&v).unwrap_err().to_string();
        assert!(
            e.contains("rope_parameters.full_attention.rope_type") && e.contains("linear"),
            "{e}"
        );
        v["rope_parameters"]["full_attention"] = serde_json::json!({"rope_theta": "big"});
        let e = Gemma3TextConfig::from_value(&v).unwrap_err().to_string();
        assert!(
            e.contains("rope_parameters.full_attention.rope_theta"),
            "{e}"
        );
        v["rope_parameters"] = serde_json::Value::Null;
        v["rope_theta"] = (-1.0).into();
        let e = Gemma3TextConfig::from_value(&v).unwrap_err().to_string();
        assert!(
            e.contains("rope_theta") && e.contains("must be positive"),
            "{e}"
        );
    }
}
