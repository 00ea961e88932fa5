//! Config pieces both Gemma decoders share: layer kinds, KV-sharing roles, HF's `int` or
//! list-of-`int` fields, reading a `text_config`, and the checks of the fields both declare.

use automodel_core::config::{ConfigError, check_max, deserialize, limits};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Attention kind of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LayerType {
    #[serde(rename = "sliding_attention")]
    Sliding,
    #[serde(rename = "full_attention")]
    Full,
}

/// How a layer takes part in KV sharing (HF `kv_sharing_modes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSharing {
    /// Computes its own K/V; nobody reads them.
    None,
    /// Computes its own K/V and lends them to the reusing layers of its type.
    Store,
    /// Has no K/V projections; reads the K/V of `source`.
    Reuse { source: usize },
}

/// An `int` or a list of ints (HF accepts both for several fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// As a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A decoder config from a parsed `config.json`: its `text_config` when it has one, else the
/// whole value, deserialised and checked by `validate`; errors name the field under
/// `text_config.` when it came from there.
pub(crate) fn from_text_section<T: DeserializeOwned>(
    value: &Value,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let (text, section) = match value.get("text_config") {
        Some(t) => (t, "text_config"),
        None => (value, ""),
    };
    let cfg: T = deserialize(text).map_err(|e| e.under(section))?;
    validate(&cfg).map_err(|e| e.under(section))?;
    Ok(cfg)
}

/// The fields both decoder configs declare under the same names, checked one way by
/// [`DecoderFields::check`]: sizes within [`limits`], special ids in the vocabulary, a head
/// layout GQA and RoPE can use, one kind per layer, and only what the models implement
/// (tanh-GELU, no RoPE scaling). [`decoder_fields!`] reads them from a config.
pub(crate) struct DecoderFields<'a> {
    /// The model's name in messages (`Gemma 3n`).
    pub model: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub sliding_window: usize,
    pub bos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<&'a OneOrMany<i64>>,
    pub layer_types: Option<&'a [LayerType]>,
    pub hidden_activation: &'a str,
    pub rms_norm_eps: f64,
    pub final_logit_softcapping: Option<f64>,
    pub rope_scaling: Option<&'a Value>,
}

/// The [`DecoderFields`] of decoder config `$cfg` (which has each of them under the same name),
/// for model `$model`.
macro_rules! decoder_fields {
    ($cfg:expr, $model:expr) => {
        $crate::config::DecoderFields {
            model: $model,
            vocab_size: $cfg.vocab_size,
            hidden_size: $cfg.hidden_size,
            num_hidden_layers: $cfg.num_hidden_layers,
            num_attention_heads: $cfg.num_attention_heads,
            num_key_value_heads: $cfg.num_key_value_heads,
            head_dim: $cfg.head_dim,
            max_position_embeddings: $cfg.max_position_embeddings,
            sliding_window: $cfg.sliding_window,
            bos_token_id: $cfg.bos_token_id,
            pad_token_id: $cfg.pad_token_id,
            eos_token_id: $cfg.eos_token_id.as_ref(),
            layer_types: $cfg.layer_types.as_deref(),
            hidden_activation: &$cfg.hidden_activation,
            rms_norm_eps: $cfg.rms_norm_eps,
            final_logit_softcapping: $cfg.final_logit_softcapping,
            rope_scaling: $cfg.rope_scaling.as_ref(),
        }
    };
}
pub(crate) use decoder_fields;

impl DecoderFields<'_> {
    /// Every size greater than 0 and within its bound (with `sizes`, the model's own as
    /// `(name, value, bound)`), every special id in the vocabulary, then the rest of what the
    /// type's docs say.
    pub(crate) fn check(&self, sizes: &[(&str, usize, usize)]) -> Result<(), ConfigError> {
        let mut fields = vec![
            ("vocab_size", self.vocab_size, limits::VOCAB),
            ("hidden_size", self.hidden_size, limits::HIDDEN),
            ("num_hidden_layers", self.num_hidden_layers, limits::LAYERS),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::HEADS,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                limits::HEADS,
            ),
            ("head_dim", self.head_dim, limits::HEAD_DIM),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                limits::POSITIONS,
            ),
            ("sliding_window", self.sliding_window, limits::POSITIONS),
        ];
        fields.extend_from_slice(sizes);
        if let Some((name, _, _)) = fields.iter().find(|(_, v, _)| *v == 0) {
            return Err(ConfigError::field(*name, "must be greater than 0"));
        }
        check_max(&fields)?;
        check_special_ids(
            self.vocab_size,
            self.bos_token_id,
            self.pad_token_id,
            self.eos_token_id,
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ConfigError::field(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::field(
                "head_dim",
                format!("{} must be even for rotary embeddings", self.head_dim),
            ));
        }
        if let Some(t) = self.layer_types
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
        if self.hidden_activation != "gelu_pytorch_tanh" && self.hidden_activation != "gelu_tanh" {
            return Err(ConfigError::field(
                "hidden_activation",
                format!(
                    "`{}` is not supported ({} uses \"gelu_pytorch_tanh\")",
                    self.hidden_activation, self.model
                ),
            ));
        }
        if !(positive(self.rms_norm_eps) && self.rms_norm_eps.is_finite()) {
            return Err(ConfigError::field(
                "rms_norm_eps",
                format!("{} must be a positive number", self.rms_norm_eps),
            ));
        }
        if let Some(c) = self.final_logit_softcapping
            && !(positive(c) && c.is_finite())
        {
            return Err(ConfigError::field(
                "final_logit_softcapping",
                format!("{c} must be a positive number or null"),
            ));
        }
        if self.rope_scaling.is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::field(
                "rope_scaling",
                format!("RoPE scaling is not supported ({} uses none)", self.model),
            ));
        }
        Ok(())
    }
}

/// `bos_token_id`, `pad_token_id` and every `eos_token_id` must be ids of the vocabulary.
fn check_special_ids(
    vocab_size: usize,
    bos: Option<i64>,
    pad: Option<i64>,
    eos: Option<&OneOrMany<i64>>,
) -> Result<(), ConfigError> {
    let eos = eos.map(|e| e.to_vec()).unwrap_or_default();
    let ids = [("bos_token_id", bos), ("pad_token_id", pad)]
        .into_iter()
        .chain(eos.into_iter().map(|e| ("eos_token_id", Some(e))));
    for (name, id) in ids {
        if let Some(id) = id
            && !(0..vocab_size as i64).contains(&id)
        {
            return Err(ConfigError::field(
                name,
                format!("{id} is not a token id of the vocabulary of {vocab_size}"),
            ));
        }
    }
    Ok(())
}

/// `x > 0` (false for NaN).
pub(crate) fn positive(x: f64) -> bool {
    x > 0.0
}

/// Every layer's attention kind when a config does not list them: every `every`-th layer
/// global (HF's default: Gemma 3 every sixth, Gemma 3n every fifth), the rest sliding.
pub(crate) fn every_nth_global(num_layers: usize, every: usize) -> Vec<LayerType> {
    (0..num_layers)
        .map(|i| {
            if (i + 1) % every == 0 {
                LayerType::Full
            } else {
                LayerType::Sliding
            }
        })
        .collect()
}

/// RoPE base θ for (sliding, full) layers: `rope_parameters.{sliding,full}_attention.rope_theta`
/// (transformers 5) over the legacy `rope_local_base_freq`/`rope_theta` (`local`, `global`). A
/// `rope_type` other than `"default"`, a θ that is not a number or not positive is refused,
/// naming the field.
pub(crate) fn rope_thetas(
    parameters: Option<&Value>,
    local: f64,
    global: f64,
) -> Result<(f64, f64), ConfigError> {
    let (mut sliding, mut full) = (local, global);
    if let Some(p) = parameters.filter(|p| !p.is_null()) {
        for (kind, slot) in [
            ("sliding_attention", &mut sliding),
            ("full_attention", &mut full),
        ] {
            let Some(entry) = p.get(kind) else { continue };
            if let Some(t) = entry.get("rope_type").and_then(|t| t.as_str())
                && t != "default"
            {
                return Err(ConfigError::field(
                    format!("rope_parameters.{kind}.rope_type"),
                    format!("`{t}` is not supported (only \"default\")"),
                ));
            }
            if let Some(theta) = entry.get("rope_theta") {
                *slot = theta.as_f64().ok_or_else(|| {
                    ConfigError::field(
                        format!("rope_parameters.{kind}.rope_theta"),
                        "must be a number",
                    )
                })?;
            }
        }
    }
    for (name, v) in [("rope_local_base_freq", sliding), ("rope_theta", full)] {
        if !(positive(v) && v.is_finite()) {
            return Err(ConfigError::field(name, format!("{v} must be positive")));
        }
    }
    Ok((sliding, full))
}
