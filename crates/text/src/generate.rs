//! The one decoding loop: greedy or sampled (temperature, top-k, top-p, seed), stop ids, a token
//! budget and streaming, for every model that implements [`Generate`] (Gemma 3, the Gemma 3n
//! causal LM, the multimodal Gemma 3n).

use automodel_core::Backend;
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

use crate::cache::KvCache;
use crate::error::TextError;

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
    /// Greedy decoding of `max_new_tokens` that stops at `stop_ids`.
    pub fn greedy(max_new_tokens: usize, stop_ids: Vec<i64>) -> Self {
        Self {
            max_new_tokens,
            stop_ids,
            ..Self::default()
        }
    }

    /// Read the sampling fields of a `generation_config.json` value (missing fields keep their
    /// defaults).
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
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, TextError> {
        Ok(Self::from_json(&automodel_core::config::read_json(
            path.as_ref(),
        )?))
    }

    /// Refuse settings that cannot sample: a temperature that is not a positive finite number,
    /// or `top_p` outside `(0, 1]`.
    pub fn validate(&self) -> Result<(), TextError> {
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TextError::Input(format!(
                "temperature must be a positive number for sampling, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(TextError::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A text prompt: token ids `[B][T]` and, for left-padded rows, their attention mask.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TextPrompt {
    pub ids: Vec<Vec<i64>>,
    pub mask: Option<Vec<Vec<i64>>>,
}

impl TextPrompt {
    /// Rows of equal length, no padding.
    pub fn new(ids: Vec<Vec<i64>>) -> Self {
        Self { ids, mask: None }
    }

    /// One row.
    pub fn single(ids: Vec<i64>) -> Self {
        Self::new(vec![ids])
    }

    /// With an attention mask (1 = real token, 0 = left padding).
    pub fn with_mask(mut self, mask: Vec<Vec<i64>>) -> Self {
        self.mask = Some(mask);
        self
    }
}

/// Result of [`Generate::generate`].
#[derive(Debug, Clone)]
pub struct GenerateOutput<B: Backend> {
    /// Prompt plus generated ids, per row.
    pub sequences: Vec<Vec<i64>>,
    /// Only the generated ids, per row (rows that stopped are filled with `pad_token_id`).
    pub generated: Vec<Vec<i64>>,
    /// Logits `[B, V]` of each step (before temperature and filters).
    pub step_logits: Vec<Tensor<B, 2>>,
}

/// A model that decodes with a KV cache. Implementors say how to run a prompt and a step; the
/// loop ([`Generate::generate`]) is shared.
pub trait Generate<B: Backend> {
    /// What a prompt holds (token ids, and media for the multimodal model).
    type Prompt;
    type Error: From<TextError>;

    /// The prompt's token ids `[B][T]` (rows of equal length; left padding with a mask).
    fn prompt_ids<'a>(&self, prompt: &'a Self::Prompt) -> &'a [Vec<i64>];
    /// The prompt's attention mask (1 = real token), if it is padded.
    fn prompt_mask<'a>(&self, prompt: &'a Self::Prompt) -> Option<&'a [Vec<i64>]>;
    /// An empty cache for this model.
    fn new_cache(&self) -> KvCache<B>;
    /// Where the model lives.
    fn device(&self) -> B::Device;
    /// The model's context: positions beyond `max_position_embeddings` are never run.
    fn max_positions(&self) -> usize;
    /// Run the prompt into `cache`; logits of its last position `[B, V]`. Long prompts run in
    /// chunks of [`PREFILL_CHUNK`] tokens, so attention never holds a `[T, T]` score matrix.
    fn prefill(
        &self,
        prompt: &Self::Prompt,
        mask: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, Self::Error>;
    /// Run one token per row (`ids` `[B, 1]`); logits `[B, V]`.
    fn step(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// Generate after `prompt`. `on_token` receives each step's new ids (one per row).
    fn generate(
        &self,
        prompt: &Self::Prompt,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(&[i64]),
    ) -> Result<GenerateOutput<B>, Self::Error> {
        cfg.validate()?;
        let ids = self.prompt_ids(prompt);
        let b = ids.len();
        let t = ids.first().map_or(0, |r| r.len());
        if b == 0 || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(TextError::Input(
                "the prompt must be a non-empty batch of equal-length rows".into(),
            )
            .into());
        }
        let mask = match self.prompt_mask(prompt) {
            Some(m) if m.len() != b || m.iter().any(|r| r.len() != t) => {
                return Err(TextError::Input(format!(
                    "the prompt's attention mask must be [{b}, {t}] like its ids"
                ))
                .into());
            }
            Some(m) => m.to_vec(),
            None => vec![vec![1; t]; b],
        };
        let context = self.max_positions();
        if t > context {
            return Err(TextError::Input(format!(
                "the prompt has {t} tokens; the model's context is {context} (max_position_embeddings)"
            ))
            .into());
        }
        let room = context - t;
        if cfg.max_new_tokens > room {
            tracing::warn!(
                "the prompt has {t} tokens of the model's {context}: at most {room} new tokens, not {}",
                cfg.max_new_tokens
            );
        }
        let max_new_tokens = cfg.max_new_tokens.min(room);
        let device = self.device();
        let positions = ids_tensor::<B>(&positions_from_mask(&mask), &device);
        let mut cache = self.new_cache();
        let mut logits = self.prefill(prompt, ids_tensor(&mask, &device), positions, &mut cache)?;
        let mut rng = SplitMix64::new(cfg.seed);
        let mut sequences = ids.to_vec();
        let mut generated = vec![Vec::new(); b];
        let mut step_logits = Vec::new();
        let mut done = vec![false; b];
        for step in 0..max_new_tokens {
            let v = logits.dims()[1];
            let host = logits
                .clone()
                .cast(DType::F32)
                .into_data()
                .to_vec::<f32>()
                .expect("f32 logits");
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
            if done.iter().all(|d| *d) || step + 1 == max_new_tokens {
                break;
            }
            let col: Vec<Vec<i64>> = next.iter().map(|&n| vec![n]).collect();
            logits = self.step(ids_tensor(&col, &device), &mut cache)?;
        }
        Ok(GenerateOutput {
            sequences,
            generated,
            step_logits,
        })
    }
}

/// Tokens to run with a cache: ids `[B, T]`, and their mask and positions unless the defaults
/// (all ones; the cache's next positions) apply.
#[derive(Debug, Clone)]
pub struct Tokens<B: Backend> {
    pub ids: Tensor<B, 2, Int>,
    pub mask: Option<Tensor<B, 2, Int>>,
    pub positions: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> Tokens<B> {
    /// Ids with the default mask and positions.
    pub fn ids(ids: Tensor<B, 2, Int>) -> Self {
        Self {
            ids,
            mask: None,
            positions: None,
        }
    }
}

/// A text-only decoder that runs token ids with a KV cache. Every such model generates from a
/// [`TextPrompt`] through `text_generate!`.
pub trait TextDecoder<B: Backend> {
    /// Run tokens (a prompt, or one token per row) with the cache; logits of the last
    /// position `[B, V]`.
    fn decode(&self, tokens: Tokens<B>, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>, TextError>;
    /// An empty cache for this model.
    fn new_cache(&self) -> KvCache<B>;
    /// Where the model lives.
    fn device(&self) -> B::Device;
    /// `max_position_embeddings`.
    fn max_positions(&self) -> usize;
}

/// Prompts run through the decoder this many tokens at a time.
pub const PREFILL_CHUNK: usize = 512;

/// Run `t` prompt columns in chunks of `chunk` (`run` gets each range); the last chunk's result.
pub fn in_chunks<T, E>(
    t: usize,
    chunk: usize,
    mut run: impl FnMut(std::ops::Range<usize>) -> Result<T, E>,
) -> Result<T, E> {
    let chunk = chunk.max(1);
    let mut start = 0;
    loop {
        let end = (start + chunk).min(t);
        let out = run(start..end)?;
        if end >= t {
            return Ok(out);
        }
        start = end;
    }
}

/// `Generate` with a [`TextPrompt`] for a model that implements [`TextDecoder`] (a blanket
/// implementation would keep the multimodal model from implementing `Generate` itself).
macro_rules! text_generate {
    ($model:ident) => {
        impl<B: ::automodel_core::Backend> $crate::generate::Generate<B> for $model<B> {
            type Prompt = $crate::generate::TextPrompt;
            type Error = $crate::TextError;

            fn prompt_ids<'a>(&self, prompt: &'a $crate::generate::TextPrompt) -> &'a [Vec<i64>] {
                &prompt.ids
            }
            fn prompt_mask<'a>(
                &self,
                prompt: &'a $crate::generate::TextPrompt,
            ) -> Option<&'a [Vec<i64>]> {
                prompt.mask.as_deref()
            }
            fn new_cache(&self) -> $crate::KvCache<B> {
                $crate::generate::TextDecoder::new_cache(self)
            }
            fn device(&self) -> B::Device {
                $crate::generate::TextDecoder::device(self)
            }
            fn max_positions(&self) -> usize {
                $crate::generate::TextDecoder::max_positions(self)
            }
            fn prefill(
                &self,
                prompt: &$crate::generate::TextPrompt,
                mask: ::burn::tensor::Tensor<B, 2, ::burn::tensor::Int>,
                positions: ::burn::tensor::Tensor<B, 2, ::burn::tensor::Int>,
                cache: &mut $crate::KvCache<B>,
            ) -> Result<::burn::tensor::Tensor<B, 2>, $crate::TextError> {
                let device = $crate::generate::TextDecoder::device(self);
                let ids = $crate::generate::ids_tensor(&prompt.ids, &device);
                let [b, t] = ids.dims();
                $crate::generate::in_chunks(t, $crate::generate::PREFILL_CHUNK, |r| {
                    let tokens = $crate::generate::Tokens {
                        ids: ids.clone().slice([0..b, r.clone()]),
                        mask: Some(mask.clone().slice([0..b, r.clone()])),
                        positions: Some(positions.clone().slice([0..b, r])),
                    };
                    $crate::generate::TextDecoder::decode(self, tokens, cache)
                })
            }
            fn step(
                &self,
                ids: ::burn::tensor::Tensor<B, 2, ::burn::tensor::Int>,
                cache: &mut $crate::KvCache<B>,
            ) -> Result<::burn::tensor::Tensor<B, 2>, $crate::TextError> {
                $crate::generate::TextDecoder::decode(
                    self,
                    $crate::generate::Tokens::ids(ids),
                    cache,
                )
            }
        }
    };
}
pub(crate) use text_generate;

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

/// Index of the largest value (the first one on ties, as torch's argmax).
pub fn argmax(row: &[f32]) -> i64 {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best as i64
}

/// Pick a token from one row of logits: argmax, or a sample after temperature, top-k and top-p
/// (HF's order of warpers).
pub fn pick(row: &[f32], cfg: &GenerationConfig, rng: &mut SplitMix64) -> i64 {
    if !cfg.do_sample {
        return argmax(row);
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

/// Host ids `[B][T]` as an Int tensor.
pub fn ids_tensor<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = rows.len();
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

/// An Int tensor `[B, T]` back on the host.
pub fn host_rows<B: Backend>(t: &Tensor<B, 2, Int>) -> Vec<Vec<i64>> {
    let [_, n] = t.dims();
    let flat = t
        .to_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int data");
    if n == 0 {
        return vec![Vec::new(); t.dims()[0]];
    }
    flat.chunks(n).map(|c| c.to_vec()).collect()
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
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = GenerationConfig {
                do_sample: true,
                temperature: bad,
                ..Default::default()
            };
            assert!(cfg.validate().is_err(), "temperature {bad}");
        }
        for bad in [0.0, 1.5, f64::NAN] {
            let cfg = GenerationConfig {
                top_p: bad,
                ..Default::default()
            };
            assert!(cfg.validate().is_err(), "top_p {bad}");
        }
    }

    #[test]
    fn positions_skip_left_padding() {
        assert_eq!(
            positions_from_mask(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]]),
            [vec![0, 0, 0, 1], vec![0, 1, 2, 3]]
        );
    }
}
