//! Self-attention: GQA, q/k/v RMS norms, split-half RoPE, scale 1.0, sliding or global masks, and
//! KV sharing.

use std::collections::HashMap;

use automodel_core::init::ParamSource;
use automodel_core::nn::rope::{RopeTables, apply_rope};
use automodel_core::nn::{Linear, RmsNorm};
use automodel_core::params::{ParamList, join};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, TensorData};

use crate::cache::KvCache;
use crate::config::{Gemma3nTextConfig, KvSharing, LayerType};
use crate::error::TextError;

/// Per-forward inputs shared by every layer of one attention type.
#[derive(Debug, Clone)]
pub struct AttentionInputs<B: Backend> {
    /// RoPE tables `[B, T, 1, D]` for the current tokens.
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    /// `[B, 1, T, S]`, true = masked.
    pub mask: Tensor<B, 4, Bool>,
}

/// Everything one forward call's attention needs, shared by the Gemma 3 and Gemma 3n decoders:
/// the checked padding mask and position ids of the new tokens, and RoPE tables and masks for
/// each layer type (global: causal over everything; sliding: causal within `sliding_window`,
/// over the keys a cache still holds).
#[derive(Debug, Clone)]
pub struct StepInputs<B: Backend> {
    pub by_type: HashMap<LayerType, AttentionInputs<B>>,
    /// Attention mask of the new tokens (1 = real token), `[B][T]`.
    pub new_mask: Vec<Vec<i64>>,
    /// Position ids of the new tokens, `[B][T]`.
    pub positions: Vec<Vec<i64>>,
}

/// The RoPE and window settings [`StepInputs::new`] needs from a config.
#[derive(Debug, Clone, Copy)]
pub struct AttentionGeometry {
    /// RoPE bases: (sliding layers, global layers).
    pub rope_thetas: (f64, f64),
    pub head_dim: usize,
    pub sliding_window: usize,
}

impl<B: Backend> StepInputs<B> {
    /// For `[b, t]` new tokens continuing `cache` (positions default to `past..past + t`).
    /// Mask and position rows must match the batch; a cache must hold the same batch.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: usize,
        t: usize,
        attention_mask: Option<&[Vec<i64>]>,
        position_ids: Option<&[Vec<i64>]>,
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
        let rows =
            |name: &str, m: Option<&[Vec<i64>]>| -> Result<Option<Vec<Vec<i64>>>, TextError> {
                match m {
                    Some(m) if m.len() != b || m.iter().any(|r| r.len() != t) => Err(
                        TextError::Input(format!("{name} must be [{b}, {t}] like the inputs")),
                    ),
                    m => Ok(m.map(|m| m.to_vec())),
                }
            };
        let new_mask =
            rows("attention_mask", attention_mask)?.unwrap_or_else(|| vec![vec![1; t]; b]);
        let past = cache.map_or(0, |c| c.seq_len());
        if let Some(cb) = cache.and_then(|c| c.batch_size())
            && cb != b
        {
            return Err(TextError::Input(format!(
                "the cache holds a batch of {cb}, the inputs have {b} rows"
            )));
        }
        let positions = rows("position_ids", position_ids)?
            .unwrap_or_else(|| vec![(past as i64..(past + t) as i64).collect(); b]);
        // the full padding history: cached positions, then the new ones
        let padding: Vec<Vec<i64>> = match cache {
            Some(c) if past > 0 => c
                .mask
                .iter()
                .zip(&new_mask)
                .map(|(old, new)| [old.as_slice(), new].concat())
                .collect(),
            _ => new_mask.clone(),
        };
        let AttentionGeometry {
            rope_thetas: (theta_local, theta_global),
            head_dim,
            sliding_window,
        } = geometry;
        let mut by_type = HashMap::new();
        for (ty, theta) in [
            (LayerType::Sliding, theta_local),
            (LayerType::Full, theta_global),
        ] {
            let (cos, sin) =
                RopeTables::new(theta, head_dim).cos_sin::<B>(&positions, device, dtype);
            let (key_start, window) = match ty {
                LayerType::Full => (0, None),
                // a cache keeps only the last window − 1 keys of sliding layers
                LayerType::Sliding if cache.is_some() => (
                    past.saturating_sub(sliding_window - 1),
                    Some(sliding_window),
                ),
                LayerType::Sliding => (0, Some(sliding_window)),
            };
            let mask = build_mask::<B>(&padding, past, t, key_start, window, device);
            by_type.insert(ty, AttentionInputs { cos, sin, mask });
        }
        Ok(Self {
            by_type,
            new_mask,
            positions,
        })
    }

    /// Record the new tokens' mask and last positions in `cache` once every layer has run.
    pub fn commit(self, cache: &mut KvCache<B>) {
        cache.last_position = self
            .positions
            .iter()
            .map(|r| *r.last().expect("new() refuses t = 0"))
            .collect();
        if cache.seq_len() == 0 {
            cache.mask = self.new_mask;
        } else {
            for (old, new) in cache.mask.iter_mut().zip(self.new_mask) {
                old.extend(new);
            }
        }
    }
}

/// K/V lent by `Store` layers to `Reuse` layers during one forward, by attention type.
pub type SharedKv<B> = HashMap<LayerType, (Tensor<B, 4>, Tensor<B, 4>)>;

/// HF `Gemma3nTextAttention`. KV-reusing layers have no k/v projections.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Option<Linear<B>>,
    pub v_proj: Option<Linear<B>>,
    pub o_proj: Linear<B>,
    pub q_norm: RmsNorm<B>,
    pub k_norm: Option<RmsNorm<B>>,
    pub v_norm: RmsNorm<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
    #[module(skip)]
    pub layer_idx: usize,
    #[module(skip)]
    pub layer_type: LayerType,
    #[module(skip)]
    pub sharing: KvSharing,
}

impl<B: Backend> Attention<B> {
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        cfg: &Gemma3nTextConfig,
        layer_idx: usize,
    ) -> Self {
        let (h, nh, nkv, d, eps) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
        );
        let sharing = cfg.kv_sharing().expect("validated")[layer_idx];
        let own = !matches!(sharing, KvSharing::Reuse { .. });
        Self {
            q_proj: Linear::new(src, &join(name, "q_proj"), h, nh * d),
            k_proj: own.then(|| Linear::new(src, &join(name, "k_proj"), h, nkv * d)),
            v_proj: own.then(|| Linear::new(src, &join(name, "v_proj"), h, nkv * d)),
            o_proj: Linear::new(src, &join(name, "o_proj"), nh * d, h),
            q_norm: RmsNorm::new(src, &join(name, "q_norm"), d, eps, false),
            k_norm: own.then(|| RmsNorm::new(src, &join(name, "k_norm"), d, eps, false)),
            v_norm: RmsNorm::without_scale(eps),
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            layer_idx,
            layer_type: cfg.layer_types()[layer_idx],
            sharing,
        }
    }

    /// `x`: normed hidden states `[B, T, H]` → `[B, T, H]` (after `o_proj`).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        inputs: &AttentionInputs<B>,
        shared: &mut SharedKv<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_norm
            .forward(self.q_proj.forward(x.clone()).reshape([b, t, nh, d]));
        let q = apply_rope(q, &inputs.cos, &inputs.sin).swap_dims(1, 2);

        let (k, v) = match self.sharing {
            KvSharing::Reuse { source } => {
                shared.get(&self.layer_type).cloned().unwrap_or_else(|| {
                    panic!(
                        "layer {} reuses layer {source}'s K/V, which has not run",
                        self.layer_idx
                    )
                })
            }
            _ => {
                let k_proj = self.k_proj.as_ref().expect("own K/V");
                let v_proj = self.v_proj.as_ref().expect("own K/V");
                let k_norm = self.k_norm.as_ref().expect("own K/V");
                let k = k_norm.forward(k_proj.forward(x.clone()).reshape([b, t, nkv, d]));
                let k = apply_rope(k, &inputs.cos, &inputs.sin).swap_dims(1, 2);
                let v = self
                    .v_norm
                    .forward(v_proj.forward(x).reshape([b, t, nkv, d]))
                    .swap_dims(1, 2);
                let (k, v) = match cache {
                    Some(c) => c.update(self.layer_idx, k, v),
                    None => (k, v),
                };
                if self.sharing == KvSharing::Store {
                    shared.insert(self.layer_type, (k.clone(), v.clone()));
                }
                (k, v)
            }
        };
        let out = attend(q, k, v, &inputs.mask, nh / nkv);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, nh * d]))
    }

    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        self.q_proj.params(&join(name, "q_proj"), out);
        if let Some(k) = &self.k_proj {
            k.params(&join(name, "k_proj"), out);
        }
        if let Some(v) = &self.v_proj {
            v.params(&join(name, "v_proj"), out);
        }
        self.o_proj.params(&join(name, "o_proj"), out);
        self.q_norm.params(&join(name, "q_norm"), out);
        if let Some(k) = &self.k_norm {
            k.params(&join(name, "k_norm"), out);
        }
    }
}

/// Eager attention with scale 1.0: `softmax_f32(q·kᵀ + mask)·v`; `q` `[B, NH, T, D]`, `k`/`v`
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
/// `past..past+t` over keys at indices `key_start..past+t`: a key is visible iff it is not after
/// the query, not padding, and — with a window `w` — among the `w` latest (`k > q − w`).
pub fn build_mask<B: Backend>(
    padding: &[Vec<i64>],
    past: usize,
    t: usize,
    key_start: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let b = padding.len();
    let total = past + t;
    let s = total - key_start;
    let mut data = Vec::with_capacity(b * t * s);
    for row in padding {
        for i in 0..t {
            let q = past + i;
            for (kk, &real) in row.iter().enumerate().take(total).skip(key_start) {
                let visible = kk <= q && real != 0 && window.is_none_or(|w| kk + w > q);
                data.push(!visible);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, t, s]), device)
}
