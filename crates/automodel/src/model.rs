//! `Gemma3nForConditionalGeneration`: the text decoder with the vision and audio towers, their
//! embedders, and the soft-token merge.

use std::path::Path;

use automodel_audio::{AudioEncoder, AudioOutput};
use automodel_core::WeightError;
use automodel_core::error::KeyProblem;
use automodel_core::init::ParamSource;
use automodel_core::loss::causal_lm_loss;
use automodel_core::params::ParamList;
use automodel_core::weights::{SafeTensorsFiles, WeightLoader};
use automodel_text::generate::ids_tensor;
use automodel_text::model::ignored_key;
use automodel_text::{ForwardOptions, Gemma3nTextModel, KvCache, KvSharing, TextModelOutput};
use automodel_vision::{MobileNetV5Encoder, VisionOutput};
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

use crate::config::Gemma3nConfig;
use crate::embedder::MultimodalEmbedder;
use crate::error::ModelError;

/// Checkpoint prefixes of the components.
pub const TEXT_PREFIX: &str = "model.language_model.";
pub const VISION_PREFIX: &str = "model.vision_tower.timm_model.";
pub const AUDIO_PREFIX: &str = "model.audio_tower.";
pub const EMBED_VISION_PREFIX: &str = "model.embed_vision.";
pub const EMBED_AUDIO_PREFIX: &str = "model.embed_audio.";

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

/// HF `Gemma3nForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct Gemma3nForConditionalGeneration<B: Backend> {
    pub language_model: Gemma3nTextModel<B>,
    pub vision_tower: MobileNetV5Encoder<B>,
    pub audio_tower: AudioEncoder<B>,
    pub embed_vision: MultimodalEmbedder<B>,
    pub embed_audio: MultimodalEmbedder<B>,
    #[module(skip)]
    pub config: Gemma3nConfig,
}

impl<B: Backend> Gemma3nForConditionalGeneration<B> {
    /// Build every component from per-component sources.
    fn build(
        text: &ParamSource<'_, B>,
        vision: &ParamSource<'_, B>,
        audio: &ParamSource<'_, B>,
        ev: &ParamSource<'_, B>,
        ea: &ParamSource<'_, B>,
        cfg: &Gemma3nConfig,
    ) -> Result<Self, ModelError> {
        let h = cfg.text.hidden_size;
        Ok(Self {
            language_model: Gemma3nTextModel::new(text, &cfg.text),
            vision_tower: MobileNetV5Encoder::new(vision, &cfg.vision.encoder_args()?)?,
            audio_tower: AudioEncoder::new(audio, &cfg.audio),
            embed_vision: MultimodalEmbedder::new(
                ev,
                "",
                cfg.vision.vocab_size,
                cfg.vision.vocab_offset,
                cfg.vision.hidden_size,
                h,
                cfg.vision.rms_norm_eps,
            ),
            embed_audio: MultimodalEmbedder::new(
                ea,
                "",
                cfg.audio.vocab_size,
                cfg.audio.vocab_offset,
                cfg.audio.hidden_size,
                h,
                cfg.audio.rms_norm_eps,
            ),
            config: cfg.clone(),
        })
    }

    /// Random initialisation (tests, benchmarks).
    pub fn from_config(
        cfg: &Gemma3nConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let src = ParamSource::random(device, dtype, cfg.text.initializer_range);
        Self::build(&src, &src, &src, &src, &src, cfg)
    }

    /// Shapes only: the full architecture without allocating weights (to count or list
    /// parameters). Not for computing.
    pub fn shapes(cfg: &Gemma3nConfig, device: &B::Device) -> Result<Self, ModelError> {
        let src = ParamSource::Shapes {
            device: device.clone(),
            dtype: DType::F32,
        };
        Self::build(&src, &src, &src, &src, &src, cfg)
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.params().numel()
    }

    /// MatFormer Mix-n-Match from the top: slice the text decoder in memory (FFN widths per kept
    /// layer, skipped layers), e.g. to run E4B weights as an E2B-sized model. The config follows.
    pub fn with_matformer(
        self,
        spec: &automodel_text::matformer::MatformerSpec,
    ) -> Result<Self, ModelError> {
        let Self {
            language_model,
            vision_tower,
            audio_tower,
            embed_vision,
            embed_audio,
            mut config,
        } = self;
        let language_model = automodel_text::matformer::slice_model(language_model, spec)?;
        let t = &language_model.config;
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
        Ok(Self {
            language_model,
            vision_tower,
            audio_tower,
            embed_vision,
            embed_audio,
            config,
        })
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

    /// Load a model by Hugging Face Hub repo id (`org/name`, revision default `main`): the local
    /// Hub cache first, then a download with the `hub` feature (see [`crate::hub`]).
    pub fn from_hub(
        repo: &str,
        revision: Option<&str>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Self::from_pretrained(crate::hub::resolve(repo, revision)?, device, dtype)
    }

    /// Load from opened checkpoint files; one error lists every missing, unexpected or
    /// mis-shaped key of every component.
    pub fn from_files(
        files: &SafeTensorsFiles,
        cfg: &Gemma3nConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let loaders = [
            TEXT_PREFIX,
            VISION_PREFIX,
            AUDIO_PREFIX,
            EMBED_VISION_PREFIX,
            EMBED_AUDIO_PREFIX,
        ]
        .map(|p| WeightLoader::<B>::new(files, p, device, dtype));
        let src = |i: usize| ParamSource::Checkpoint(&loaders[i]);
        let model = Self::build(&src(0), &src(1), &src(2), &src(3), &src(4), cfg)?;
        let reuse: Vec<usize> = cfg
            .text
            .kv_sharing()?
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m, KvSharing::Reuse { .. }))
            .map(|(i, _)| i)
            .collect();
        let mut problems = Vec::new();
        for (i, l) in loaders.into_iter().enumerate() {
            let result = if i == 0 {
                l.finish(|rel| ignored_key(rel, &reuse))
            } else {
                l.finish(|_| false)
            };
            match result {
                Ok(()) => {}
                Err(WeightError::Mismatch { problems: p }) => problems.extend(p),
                Err(e) => return Err(e.into()),
            }
        }
        let known = [
            TEXT_PREFIX,
            VISION_PREFIX,
            AUDIO_PREFIX,
            EMBED_VISION_PREFIX,
            EMBED_AUDIO_PREFIX,
        ];
        for name in files.names() {
            if !known.iter().any(|p| name.starts_with(p)) && name != "lm_head.weight" {
                problems.push(KeyProblem::Unexpected {
                    key: name.to_string(),
                });
            }
        }
        if !problems.is_empty() {
            return Err(WeightError::Mismatch { problems }.into());
        }
        Ok(model)
    }

    /// Every parameter by full HF key.
    pub fn params(&self) -> ParamList<B> {
        let mut out = ParamList::new();
        let mut add = |prefix: &str, list: ParamList<B>| {
            out.entries.extend(
                list.entries
                    .into_iter()
                    .map(|(k, p)| (format!("{prefix}{k}"), p)),
            );
        };
        let mut l = ParamList::new();
        self.language_model.params(&mut l);
        add(TEXT_PREFIX, l);
        let mut l = ParamList::new();
        self.vision_tower.params(&mut l);
        add(VISION_PREFIX, l);
        let mut l = ParamList::new();
        self.audio_tower.params(&mut l);
        add(AUDIO_PREFIX, l);
        let mut l = ParamList::new();
        self.embed_vision.params("", &mut l);
        add(EMBED_VISION_PREFIX, strip_dot(l));
        let mut l = ParamList::new();
        self.embed_audio.params("", &mut l);
        add(EMBED_AUDIO_PREFIX, strip_dot(l));
        out
    }

    /// Write `config.json` and the weights (single file or shards + index), atomically.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: Option<usize>,
    ) -> Result<(), ModelError> {
        let dir = dir.as_ref();
        self.params().to_tensor_map("").save(dir, max_shard_bytes)?;
        let text = serde_json::to_string_pretty(&self.config.raw).expect("serialisable");
        automodel_core::weights::write_atomic(&dir.join("config.json"), text.as_bytes())?;
        Ok(())
    }

    fn dtype(&self) -> DType {
        self.language_model.dtype()
    }

    /// Embeddings with every multimodal token merged in.
    fn embed(&self, input: &MultimodalInput<B>, trace: bool) -> Result<Embedded<B>, ModelError> {
        let cfg = &self.config;
        let device = self.language_model.embed_tokens.weight.device();
        let ids = &input.input_ids;
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
        let mut e = self.language_model.embed(ids_t.clone());
        let token_part = self.language_model.per_layer_token_embeds(ids_t.clone());
        let h = e.dims()[2];
        let (vo, ao) = (
            cfg.vision.vocab_offset as i64,
            cfg.audio.vocab_offset as i64,
        );
        // Hard multimodal tokens (e.g. end-of-image) go through the embedders.
        for (lo, hi, emb) in [(vo, ao, &self.embed_vision), (ao, vocab, &self.embed_audio)] {
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
        if let Some(pv) = &input.pixel_values {
            let vis = if trace {
                self.vision_tower.forward_traced(pv.clone())
            } else {
                VisionOutput {
                    features: self.vision_tower.forward(pv.clone()),
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
            let feats = self.embed_vision.soft(soft.cast(self.dtype()));
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
        if let Some(a) = &input.audio {
            let enc = if trace {
                self.audio_tower
                    .forward_traced(a.features.clone(), &a.valid)?
            } else {
                self.audio_tower.forward(a.features.clone(), &a.valid)?
            };
            let feats = self.embed_audio.soft(enc.encodings.clone());
            let [na, ta, _] = feats.dims();
            let per_clip = cfg.audio_soft_tokens_per_image;
            if ta > per_clip {
                return Err(ModelError::Input(format!(
                    "a clip gives {ta} audio tokens, more than audio_soft_tokens_per_image {per_clip}"
                )));
            }
            let pad_id =
                Tensor::<B, 2, Int>::from_data(TensorData::new(vec![vocab - 1], [1, 1]), &device);
            let pad = self.embed_audio.hard(pad_id); // [1, 1, H]
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

    /// One forward over any mix of text, images and audio.
    pub fn forward(
        &self,
        input: &MultimodalInput<B>,
        opts: ForwardOptions,
    ) -> Result<ConditionalOutput<B>, ModelError> {
        let emb = self.embed(input, opts.trace)?;
        let text = self.language_model.forward_embeds(
            emb.inputs_embeds,
            Some(emb.token_part.clone()),
            input.attention_mask.as_deref(),
            None,
            None,
            opts,
        )?;
        let logits = self
            .language_model
            .lm_logits(text.last_hidden_state.clone());
        let loss = match &input.labels {
            Some(l) => causal_lm_loss(logits.clone(), ids_tensor::<B>(l, &logits.device())),
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

    /// Forward with a KV cache (prefill or one decoding step); returns the last position's logits `[B, V]`.
    pub fn forward_cached(
        &self,
        input: &MultimodalInput<B>,
        position_ids: &[Vec<i64>],
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let emb = self.embed(input, false)?;
        let out = self.language_model.forward_embeds(
            emb.inputs_embeds,
            Some(emb.token_part),
            input.attention_mask.as_deref(),
            Some(position_ids),
            Some(cache),
            ForwardOptions::default(),
        )?;
        let [b, t, _] = out.last_hidden_state.dims();
        let last = out.last_hidden_state.narrow(1, t - 1, 1);
        Ok(self
            .language_model
            .lm_logits(last)
            .reshape([b, self.config.text.vocab_size]))
    }
}

fn strip_dot<B: Backend>(l: ParamList<B>) -> ParamList<B> {
    ParamList {
        entries: l
            .entries
            .into_iter()
            .map(|(k, p)| (k.trim_start_matches('.').to_string(), p))
            .collect(),
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
