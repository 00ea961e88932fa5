//! What the trainer needs of a model beyond [`CausalLm`] (the training forward and what follows
//! each optimizer step, both implemented beside each model): saving it whole, and greedy answers
//! for the generation metrics. Implemented for Gemma 3, the Gemma 3n causal LM and the full
//! (multimodal) Gemma 3n.

use std::path::Path;

use automodel_core::AutodiffBackend;
use automodel_data::HostBatch;
use automodel_gemma3n::{AudioInput, Gemma3nForConditionalGeneration, MultimodalInput};
use automodel_peft::PeftModel;
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_text::generate::TextPrompt;
use automodel_text::{CausalLm, Gemma3nForCausalLM, Generate, GenerationConfig};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::TrainError;

/// A model the trainer can fine-tune.
///
/// The inference copy (`valid()`) is a causal LM too: validation computes its loss without an
/// autodiff graph.
pub trait TrainModel<B: AutodiffBackend>:
    AutodiffModule<B, InnerModule: CausalLm<B::InnerBackend, Error: std::fmt::Display>>
    + CausalLm<B, Error = Self::ModelError>
    + PeftModel<B>
    + Clone
{
    type ModelError: std::fmt::Display;

    /// Write `config.json` and the weights as a Hugging Face folder.
    fn save_model(&self, dir: &Path, max_shard_bytes: Option<usize>) -> Result<(), TrainError>;

    /// Greedy continuation of a one-row prompt batch: the new ids (stop token excluded).
    fn greedy(
        model: &Self::InnerModule,
        prompt: &HostBatch,
        max_new_tokens: usize,
        stop: &[i64],
    ) -> Result<Vec<i64>, TrainError>;
}

fn model_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

/// The generated ids up to the first stop id.
fn until_stop(ids: &[i64], stop: &[i64]) -> Vec<i64> {
    ids.iter()
        .copied()
        .take_while(|t| !stop.contains(t))
        .collect()
}

macro_rules! text_model {
    ($model:ident) => {
        impl<B: AutodiffBackend> TrainModel<B> for $model<B> {
            type ModelError = <$model<B> as CausalLm<B>>::Error;

            fn save_model(&self, dir: &Path, shard: Option<usize>) -> Result<(), TrainError> {
                self.save_pretrained(dir, shard)
                    .map(|_| ())
                    .map_err(model_err)
            }

            fn greedy(
                model: &$model<B::InnerBackend>,
                prompt: &HostBatch,
                max_new_tokens: usize,
                stop: &[i64],
            ) -> Result<Vec<i64>, TrainError> {
                let out = model
                    .generate(
                        &TextPrompt::single(prompt.input_ids[0].clone()),
                        &GenerationConfig::greedy(max_new_tokens, stop.to_vec()),
                        |_| {},
                    )
                    .map_err(model_err)?;
                Ok(until_stop(&out.generated[0], stop))
            }
        }
    };
}

text_model!(Gemma3ForCausalLM);
text_model!(Gemma3nForCausalLM);

impl<B: AutodiffBackend> TrainModel<B> for Gemma3nForConditionalGeneration<B> {
    type ModelError = automodel_gemma3n::ModelError;

    fn save_model(&self, dir: &Path, shard: Option<usize>) -> Result<(), TrainError> {
        self.save_pretrained(dir, shard)
            .map(|_| ())
            .map_err(model_err)
    }

    fn greedy(
        model: &Gemma3nForConditionalGeneration<B::InnerBackend>,
        prompt: &HostBatch,
        max_new_tokens: usize,
        stop: &[i64],
    ) -> Result<Vec<i64>, TrainError> {
        let device = model.device();
        let input = MultimodalInput {
            input_ids: vec![prompt.input_ids[0].clone()],
            attention_mask: None,
            pixel_values: prompt
                .pixels
                .as_ref()
                .map(|(v, s)| Tensor::from_data(TensorData::new(v.clone(), *s), &device)),
            audio: prompt.audio.as_ref().map(|a| AudioInput {
                features: Tensor::from_data(TensorData::new(a.features.clone(), a.shape), &device),
                valid: a.mask.clone(),
            }),
            labels: None,
        };
        let out = model
            .generate(
                &input,
                &GenerationConfig::greedy(max_new_tokens, stop.to_vec()),
                |_| {},
            )
            .map_err(model_err)?;
        Ok(until_stop(&out.generated[0], stop))
    }
}
