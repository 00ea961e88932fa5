//! Config pieces both Gemma decoders share: layer kinds, KV-sharing roles and HF's `int` or
//! list-of-`int` fields.

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

/// `x > 0` (false for NaN).
pub(crate) fn positive(x: f64) -> bool {
    x > 0.0
}
