//! Plain Gemma 3 text (`Gemma3ForCausalLM`), built from the same blocks as the Gemma 3n decoder:
//! `(1 + w)` RMS norms (fp32), q/k norms, split-half RoPE with a local and a global base,
//! sliding/global masks, GQA, tanh-GELU gated MLP, tied head.

use std::path::Path;

use automodel_core::init::ParamSource;
use automodel_core::loss::causal_lm_loss;
use automodel_core::nn::rope::apply_rope;
use automodel_core::nn::{Embedding, Linear, RmsNorm, softcap};
use automodel_core::params::{ParamList, join};
use automodel_core::weights::{SafeTensorsFiles, TensorSource, WeightLoader};
use burn::prelude::*;
use burn::tensor::{DType, Int};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attention::{AttentionGeometry, AttentionInputs, StepInputs, attend};
use crate::cache::KvCache;
use crate::config::LayerType;
use crate::error::TextError;
use crate::generate::{ids_tensor, positions_from_mask};
use crate::mlp::Mlp;

/// HF `Gemma3TextConfig` (the fields the model uses; HF names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma3TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_activation: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_local_base_freq: f64,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    pub sliding_window: usize,
    pub layer_types: Option<Vec<LayerType>>,
    pub query_pre_attn_scalar: f64,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<crate::config::OneOrMany<i64>>,
    pub pad_token_id: Option<i64>,
    pub initializer_range: f64,
}

impl Default for Gemma3TextConfig {
    /// HF defaults (Gemma 3 4B text).
    fn default() -> Self {
        Self {
            vocab_size: 262_208,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            hidden_activation: "gelu_pytorch_tanh".into(),
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_local_base_freq: 10_000.0,
            rope_parameters: None,
            rope_scaling: None,
            sliding_window: 4096,
            layer_types: None,
            query_pre_attn_scalar: 256.0,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            max_position_embeddings: 131_072,
            bos_token_id: Some(2),
            eos_token_id: Some(crate::config::OneOrMany::One(1)),
            pad_token_id: Some(0),
            initializer_range: 0.02,
        }
    }
}

impl Gemma3TextConfig {
    /// From a parsed `config.json` (bare, or with a `text_config`).
    pub fn from_value(v: &Value) -> Result<Self, TextError> {
        let inner = v.get("text_config").unwrap_or(v);
        let cfg: Self = serde_json::from_value(inner.clone())
            .map_err(|e| TextError::config("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TextError> {
        crate::config::read_config(path.as_ref(), Self::from_value)
    }

    /// The config as Hugging Face writes it for `Gemma3ForCausalLM` (`model_type`
    /// `gemma3_text`): every field, the layer types spelled out, and both RoPE spellings
    /// (`rope_parameters` for transformers 5, `rope_theta`/`rope_local_base_freq` for 4.x).
    pub fn to_hf_json(&self) -> Value {
        let (local, global) = self.rope_thetas();
        let mut cfg = self.clone();
        cfg.layer_types = Some(self.layer_types());
        cfg.rope_theta = global;
        cfg.rope_local_base_freq = local;
        cfg.rope_parameters = Some(serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
            "full_attention": {"rope_type": "default", "rope_theta": global},
        }));
        let mut v = serde_json::to_value(&cfg).expect("serialisable");
        if let Some(o) = v.as_object_mut() {
            // HF types it `int` and transformers 5 refuses `256.0`
            if self.query_pre_attn_scalar.fract() == 0.0 {
                o.insert(
                    "query_pre_attn_scalar".into(),
                    (self.query_pre_attn_scalar as i64).into(),
                );
            }
            o.insert("model_type".into(), "gemma3_text".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["Gemma3ForCausalLM"]),
            );
            o.insert("tie_word_embeddings".into(), true.into());
            o.insert("attention_bias".into(), false.into());
            o.insert("dtype".into(), "float32".into());
        }
        v
    }

    pub fn validate(&self) -> Result<(), TextError> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(TextError::config(name, "must be greater than 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(TextError::config(
                "num_key_value_heads",
                "must divide num_attention_heads",
            ));
        }
        if let Some(t) = &self.layer_types
            && t.len() != self.num_hidden_layers
        {
            return Err(TextError::config(
                "layer_types",
                format!(
                    "has {} entries for {} layers",
                    t.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if self.attn_logit_softcapping.is_some() {
            return Err(TextError::config(
                "attn_logit_softcapping",
                "attention soft-capping (Gemma 2) is not supported",
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(TextError::config(
                "rope_scaling",
                "RoPE scaling is not supported",
            ));
        }
        Ok(())
    }

    /// Layer kinds (HF default: every sixth layer global).
    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layer_types.clone().unwrap_or_else(|| {
            (0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % 6 == 0 {
                        LayerType::Full
                    } else {
                        LayerType::Sliding
                    }
                })
                .collect()
        })
    }

    /// RoPE bases, head size and window, as attention needs them.
    pub fn attention_geometry(&self) -> AttentionGeometry {
        AttentionGeometry {
            rope_thetas: self.rope_thetas(),
            head_dim: self.head_dim,
            sliding_window: self.sliding_window,
        }
    }

    /// RoPE bases (sliding, full).
    pub fn rope_thetas(&self) -> (f64, f64) {
        let get = |k: &str| {
            self.rope_parameters
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(|e| e.get("rope_theta"))
                .and_then(|t| t.as_f64())
        };
        (
            get("sliding_attention").unwrap_or(self.rope_local_base_freq),
            get("full_attention").unwrap_or(self.rope_theta),
        )
    }
}

/// One Gemma 3 layer.
#[derive(Module, Debug)]
pub struct Gemma3Layer<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: RmsNorm<B>,
    pub k_norm: RmsNorm<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: RmsNorm<B>,
    pub post_feedforward_layernorm: RmsNorm<B>,
    #[module(skip)]
    pub layer_type: LayerType,
}

/// HF `Gemma3ForCausalLM` (text only, tied head).
#[derive(Module, Debug)]
pub struct Gemma3ForCausalLM<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Gemma3Layer<B>>,
    pub norm: RmsNorm<B>,
    #[module(skip)]
    pub config: Gemma3TextConfig,
}

/// Outputs of [`Gemma3ForCausalLM::forward`].
#[derive(Debug, Clone)]
pub struct Gemma3Output<B: Backend> {
    pub logits: Tensor<B, 3>,
    pub loss: Option<Tensor<B, 1>>,
    /// Output of every layer (before the final norm).
    pub layer_outputs: Vec<Tensor<B, 3>>,
    pub last_hidden_state: Tensor<B, 3>,
}

impl<B: Backend> Gemma3ForCausalLM<B> {
    /// Build from a source whose keys are `model.*` (HF layout).
    pub fn new(src: &ParamSource<'_, B>, cfg: &Gemma3TextConfig) -> Self {
        let (h, nh, nkv, d, eps) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
        );
        let types = cfg.layer_types();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let n = format!("model.layers.{i}");
                let a = |x: &str| join(&n, &format!("self_attn.{x}"));
                let norm = |x: &str, dim| RmsNorm::new(src, &join(&n, x), dim, eps, true);
                Gemma3Layer {
                    q_proj: Linear::new(src, &a("q_proj"), h, nh * d),
                    k_proj: Linear::new(src, &a("k_proj"), h, nkv * d),
                    v_proj: Linear::new(src, &a("v_proj"), h, nkv * d),
                    o_proj: Linear::new(src, &a("o_proj"), nh * d, h),
                    q_norm: RmsNorm::new(src, &a("q_norm"), d, eps, true),
                    k_norm: RmsNorm::new(src, &a("k_norm"), d, eps, true),
                    mlp: Mlp::new(src, &join(&n, "mlp"), h, cfg.intermediate_size, 0.0),
                    input_layernorm: norm("input_layernorm", h),
                    post_attention_layernorm: norm("post_attention_layernorm", h),
                    pre_feedforward_layernorm: norm("pre_feedforward_layernorm", h),
                    post_feedforward_layernorm: norm("post_feedforward_layernorm", h),
                    layer_type: types[i],
                }
            })
            .collect();
        Self {
            embed_tokens: Embedding::new(
                src,
                "model.embed_tokens",
                cfg.vocab_size,
                h,
                cfg.pad_token_id.map(|p| p as usize),
            ),
            layers,
            norm: RmsNorm::new(src, "model.norm", h, eps, true),
            config: cfg.clone(),
        }
    }

    /// Load from any tensor source with HF names (safetensors files, a GGUF file).
    pub fn from_source(
        src: &dyn TensorSource,
        cfg: &Gemma3TextConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        cfg.validate()?;
        let loader = WeightLoader::<B>::new(src, "", device, dtype);
        let model = Self::new(&ParamSource::Checkpoint(&loader), cfg);
        loader.finish(|k| k == "lm_head.weight")?;
        Ok(model)
    }

    /// Load a HF folder (`config.json` + safetensors).
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        let dir = dir.as_ref();
        let cfg = Gemma3TextConfig::from_file(dir.join("config.json"))?;
        let files = SafeTensorsFiles::open(dir)?;
        Self::from_source(&files, &cfg, device, dtype)
    }

    /// Write a Hugging Face folder: `config.json` ([`Gemma3TextConfig::to_hf_json`]) and the
    /// weights under their HF keys (one `model.safetensors`, or shards of at most
    /// `max_shard_bytes` with an index), each file written atomically. The head is tied, so no
    /// `lm_head.weight` is written. Returns the files written.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: Option<usize>,
    ) -> Result<Vec<std::path::PathBuf>, TextError> {
        let dir = dir.as_ref();
        let mut written = self.params().to_tensor_map("").save(dir, max_shard_bytes)?;
        let text = serde_json::to_string_pretty(&self.config.to_hf_json()).expect("serialisable");
        let path = dir.join("config.json");
        automodel_core::weights::write_atomic(&path, text.as_bytes())?;
        written.push(path);
        Ok(written)
    }

    /// Every parameter by HF key.
    pub fn params(&self) -> ParamList<B> {
        let mut out = ParamList::new();
        self.embed_tokens.params("model.embed_tokens", &mut out);
        for (i, l) in self.layers.iter().enumerate() {
            let n = format!("model.layers.{i}");
            let a = |x: &str| join(&n, &format!("self_attn.{x}"));
            l.q_proj.params(&a("q_proj"), &mut out);
            l.k_proj.params(&a("k_proj"), &mut out);
            l.v_proj.params(&a("v_proj"), &mut out);
            l.o_proj.params(&a("o_proj"), &mut out);
            l.q_norm.params(&a("q_norm"), &mut out);
            l.k_norm.params(&a("k_norm"), &mut out);
            l.mlp.params(&join(&n, "mlp"), &mut out);
            l.input_layernorm
                .params(&join(&n, "input_layernorm"), &mut out);
            l.post_attention_layernorm
                .params(&join(&n, "post_attention_layernorm"), &mut out);
            l.pre_feedforward_layernorm
                .params(&join(&n, "pre_feedforward_layernorm"), &mut out);
            l.post_feedforward_layernorm
                .params(&join(&n, "post_feedforward_layernorm"), &mut out);
        }
        self.norm.params("model.norm", &mut out);
        out
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::for_layers(
            self.layers
                .iter()
                .map(|l| (l.layer_type == LayerType::Sliding).then_some(self.config.sliding_window))
                .collect(),
        )
    }

    /// Forward over `ids` `[B, T]` (optionally continuing `cache`), with optional labels.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<i64>]>,
        position_ids: Option<&[Vec<i64>]>,
        labels: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Gemma3Output<B>, TextError> {
        let cfg = &self.config;
        let [b, t] = ids.dims();
        let device = ids.device();
        let v = cfg.vocab_size as i64;
        if b == 0 || t == 0 {
            return Err(TextError::Input(format!(
                "input_ids must be non-empty; got [{b}, {t}]"
            )));
        }
        let (lo, hi): (i64, i64) = (
            ids.clone().min().into_scalar().elem(),
            ids.clone().max().into_scalar().elem(),
        );
        if lo < 0 || hi >= v {
            return Err(TextError::Input(format!(
                "input_ids must be in [0, {v}); found [{lo}, {hi}]"
            )));
        }
        let dtype = self.embed_tokens.weight.val().dtype();
        let geometry = cfg.attention_geometry();
        let (mask, pos) = (attention_mask, position_ids);
        let step = StepInputs::new(b, t, mask, pos, cache.as_deref(), geometry, &device, dtype)?;
        let scale = (cfg.hidden_size as f64).sqrt() as f32;
        let mut x = self.embed_tokens.forward(ids) * scale as f64;
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let q_scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let AttentionInputs { cos, sin, mask } = &step.by_type[&l.layer_type];
            let xn = l.input_layernorm.forward(x.clone());
            let q = apply_rope(
                l.q_norm
                    .forward(l.q_proj.forward(xn.clone()).reshape([b, t, nh, d])),
                cos,
                sin,
            )
            .swap_dims(1, 2);
            let k = apply_rope(
                l.k_norm
                    .forward(l.k_proj.forward(xn.clone()).reshape([b, t, nkv, d])),
                cos,
                sin,
            )
            .swap_dims(1, 2);
            let vv = l.v_proj.forward(xn).reshape([b, t, nkv, d]).swap_dims(1, 2);
            let (k, vv) = match cache.as_deref_mut() {
                Some(c) => c.update(i, k, vv),
                None => (k, vv),
            };
            let o = attend(q * q_scale, k, vv, mask, nh / nkv)
                .swap_dims(1, 2)
                .reshape([b, t, nh * d]);
            x = x + l.post_attention_layernorm.forward(l.o_proj.forward(o));
            let m = l
                .mlp
                .forward(l.pre_feedforward_layernorm.forward(x.clone()));
            x = x + l.post_feedforward_layernorm.forward(m);
            layer_outputs.push(x.clone());
        }
        let last_hidden_state = self.norm.forward(x);
        let mut logits = self.embed_tokens.tied_head(last_hidden_state.clone());
        if let Some(cap) = cfg.final_logit_softcapping {
            logits = softcap(logits, cap);
        }
        if let Some(c) = cache {
            step.commit(c);
        }
        let loss = labels.and_then(|l| causal_lm_loss(logits.clone(), l));
        Ok(Gemma3Output {
            logits,
            loss,
            layer_outputs,
            last_hidden_state,
        })
    }

    /// Greedy decoding with the cache; `on_step` streams each new id.
    pub fn generate_greedy(
        &self,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: &[i64],
        mut on_step: impl FnMut(i64),
    ) -> Result<Vec<i64>, TextError> {
        self.generate_with(
            prompt,
            max_new_tokens,
            eos,
            |row| {
                let mut best = 0;
                for (i, x) in row.iter().enumerate() {
                    if *x > row[best] {
                        best = i;
                    }
                }
                best as i64
            },
            &mut on_step,
        )
    }

    /// Decoding with a custom token picker over the last position's logits.
    pub fn generate_with(
        &self,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: &[i64],
        mut pick: impl FnMut(&[f32]) -> i64,
        on_step: &mut dyn FnMut(i64),
    ) -> Result<Vec<i64>, TextError> {
        if prompt.is_empty() {
            return Err(TextError::Input("the prompt is empty".into()));
        }
        let device = self.embed_tokens.weight.device();
        let mut cache = self.new_cache();
        let mask = vec![vec![1i64; prompt.len()]];
        let pos = positions_from_mask(&mask);
        let mut out = self.forward(
            ids_tensor::<B>(&[prompt.to_vec()], &device),
            Some(&mask),
            Some(&pos),
            None,
            Some(&mut cache),
        )?;
        let mut generated = Vec::new();
        for step in 0..max_new_tokens {
            let t = out.logits.dims()[1];
            let row = out
                .logits
                .narrow(1, t - 1, 1)
                .cast(DType::F32)
                .into_data()
                .to_vec::<f32>()
                .expect("f32");
            let next = pick(&row);
            generated.push(next);
            on_step(next);
            if eos.contains(&next) || step + 1 == max_new_tokens {
                break;
            }
            let p = vec![vec![cache.last_position[0] + 1]];
            out = self.forward(
                ids_tensor::<B>(&[vec![next]], &device),
                Some(&[vec![1]]),
                Some(&p),
                None,
                Some(&mut cache),
            )?;
        }
        Ok(generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::ids_tensor;
    use automodel_core::CpuBackend;

    type B = CpuBackend;

    /// Two sliding layers (window 4) and one global layer, GQA 2:1.
    fn tiny() -> Gemma3TextConfig {
        Gemma3TextConfig {
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 16,
            sliding_window: 4,
            query_pre_attn_scalar: 16.0,
            layer_types: Some(vec![
                LayerType::Sliding,
                LayerType::Sliding,
                LayerType::Full,
            ]),
            max_position_embeddings: 128,
            ..Default::default()
        }
    }

    fn random_model(cfg: &Gemma3TextConfig) -> Gemma3ForCausalLM<B> {
        let dev = Default::default();
        Gemma3ForCausalLM::new(&ParamSource::random(&dev, DType::F32, 0.3), cfg)
    }

    fn logits(m: &Gemma3ForCausalLM<B>, ids: &[i64]) -> Vec<f32> {
        let dev = Default::default();
        m.forward(
            ids_tensor::<B>(&[ids.to_vec()], &dev),
            None,
            None,
            None,
            None,
        )
        .unwrap()
        .logits
        .into_data()
        .to_vec::<f32>()
        .unwrap()
    }

    const IDS: [i64; 10] = [2, 17, 5, 33, 9, 9, 41, 60, 3, 12];

    #[test]
    fn save_and_load_round_trip_exactly() {
        let cfg = tiny();
        let m = random_model(&cfg);
        let dir = tempfile::tempdir().unwrap();
        let files = m.save_pretrained(dir.path(), None).unwrap();
        assert_eq!(files.len(), 2);
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(saved["model_type"], "gemma3_text");
        assert!(saved["query_pre_attn_scalar"].is_u64(), "HF types it int");
        assert_eq!(saved["layer_types"][2], "full_attention");
        assert_eq!(
            saved["rope_parameters"]["sliding_attention"]["rope_theta"],
            10_000.0
        );
        let st = SafeTensorsFiles::open(dir.path()).unwrap();
        assert!(!st.contains("lm_head.weight"));
        assert!(st.contains("model.layers.2.self_attn.q_norm.weight"));
        let back =
            Gemma3ForCausalLM::<B>::from_pretrained(dir.path(), &Default::default(), DType::F32)
                .unwrap();
        assert_eq!(back.config.rope_thetas(), cfg.rope_thetas());
        assert_eq!(logits(&back, &IDS), logits(&m, &IDS));
        // sharded: the same model from several files
        let sharded = tempfile::tempdir().unwrap();
        let files = m.save_pretrained(sharded.path(), Some(20_000)).unwrap();
        assert!(files.len() > 3, "{files:?}");
        let back = Gemma3ForCausalLM::<B>::from_pretrained(
            sharded.path(),
            &Default::default(),
            DType::F32,
        )
        .unwrap();
        assert_eq!(logits(&back, &IDS), logits(&m, &IDS));
    }

    #[test]
    fn missing_weights_and_bad_configs_are_named() {
        let cfg = tiny();
        let m = random_model(&cfg);
        let dir = tempfile::tempdir().unwrap();
        m.save_pretrained(dir.path(), None).unwrap();
        // rewrite config.json and report what loading the folder says
        let load_with = |cfg_json: &Value| {
            std::fs::write(
                dir.path().join("config.json"),
                serde_json::to_string(cfg_json).unwrap(),
            )
            .unwrap();
            Gemma3ForCausalLM::<B>::from_pretrained(dir.path(), &Default::default(), DType::F32)
                .unwrap_err()
                .to_string()
        };
        let mut cfg_json = cfg.to_hf_json();
        cfg_json["num_hidden_layers"] = 4.into();
        cfg_json["layer_types"] = serde_json::json!(null);
        let err = load_with(&cfg_json);
        assert!(
            err.contains("model.layers.3.self_attn.q_proj.weight"),
            "{err}"
        );
        cfg_json["num_key_value_heads"] = 3.into();
        let err = load_with(&cfg_json);
        assert!(
            err.contains("num_key_value_heads") && err.contains("config.json"),
            "{err}"
        );
    }

    #[test]
    fn cached_decoding_matches_the_full_forward_across_the_sliding_window() {
        let cfg = tiny();
        let m = random_model(&cfg);
        let full = logits(&m, &IDS);
        let v = cfg.vocab_size;
        // prefill 3 tokens, then one at a time: positions 4.. exercise the window of 4
        let dev = Default::default();
        let mut cache = m.new_cache();
        let mut got = Vec::new();
        for chunk in [&IDS[..3], &IDS[3..4], &IDS[4..7], &IDS[7..]] {
            let out = m
                .forward(
                    ids_tensor::<B>(&[chunk.to_vec()], &dev),
                    None,
                    None,
                    None,
                    Some(&mut cache),
                )
                .unwrap();
            got.extend(out.logits.into_data().to_vec::<f32>().unwrap());
        }
        assert_eq!(got.len(), full.len());
        // inputs that do not fit are refused, not silently broadcast
        let err = m
            .forward(
                ids_tensor::<B>(&[IDS.to_vec()], &dev),
                Some(&[vec![1; 3]]),
                None,
                None,
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("attention_mask must be [1, 10]"), "{err}");
        let err = m
            .forward(
                ids_tensor::<B>(&[vec![2, 64]], &dev),
                None,
                None,
                None,
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0, 64)"), "{err}");
        for (i, (g, f)) in got.iter().zip(&full).enumerate() {
            assert!(
                (g - f).abs() < 1e-4,
                "position {} logit {}: {g} vs {f}",
                i / v,
                i % v
            );
        }
        // the sliding window is real: changing the first token leaves a sliding-only model's
        // last logits unchanged once it is more than 4 positions back
        let mut sliding = tiny();
        sliding.layer_types = Some(vec![LayerType::Sliding; 3]);
        let ms = Gemma3ForCausalLM::<B>::new(&ParamSource::random(&dev, DType::F32, 0.3), &sliding);
        let last_row = |ids: &[i64], model: &Gemma3ForCausalLM<B>| {
            logits(model, ids)[(ids.len() - 1) * v..].to_vec()
        };
        let changed_first = |ids: &[i64]| {
            let mut o = ids.to_vec();
            o[0] = 50;
            o
        };
        // 3 layers of window 4 reach back 3 * 3 = 9 positions: position 9 still sees position 0,
        // position 12 no longer does
        assert_ne!(last_row(&IDS, &ms), last_row(&changed_first(&IDS), &ms));
        let long: Vec<i64> = IDS.iter().chain(&IDS[..3]).copied().collect();
        assert_eq!(last_row(&long, &ms), last_row(&changed_first(&long), &ms));
        // the global layer sees everything
        assert_ne!(last_row(&long, &m), last_row(&changed_first(&long), &m));
    }
}
