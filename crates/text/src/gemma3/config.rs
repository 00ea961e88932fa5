//! HF `Gemma3TextConfig`: the fields plain Gemma 3 text uses, with HF names and defaults.

use std::path::Path;

use automodel_core::config::{ConfigError, limits, read_config};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attention::AttentionGeometry;
use crate::config::{LayerType, OneOrMany, decoder_fields, positive};

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
        crate::config::from_text_section(v, Self::validate)
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

    /// Check every value the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        decoder_fields!(self, "Gemma 3").check(&[(
            "intermediate_size",
            self.intermediate_size,
            limits::INTERMEDIATE,
        )])?;
        let q = self.query_pre_attn_scalar;
        if !(positive(q) && q.is_finite()) {
            return Err(ConfigError::field(
                "query_pre_attn_scalar",
                format!("{q} must be a positive number"),
            ));
        }
        self.try_rope_thetas()?;
        if self.attn_logit_softcapping.is_some() {
            return Err(ConfigError::field(
                "attn_logit_softcapping",
                "attention soft-capping (Gemma 2) is not supported",
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
