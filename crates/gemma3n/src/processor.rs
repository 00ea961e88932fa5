//! `Gemma3nProcessor`: tokenizer + image processor + audio feature extractor → model inputs,
//! as Hugging Face's `Gemma3nProcessor` builds them.
//!
//! Every `<image_soft_token>` in a prompt stands for one image and becomes
//! `"\n\n<start_of_image>" + "<image_soft_token>" × vision_soft_tokens_per_image + "<end_of_image>\n\n"`;
//! every `<audio_soft_token>` stands for one clip and becomes the same with the audio markers and
//! `audio_soft_tokens_per_image` tokens. The expanded text is tokenized as a whole (with `<bos>`),
//! exactly as HF replaces the placeholder in the string before tokenizing. Images go through the
//! image processor, clips through the log-mel feature extractor.

use std::path::Path;

use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};
use automodel_core::Backend;
use automodel_tokenizer::GemmaTokenizer;
use automodel_vision::processor::{ImageProcessorConfig, RgbImage};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::Gemma3nConfig;
use crate::error::ModelError;
use crate::model::{AudioInput, MultimodalInput};

/// Text of the multimodal markers (HF's tokenizer attributes `boi_token`, `image_token`, …).
pub const IMAGE_TOKEN: &str = "<image_soft_token>";
pub const BOI_TOKEN: &str = "<start_of_image>";
pub const EOI_TOKEN: &str = "<end_of_image>";
pub const AUDIO_TOKEN: &str = "<audio_soft_token>";
pub const BOA_TOKEN: &str = "<start_of_audio>";
pub const EOA_TOKEN: &str = "<end_of_audio>";

/// Which side of a shorter row padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// After the tokens (training batches).
    #[default]
    Right,
    /// Before the tokens (batched generation).
    Left,
}

/// One prompt: text with placeholders, and the media they stand for, in order.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub text: String,
    pub images: Vec<RgbImage>,
    /// 16 kHz mono samples.
    pub audio: Vec<Vec<f32>>,
}

/// HF `Gemma3nProcessor`.
#[derive(Debug)]
pub struct Gemma3nProcessor {
    pub tokenizer: GemmaTokenizer,
    pub image_processor: ImageProcessorConfig,
    pub feature_extractor: FeatureExtractor,
    pub image_seq_length: usize,
    pub audio_seq_length: usize,
    /// Token ids the expansion must produce (from the model config).
    pub image_token_id: i64,
    pub audio_token_id: i64,
    pub pad_token_id: i64,
}

impl Gemma3nProcessor {
    /// A processor for a model with config `cfg`. The tokenizer must map the marker strings to
    /// the config's ids (a mismatch would put soft tokens where the model does not look).
    pub fn new(
        tokenizer: GemmaTokenizer,
        image_processor: ImageProcessorConfig,
        feature_extractor: FeatureExtractor,
        cfg: &Gemma3nConfig,
    ) -> Result<Self, ModelError> {
        for (text, id, field) in [
            (IMAGE_TOKEN, cfg.image_token_id, "image_token_id"),
            (BOI_TOKEN, cfg.boi_token_id, "boi_token_id"),
            (EOI_TOKEN, cfg.eoi_token_id, "eoi_token_id"),
            (AUDIO_TOKEN, cfg.audio_token_id, "audio_token_id"),
            (BOA_TOKEN, cfg.boa_token_id, "boa_token_id"),
            (EOA_TOKEN, cfg.eoa_token_id, "eoa_token_id"),
        ] {
            let got = tokenizer.inner.token_to_id(text).map(i64::from);
            if got != Some(id) {
                return Err(ModelError::Input(format!(
                    "the tokenizer maps `{text}` to {got:?}, but the config's {field} is {id}"
                )));
            }
        }
        Ok(Self {
            pad_token_id: i64::from(tokenizer.pad_id),
            tokenizer,
            image_processor,
            feature_extractor,
            image_seq_length: cfg.vision_soft_tokens_per_image,
            audio_seq_length: cfg.audio_soft_tokens_per_image,
            image_token_id: cfg.image_token_id,
            audio_token_id: cfg.audio_token_id,
        })
    }

    /// From a model folder: `tokenizer.json`, and `preprocessor_config.json` (image and audio
    /// settings) when present (else the released defaults).
    pub fn from_pretrained(dir: impl AsRef<Path>, cfg: &Gemma3nConfig) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let tokenizer = GemmaTokenizer::from_file(dir.join("tokenizer.json"))?;
        let pp = dir.join("preprocessor_config.json");
        let (image, audio) = if pp.is_file() {
            (
                ImageProcessorConfig::from_file(&pp)?,
                FeatureExtractorConfig::from_file(&pp)?,
            )
        } else {
            (
                ImageProcessorConfig::default(),
                FeatureExtractorConfig::default(),
            )
        };
        Self::new(tokenizer, image, FeatureExtractor::new(audio)?, cfg)
    }

    /// The text HF tokenizes: every placeholder replaced by its full marker sequence.
    pub fn expand(&self, text: &str) -> String {
        let image = format!(
            "\n\n{BOI_TOKEN}{}{EOI_TOKEN}\n\n",
            IMAGE_TOKEN.repeat(self.image_seq_length)
        );
        let audio = format!(
            "\n\n{BOA_TOKEN}{}{EOA_TOKEN}\n\n",
            AUDIO_TOKEN.repeat(self.audio_seq_length)
        );
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        loop {
            let next = [(IMAGE_TOKEN, &image), (AUDIO_TOKEN, &audio)]
                .into_iter()
                .filter_map(|(tok, rep)| rest.find(tok).map(|i| (i, tok, rep)))
                .min_by_key(|(i, _, _)| *i);
            match next {
                Some((i, tok, rep)) => {
                    out.push_str(&rest[..i]);
                    out.push_str(rep);
                    rest = &rest[i + tok.len()..];
                }
                None => {
                    out.push_str(rest);
                    return out;
                }
            }
        }
    }

    /// Token ids of one prompt's text, expanded, with `<bos>` first (added unless the text,
    /// e.g. a rendered chat template, already starts with it), checking that it has one
    /// placeholder per image and per clip.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<i64>, ModelError> {
        self.encode_text(&prompt.text, prompt.images.len(), prompt.audio.len())
    }

    /// [`Self::encode`] for a text that stands for `images` images and `clips` clips (the media
    /// themselves are not needed to tokenize).
    pub fn encode_text(
        &self,
        text: &str,
        images: usize,
        clips: usize,
    ) -> Result<Vec<i64>, ModelError> {
        let count = |tok: &str| text.matches(tok).count();
        for (tok, n, what) in [
            (IMAGE_TOKEN, images, "images"),
            (AUDIO_TOKEN, clips, "audio clips"),
        ] {
            if count(tok) != n {
                return Err(ModelError::Input(format!(
                    "the prompt has {} `{tok}` placeholder(s) for {n} {what}",
                    count(tok)
                )));
            }
        }
        let bos = self.tokenizer.inner.id_to_token(self.tokenizer.bos_id);
        let has_bos = bos.is_some_and(|b| text.starts_with(&b));
        Ok(self
            .tokenizer
            .encode(&self.expand(text), !has_bos)?
            .into_iter()
            .map(i64::from)
            .collect())
    }

    /// A batch of prompts as model inputs: ids padded with `pad_token_id` on the `padding` side
    /// and their attention mask, pixel values of every image and log-mel features of every clip
    /// (in prompt order).
    pub fn process<B: Backend>(
        &self,
        prompts: &[Prompt],
        padding: Padding,
        device: &B::Device,
    ) -> Result<MultimodalInput<B>, ModelError> {
        if prompts.is_empty() {
            return Err(ModelError::Input("no prompt given".into()));
        }
        let rows = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>, _>>()?;
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len());
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            let pad = t - r.len();
            let (ids, m) = match padding {
                Padding::Right => (
                    [r.clone(), vec![self.pad_token_id; pad]].concat(),
                    [vec![1; r.len()], vec![0; pad]].concat(),
                ),
                Padding::Left => (
                    [vec![self.pad_token_id; pad], r.clone()].concat(),
                    [vec![0; pad], vec![1; r.len()]].concat(),
                ),
            };
            input_ids.push(ids);
            mask.push(m);
        }
        let images: Vec<RgbImage> = prompts.iter().flat_map(|p| p.images.clone()).collect();
        let pixel_values = if images.is_empty() {
            None
        } else {
            Some(self.image_processor.preprocess::<B>(&images, device)?)
        };
        let clips: Vec<&[f32]> = prompts
            .iter()
            .flat_map(|p| p.audio.iter().map(Vec::as_slice))
            .collect();
        let audio = if clips.is_empty() {
            None
        } else {
            let f = self.feature_extractor.extract(&clips)?;
            let (b, frames, m) = (
                f.features.len(),
                f.frames(),
                self.feature_extractor.config.feature_size,
            );
            let flat: Vec<f32> = f.features.iter().flatten().flatten().copied().collect();
            Some(AudioInput {
                features: Tensor::from_data(TensorData::new(flat, [b, frames, m]), device),
                valid: f.mask,
            })
        };
        Ok(MultimodalInput {
            input_ids,
            attention_mask: Some(mask),
            pixel_values,
            audio,
            labels: None,
        })
    }
}
