//! Generation with the KV cache: greedy or sampled (temperature, top-k, top-p, seed), stop ids,
//! a token budget and a streaming callback.

use automodel_text::KvCache;
use automodel_text::generate::positions_from_mask;
use burn::prelude::*;
use burn::tensor::DType;

use crate::error::ModelError;
use crate::model::{Gemma3nForConditionalGeneration, MultimodalInput};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// `false` = greedy.
    pub do_sample: bool,
    pub temperature: f64,
    /// 0 = no top-k filter.
    pub top_k: usize,
    /// 1.0 = no nucleus filter.
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops for a row when it produces one of these (e.g. `<eos>` 1, `<end_of_turn>` 106).
    pub stop_ids: Vec<i64>,
    /// Id used to fill rows that already stopped.
    pub pad_token_id: i64,
}

impl Default for GenerationConfig {
    /// Greedy, 64 tokens, stop at `<eos>` and `<end_of_turn>`.
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            do_sample: false,
            temperature: 1.0,
            top_k: 64,
            top_p: 0.95,
            seed: 0,
            stop_ids: vec![1, 106],
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Read the sampling fields of a `generation_config.json` (missing fields keep their defaults).
    pub fn from_json(v: &serde_json::Value) -> Self {
        let mut c = Self::default();
        if let Some(x) = v.get("do_sample").and_then(|x| x.as_bool()) {
            c.do_sample = x;
        }
        if let Some(x) = v.get("temperature").and_then(|x| x.as_f64()) {
            c.temperature = x;
        }
        if let Some(x) = v.get("top_k").and_then(|x| x.as_u64()) {
            c.top_k = x as usize;
        }
        if let Some(x) = v.get("top_p").and_then(|x| x.as_f64()) {
            c.top_p = x;
        }
        match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => c.stop_ids = n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(a)) => {
                c.stop_ids = a.iter().filter_map(|x| x.as_i64()).collect()
            }
            _ => {}
        }
        if let Some(x) = v.get("pad_token_id").and_then(|x| x.as_i64()) {
            c.pad_token_id = x;
        }
        c
    }

    /// Read `generation_config.json`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self::from_json(&v))
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.do_sample && (self.temperature.is_nan() || self.temperature <= 0.0) {
            return Err(ModelError::Input(format!(
                "temperature must be positive for sampling, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Result of [`Gemma3nForConditionalGeneration::generate`].
#[derive(Debug, Clone)]
pub struct GenerateOutput<B: Backend> {
    pub sequences: Vec<Vec<i64>>,
    pub generated: Vec<Vec<i64>>,
    /// Logits `[B, V]` of each step (before temperature/filters).
    pub step_logits: Vec<Tensor<B, 2>>,
}

/// A small deterministic generator (SplitMix64) for sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pick a token from one row of logits: argmax, or a sample after temperature, top-k and top-p
/// (HF's order of warpers).
pub fn pick(row: &[f32], cfg: &GenerationConfig, rng: &mut SplitMix64) -> i64 {
    if !cfg.do_sample {
        let mut best = 0;
        for (i, x) in row.iter().enumerate() {
            if *x > row[best] {
                best = i;
            }
        }
        return best as i64;
    }
    let mut cand: Vec<(usize, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, x as f64 / cfg.temperature))
        .collect();
    cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.truncate(cfg.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        cand.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return cand[i].0 as i64;
        }
    }
    cand[cand.len() - 1].0 as i64
}

impl<B: Backend> Gemma3nForConditionalGeneration<B> {
    /// Generate after `prompt` (images/audio are encoded once, in the prefill). `on_token` receives
    /// each step's new ids (streaming).
    pub fn generate(
        &self,
        prompt: &MultimodalInput<B>,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(&[i64]),
    ) -> Result<GenerateOutput<B>, ModelError> {
        cfg.validate()?;
        let b = prompt.input_ids.len();
        let t = prompt.input_ids.first().map_or(0, |r| r.len());
        let mask = prompt
            .attention_mask
            .clone()
            .unwrap_or_else(|| vec![vec![1; t]; b]);
        let mut positions = positions_from_mask(&mask);
        let mut cache = KvCache::new(&self.config.text);
        let mut input = prompt.clone();
        input.attention_mask = Some(mask);
        input.labels = None;
        let mut rng = SplitMix64::new(cfg.seed);
        let mut sequences = prompt.input_ids.clone();
        let mut generated = vec![Vec::new(); b];
        let mut step_logits = Vec::new();
        let mut done = vec![false; b];
        let v = self.config.text.vocab_size;
        for step in 0..cfg.max_new_tokens {
            let logits = self.forward_cached(&input, &positions, &mut cache)?;
            let host = logits
                .clone()
                .cast(DType::F32)
                .into_data()
                .to_vec::<f32>()
                .expect("f32");
            step_logits.push(logits);
            let next: Vec<i64> = (0..b)
                .map(|r| {
                    if done[r] {
                        cfg.pad_token_id
                    } else {
                        pick(&host[r * v..(r + 1) * v], cfg, &mut rng)
                    }
                })
                .collect();
            for (r, &n) in next.iter().enumerate() {
                sequences[r].push(n);
                generated[r].push(n);
                done[r] |= cfg.stop_ids.contains(&n);
            }
            on_token(&next);
            if done.iter().all(|d| *d) || step + 1 == cfg.max_new_tokens {
                break;
            }
            positions = positions
                .iter()
                .map(|p| vec![p.last().unwrap() + 1])
                .collect();
            input = MultimodalInput {
                input_ids: next.iter().map(|&n| vec![n]).collect(),
                attention_mask: Some(vec![vec![1]; b]),
                pixel_values: None,
                audio: None,
                labels: None,
            };
        }
        Ok(GenerateOutput {
            sequences,
            generated,
            step_logits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_respects_top_k_top_p_and_seed() {
        let row = [0.0f32, 5.0, 4.9, -3.0, 1.0];
        let greedy = GenerationConfig {
            do_sample: false,
            ..Default::default()
        };
        assert_eq!(pick(&row, &greedy, &mut SplitMix64::new(1)), 1);
        let top2 = GenerationConfig {
            do_sample: true,
            top_k: 2,
            top_p: 1.0,
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = SplitMix64::new(7);
        let draws: Vec<i64> = (0..200).map(|_| pick(&row, &top2, &mut rng)).collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 2));
        assert!(draws.contains(&1) && draws.contains(&2));
        let nucleus = GenerationConfig {
            do_sample: true,
            top_k: 0,
            top_p: 0.5,
            temperature: 1.0,
            ..Default::default()
        };
        assert!((0..50).all(|_| pick(&row, &nucleus, &mut rng) == 1));
        let draw = |seed| {
            let mut r = SplitMix64::new(seed);
            (0..20)
                .map(|_| pick(&row, &top2, &mut r))
                .collect::<Vec<i64>>()
        };
        let (a, b) = (draw(3), draw(3));
        assert_eq!(a, b, "same seed, same draws");
        let bad = GenerationConfig {
            do_sample: true,
            temperature: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
