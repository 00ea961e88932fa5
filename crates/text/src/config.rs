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
