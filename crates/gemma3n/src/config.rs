//! The full `Gemma3nConfig`: text, vision and audio configs plus the multimodal token ids.

use std::path::Path;

use automodel_audio::Gemma3nAudioConfig;
use automodel_text::Gemma3nTextConfig;
use automodel_vision::Gemma3nVisionConfig;
use serde_json::Value;

use automodel_core::config::{ConfigError, read_config};

/// HF `Gemma3nConfig` (the fields the model uses).
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3nConfig {
    pub text: Gemma3nTextConfig,
    pub vision: Gemma3nVisionConfig,
    pub audio: Gemma3nAudioConfig,
    pub vision_soft_tokens_per_image: usize,
    pub audio_soft_tokens_per_image: usize,
    pub image_token_id: i64,
    pub audio_token_id: i64,
    pub boi_token_id: i64,
    pub eoi_token_id: i64,
    pub boa_token_id: i64,
    pub eoa_token_id: i64,
    /// The whole JSON, so that saving keeps every field.
    pub raw: Value,
}

impl Gemma3nConfig {
    /// The released configurations (`docs/gemma3n-architecture.md` §9.1): `"E2B"` or `"E4B"`.
    pub fn released(name: &str) -> Result<Self, ConfigError> {
        Self::released_with_layers(name, None)
    }

    /// Names [`Self::released`] knows.
    pub const RELEASED: [&str; 2] = ["E2B", "E4B"];

    /// A released configuration with `layers` decoder layers instead of its own (30 for E2B, 35
    /// for E4B), every other width kept: the released layer pattern (four sliding, one full)
    /// cut to length, the same share of layers reusing KV caches (as many as leave the first
    /// five layers, one of each type, computing their own) and of sparse layers.
    pub fn released_with_layers(name: &str, layers: Option<usize>) -> Result<Self, ConfigError> {
        // (layers, KV-shared layers, sparse layers) of the released models
        let (full, shared, sparse) = match name {
            "E2B" => (30, 10, 10),
            "E4B" => (35, 15, 10),
            other => {
                return Err(ConfigError::field(
                    "name",
                    format!("`{other}` is not a released Gemma 3n (E2B or E4B)"),
                ));
            }
        };
        let n = layers.unwrap_or(full);
        if !(1..=full).contains(&n) {
            return Err(ConfigError::field(
                "num_hidden_layers",
                format!("{n} must be in 1..={full} for {name}"),
            ));
        }
        let scaled = |k: usize| (n * k + full / 2) / full;
        let shared = if n == full {
            shared
        } else {
            scaled(shared).min(n.saturating_sub(5))
        };
        let sparse = if n == full {
            sparse
        } else {
            scaled(sparse).max(1)
        };
        let types: Vec<&str> = (0..n)
            .map(|i| {
                if i % 5 == 4 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        let sparsity: Vec<f64> = (0..n)
            .map(|i| if i < sparse { 0.95 } else { 0.0 })
            .collect();
        let width = if name == "E2B" { 8192 } else { 16_384 };
        let text = serde_json::json!({
            "model_type": "gemma3n_text", "num_hidden_layers": n, "intermediate_size": vec![width; n],
            "layer_types": types, "num_kv_shared_layers": shared,
            "activation_sparsity_pattern": sparsity
        });
        Self::from_value(serde_json::json!({
            "architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n",
            "text_config": text, "vision_config": { "model_type": "gemma3n_vision" }, "audio_config": { "model_type": "gemma3n_audio" },
            "audio_soft_tokens_per_image": 188, "vision_soft_tokens_per_image": 256,
            "boi_token_id": 255_999, "eoi_token_id": 262_144, "image_token_id": 262_145,
            "boa_token_id": 256_000, "eoa_token_id": 262_272, "audio_token_id": 262_273,
            "eos_token_id": [1, 106], "tie_word_embeddings": true
        }))
    }

    /// Read a full `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_config(path.as_ref(), |v| Self::from_value(v.clone()))
    }

    /// From a parsed full config (`text_config`, `vision_config`, `audio_config`).
    pub fn from_value(v: Value) -> Result<Self, ConfigError> {
        for k in ["text_config", "vision_config", "audio_config"] {
            if !v.get(k).is_some_and(|x| x.is_object()) {
                return Err(ConfigError::field(
                    k,
                    "is missing (a full Gemma3nConfig is needed)",
                ));
            }
        }
        let int = |k: &str, default: i64| -> Result<i64, ConfigError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_i64()
                    .ok_or_else(|| ConfigError::field(k, "must be an integer")),
            }
        };
        let count = |k: &str, default: i64| -> Result<usize, ConfigError> {
            let n = int(k, default)?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n > 0 && n <= 1 << 16)
                .ok_or_else(|| ConfigError::field(k, format!("{n} must be in 1..=65536")))
        };
        let cfg = Self {
            text: Gemma3nTextConfig::from_value(&v)?,
            vision: Gemma3nVisionConfig::from_value(&v)?,
            audio: Gemma3nAudioConfig::from_value(&v)?,
            vision_soft_tokens_per_image: count("vision_soft_tokens_per_image", 256)?,
            audio_soft_tokens_per_image: count("audio_soft_tokens_per_image", 188)?,
            image_token_id: int("image_token_id", 262_145)?,
            audio_token_id: int("audio_token_id", 262_273)?,
            boi_token_id: int("boi_token_id", 255_999)?,
            eoi_token_id: int("eoi_token_id", 262_144)?,
            boa_token_id: int("boa_token_id", 256_000)?,
            eoa_token_id: int("eoa_token_id", 262_272)?,
            raw: v,
        };
        let (vo, vs) = (cfg.vision.vocab_offset, cfg.vision.vocab_size);
        let (ao, asz) = (cfg.audio.vocab_offset, cfg.audio.vocab_size);
        if vo + vs > ao || ao + asz > cfg.text.vocab_size {
            return Err(ConfigError::field(
                "audio_config.vocab_offset",
                format!(
                    "vision ids [{vo}, {}) and audio ids [{ao}, {}) must be consecutive ranges inside the text vocabulary ({})",
                    vo + vs,
                    ao + asz,
                    cfg.text.vocab_size
                ),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_configs_cut_to_fewer_layers_keep_their_structure() {
        let full = Gemma3nConfig::released("E2B").unwrap();
        assert_eq!(full.text.num_hidden_layers, 30);
        assert_eq!(full.text.num_kv_shared_layers, 10);
        let e4b = Gemma3nConfig::released("E4B").unwrap();
        assert_eq!(
            (e4b.text.num_hidden_layers, e4b.text.num_kv_shared_layers),
            (35, 15)
        );
        let cut = Gemma3nConfig::released_with_layers("E2B", Some(10)).unwrap();
        assert_eq!(cut.text.num_hidden_layers, 10);
        assert_eq!(cut.text.num_kv_shared_layers, 3, "a third, as in 10 of 30");
        assert_eq!(cut.text.hidden_size, full.text.hidden_size);
        assert_eq!(cut.text.vocab_size, full.text.vocab_size);
        assert_eq!(cut.vision, full.vision);
        assert_eq!(cut.audio, full.audio);
        // five layers: one of each type computes its own cache, none can reuse
        let five = Gemma3nConfig::released_with_layers("E4B", Some(5)).unwrap();
        assert_eq!(five.text.num_kv_shared_layers, 0);
        for bad in [Some(0), Some(31)] {
            let e = Gemma3nConfig::released_with_layers("E2B", bad).unwrap_err();
            assert!(e.to_string().contains("num_hidden_layers"), "{e}");
        }
        let e = Gemma3nConfig::released("E3B").unwrap_err().to_string();
        assert!(e.contains("E3B") && e.contains("E2B or E4B"), "{e}");
    }
}
