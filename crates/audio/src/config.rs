//! `audio_config` of Gemma 3n (HF `Gemma3nAudioConfig`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use automodel_core::config::{ConfigError, deserialize, read_config};

/// The Gemma 3n audio encoder configuration (HF names and defaults = the released model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma3nAudioConfig {
    pub hidden_size: usize,
    pub input_feat_size: usize,
    pub vocab_size: usize,
    pub vocab_offset: usize,
    pub rms_norm_eps: f64,
    pub gradient_clipping: f64,
    pub conf_num_hidden_layers: usize,
    pub conf_num_attention_heads: usize,
    pub conf_attention_chunk_size: usize,
    pub conf_attention_context_left: usize,
    pub conf_attention_context_right: usize,
    pub conf_attention_logit_cap: f64,
    pub conf_conv_kernel_size: usize,
    pub conf_reduction_factor: usize,
    pub conf_residual_weight: f64,
    pub sscp_conv_channel_size: Vec<usize>,
    pub sscp_conv_kernel_size: Vec<Vec<usize>>,
    pub sscp_conv_stride_size: Vec<Vec<usize>>,
    pub sscp_conv_group_norm_eps: f64,
    pub initializer_range: f64,
}

impl Default for Gemma3nAudioConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1536,
            input_feat_size: 128,
            vocab_size: 128,
            vocab_offset: 262_272,
            rms_norm_eps: 1e-6,
            gradient_clipping: 1e10,
            conf_num_hidden_layers: 12,
            conf_num_attention_heads: 8,
            conf_attention_chunk_size: 12,
            conf_attention_context_left: 13,
            conf_attention_context_right: 0,
            conf_attention_logit_cap: 50.0,
            conf_conv_kernel_size: 5,
            conf_reduction_factor: 4,
            conf_residual_weight: 0.5,
            sscp_conv_channel_size: vec![128, 32],
            sscp_conv_kernel_size: vec![vec![3, 3], vec![3, 3]],
            sscp_conv_stride_size: vec![vec![2, 2], vec![2, 2]],
            sscp_conv_group_norm_eps: 1e-3,
            initializer_range: 0.02,
        }
    }
}

impl Gemma3nAudioConfig {
    /// Read `audio_config` from a full Gemma 3n `config.json` (or a bare audio config).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_config(path.as_ref(), Self::from_value)
    }

    /// From a parsed full or bare config.
    pub fn from_value(v: &Value) -> Result<Self, ConfigError> {
        let (inner, section) = match v.get("audio_config") {
            Some(x) => (x, "audio_config"),
            None => (v, ""),
        };
        let cfg: Self = deserialize(inner).map_err(|e| e.under(section))?;
        cfg.validate().map_err(|e| e.under(section))?;
        Ok(cfg)
    }

    /// Check what the encoder relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("input_feat_size", self.input_feat_size),
            ("conf_num_attention_heads", self.conf_num_attention_heads),
            ("conf_attention_chunk_size", self.conf_attention_chunk_size),
            (
                "conf_attention_context_left",
                self.conf_attention_context_left,
            ),
            ("conf_conv_kernel_size", self.conf_conv_kernel_size),
            ("conf_reduction_factor", self.conf_reduction_factor),
        ] {
            if v == 0 {
                return Err(ConfigError::field(name, "must be greater than 0"));
            }
        }
        if !self
            .hidden_size
            .is_multiple_of(self.conf_num_attention_heads)
        {
            return Err(ConfigError::field(
                "conf_num_attention_heads",
                "must divide hidden_size",
            ));
        }
        for (name, n) in [
            ("sscp_conv_channel_size", self.sscp_conv_channel_size.len()),
            ("sscp_conv_kernel_size", self.sscp_conv_kernel_size.len()),
            ("sscp_conv_stride_size", self.sscp_conv_stride_size.len()),
        ] {
            if n != 2 {
                return Err(ConfigError::field(
                    name,
                    format!("has {n} entries; the sub-sampling projection has exactly 2 convs"),
                ));
            }
        }
        if self.sscp_conv_channel_size.contains(&0) {
            return Err(ConfigError::field(
                "sscp_conv_channel_size",
                "every width must be greater than 0",
            ));
        }
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("sscp_conv_group_norm_eps", self.sscp_conv_group_norm_eps),
            ("conf_attention_logit_cap", self.conf_attention_logit_cap),
            ("gradient_clipping", self.gradient_clipping),
        ] {
            if v.is_nan() || v <= 0.0 {
                return Err(ConfigError::field(name, format!("{v} must be positive")));
            }
        }
        for (i, (k, s)) in self
            .sscp_conv_kernel_size
            .iter()
            .zip(&self.sscp_conv_stride_size)
            .enumerate()
        {
            if k.len() != 2 || s.len() != 2 || k.contains(&0) || s.contains(&0) {
                return Err(ConfigError::field(
                    format!("sscp_conv_kernel_size[{i}]"),
                    "kernels and strides are positive [time, freq] pairs",
                ));
            }
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.conf_num_attention_heads
    }
}
