//! Config pieces both Gemma decoders share: layer kinds, KV-sharing roles and HF's `int` or
//! list-of-`int` fields.

use automodel_core::config::{ConfigError, check_max, limits};
use serde::{Deserialize, Serialize};

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

/// The sizes every decoder config declares, and its special ids: [`DecoderSizes::check`] holds
/// them to [`limits`] and the ids to the vocabulary.
pub(crate) struct DecoderSizes<'a> {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub sliding_window: usize,
    pub bos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<&'a OneOrMany<i64>>,
}

impl DecoderSizes<'_> {
    /// Every size within its bound (then `extra`'s), every special id in the vocabulary.
    pub(crate) fn check(&self, extra: &[(&str, usize, usize)]) -> Result<(), ConfigError> {
        let mut fields = vec![
            ("vocab_size", self.vocab_size, limits::VOCAB),
            ("hidden_size", self.hidden_size, limits::HIDDEN),
            (
                "intermediate_size",
                self.intermediate_size,
                limits::INTERMEDIATE,
            ),
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
        fields.extend_from_slice(extra);
        check_max(&fields)?;
        check_special_ids(
            self.vocab_size,
            self.bos_token_id,
            self.pad_token_id,
            self.eos_token_id,
        )
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
    parameters: Option<&serde_json::Value>,
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
