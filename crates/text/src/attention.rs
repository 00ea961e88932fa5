//! Self-attention shared by Gemma 3 and Gemma 3n: GQA, q/k(/v) RMS norms, split-half RoPE,
//! sliding or global masks, optional KV sharing; and the per-forward inputs every layer of one
//! attention type shares (RoPE tables and masks, built on the device from tensors).

use std::collections::HashMap;

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::rope::{RopeForHeads, RopeTables};
use automodel_core::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Int};

use crate::cache::KvCache;
use crate::config::{KvSharing, LayerType};
use crate::error::TextError;

/// Per-forward inputs shared by every layer of one attention type.
#[derive(Debug, Clone)]
pub struct AttentionInputs<B: Backend> {
    /// RoPE tables for the current tokens, laid out for the queries' heads `[B, T, NH, D]`
    pub rope_q: RopeForHeads<B>,
    /// and for the keys' heads `[B, T, NKV, D]`.
    pub rope_k: RopeForHeads<B>,
    /// `[B, 1, T, S]`, true = masked.
    pub mask: Tensor<B, 4, Bool>,
}

/// The RoPE, head and window settings [`StepInputs::new`] needs from a config.
#[derive(Debug, Clone, Copy)]
pub struct AttentionGeometry {
    /// RoPE bases: (sliding layers, global layers).
    pub rope_thetas: (f64, f64),
    pub head_dim: usize,
    /// Query heads and key/value heads (the RoPE tables are laid out for each).
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub sliding_window: usize,
}

/// Everything one forward call's attention needs: the new tokens' mask and position ids, and RoPE
/// tables and masks for each layer type (global: causal over everything; sliding: causal within
/// `sliding_window`, over the keys a cache still holds). All of it is built on the device.
#[derive(Debug, Clone)]
pub struct StepInputs<B: Backend> {
    pub by_type: HashMap<LayerType, AttentionInputs<B>>,
    /// Attention mask of the new tokens `[B, T]`: 0 = padding, otherwise the segment the token
    /// belongs to (1 for an ordinary batch; packed batches number their samples 1, 2, …).
    pub new_mask: Tensor<B, 2, Int>,
    /// Position ids of the new tokens `[B, T]`.
    pub positions: Tensor<B, 2, Int>,
}

impl<B: Backend> StepInputs<B> {
    /// For `[b, t]` new tokens continuing `cache` (positions default to `past..past + t`).
    /// Mask and positions must be `[b, t]`; a cache must hold the same batch.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: usize,
        t: usize,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        cache: Option<&KvCache<B>>,
        geometry: AttentionGeometry,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        if b == 0 || t == 0 {
            return Err(TextError::Input(format!(
                "the inputs must hold at least one token; got [{b}, {t}]"
            )));
        }
        for (name, m) in [
            ("attention_mask", &attention_mask),
            ("position_ids", &position_ids),
        ] {
            if let Some(m) = m
                && m.dims() != [b, t]
            {
                return Err(TextError::Input(format!(
                    "{name} must be [{b}, {t}] like the inputs, got {:?}",
                    m.dims()
                )));
            }
        }
        let new_mask = attention_mask.unwrap_or_else(|| Tensor::ones([b, t], device));
        let past = cache.map_or(0, |c| c.seq_len());
        if let Some(cb) = cache.and_then(|c| c.batch_size())
            && cb != b
        {
            return Err(TextError::Input(format!(
                "the cache holds a batch of {cb}, the inputs have {b} rows"
            )));
        }
        let positions = match position_ids {
            Some(p) => p,
            None => match cache.and_then(|c| c.next_positions()) {
                Some(next) => {
                    next.expand([b, t]) + Tensor::arange(0..t as i64, device).unsqueeze::<2>()
                }
                None => Tensor::<B, 1, Int>::arange(0..t as i64, device)
                    .unsqueeze::<2>()
                    .expand([b, t]),
            },
        };
        // the full padding history: cached positions, then the new ones
        let padding = match cache.and_then(|c| c.mask.clone()) {
            Some(old) if past > 0 => Tensor::cat(vec![old, new_mask.clone()], 1),
            _ => new_mask.clone(),
        };
        let AttentionGeometry {
            rope_thetas: (theta_local, theta_global),
            head_dim,
            num_heads,
            num_kv_heads,
            sliding_window,
        } = geometry;
        let mut by_type = HashMap::new();
        for (ty, theta) in [
            (LayerType::Sliding, theta_local),
            (LayerType::Full, theta_global),
        ] {
            let (cos, sin) = RopeTables::new(theta, head_dim).cos_sin(positions.clone(), dtype);
            let rope_q = RopeForHeads::new(&cos, &sin, num_heads);
            let rope_k = if num_kv_heads == num_heads {
                rope_q.clone()
            } else {
                RopeForHeads::new(&cos, &sin, num_kv_heads)
            };
            let (key_start, window) = match ty {
                LayerType::Full => (0, None),
                // a cache keeps only the last window − 1 keys of sliding layers
                LayerType::Sliding if cache.is_some() => (
                    past.saturating_sub(sliding_window - 1),
                    Some(sliding_window),
                ),
                LayerType::Sliding => (0, Some(sliding_window)),
            };
            let mask = build_mask(padding.clone(), past, t, key_start, window);
            by_type.insert(
                ty,
                AttentionInputs {
                    rope_q,
                    rope_k,
                    mask,
                },
            );
        }
        Ok(Self {
            by_type,
            new_mask,
            positions,
        })
    }

    /// What the layer whose attention is `attn` works with: this step's inputs for its attention
    /// type, the K/V the layers share, and the cache.
    pub fn layer<'a>(
        &'a self,
        attn: &Attention<B>,
        shared: &'a mut SharedKv<B>,
        cache: Option<&'a mut KvCache<B>>,
    ) -> LayerInputs<'a, B> {
        LayerInputs {
            attention: &self.by_type[&attn.layer_type()],
            shared,
            cache,
        }
    }

    /// Record the new tokens' mask and positions in `cache` once every layer has run.
    pub fn commit(self, cache: &mut KvCache<B>) {
        let t = self.positions.dims()[1];
        cache.last_position = Some(self.positions.narrow(1, t - 1, 1));
        cache.mask = Some(match cache.mask.take() {
            Some(old) => Tensor::cat(vec![old, self.new_mask], 1),
            None => self.new_mask,
        });
    }
}

/// K/V lent by `Store` layers to `Reuse` layers during one forward, by attention type.
pub type SharedKv<B> = HashMap<LayerType, (Tensor<B, 4>, Tensor<B, 4>)>;

/// What one layer's attention works with besides its hidden states ([`StepInputs::layer`]).
pub struct LayerInputs<'a, B: Backend> {
    /// The step's RoPE tables and mask for the layer's attention type.
    pub attention: &'a AttentionInputs<B>,
    /// The K/V `Store` layers lend to `Reuse` layers.
    pub shared: &'a mut SharedKv<B>,
    /// The decoding cache, when there is one.
    pub cache: Option<&'a mut KvCache<B>>,
}

/// The shape and behaviour of one attention layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Query scale after RoPE (`query_pre_attn_scalar^-½` for Gemma 3); `None` = 1 (Gemma 3n,
    /// whose q and k are RMS-normed).
    pub query_scale: Option<f64>,
    pub rms_norm_eps: f64,
    /// Gemma 1–3 norms scale by `1 + w`; Gemma 3n's by `w`.
    pub norm_plus_one: bool,
    /// Gemma 3n RMS-normalises the values (no learned scale).
    pub v_norm: bool,
    pub layer_idx: usize,
    pub layer_type: LayerType,
    pub sharing: KvSharing,
}

/// HF `Gemma3Attention` / `Gemma3nTextAttention`. KV-reusing layers have no k/v projections.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Option<Linear<B>>,
    pub v_proj: Option<Linear<B>>,
    pub o_proj: Linear<B>,
    pub q_norm: RmsNorm<B>,
    pub k_norm: Option<RmsNorm<B>>,
    pub v_norm: Option<RmsNorm<B>>,
    #[module(skip)]
    pub spec: AttentionSpec,
}

impl<B: Backend> Attention<B> {
    pub fn new(init: &Initializer<B>, spec: AttentionSpec) -> Self {
        let AttentionSpec {
            hidden_size: h,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            rms_norm_eps: eps,
            norm_plus_one: plus,
            ..
        } = spec;
        let own = !matches!(spec.sharing, KvSharing::Reuse { .. });
        Self {
            q_proj: Linear::new(init, h, nh * d),
            k_proj: own.then(|| Linear::new(init, h, nkv * d)),
            v_proj: own.then(|| Linear::new(init, h, nkv * d)),
            o_proj: Linear::new(init, nh * d, h),
            q_norm: RmsNorm::new(init, d, eps, plus),
            k_norm: own.then(|| RmsNorm::new(init, d, eps, plus)),
            v_norm: spec.v_norm.then(|| RmsNorm::without_scale(eps)),
            spec,
        }
    }

    /// The layer's attention kind.
    pub fn layer_type(&self) -> LayerType {
        self.spec.layer_type
    }

    /// `x`: normed hidden states `[B, T, H]` → `[B, T, H]` (after `o_proj`).
    pub fn forward(&self, x: Tensor<B, 3>, layer: LayerInputs<'_, B>) -> Tensor<B, 3> {
        let LayerInputs {
            attention: inputs,
            shared,
            cache,
        } = layer;
        let [b, t, _] = x.dims();
        let s = &self.spec;
        let (nh, nkv, d) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let q = self
            .q_norm
            .forward(self.q_proj.forward(x.clone()).reshape([b, t, nh, d]));
        let mut q = inputs.rope_q.apply(q).swap_dims(1, 2);
        if let Some(scale) = s.query_scale {
            q = q * scale;
        }
        let (k, v) = match (&self.k_proj, &self.v_proj, &self.k_norm) {
            (Some(k_proj), Some(v_proj), Some(k_norm)) => {
                let k = k_norm.forward(k_proj.forward(x.clone()).reshape([b, t, nkv, d]));
                let k = inputs.rope_k.apply(k).swap_dims(1, 2);
                let mut v = v_proj.forward(x).reshape([b, t, nkv, d]);
                if let Some(n) = &self.v_norm {
                    v = n.forward(v);
                }
                let v = v.swap_dims(1, 2);
                let (k, v) = match cache {
                    Some(c) => c.update(s.layer_idx, k, v),
                    None => (k, v),
                };
                if s.sharing == KvSharing::Store {
                    shared.insert(s.layer_type, (k.clone(), v.clone()));
                }
                (k, v)
            }
            // A reusing layer: the config validation guarantees its source layer (an earlier
            // layer of the same type) has run.
            _ => shared.get(&s.layer_type).cloned().unwrap_or_else(|| {
                panic!(
                    "layer {} reuses K/V that no earlier layer stored ({:?})",
                    s.layer_idx, s.sharing
                )
            }),
        };
        let out = attend(q, k, v, &inputs.mask, nh / nkv);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, nh * d]))
    }
}

/// Eager attention: `softmax_f32(q·kᵀ + mask)·v`; `q` `[B, NH, T, D]` (already scaled), `k`/`v`
/// `[B, NKV, S, D]` with each KV head serving `groups` query heads.
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
    groups: usize,
) -> Tensor<B, 4> {
    let [b, nh, t, _d] = q.dims();
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    let s = k.dims()[2];
    let dtype = q.dtype();
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32);
    let scores = scores.mask_fill(mask.clone().expand([b, nh, t, s]), f32::MIN);
    let probs = softmax(scores, 3).cast(dtype);
    probs.matmul(v)
}

/// `[B, NKV, S, D]` → `[B, NKV·groups, S, D]` (each KV head repeated for its query heads).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, nkv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, groups, s, d])
        .reshape([b, nkv * groups, s, d])
}

/// The attention mask `[B, 1, T, S]` (true = masked) for `t` queries at absolute indices
/// `past..past+t` over keys at indices `key_start..past+t`, from the padding history `[B, past+t]`
/// (0 = padding, otherwise a segment id). A key is visible iff it is not after the query, not
/// padding, in the query's segment (a padding query sees every earlier real key, as HF's), and —
/// with a window `w` — among the `w` latest (`k > q − w`).
pub fn build_mask<B: Backend>(
    padding: Tensor<B, 2, Int>,
    past: usize,
    t: usize,
    key_start: usize,
    window: Option<usize>,
) -> Tensor<B, 4, Bool> {
    let device = padding.device();
    let b = padding.dims()[0];
    let total = past + t;
    let s = total - key_start;
    let shape = [b, 1, t, s];
    let q = Tensor::<B, 1, Int>::arange(past as i64..total as i64, &device)
        .reshape([1, 1, t, 1])
        .expand(shape);
    let k = Tensor::<B, 1, Int>::arange(key_start as i64..total as i64, &device)
        .reshape([1, 1, 1, s])
        .expand(shape);
    let mut visible = k.clone().lower_equal(q.clone());
    if let Some(w) = window {
        visible = visible.bool_and((k + w as i64).greater(q));
    }
    let key_seg = padding
        .clone()
        .narrow(1, key_start, s)
        .reshape([b, 1, 1, s])
        .expand(shape);
    let query_seg = padding
        .narrow(1, past, t)
        .reshape([b, 1, t, 1])
        .expand(shape);
    let same = query_seg
        .clone()
        .equal(key_seg.clone())
        .bool_or(query_seg.equal_elem(0));
    visible
        .bool_and(key_seg.not_equal_elem(0))
        .bool_and(same)
        .bool_not()
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = automodel_core::CpuBackend;

    fn rows(m: Tensor<B, 4, Bool>) -> Vec<Vec<u8>> {
        let [b, _, t, s] = m.dims();
        let v = m.into_data().to_vec::<bool>().unwrap();
        (0..b * t)
            .map(|r| v[r * s..(r + 1) * s].iter().map(|&x| !x as u8).collect())
            .collect()
    }

    #[test]
    fn masks_are_causal_windowed_padded_and_never_cross_segments() {
        let dev = Default::default();
        // one padded row, one packed row of two samples
        let pad = Tensor::<B, 2, Int>::from_ints([[0, 1, 1, 1, 1], [1, 1, 1, 2, 2]], &dev);
        let m = rows(build_mask(pad.clone(), 0, 5, 0, None));
        assert_eq!(
            m[0],
            [0, 0, 0, 0, 0],
            "a padding query sees no earlier real key"
        );
        assert_eq!(m[4], [0, 1, 1, 1, 1]);
        assert_eq!(
            m[7],
            [1, 1, 1, 0, 0],
            "row 2, position 2: its own sample only"
        );
        assert_eq!(m[8], [0, 0, 0, 1, 0], "the second sample starts fresh");
        assert_eq!(m[9], [0, 0, 0, 1, 1]);
        let w = rows(build_mask(pad, 0, 5, 0, Some(2)));
        assert_eq!(w[4], [0, 0, 0, 1, 1]);
        // with a cache: 3 past keys of which the window keeps the last 1, 2 new queries
        let pad = Tensor::<B, 2, Int>::from_ints([[1, 1, 1, 1, 1]], &dev);
        let c = rows(build_mask(pad, 3, 2, 2, Some(2)));
        assert_eq!(c, [vec![1, 1, 0], vec![0, 1, 1]]);
    }
}
