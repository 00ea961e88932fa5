//! KV cache for decoding: full layers keep every key, sliding layers only their window.

use automodel_core::Backend;
use burn::prelude::*;
use burn::tensor::Int;

/// Keys/values of one cache-owning layer, `[B, NKV, S, D]`.
#[derive(Debug, Clone)]
struct LayerKv<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

/// The decoding cache of a Gemma decoder.
///
/// Only layers that compute their own K/V own an entry; KV-reusing layers read their source
/// layer's (post-update) K/V. A sliding layer keeps the last `sliding_window − 1` keys, which is
/// all the next token can see (HF `DynamicSlidingWindowLayer`). The cache also keeps, on the
/// device, the attention mask of every token seen so far and the last position of each row.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
    windows: Vec<Option<usize>>,
    owners: Vec<bool>,
    /// Attention mask (0 = padding) of every position seen, `[B, S]`.
    pub mask: Option<Tensor<B, 2, Int>>,
    /// Position id of the last token seen, `[B, 1]`.
    pub last_position: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache: per layer `Some(window)` for sliding layers, and whether the layer owns
    /// K/V (KV-reusing layers do not).
    pub fn new(windows: Vec<Option<usize>>, owners: Vec<bool>) -> Self {
        assert_eq!(
            windows.len(),
            owners.len(),
            "one window and owner per layer"
        );
        Self {
            layers: vec![None; windows.len()],
            windows,
            owners,
            mask: None,
            last_position: None,
        }
    }

    /// Number of tokens seen so far.
    pub fn seq_len(&self) -> usize {
        self.mask.as_ref().map_or(0, |m| m.dims()[1])
    }

    /// Batch size, once known.
    pub fn batch_size(&self) -> Option<usize> {
        self.mask.as_ref().map(|m| m.dims()[0])
    }

    /// Position ids of the next token of each row, `[B, 1]`, once a token was seen.
    pub fn next_positions(&self) -> Option<Tensor<B, 2, Int>> {
        self.last_position.clone().map(|p| p + 1)
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
