//! Chunked local self-attention with relative position embeddings (HF `Gemma3nAudioAttention`),
//! written as a dense band: query `t` sees keys `j` with `−right ≤ t − j ≤ left − 1`.

use automodel_core::Backend;
use automodel_core::init::{Init, Initializer};
use automodel_core::nn::{Linear, softcap};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::softplus;
use burn::tensor::{DType, Int, TensorData};

use crate::config::Gemma3nAudioConfig;

/// Queries, keys and values with a per-dimension learned query scale and a projected sinusoidal
/// relative-position term.
#[derive(Module, Debug)]
pub struct LocalAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub per_dim_scale: Param<Tensor<B, 1>>,
    pub relative_position_embedding: RelativePositionEmbedding<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub chunk: usize,
    #[module(skip)]
    pub max_past: usize,
    #[module(skip)]
    pub max_future: usize,
    #[module(skip)]
    pub logit_cap: f64,
}

/// HF `Gemma3nAudioRelativePositionEmbedding`: a projection of sinusoidal relative positions.
#[derive(Module, Debug)]
pub struct RelativePositionEmbedding<B: Backend> {
    pub pos_proj: Linear<B>,
}

impl<B: Backend> LocalAttention<B> {
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nAudioConfig) -> Self {
        let h = cfg.hidden_size;
        Self {
            q_proj: Linear::new(init, h, h),
            k_proj: Linear::new(init, h, h),
            v_proj: Linear::new(init, h, h),
            per_dim_scale: init.param([cfg.head_dim()], Init::Zeros),
            relative_position_embedding: RelativePositionEmbedding {
                pos_proj: Linear::new(init, h, h),
            },
            num_heads: cfg.conf_num_attention_heads,
            chunk: cfg.conf_attention_chunk_size,
            max_past: cfg.conf_attention_context_left.saturating_sub(1),
            max_future: cfg.conf_attention_context_right,
            logit_cap: cfg.conf_attention_logit_cap,
        }
    }

    /// `x` `[B, T, H]`, `padding` `[B][T]` (true = padded frame) → `[B, T, H]` (heads concatenated).
    pub fn forward(&self, x: Tensor<B, 3>, padding: &[Vec<bool>]) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let (n, d) = (self.num_heads, h / self.num_heads);
        let device = x.device();
        let dtype = x.dtype();
        let (p, r) = (self.max_past, self.max_future);

        // q · (d^-½ / softplus(0)) · softplus(per_dim_scale); the constant as HF's float32 buffer.
        let ln2_f32 = std::f32::consts::LN_2 as f64;
        let q_scale = ((d as f64).powf(-0.5) * (1.0 / ln2_f32)) as f32;
        let sp = softplus(self.per_dim_scale.val(), 1.0).reshape([1, 1, 1, d]);
        let q = (self.q_proj.forward(x.clone()).reshape([b, t, n, d]) * q_scale as f64) * sp;
        let q = q.swap_dims(1, 2); // [B, N, T, D]
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, t, n, d])
            .swap_dims(1, 2);
        let v = self.v_proj.forward(x).reshape([b, t, n, d]).swap_dims(1, 2);

        // Relative positions d = t − j for d = p, p−1, …, −r: sinusoid in float32 → pos_proj.
        let rel: Vec<i64> = (0..=(p + r) as i64).map(|i| p as i64 - i).collect();
        let pos = self.relative_position_embedding.pos_proj.forward(
            timing_signal::<B>(&rel, h, &device)
                .cast(dtype)
                .unsqueeze::<3>(),
        );
        let pos = pos
            .reshape([p + r + 1, n, d])
            .permute([1, 2, 0])
            .unsqueeze::<4>(); // [1, N, D, P+R+1]

        let ac = q.clone().matmul(k.swap_dims(2, 3)); // [B, N, T, T]
        let bd_table = q.matmul(pos.expand([b, n, d, p + r + 1])); // [B, N, T, P+R+1]
        // column of bd_table for (t, j): index of d = t − j in `rel`, i.e. p − (t − j)
        let mut idx = Vec::with_capacity(t * t);
        for ti in 0..t {
            for j in 0..t {
                let rel = ti as i64 - j as i64;
                idx.push((p as i64 - rel).clamp(0, (p + r) as i64));
            }
        }
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [t, t]), &device)
            .unsqueeze::<4>()
            .expand([b, n, t, t]);
        let bd = bd_table.gather(3, idx);
        let logits = softcap(ac + bd, self.logit_cap).cast(DType::F32);

        // Masks: in-band and real key → logit; in the query block's context but invalid →
        // most-negative float (HF's `where`); outside the context → excluded.
        let w = self.chunk;
        let mut valid = Vec::with_capacity(b * t * t);
        let mut in_ctx = Vec::with_capacity(b * t * t);
        let mut outside = Vec::with_capacity(t);
        for ti in 0..t {
            let start = (ti / w * w) as i64 - p as i64;
            let end = (ti / w * w + w - 1 + r) as i64;
            outside.push(((0 - start).max(0) + (end - (t as i64 - 1)).max(0)) as f32);
        }
        for pad in padding {
            for ti in 0..t {
                let start = (ti / w * w) as i64 - p as i64;
                let end = (ti / w * w + w - 1 + r) as i64;
                for (j, &pj) in pad.iter().enumerate().take(t) {
                    let rel = ti as i64 - j as i64;
                    valid.push(rel <= p as i64 && -rel <= r as i64 && !pj);
                    in_ctx.push((start..=end).contains(&(j as i64)));
                }
            }
        }
        let valid = Tensor::<B, 4, Bool>::from_data(TensorData::new(valid, [b, 1, t, t]), &device)
            .expand([b, n, t, t]);
        let in_ctx =
            Tensor::<B, 4, Bool>::from_data(TensorData::new(in_ctx, [b, 1, t, t]), &device)
                .expand([b, n, t, t]);
        let logits = logits
            .mask_fill(valid.bool_not(), f32::MIN)
            .mask_fill(in_ctx.bool_not(), f32::NEG_INFINITY);
        // softmax over the context; context positions outside the sequence (zero values, masked)
        // only add to the denominator, which matters for queries whose whole window is padding.
        let m = logits.clone().max_dim(3);
        let e = (logits - m.clone()).exp();
        let n_out = Tensor::<B, 1>::from_data(TensorData::new(outside, [t]), (&device, DType::F32))
            .reshape([1, 1, t, 1]);
        let denom = e.clone().sum_dim(3) + n_out * (m.neg() + f32::MIN as f64).exp();
        let probs = (e / denom).cast(dtype);
        probs.matmul(v).swap_dims(1, 2).reshape([b, t, h])
    }
}

/// `[sin(d·inv_ts), cos(d·inv_ts)]` for positions `d` with `h/2` timescales between 1 and 10⁴,
/// in float32 as HF computes it: `[len, h]`.
pub fn timing_signal<B: Backend>(positions: &[i64], h: usize, device: &B::Device) -> Tensor<B, 2> {
    let n = h / 2;
    let inc = (1.0e4f64).ln() / (n.saturating_sub(1).max(1)) as f64;
    let inv: Vec<f32> = (0..n).map(|i| (i as f32 * -(inc as f32)).exp()).collect();
    let mut data = Vec::with_capacity(positions.len() * h);
    for &p in positions {
        let st: Vec<f32> = inv.iter().map(|&f| p as f32 * f).collect();
        data.extend(st.iter().map(|&a| (a as f64).sin() as f32));
        data.extend(st.iter().map(|&a| (a as f64).cos() as f32));
    }
    Tensor::from_data(
        TensorData::new(data, [positions.len(), h]),
        (device, DType::F32),
    )
}
