//! `audio_config` of Gemma 3n (HF `Gemma3nAudioConfig`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AudioError;

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
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AudioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AudioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| AudioError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_value(&v)
    }

    /// From a parsed full or bare config.
    pub fn from_value(v: &Value) -> Result<Self, AudioError> {
        let (inner, prefix) = match v.get("audio_config") {
            Some(x) => (x, "audio_config."),
            None => (v, ""),
        };
        let cfg: Self = serde_json::from_value(inner.clone())
            .map_err(|e| AudioError::config(prefix.trim_end_matches('.'), e.to_string()))?;
        cfg.validate().map_err(|e| match e {
            AudioError::Config { field, message } => AudioError::Config {
                field: format!("{prefix}{field}"),
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Check what the encoder relies on.
    pub fn validate(&self) -> Result<(), AudioError> {
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
                return Err(AudioError::config(name, "must be greater than 0"));
            }
        }
        if !self
            .hidden_size
            .is_multiple_of(self.conf_num_attention_heads)
        {
            return Err(AudioError::config(
                "conf_num_attention_heads",
                "must divide hidden_size",
            ));
        }
        let n = self.sscp_conv_channel_size.len();
        if n == 0 || self.sscp_conv_kernel_size.len() != n || self.sscp_conv_stride_size.len() != n
        {
            return Err(AudioError::config(
                "sscp_conv_channel_size",
                "sscp_conv_channel_size, sscp_conv_kernel_size and sscp_conv_stride_size need the same non-zero length",
            ));
        }
        for (i, (k, s)) in self
            .sscp_conv_kernel_size
            .iter()
            .zip(&self.sscp_conv_stride_size)
            .enumerate()
        {
            if k.len() != 2 || s.len() != 2 || k.contains(&0) || s.contains(&0) {
                return Err(AudioError::config(
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
