//! One sample to token ids and labels: the chat template, HF's placeholder expansion for media,
//! answer-only (or all-token) labels, and the `max_length` policy.

use automodel_core::loss::IGNORE_INDEX;
use automodel_gemma3n::Gemma3nProcessor;
use automodel_tokenizer::GemmaTokenizer;
use serde::{Deserialize, Serialize};

use crate::conversation::Media;
use crate::error::{DataError, SampleError};
use crate::format::Sample;
use crate::labels::AnswerSpans;
use crate::template::ChatTemplate;

/// What an over-long sample becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Cut at `max_length` (refused when the cut would fall inside media tokens or leave no
    /// label).
    #[default]
    Truncate,
    /// Leave the sample out (counted).
    Drop,
}

/// Which tokens carry a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelMode {
    /// The assistant turns (through their `<end_of_turn>`).
    #[default]
    Answers,
    /// Every token but padding.
    All,
}

/// Encoding settings (recipe `dataset` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    pub max_length: Option<usize>,
    pub overlong: Overlong,
    pub labels: LabelMode,
}

/// A sample as ids and labels, with its media still encoded (decoded by the batch workers).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub images: Vec<Media>,
    pub audio: Vec<Media>,
    pub truncated: bool,
}

impl Encoded {
    /// Tokens that carry a loss.
    pub fn label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Turns samples into [`Encoded`]s for one model.
#[derive(Debug)]
pub struct Encoder {
    pub template: ChatTemplate,
    pub tokenizer: GemmaTokenizer,
    /// For models that take images and audio.
    pub processor: Option<Gemma3nProcessor>,
    pub spans: AnswerSpans,
    pub config: EncodeConfig,
}

impl Encoder {
    /// A text model's encoder (the processor's tokenizer is used when one is given).
    pub fn new(
        template: ChatTemplate,
        tokenizer: GemmaTokenizer,
        processor: Option<Gemma3nProcessor>,
        config: EncodeConfig,
    ) -> Result<Self, DataError> {
        let spans = AnswerSpans::derive(&template, &tokenizer)?;
        Ok(Self {
            template,
            tokenizer,
            processor,
            spans,
            config,
        })
    }

    fn tokens(&self, text: &str, add_bos: bool) -> Result<Vec<i64>, SampleError> {
        Ok(self
            .tokenizer
            .encode(text, add_bos)
            .map_err(|e| SampleError::Template(e.to_string()))?
            .into_iter()
            .map(i64::from)
            .collect())
    }

    /// Ids of the image and audio soft tokens.
    fn media_ids(&self) -> Vec<i64> {
        self.processor
            .iter()
            .flat_map(|p| [p.image_token_id, p.audio_token_id])
            .collect()
    }

    /// The rendered text of a sample (what `automodel-cli data --show` prints).
    pub fn render(&self, sample: &Sample) -> Result<String, SampleError> {
        match sample {
            Sample::Chat(c) => self.template.render(c, false),
            Sample::Text(t) => Ok(t.clone()),
        }
    }

    /// A conversation's ids (the template rendered, media placeholders expanded by the
    /// processor) and its media in order; no labels yet (every label `-100`).
    fn conversation_ids(
        &self,
        c: &crate::conversation::Conversation,
        add_generation_prompt: bool,
    ) -> Result<Encoded, SampleError> {
        let text = self.template.render(c, add_generation_prompt)?;
        let (images, audio) = c.media();
        let (images, audio): (Vec<Media>, Vec<Media>) = (
            images.into_iter().cloned().collect(),
            audio.into_iter().cloned().collect(),
        );
        let ids = if images.is_empty() && audio.is_empty() {
            let has_bos = text.starts_with(&self.template.bos_token);
            self.tokens(&text, !has_bos)?
        } else {
            let p = self
                .processor
                .as_ref()
                .ok_or_else(|| SampleError::Media("this model takes no images or audio".into()))?;
            p.encode_text(&text, images.len(), audio.len())
                .map_err(|e| SampleError::Malformed(e.to_string()))?
        };
        Ok(Encoded {
            labels: vec![IGNORE_INDEX; ids.len()],
            ids,
            images,
            audio,
            truncated: false,
        })
    }

    /// Encode a prompt for generation: the conversation rendered with the model's turn opened
    /// (`add_generation_prompt`), placeholders expanded, no labels (every label `-100`).
    pub fn encode_prompt(
        &self,
        c: &crate::conversation::Conversation,
    ) -> Result<Encoded, SampleError> {
        self.conversation_ids(c, true)
    }

    /// Encode one sample.
    pub fn encode(&self, sample: &Sample) -> Result<Encoded, SampleError> {
        let (mut ids, mut labels, images, audio) = match sample {
            Sample::Chat(c) => {
                c.validate()?;
                let Encoded {
                    ids, images, audio, ..
                } = self.conversation_ids(c, false)?;
                let labels = match self.config.labels {
                    LabelMode::Answers => self.spans.labels(&ids),
                    // media soft tokens stand for embeddings: nothing to predict
                    LabelMode::All => ids
                        .iter()
                        .map(|&t| {
                            if self.media_ids().contains(&t) {
                                IGNORE_INDEX
                            } else {
                                t
                            }
                        })
                        .collect(),
                };
                (ids, labels, images, audio)
            }
            Sample::Text(t) => {
                let mut ids = self.tokens(t, true)?;
                ids.push(i64::from(self.tokenizer.eos_id));
                let labels = ids.clone();
                (ids, labels, Vec::new(), Vec::new())
            }
        };
        let mut truncated = false;
        if let Some(max) = self.config.max_length
            && ids.len() > max
        {
            if self.config.overlong == Overlong::Drop {
                return Err(SampleError::TooLong {
                    tokens: ids.len(),
                    max,
                });
            }
            let media_ids = self.media_ids();
            if ids[max..].iter().any(|t| media_ids.contains(t)) {
                return Err(SampleError::TooLong {
                    tokens: ids.len(),
                    max,
                });
            }
            ids.truncate(max);
            labels.truncate(max);
            truncated = true;
        }
        let e = Encoded {
            ids,
            labels,
            images,
            audio,
            truncated,
        };
        if e.label_tokens() == 0 {
            return Err(SampleError::NoLabels(
                self.config.max_length.unwrap_or(e.ids.len()),
            ));
        }
        Ok(e)
    }
}
