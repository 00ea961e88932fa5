//! Plain Gemma 3 text (`Gemma3ForCausalLM`), built from the blocks the Gemma 3n decoder uses:
//! the shared [`Attention`] (`(1 + w)` q/k norms, query scale `query_pre_attn_scalar^-½`, no v
//! norm), the gated MLP, split-half RoPE with a local and a global base, sliding/global masks,
//! GQA, tied head. Field paths are HF keys (`model.layers.0.self_attn.q_proj.weight`).

use std::path::Path;

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::loss::{causal_lm_loss, lm_head_loss};
use automodel_core::nn::{Embedding, RmsNorm, softcap_opt};
use automodel_core::tree;
use automodel_core::weights::{SafeTensorsFiles, TensorSource, WeightLoader};
use burn::prelude::*;
use burn::tensor::{DType, Int};

use super::config::Gemma3TextConfig;
use crate::attention::{Attention, AttentionSpec, LayerInputs, SharedKv, StepInputs};
use crate::cache::KvCache;
use crate::config::{KvSharing, LayerType};
use crate::error::TextError;
use crate::generate::{TextDecoder, Tokens};
use crate::mlp::Mlp;
use crate::train::{CausalLm, TrainBatch, TrainOptions, TrainOutput};

/// One Gemma 3 layer (HF `Gemma3DecoderLayer`).
#[derive(Module, Debug)]
pub struct Gemma3DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: RmsNorm<B>,
    pub post_feedforward_layernorm: RmsNorm<B>,
}

impl<B: Backend> Gemma3DecoderLayer<B> {
    /// `x + post_attn_norm(attn(in_norm(x)))`, then the same around the MLP.
    pub fn forward(&self, x: Tensor<B, 3>, layer: LayerInputs<'_, B>) -> Tensor<B, 3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), layer);
        let x = x + self.post_attention_layernorm.forward(attn);
        let m = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(x.clone()));
        x + self.post_feedforward_layernorm.forward(m)
    }
}

/// HF `Gemma3TextModel`: embeddings, layers, final norm.
#[derive(Module, Debug)]
pub struct Gemma3TextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Gemma3DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// HF `Gemma3ForCausalLM` (text only, tied head).
#[derive(Module, Debug)]
pub struct Gemma3ForCausalLM<B: Backend> {
    pub model: Gemma3TextModel<B>,
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
    /// The model `cfg` describes, filled by `init` (random, or shapes to load a checkpoint into).
    pub fn new(init: &Initializer<B>, cfg: &Gemma3TextConfig) -> Result<Self, TextError> {
        cfg.validate()?;
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let types = cfg.layer_types();
        let norm = |dim| RmsNorm::new(init, dim, eps, true);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Gemma3DecoderLayer {
                self_attn: Attention::new(
                    init,
                    AttentionSpec {
                        hidden_size: h,
                        num_heads: cfg.num_attention_heads,
                        num_kv_heads: cfg.num_key_value_heads,
                        head_dim: cfg.head_dim,
                        query_scale: Some(cfg.query_pre_attn_scalar.powf(-0.5)),
                        rms_norm_eps: eps,
                        norm_plus_one: true,
                        v_norm: false,
                        layer_idx: i,
                        layer_type: types[i],
                        sharing: KvSharing::None,
                    },
                ),
                mlp: Mlp::new(init, h, cfg.intermediate_size, 0.0),
                input_layernorm: norm(h),
                post_attention_layernorm: norm(h),
                pre_feedforward_layernorm: norm(h),
                post_feedforward_layernorm: norm(h),
            })
            .collect();
        let pad = cfg.pad_token_id.and_then(|p| usize::try_from(p).ok());
        Ok(Self {
            model: Gemma3TextModel {
                embed_tokens: Embedding::new(init, cfg.vocab_size, h, pad),
                layers,
                norm: norm(h),
            },
            config: cfg.clone(),
        })
    }

    /// Random initialisation (`initializer_range`).
    pub fn init(
        cfg: &Gemma3TextConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        Self::new(
            &Initializer::random(device, dtype, cfg.initializer_range),
            cfg,
        )
    }

    /// Load from any tensor source with HF names (safetensors files, a GGUF file).
    pub fn from_source(
        src: &dyn TensorSource,
        cfg: &Gemma3TextConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, TextError> {
        let model = Self::new(&Initializer::shapes(device, dtype), cfg)?;
        let loader = WeightLoader::<B>::new(src, "", device, dtype);
        let model = tree::load(model, &loader);
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
        let config = self.config.to_hf_json();
        Ok(tree::save_pretrained(
            self,
            "",
            &config,
            dir.as_ref(),
            max_shard_bytes,
        )?)
    }

    /// Check the ids and run the decoder: the final hidden states and every layer's output.
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>), TextError> {
        let cfg = &self.config;
        let [b, t] = ids.dims();
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
        let device = TextDecoder::device(self);
        let dtype = self.model.embed_tokens.weight.val().dtype();
        let geometry = cfg.attention_geometry();
        let (mask, pos) = (attention_mask, position_ids);
        let step = StepInputs::new(b, t, mask, pos, cache.as_deref(), geometry, &device, dtype)?;
        let scale = (cfg.hidden_size as f64).sqrt() as f32;
        let mut x = self.model.embed_tokens.forward(ids) * scale as f64;
        let mut shared = SharedKv::new();
        let mut layer_outputs = Vec::with_capacity(self.model.layers.len());
        for l in &self.model.layers {
            let layer = step.layer(&l.self_attn, &mut shared, cache.as_deref_mut());
            x = l.forward(x, layer);
            layer_outputs.push(x.clone());
        }
        if let Some(c) = cache {
            step.commit(c);
        }
        Ok((self.model.norm.forward(x), layer_outputs))
    }

    /// The tied, optionally soft-capped head.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = self.model.embed_tokens.tied_head(hidden);
        softcap_opt(logits, self.config.final_logit_softcapping)
    }

    /// Forward over `ids` `[B, T]` (optionally continuing `cache`), with optional labels; full
    /// logits.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        labels: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Gemma3Output<B>, TextError> {
        let (last_hidden_state, layer_outputs) =
            self.hidden(ids, attention_mask, position_ids, cache)?;
        let logits = self.lm_logits(last_hidden_state.clone());
        let loss = labels.and_then(|l| causal_lm_loss(logits.clone(), l));
        Ok(Gemma3Output {
            logits,
            loss,
            layer_outputs,
            last_hidden_state,
        })
    }
}

crate::generate::text_generate!(Gemma3ForCausalLM);

impl<B: Backend> TextDecoder<B> for Gemma3ForCausalLM<B> {
    fn decode(&self, t: Tokens<B>, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>, TextError> {
        let (h, _) = self.hidden(t.ids, t.mask, t.positions, Some(cache))?;
        let [b, t, _] = h.dims();
        Ok(self
            .lm_logits(h.narrow(1, t - 1, 1))
            .reshape([b, self.config.vocab_size]))
    }
    fn new_cache(&self) -> KvCache<B> {
        let n = self.model.layers.len();
        KvCache::new(
            self.model
                .layers
                .iter()
                .map(|l| {
                    (l.self_attn.layer_type() == LayerType::Sliding)
                        .then_some(self.config.sliding_window)
                })
                .collect(),
            vec![true; n],
        )
    }
    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn device(&self) -> B::Device {
        self.model.embed_tokens.weight.device()
    }
}

impl<B: Backend> CausalLm<B> for Gemma3ForCausalLM<B> {
    type Error = TextError;

    fn forward_train(
        &self,
        batch: &TrainBatch<B>,
        opts: TrainOptions,
    ) -> Result<TrainOutput<B>, TextError> {
        batch.validate()?;
        let (hidden, _) = self.hidden(
            batch.input_ids.clone(),
            Some(batch.attention_mask.clone()),
            batch.position_ids.clone(),
            None,
        )?;
        let logits = opts.return_logits.then(|| self.lm_logits(hidden.clone()));
        let loss = lm_head_loss(
            hidden,
            self.model.embed_tokens.weight.val(),
            self.config.final_logit_softcapping,
            batch.labels.clone(),
            opts.with_grad,
        );
        Ok(TrainOutput { loss, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::ids_tensor;
    use automodel_core::CpuBackend;
    use serde_json::Value;

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
        Gemma3ForCausalLM::new(&Initializer::random(&dev, DType::F32, 0.3), cfg).unwrap()
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
                Some(ids_tensor::<B>(&[vec![1; 3]], &dev)),
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
        let ms = Gemma3ForCausalLM::<B>::new(&Initializer::random(&dev, DType::F32, 0.3), &sliding)
            .unwrap();
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
