//! KV cache for decoding: full layers keep every key, sliding layers only their window.

use burn::prelude::*;

use crate::config::{Gemma3nTextConfig, KvSharing, LayerType};

/// Keys/values of one cache-owning layer, `[B, NKV, S, D]`.
#[derive(Debug, Clone)]
struct LayerKv<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

/// The decoding cache of a [`crate::Gemma3nTextModel`].
///
/// Only layers that compute their own K/V own an entry; KV-reusing layers read their source
/// layer's (post-update) K/V. A sliding layer keeps the last `sliding_window − 1` keys, which is
/// all the next token can see (HF `DynamicSlidingWindowLayer`). The cache also remembers the
/// attention mask and the position of every token seen so far.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
    windows: Vec<Option<usize>>,
    owners: Vec<bool>,
    /// Attention mask (1 = real token) of every position seen, per batch row.
    pub mask: Vec<Vec<i64>>,
    /// Position id of the last token seen, per batch row.
    pub last_position: Vec<i64>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `cfg`.
    pub fn new(cfg: &Gemma3nTextConfig) -> Self {
        let kv = cfg.kv_sharing().expect("validated config");
        let types = cfg.layer_types();
        Self {
            layers: vec![None; cfg.num_hidden_layers],
            windows: types
                .iter()
                .map(|t| {
                    if *t == LayerType::Sliding {
                        Some(cfg.sliding_window)
                    } else {
                        None
                    }
                })
                .collect(),
            owners: kv
                .iter()
                .map(|m| !matches!(m, KvSharing::Reuse { .. }))
                .collect(),
            mask: Vec::new(),
            last_position: Vec::new(),
        }
    }

    /// An empty cache for a plain decoder: one entry per layer, `Some(window)` for sliding layers.
    pub fn for_layers(windows: Vec<Option<usize>>) -> Self {
        let n = windows.len();
        Self {
            layers: vec![None; n],
            windows,
            owners: vec![true; n],
            mask: Vec::new(),
            last_position: Vec::new(),
        }
    }

    /// Number of tokens seen so far.
    pub fn seq_len(&self) -> usize {
        self.mask.first().map_or(0, |m| m.len())
    }

    /// Batch size, once known.
    pub fn batch_size(&self) -> Option<usize> {
        if self.mask.is_empty() {
            None
        } else {
            Some(self.mask.len())
        }
    }

    /// Number of layers holding an entry (KV-reusing layers never do).
    pub fn owned_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.is_some()).count()
    }

    /// Number of keys layer `layer` holds.
    pub fn layer_len(&self, layer: usize) -> usize {
        self.layers[layer].as_ref().map_or(0, |l| l.k.dims()[2])
    }

    /// Append `k`, `v` `[B, NKV, T, D]` for `layer` and return all keys/values the current tokens
    /// attend over (cached ones first). Sliding layers then keep only the last `window − 1`.
    pub fn update(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        assert!(
            self.owners[layer],
            "layer {layer} reuses another layer's K/V and owns no cache entry"
        );
        let (k_all, v_all) = match self.layers[layer].take() {
            None => (k, v),
            Some(old) => (
                Tensor::cat(vec![old.k, k], 2),
                Tensor::cat(vec![old.v, v], 2),
            ),
        };
        let len = k_all.dims()[2];
        let keep = match self.windows[layer] {
            Some(w) => len.min(w.saturating_sub(1)),
            None => len,
        };
        let stored = LayerKv {
            k: k_all.clone().narrow(2, len - keep, keep),
            v: v_all.clone().narrow(2, len - keep, keep),
        };
        self.layers[layer] = Some(stored);
        (k_all, v_all)
    }
}
