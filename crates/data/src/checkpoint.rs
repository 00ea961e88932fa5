//! What the data pipeline needs of a model: its tokenizer, its chat template and, for Gemma 3n,
//! its processor (placeholder expansion, image and audio preprocessing).

use std::path::Path;

use automodel_audio::features::{FeatureExtractor, FeatureExtractorConfig};
use automodel_gemma3n::{Gemma3nConfig, Gemma3nProcessor};
use automodel_gguf::GgufFile;
use automodel_tokenizer::GemmaTokenizer;
use automodel_vision::processor::ImageProcessorConfig;

use crate::encode::{EncodeConfig, Encoder};
use crate::error::DataError;
use crate::template::ChatTemplate;

/// The text side of a checkpoint.
#[derive(Debug)]
pub struct TextSide {
    pub tokenizer: GemmaTokenizer,
    pub template: ChatTemplate,
    pub processor: Option<Gemma3nProcessor>,
}

impl TextSide {
    /// Open `path`: a GGUF file (Gemma 3: its tokenizer and the built-in Gemma template) or a
    /// Hugging Face folder (`tokenizer.json`, the folder's chat template, and the processor when
    /// `config.json` says `gemma3n`). `media_from_gguf` gives a GGUF file Gemma 3n's processor
    /// over its vocabulary extended by Gemma 3n's multimodal tokens (E2B's layout), to inspect
    /// multimodal data with the real vocabulary before a Gemma 3n checkpoint is at hand.
    pub fn open(path: &Path, media_from_gguf: bool) -> Result<Self, DataError> {
        let file_err = |message: String| DataError::File {
            path: path.to_path_buf(),
            message,
        };
        if path.is_file() {
            // a GGUF file whatever its name: the reader checks the magic bytes
            let gguf = GgufFile::open(path).map_err(|e| {
                file_err(format!(
                    "expected a GGUF file or a Hugging Face folder: {e}"
                ))
            })?;
            if media_from_gguf {
                let tokenizer = GemmaTokenizer::gemma3n_from_gguf(&gguf)?;
                let processor = Gemma3nProcessor::new(
                    tokenizer.clone(),
                    ImageProcessorConfig::default(),
                    FeatureExtractor::new(FeatureExtractorConfig::default())
                        .map_err(|e| DataError::Invalid(e.to_string()))?,
                    &Gemma3nConfig::released("E2B")?,
                )?;
                return Ok(Self {
                    tokenizer,
                    template: ChatTemplate::gemma(),
                    processor: Some(processor),
                });
            }
            return Ok(Self {
                tokenizer: GemmaTokenizer::from_gguf(&gguf)?,
                template: ChatTemplate::gemma(),
                processor: None,
            });
        }
        if !path.is_dir() {
            return Err(file_err(
                "no such file or folder (expected a GGUF file or a Hugging Face folder)".into(),
            ));
        }
        let template = ChatTemplate::from_dir(path)?;
        let cfg = automodel_core::config::read_json(&path.join("config.json"))?;
        if cfg.get("model_type").and_then(|v| v.as_str()) == Some("gemma3n") {
            let config = Gemma3nConfig::from_file(path.join("config.json"))?;
            let processor = Gemma3nProcessor::from_pretrained(path, &config)?;
            return Ok(Self {
                tokenizer: processor.tokenizer.clone(),
                template,
                processor: Some(processor),
            });
        }
        Ok(Self {
            tokenizer: GemmaTokenizer::from_file(path.join("tokenizer.json"))?,
            template,
            processor: None,
        })
    }

    /// The text side of a model built from a config folder (random weights): the tokenizer of
    /// `tokenizer` (a GGUF file, extended by Gemma 3n's multimodal tokens when the config is a
    /// Gemma 3n, or a Hugging Face folder's `tokenizer.json`), the built-in Gemma template, and
    /// for a Gemma 3n config the processor (with `preprocessor_config.json` of `config_dir` when
    /// present).
    pub fn for_config(tokenizer: &Path, config_dir: &Path) -> Result<Self, DataError> {
        let cfg_path = config_dir.join("config.json");
        let cfg = automodel_core::config::read_json(&cfg_path)?;
        if cfg.get("model_type").and_then(|v| v.as_str()) != Some("gemma3n") {
            return Ok(Self {
                tokenizer: Self::config_tokenizer(tokenizer, false)?,
                template: ChatTemplate::gemma(),
                processor: None,
            });
        }
        let pp = config_dir.join("preprocessor_config.json");
        Self::for_gemma3n(
            tokenizer,
            &Gemma3nConfig::from_file(&cfg_path)?,
            pp.is_file().then_some(pp.as_path()),
        )
    }

    /// The text side of a Gemma 3n built from `config` (a released configuration, say): the
    /// tokenizer of `tokenizer` as in [`Self::for_config`], the built-in Gemma template, and the
    /// processor of `preprocessor` (a `preprocessor_config.json`; the released settings without).
    pub fn for_gemma3n(
        tokenizer: &Path,
        config: &Gemma3nConfig,
        preprocessor: Option<&Path>,
    ) -> Result<Self, DataError> {
        let tok = Self::config_tokenizer(tokenizer, true)?;
        let invalid = |e: &dyn std::fmt::Display| DataError::Invalid(e.to_string());
        let (image, audio) = match preprocessor {
            Some(pp) => (
                ImageProcessorConfig::from_file(pp).map_err(|e| invalid(&e))?,
                FeatureExtractorConfig::from_file(pp).map_err(|e| invalid(&e))?,
            ),
            None => (
                ImageProcessorConfig::default(),
                FeatureExtractorConfig::default(),
            ),
        };
        let processor = Gemma3nProcessor::new(
            tok.clone(),
            image,
            FeatureExtractor::new(audio).map_err(|e| invalid(&e))?,
            config,
        )?;
        Ok(Self {
            tokenizer: tok,
            template: ChatTemplate::gemma(),
            processor: Some(processor),
        })
    }

    /// The tokenizer of a model built from a config: a GGUF file's (with Gemma 3n's multimodal
    /// tokens for a Gemma 3n) or a Hugging Face folder's `tokenizer.json`.
    fn config_tokenizer(tokenizer: &Path, gemma3n: bool) -> Result<GemmaTokenizer, DataError> {
        if !tokenizer.is_file() {
            return Ok(GemmaTokenizer::from_file(tokenizer.join("tokenizer.json"))?);
        }
        let gguf = GgufFile::open(tokenizer).map_err(|e| DataError::File {
            path: tokenizer.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(if gemma3n {
            GemmaTokenizer::gemma3n_from_gguf(&gguf)?
        } else {
            GemmaTokenizer::from_gguf(&gguf)?
        })
    }

    /// An encoder with `config`; `template` replaces the checkpoint's chat template.
    pub fn encoder(
        self,
        config: EncodeConfig,
        template: Option<&Path>,
    ) -> Result<Encoder, DataError> {
        let t = match template {
            Some(p) => {
                let text = String::from_utf8(automodel_core::read_file(p)?).map_err(|e| {
                    DataError::File {
                        path: p.to_path_buf(),
                        message: e.to_string(),
                    }
                })?;
                ChatTemplate::new(&text, &self.template.bos_token, &p.display().to_string())?
            }
            None => self.template,
        };
        Encoder::new(t, self.tokenizer, self.processor, config)
    }
}
