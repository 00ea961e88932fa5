//! Greedy decoding with the KV cache.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use crate::cache::KvCache;
use crate::error::TextError;
use crate::model::{ForwardOptions, Gemma3nForCausalLM};

/// Result of [`Gemma3nForCausalLM::generate_greedy`].
#[derive(Debug, Clone)]
pub struct GreedyOutput<B: Backend> {
    /// Prompt plus generated ids, per row.
    pub sequences: Vec<Vec<i64>>,
    /// Only the generated ids, per row (finished rows are filled with `pad_token_id`).
    pub generated: Vec<Vec<i64>>,
    /// Logits `[B, V]` that chose each generated token.
    pub step_logits: Vec<Tensor<B, 2>>,
}

/// Position ids HF `generate` derives from a (left-padded) mask: `cumsum(mask) − 1`, pads at 0.
pub fn positions_from_mask(mask: &[Vec<i64>]) -> Vec<Vec<i64>> {
    mask.iter()
        .map(|row| {
            let mut acc = 0i64;
            row.iter()
                .map(|&m| {
                    acc += m;
                    if m == 0 { 0 } else { acc - 1 }
                })
                .collect()
        })
        .collect()
}

impl<B: Backend> Gemma3nForCausalLM<B> {
    /// Greedy decoding of up to `max_new_tokens` after `prompt` (rows of equal length; use
    /// `attention_mask` with left padding for ragged prompts). A row stops at any id in `eos`;
    /// decoding stops when every row has. `on_step` sees each step's new ids.
    pub fn generate_greedy(
        &self,
        prompt: &[Vec<i64>],
        attention_mask: Option<&[Vec<i64>]>,
        max_new_tokens: usize,
        eos: &[i64],
        mut on_step: impl FnMut(&[i64]),
    ) -> Result<GreedyOutput<B>, TextError> {
        let b = prompt.len();
        let t = prompt.first().map_or(0, |r| r.len());
        if b == 0 || t == 0 || prompt.iter().any(|r| r.len() != t) {
            return Err(TextError::Input(
                "prompt must be a non-empty batch of equal-length rows".into(),
            ));
        }
        let device = self.model.embed_tokens.weight.device();
        let mask: Vec<Vec<i64>> = attention_mask
            .map(|m| m.to_vec())
            .unwrap_or_else(|| vec![vec![1; t]; b]);
        let positions = positions_from_mask(&mask);
        let pad = self.config().pad_token_id.unwrap_or(0);
        let mut cache = KvCache::new(self.config());
        let ids = ids_tensor::<B>(prompt, &device);
        let mut out = self.model.forward(
            ids,
            Some(&mask),
            Some(&positions),
            Some(&mut cache),
            ForwardOptions::default(),
        )?;
        let mut sequences = prompt.to_vec();
        let mut generated = vec![Vec::new(); b];
        let mut step_logits = Vec::new();
        let mut done = vec![false; b];
        for step in 0..max_new_tokens {
            let len = out.last_hidden_state.dims()[1];
            let last = out.last_hidden_state.narrow(1, len - 1, 1);
            let logits = self.lm_logits(last).reshape([b, self.config().vocab_size]);
            let next = argmax_rows(&logits);
            step_logits.push(logits);
            let next: Vec<i64> = next
                .iter()
                .zip(&done)
                .map(|(&n, &d)| if d { pad } else { n })
                .collect();
            for (r, &n) in next.iter().enumerate() {
                sequences[r].push(n);
                generated[r].push(n);
                done[r] |= eos.contains(&n);
            }
            on_step(&next);
            if done.iter().all(|d| *d) || step + 1 == max_new_tokens {
                break;
            }
            let pos: Vec<Vec<i64>> = cache.last_position.iter().map(|p| vec![p + 1]).collect();
            let ids = ids_tensor::<B>(&next.iter().map(|&n| vec![n]).collect::<Vec<_>>(), &device);
            let step_mask = vec![vec![1i64]; b];
            out = self.model.forward(
                ids,
                Some(&step_mask),
                Some(&pos),
                Some(&mut cache),
                ForwardOptions::default(),
            )?;
        }
        Ok(GreedyOutput {
            sequences,
            generated,
            step_logits,
        })
    }
}

/// Host ids `[B][T]` as an Int tensor.
pub fn ids_tensor<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = rows.len();
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

/// Index of the largest value of each row of `[B, V]` (first one on ties, as torch).
pub fn argmax_rows<B: Backend>(logits: &Tensor<B, 2>) -> Vec<i64> {
    let [b, v] = logits.dims();
    let data = logits
        .clone()
        .cast(burn::tensor::DType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    (0..b)
        .map(|r| {
            let row = &data[r * v..(r + 1) * v];
            let mut best = 0;
            for (i, x) in row.iter().enumerate() {
                if *x > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}
