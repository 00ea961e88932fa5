//! `Gemma3nForConditionalGeneration`: the text decoder with the vision and audio towers, their
//! embedders, and the soft-token merge.

use std::path::Path;

use automodel_audio::{AudioEncoder, AudioOutput};
use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::loss::causal_lm_loss;
use automodel_core::tree;
use automodel_core::weights::{CounterWeights, SafeTensorsFiles, TensorSource, WeightLoader};
use automodel_text::gemma3n::model::{
    CONDITIONAL_PREFIX as TEXT_PREFIX, ignored_key, reusing_layers,
};
use automodel_text::generate::{Generate, PREFILL_CHUNK, host_rows, ids_tensor, in_chunks};
use automodel_text::{
    CausalLm, ForwardOptions, Gemma3nTextModel, KvCache, TextModelOutput, TrainBatch, TrainOptions,
    TrainOutput,
};
use automodel_vision::{VisionOutput, VisionTower};
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

use crate::config::Gemma3nConfig;
use crate::embedder::MultimodalEmbedder;
use crate::error::ModelError;

/// Audio input: log-mel features `[B', T, F]` and the feature extractor's mask (true = real frame).
#[derive(Debug, Clone)]
pub struct AudioInput<B: Backend> {
    pub features: Tensor<B, 3>,
    pub valid: Vec<Vec<bool>>,
}

/// One forward's inputs. Placeholders (`image_token_id`, `audio_token_id`) in `input_ids` are
/// replaced, in order, by the soft tokens of the images and clips.
#[derive(Debug, Clone)]
pub struct MultimodalInput<B: Backend> {
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Option<Vec<Vec<i64>>>,
    pub pixel_values: Option<Tensor<B, 4>>,
    pub audio: Option<AudioInput<B>>,
    /// `-100` = not predicted.
    pub labels: Option<Vec<Vec<i64>>>,
}

impl<B: Backend> MultimodalInput<B> {
    /// Text only.
    pub fn text(input_ids: Vec<Vec<i64>>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            pixel_values: None,
            audio: None,
            labels: None,
        }
    }
}

/// Outputs of [`Gemma3nForConditionalGeneration::forward`].
#[derive(Debug, Clone)]
pub struct ConditionalOutput<B: Backend> {
    pub logits: Tensor<B, 3>,
    pub loss: Option<Tensor<B, 1>>,
    pub text: TextModelOutput<B>,
    /// Token part of the per-layer inputs `[B, T, L, P]`.
    pub per_layer_token_embeds: Tensor<B, 4>,
    /// `embed_vision` of the image soft tokens `[N, S, H]`.
    pub image_features: Option<Tensor<B, 3>>,
    /// `embed_audio` of the audio tower output `[B', T_a, H]` (before padding).
    pub audio_features: Option<Tensor<B, 3>>,
    pub vision: Option<VisionOutput<B>>,
    pub audio: Option<AudioOutput<B>>,
}

/// The merged embeddings of one forward.
struct Embedded<B: Backend> {
    inputs_embeds: Tensor<B, 3>,
    token_part: Tensor<B, 4>,
    image_features: Option<Tensor<B, 3>>,
    audio_features: Option<Tensor<B, 3>>,
    vision: Option<VisionOutput<B>>,
    audio: Option<AudioOutput<B>>,
}

/// HF `Gemma3nModel`: the text decoder, the two towers and their embedders.
#[derive(Module, Debug)]
pub struct Gemma3nModel<B: Backend> {
    pub language_model: Gemma3nTextModel<B>,
    pub vision_tower: VisionTower<B>,
    pub audio_tower: AudioEncoder<B>,
    pub embed_vision: MultimodalEmbedder<B>,
    pub embed_audio: MultimodalEmbedder<B>,
}

/// HF `Gemma3nForConditionalGeneration`: [`Gemma3nModel`] under `model`, with the tied,
/// soft-capped LM head. Field paths are checkpoint keys (`model.language_model.layers.0…`).
#[derive(Module, Debug)]
pub struct Gemma3nForConditionalGeneration<B: Backend> {
    pub model: Gemma3nModel<B>,
    #[module(skip)]
    pub config: Gemma3nConfig,
}

impl<B: Backend> Gemma3nForConditionalGeneration<B> {
    /// The model `cfg` describes, filled by `init`.
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nConfig) -> Result<Self, ModelError> {
        let h = cfg.text.hidden_size;
        let timm_model =
            automodel_vision::MobileNetV5Encoder::new(init, &cfg.vision.encoder_args()?)?;
        Ok(Self {
            model: Gemma3nModel {
                language_model: Gemma3nTextModel::new(init, &cfg.text)?,
                vision_tower: VisionTower { timm_model },
                audio_tower: AudioEncoder::new(init, &cfg.audio)?,
                embed_vision: MultimodalEmbedder::new(
                    init,
                    cfg.vision.vocab_size,
                    cfg.vision.vocab_offset,
                    cfg.vision.hidden_size,
                    h,
                    cfg.vision.rms_norm_eps,
                ),
                embed_audio: MultimodalEmbedder::new(
                    init,
                    cfg.audio.vocab_size,
                    cfg.audio.vocab_offset,
                    cfg.audio.hidden_size,
                    h,
                    cfg.audio.rms_norm_eps,
                ),
            },
            config: cfg.clone(),
        })
    }

    /// Random initialisation (tests, benchmarks).
    pub fn from_config(
        cfg: &Gemma3nConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Self::new(
            &Initializer::random(device, dtype, cfg.text.initializer_range),
            cfg,
        )
    }

    /// Shapes only: the full architecture without allocating weights (to count or list
    /// parameters). Not for computing.
    pub fn shapes(cfg: &Gemma3nConfig, device: &B::Device) -> Result<Self, ModelError> {
        Self::new(&Initializer::shapes(device, DType::F32), cfg)
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        tree::param_infos(self, "").iter().map(|p| p.numel()).sum()
    }

    /// MatFormer Mix-n-Match from the top: slice the text decoder in memory (FFN widths per kept
    /// layer, skipped layers), e.g. to run E4B weights as an E2B-sized model. The config follows.
    pub fn with_matformer(
        self,
        spec: &automodel_text::matformer::MatformerSpec,
    ) -> Result<Self, ModelError> {
        let Self {
            mut model,
            mut config,
        } = self;
        model.language_model = automodel_text::matformer::slice_model(model.language_model, spec)?;
        let t = &model.language_model.config;
        if let Some(obj) = config
            .raw
            .get_mut("text_config")
            .and_then(|v| v.as_object_mut())
        {
            obj.insert("num_hidden_layers".into(), t.num_hidden_layers.into());
            obj.insert(
                "intermediate_size".into(),
                serde_json::to_value(&t.intermediate_size).expect("json"),
            );
            obj.insert("num_kv_shared_layers".into(), t.num_kv_shared_layers.into());
            obj.insert(
                "layer_types".into(),
                serde_json::to_value(t.layer_types()).expect("json"),
            );
            obj.insert(
                "activation_sparsity_pattern".into(),
                serde_json::to_value(t.activation_sparsity()).expect("json"),
            );
        }
        config.text = t.clone();
        Ok(Self { model, config })
    }

    /// Load a local Hugging Face folder: `config.json` and `model.safetensors` (or shards with
    /// `model.safetensors.index.json`), any stored float dtype converted to `dtype`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let cfg = Gemma3nConfig::from_file(dir.join("config.json"))?;
        let files = SafeTensorsFiles::open(dir)?;
        Self::from_files(&files, &cfg, device, dtype)
    }

    /// Load from opened checkpoint files; one error lists every missing, unexpected or
    /// mis-shaped key of every component.
    pub fn from_files(
        files: &dyn TensorSource,
        cfg: &Gemma3nConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let model = Self::new(&Initializer::shapes(device, dtype), cfg)?;
        let loader = WeightLoader::<B>::new(files, "", device, dtype);
        let model = tree::load(model, &loader);
        let reuse = reusing_layers(&cfg.text)?;
        loader.finish(|key| {
            key == "lm_head.weight"
                || key
                    .strip_prefix(TEXT_PREFIX)
                    .is_some_and(|rel| ignored_key(rel, &reuse))
        })?;
        Ok(model)
    }

    /// The model `cfg` describes with weights from the counter formula
    /// ([`automodel_core::weights::CounterWeights`]): every value a hash of its HF key, `seed`
    /// and index, bit for bit what `reference/counter_weights.py` computes. Released sizes
    /// without a download (`Gemma3nConfig::released`).
    pub fn from_counter_weights(
        cfg: &Gemma3nConfig,
        seed: u64,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let shapes = Self::new(&Initializer::shapes(device, dtype), cfg)?;
        let weights = CounterWeights::new(
            seed,
            tree::param_infos(&shapes, "")
                .into_iter()
                .map(|p| (p.key, p.shape)),
        )
        .with_dtype(dtype);
        drop(shapes);
        Self::from_files(&weights, cfg, device, dtype)
    }

    /// Write `config.json` and the weights (single file or shards + index), atomically.
    /// Returns the files written.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: Option<usize>,
    ) -> Result<Vec<std::path::PathBuf>, ModelError> {
        let (config, dir) = (&self.config.raw, dir.as_ref());
        Ok(tree::save_pretrained(
            self,
            "",
            config,
            dir,
            max_shard_bytes,
        )?)
    }

    fn dtype(&self) -> DType {
        self.model.language_model.dtype()
    }

    /// Embeddings of `ids` with every image and clip merged in.
    fn embed(
        &self,
        ids: &[Vec<i64>],
        pixel_values: Option<&Tensor<B, 4>>,
        audio: Option<&AudioInput<B>>,
        trace: bool,
    ) -> Result<Embedded<B>, ModelError> {
        let cfg = &self.config;
        let m = &self.model;
        let device = m.language_model.device();
        let b = ids.len();
        let t = ids.first().map_or(0, |r| r.len());
        if b == 0 || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(
                "input_ids must be a non-empty batch of equal-length rows".into(),
            ));
        }
        let vocab = cfg.text.vocab_size as i64;
        if let Some(bad) = ids.iter().flatten().find(|&&i| i < 0 || i >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary [0, {vocab})"
            )));
        }
        let ids_t = ids_tensor::<B>(ids, &device);
        let mut e = m.language_model.embed(ids_t.clone());
        let token_part = m.language_model.per_layer_token_embeds(ids_t.clone());
        let h = e.dims()[2];
        let (vo, ao) = (
            cfg.vision.vocab_offset as i64,
            cfg.audio.vocab_offset as i64,
        );
        // Hard multimodal tokens (e.g. end-of-image) go through the embedders.
        for (lo, hi, emb) in [(vo, ao, &m.embed_vision), (ao, vocab, &m.embed_audio)] {
            if ids.iter().flatten().any(|&i| i >= lo && i < hi) {
                let mask = ids_t
                    .clone()
                    .greater_equal_elem(lo)
                    .bool_and(ids_t.clone().lower_elem(hi));
                let safe = ids_t.clone().mask_fill(mask.clone().bool_not(), lo);
                let hard = emb.hard(safe);
                e = e.mask_where(mask.unsqueeze_dim::<3>(2).expand([b, t, h]), hard);
            }
        }

        let mut out = Embedded {
            inputs_embeds: e,
            token_part,
            image_features: None,
            audio_features: None,
            vision: None,
            audio: None,
        };
        if let Some(pv) = pixel_values {
            let tower = &m.vision_tower.timm_model;
            let vis = if trace {
                tower.forward_traced(pv.clone())
            } else {
                VisionOutput {
                    features: tower.forward(pv.clone()),
                    traces: Default::default(),
                }
            };
            let [n, c, fh, fw] = vis.features.dims();
            let s = cfg.vision_soft_tokens_per_image;
            if fh * fw != s {
                return Err(ModelError::Input(format!(
                    "the vision tower gives {} tokens per image, the config expects {s}",
                    fh * fw
                )));
            }
            let soft = vis.features.clone().reshape([n, c, s]).swap_dims(1, 2)
                * (cfg.vision.hidden_size as f64).sqrt();
            let feats = m.embed_vision.soft(soft.cast(self.dtype()));
            out.inputs_embeds = scatter(
                out.inputs_embeds,
                ids,
                cfg.image_token_id,
                feats.clone(),
                "image",
            )?;
            out.image_features = Some(feats);
            out.vision = Some(vis);
        }
        if let Some(a) = audio {
            let enc = if trace {
                m.audio_tower.forward_traced(a.features.clone(), &a.valid)?
            } else {
                m.audio_tower.forward(a.features.clone(), &a.valid)?
            };
            let feats = m.embed_audio.soft(enc.encodings.clone());
            let [na, ta, _] = feats.dims();
            let per_clip = cfg.audio_soft_tokens_per_image;
            if ta > per_clip {
                return Err(ModelError::Input(format!(
                    "a clip gives {ta} audio tokens, more than audio_soft_tokens_per_image {per_clip}"
                )));
            }
            let pad_id =
                Tensor::<B, 2, Int>::from_data(TensorData::new(vec![vocab - 1], [1, 1]), &device);
            let pad = m.embed_audio.hard(pad_id); // [1, 1, H]
            let padding: Vec<bool> = enc.padding.iter().flatten().copied().collect();
            let pmask =
                Tensor::<B, 3, Bool>::from_data(TensorData::new(padding, [na, ta, 1]), &device)
                    .expand([na, ta, h]);
            let mut filled = feats
                .clone()
                .mask_where(pmask, pad.clone().expand([na, ta, h]));
            if ta < per_clip {
                filled = Tensor::cat(vec![filled, pad.expand([na, per_clip - ta, h])], 1);
            }
            out.inputs_embeds =
                scatter(out.inputs_embeds, ids, cfg.audio_token_id, filled, "audio")?;
            out.audio_features = Some(feats);
            out.audio = Some(enc);
        }
        Ok(out)
    }

    /// One forward over any mix of text, images and audio: full logits, HF's mean loss when
    /// labels are given, and every intermediate the parity checks compare.
    pub fn forward(
        &self,
        input: &MultimodalInput<B>,
        opts: ForwardOptions,
    ) -> Result<ConditionalOutput<B>, ModelError> {
        let emb = self.embed(
            &input.input_ids,
            input.pixel_values.as_ref(),
            input.audio.as_ref(),
            opts.trace,
        )?;
        let lm = &self.model.language_model;
        let device = lm.device();
        let mask = input
            .attention_mask
            .as_ref()
            .map(|m| ids_tensor::<B>(m, &device));
        let text = lm.forward_embeds(
            emb.inputs_embeds,
            Some(emb.token_part.clone()),
            mask,
            None,
            None,
            opts,
        )?;
        let logits = lm.lm_logits(text.last_hidden_state.clone());
        let loss = match &input.labels {
            Some(l) => causal_lm_loss(logits.clone(), ids_tensor::<B>(l, &device)),
            None => None,
        };
        Ok(ConditionalOutput {
            logits,
            loss,
            text,
            per_layer_token_embeds: emb.token_part,
            image_features: emb.image_features,
            audio_features: emb.audio_features,
            vision: emb.vision,
            audio: emb.audio,
        })
    }

    /// Run embeddings through the decoder with the cache; logits of the last position `[B, V]`.
    fn decode(
        &self,
        emb: Embedded<B>,
        mask: Option<Tensor<B, 2, Int>>,
        positions: Option<Tensor<B, 2, Int>>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let lm = &self.model.language_model;
        let out = lm.forward_embeds(
            emb.inputs_embeds,
            Some(emb.token_part),
            mask,
            positions,
            Some(cache),
            ForwardOptions::default(),
        )?;
        Ok(lm.last_logits(out.last_hidden_state))
    }
}

impl<B: Backend> Generate<B> for Gemma3nForConditionalGeneration<B> {
    type Prompt = MultimodalInput<B>;
    type Error = ModelError;

    fn prompt_ids<'a>(&self, prompt: &'a MultimodalInput<B>) -> &'a [Vec<i64>] {
        &prompt.input_ids
    }
    fn prompt_mask<'a>(&self, prompt: &'a MultimodalInput<B>) -> Option<&'a [Vec<i64>]> {
        prompt.attention_mask.as_deref()
    }
    fn new_cache(&self) -> KvCache<B> {
        self.model.language_model.new_cache()
    }
    fn device(&self) -> B::Device {
        self.model.language_model.device()
    }
    fn max_positions(&self) -> usize {
        self.config.text.max_position_embeddings
    }
    /// Images and audio are encoded once, here; the decoder then runs the prompt in chunks.
    fn prefill(
        &self,
        prompt: &MultimodalInput<B>,
        mask: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let emb = self.embed(
            &prompt.input_ids,
            prompt.pixel_values.as_ref(),
            prompt.audio.as_ref(),
            false,
        )?;
        let [b, t, _] = emb.inputs_embeds.dims();
        in_chunks(t, PREFILL_CHUNK, |r| {
            let part = Embedded {
                inputs_embeds: emb.inputs_embeds.clone().slice_dim(1, r.clone()),
                token_part: emb.token_part.clone().slice_dim(1, r.clone()),
                image_features: None,
                audio_features: None,
                vision: None,
                audio: None,
            };
            let mask = mask.clone().slice([0..b, r.clone()]);
            let positions = positions.clone().slice([0..b, r]);
            self.decode(part, Some(mask), Some(positions), cache)
        })
    }
    fn step(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let emb = self.embed(&host_rows(&ids), None, None, false)?;
        self.decode(emb, None, None, cache)
    }
}

impl<B: Backend> CausalLm<B> for Gemma3nForConditionalGeneration<B> {
    type Error = ModelError;

    fn after_optimizer_step(mut self) -> Self {
        self.model.language_model = self.model.language_model.after_optimizer_step();
        self
    }

    fn forward_train(
        &self,
        batch: &TrainBatch<B>,
        opts: TrainOptions,
    ) -> Result<TrainOutput<B>, ModelError> {
        batch.validate()?;
        // The soft-token merge needs the placeholder positions on the host.
        let ids = host_rows(&batch.input_ids);
        let audio = batch.audio.as_ref().map(|(features, valid)| {
            let [n, f] = valid.dims();
            // through int: a backend may store booleans as u8 or u32 (wgpu), not as `bool`
            let flat: Vec<bool> = valid
                .clone()
                .int()
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v != 0)
                .collect();
            AudioInput {
                features: features.clone(),
                valid: (0..n).map(|r| flat[r * f..(r + 1) * f].to_vec()).collect(),
            }
        });
        let emb = self.embed(&ids, batch.pixel_values.as_ref(), audio.as_ref(), false)?;
        let lm = &self.model.language_model;
        let fwd = ForwardOptions {
            training: opts.training,
            ..Default::default()
        };
        let out = lm.forward_embeds(
            emb.inputs_embeds,
            Some(emb.token_part),
            Some(batch.attention_mask.clone()),
            batch.position_ids.clone(),
            None,
            fwd,
        )?;
        Ok(lm.train_output(out.last_hidden_state, batch, opts))
    }
}

/// Replace the rows of `e` `[B, T, H]` where `ids == token` by `feats` `[N, S, H]` in row-major
/// order (HF `masked_scatter`); the counts must agree.
fn scatter<B: Backend>(
    e: Tensor<B, 3>,
    ids: &[Vec<i64>],
    token: i64,
    feats: Tensor<B, 3>,
    what: &str,
) -> Result<Tensor<B, 3>, ModelError> {
    let [b, t, h] = e.dims();
    let [n, s, _] = feats.dims();
    let positions = ids.iter().flatten().filter(|&&i| i == token).count();
    if positions != n * s {
        return Err(ModelError::Input(format!(
            "the prompt has {positions} {what} placeholder tokens (id {token}) but {n} {what} input(s) give {} soft tokens ({s} each)",
            n * s
        )));
    }
    let mut index = Vec::with_capacity(b * t);
    let mut k = 0i64;
    for (p, &id) in ids.iter().flatten().enumerate() {
        if id == token {
            index.push((b * t) as i64 + k);
            k += 1;
        } else {
            index.push(p as i64);
        }
    }
    let device = e.device();
    let all = Tensor::cat(vec![e.reshape([b * t, h]), feats.reshape([n * s, h])], 0);
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b * t]), &device);
    Ok(all.select(0, idx).reshape([b, t, h]))
}
