//! `Gemma3nTextConfig`, deserialised from Hugging Face `config.json` with HF names and defaults.

use std::path::Path;

use automodel_core::config::{ConfigError, limits, read_config};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attention::AttentionGeometry;
use crate::config::{KvSharing, LayerType, OneOrMany, decoder_fields};

/// The text part of a Gemma 3n config (`text_config`). Field names are Hugging Face's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma3nTextConfig {
    pub vocab_size: usize,
    pub vocab_size_per_layer_input: usize,
    pub hidden_size: usize,
    pub hidden_size_per_layer_input: usize,
    pub intermediate_size: OneOrMany<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_activation: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<OneOrMany<i64>>,
    pub bos_token_id: Option<i64>,
    /// Legacy name of the global RoPE base (`rope_parameters.full_attention.rope_theta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Legacy name of the local RoPE base (`rope_parameters.sliding_attention.rope_theta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    pub attention_bias: bool,
    pub attention_dropout: f64,
    pub sliding_window: usize,
    pub layer_types: Option<Vec<LayerType>>,
    pub final_logit_softcapping: Option<f64>,
    pub altup_active_idx: usize,
    pub altup_coef_clip: Option<f64>,
    pub altup_correct_scale: bool,
    pub altup_num_inputs: usize,
    pub num_kv_shared_layers: usize,
    pub laurel_rank: usize,
    pub activation_sparsity_pattern: Option<Vec<f64>>,
    pub initializer_range: f64,
    pub tie_word_embeddings: bool,
}

impl Default for Gemma3nTextConfig {
    /// The defaults of HF `Gemma3nTextConfig` (the E4B text decoder).
    fn default() -> Self {
        Self {
            vocab_size: 262_400,
            vocab_size_per_layer_input: 262_144,
            hidden_size: 2048,
            hidden_size_per_layer_input: 256,
            intermediate_size: OneOrMany::One(16_384),
            num_hidden_layers: 35,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            head_dim: 256,
            hidden_activation: "gelu_pytorch_tanh".into(),
            max_position_embeddings: 32_768,
            rms_norm_eps: 1e-6,
            pad_token_id: Some(0),
            eos_token_id: Some(OneOrMany::One(1)),
            bos_token_id: Some(2),
            rope_theta: None,
            rope_local_base_freq: None,
            rope_parameters: None,
            rope_scaling: None,
            attention_bias: false,
            attention_dropout: 0.0,
            sliding_window: 512,
            layer_types: None,
            final_logit_softcapping: Some(30.0),
            altup_active_idx: 0,
            altup_coef_clip: Some(120.0),
            altup_correct_scale: true,
            altup_num_inputs: 4,
            num_kv_shared_layers: 15,
            laurel_rank: 64,
            activation_sparsity_pattern: None,
            initializer_range: 0.02,
            tie_word_embeddings: true,
        }
    }
}

impl Gemma3nTextConfig {
    /// Read `config.json`: a full `Gemma3nConfig` (its `text_config` is used) or a bare text config.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_config(path.as_ref(), Self::from_value)
    }

    /// From a parsed JSON value (full or bare config); errors name the field
    /// (`text_config.hidden_size`).
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        crate::config::from_text_section(value, Self::validate)
    }

    /// Check every value the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = self.num_hidden_layers;
        let widest_ffn = self
            .intermediate_size
            .to_vec()
            .into_iter()
            .max()
            .unwrap_or(0);
        decoder_fields!(self, "Gemma 3n").check(&[
            ("intermediate_size", widest_ffn, limits::INTERMEDIATE),
            (
                "hidden_size_per_layer_input",
                self.hidden_size_per_layer_input,
                limits::HIDDEN,
            ),
            ("altup_num_inputs", self.altup_num_inputs, 64),
            ("laurel_rank", self.laurel_rank, limits::HIDDEN),
        ])?;
        if self.vocab_size_per_layer_input > self.vocab_size {
            return Err(ConfigError::field(
                "vocab_size_per_layer_input",
                format!(
                    "{} is larger than vocab_size {}",
                    self.vocab_size_per_layer_input, self.vocab_size
                ),
            ));
        }
        if self.attention_bias {
            return Err(ConfigError::field(
                "attention_bias",
                "Gemma 3n has no attention bias; expected false",
            ));
        }
        if self.altup_active_idx >= self.altup_num_inputs {
            return Err(ConfigError::field(
                "altup_active_idx",
                format!(
                    "{} must be below altup_num_inputs {}",
                    self.altup_active_idx, self.altup_num_inputs
                ),
            ));
        }
        if let OneOrMany::Many(v) = &self.intermediate_size
            && v.len() != l
        {
            return Err(ConfigError::field(
                "intermediate_size",
                format!("has {} entries but num_hidden_layers is {l}", v.len()),
            ));
        }
        if self.intermediate_sizes().contains(&0) {
            return Err(ConfigError::field(
                "intermediate_size",
                "every width must be greater than 0",
            ));
        }
        if let Some(p) = &self.activation_sparsity_pattern {
            if p.len() != l {
                return Err(ConfigError::field(
                    "activation_sparsity_pattern",
                    format!("has {} entries but num_hidden_layers is {l}", p.len()),
                ));
            }
            if let Some(bad) = p.iter().find(|s| !(0.0..1.0).contains(*s)) {
                return Err(ConfigError::field(
                    "activation_sparsity_pattern",
                    format!("{bad} is not in [0, 1)"),
                ));
            }
        }
        if self.num_kv_shared_layers >= l {
            return Err(ConfigError::field(
                "num_kv_shared_layers",
                format!(
                    "{} must be below num_hidden_layers {l}",
                    self.num_kv_shared_layers
                ),
            ));
        }
        self.rope_thetas()?;
        self.kv_sharing()?;
        Ok(())
    }

    /// FFN width of every layer.
    pub fn intermediate_sizes(&self) -> Vec<usize> {
        match &self.intermediate_size {
            OneOrMany::One(w) => vec![*w; self.num_hidden_layers],
            OneOrMany::Many(v) => v.clone(),
        }
    }

    /// Attention kind of every layer (HF default: every fifth layer is global).
    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layer_types
            .clone()
            .unwrap_or_else(|| crate::config::every_nth_global(self.num_hidden_layers, 5))
    }

    /// Gaussian top-k sparsity target of every layer (HF default: 0.95 for the first ten).
    pub fn activation_sparsity(&self) -> Vec<f64> {
        self.activation_sparsity_pattern.clone().unwrap_or_else(|| {
            (0..self.num_hidden_layers)
                .map(|i| if i < 10 { 0.95 } else { 0.0 })
                .collect()
        })
    }

    /// RoPE bases, head size and window, as attention needs them.
    pub fn attention_geometry(&self) -> Result<AttentionGeometry, ConfigError> {
        Ok(AttentionGeometry {
            rope_thetas: self.rope_thetas()?,
            head_dim: self.head_dim,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            sliding_window: self.sliding_window,
        })
    }

    /// RoPE base θ for (sliding, full) layers, from `rope_parameters` or the legacy fields.
    pub fn rope_thetas(&self) -> Result<(f64, f64), ConfigError> {
        crate::config::rope_thetas(
            self.rope_parameters.as_ref(),
            self.rope_local_base_freq.unwrap_or(10_000.0),
            self.rope_theta.unwrap_or(1_000_000.0),
        )
    }

    /// Index of the first layer that reuses another layer's K/V.
    pub fn first_kv_shared_layer(&self) -> usize {
        self.num_hidden_layers - self.num_kv_shared_layers
    }

    /// KV-sharing role of every layer: the last `num_kv_shared_layers` layers reuse the K/V of
    /// the last earlier layer of the same attention type, which becomes a `Store` layer.
    pub fn kv_sharing(&self) -> Result<Vec<KvSharing>, ConfigError> {
        let types = self.layer_types();
        let first = self.first_kv_shared_layer();
        let mut modes = vec![KvSharing::None; self.num_hidden_layers];
        for i in first..self.num_hidden_layers {
            let source = (0..first).rev().find(|&j| types[j] == types[i]).ok_or_else(|| {
                ConfigError::field(
                    "num_kv_shared_layers",
                    format!("layer {i} ({:?}) reuses K/V but no earlier non-shared layer has its attention type", types[i]),
                )
            })?;
            modes[i] = KvSharing::Reuse { source };
            modes[source] = KvSharing::Store;
        }
        Ok(modes)
    }

    /// A small configuration for tests and examples (random weights).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 272,
            vocab_size_per_layer_input: 256,
            hidden_size: 64,
            hidden_size_per_layer_input: 16,
            intermediate_size: OneOrMany::Many(vec![128, 96, 160, 128, 96, 192]),
            num_hidden_layers: 6,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            max_position_embeddings: 512,
            sliding_window: 8,
            layer_types: Some(vec![
                LayerType::Sliding,
                LayerType::Full,
                LayerType::Sliding,
                LayerType::Full,
                LayerType::Sliding,
                LayerType::Full,
            ]),
            num_kv_shared_layers: 2,
            laurel_rank: 8,
            activation_sparsity_pattern: Some(vec![0.95, 0.9, 0.0, 0.0, 0.0, 0.0]),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_e4b_decoder() {
        let c = Gemma3nTextConfig::default();
        c.validate().unwrap();
        let types = c.layer_types();
        assert_eq!(types[4], LayerType::Full);
        assert_eq!(types[3], LayerType::Sliding);
        let kv = c.kv_sharing().unwrap();
        assert_eq!(kv[18], KvSharing::Store);
        assert_eq!(kv[19], KvSharing::Store);
        assert_eq!(kv[20], KvSharing::Reuse { source: 18 });
        assert_eq!(kv[24], KvSharing::Reuse { source: 19 });
        assert_eq!(kv[34], KvSharing::Reuse { source: 19 });
        assert_eq!(c.activation_sparsity()[9], 0.95);
        assert_eq!(c.activation_sparsity()[10], 0.0);
        assert_eq!(c.rope_thetas().unwrap(), (10_000.0, 1_000_000.0));
    }

    #[test]
    fn full_and_bare_configs_parse() {
        let full = serde_json::json!({
            "model_type": "gemma3n",
            "text_config": {"num_hidden_layers": 6, "intermediate_size": [1,2,3,4,5,6], "num_kv_shared_layers": 2,
                            "layer_types": ["sliding_attention","full_attention","sliding_attention","full_attention","sliding_attention","full_attention"],
                            "rope_parameters": {"full_attention": {"rope_theta": 5.0, "rope_type": "default"},
                                                "sliding_attention": {"rope_theta": 3.0, "rope_type": "default"}}}
        });
        let c = Gemma3nTextConfig::from_value(&full).unwrap();
        assert_eq!(c.intermediate_sizes(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(c.rope_thetas().unwrap(), (3.0, 5.0));
        let bare = serde_json::json!({"num_hidden_layers": 12, "num_kv_shared_layers": 4, "intermediate_size": 8, "rope_theta": 7.0, "rope_local_base_freq": 2.0});
        let c = Gemma3nTextConfig::from_value(&bare).unwrap();
        assert_eq!(c.intermediate_sizes(), vec![8; 12]);
        assert_eq!(c.rope_thetas().unwrap(), (2.0, 7.0));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (
                serde_json::json!({"text_config": {"num_hidden_layers": 4, "intermediate_size": [1, 2]}}),
                "text_config.intermediate_size",
            ),
            (serde_json::json!({"hidden_size": "big"}), "hidden_size"),
            (
                serde_json::json!({"num_hidden_layers": 4, "num_kv_shared_layers": 4}),
                "num_kv_shared_layers",
            ),
            (
                serde_json::json!({"num_attention_heads": 6, "num_key_value_heads": 4}),
                "num_key_value_heads",
            ),
            (
                serde_json::json!({"hidden_activation": "relu"}),
                "hidden_activation",
            ),
            (
                serde_json::json!({"num_hidden_layers": 2, "activation_sparsity_pattern": [1.5, 0.0], "num_kv_shared_layers": 0}),
                "activation_sparsity_pattern",
            ),
            (
                serde_json::json!({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}),
                "rope_parameters.full_attention.rope_type",
            ),
            (
                serde_json::json!({"num_hidden_layers": 3, "num_kv_shared_layers": 1,
                                "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]}),
                "num_kv_shared_layers",
            ),
        ];
        for (v, field) in cases {
            match Gemma3nTextConfig::from_value(&v) {
                Err(e) => assert_eq!(e.field_name(), Some(field), "{e}"),
                Ok(_) => panic!("{v}: expected a config error for {field}"),
            }
        }
    }
}
