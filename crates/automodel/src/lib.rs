//! automodel: Gemma 3n and Gemma 3 in Rust, on Burn — load, fine-tune (LoRA or full), run.
//!
//! The facade over the workspace's crates, each usable on its own:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`core`] | `automodel-core` | backends and devices, layers, safetensors, fused ops |
//! | [`text`] | `automodel-text` | the Gemma 3n MatFormer decoder, Gemma 3, generation |
//! | [`vision`], [`audio`] | `automodel-vision`, `automodel-audio` | Gemma 3n's towers and feature extractors |
//! | [`gguf`], [`tokenizer`] | `automodel-gguf`, `automodel-tokenizer` | GGUF files, the Gemma tokenizer |
//! | [`gemma3n`] | `automodel-gemma3n` | the full (multimodal) Gemma 3n and its processor |
//! | [`models`] | `automodel-models` | [`AutoModel`]: every class behind one registry |
//! | [`peft`] | `automodel-peft` | LoRA adapters PEFT reads and writes, merging, freezing |
//! | [`data`] | `automodel-data` | datasets, chat templates, label masks, packing, loaders |
//! | [`train`] | `automodel-train` | the typed [`Recipe`], the trainer, checkpoints |
//!
//! Fine-tuning from Rust:
//!
//! ```no_run
//! use automodel::{DeviceSpec, Recipe, RunOptions};
//!
//! let mut recipe = Recipe::from_file("recipes/default.yaml", &[])?;
//! recipe.step_scheduler.max_steps = Some(20);
//! let options = RunOptions::for_recipe(&recipe, None, false)?;
//! let summary = automodel::finetune(&recipe, &options, DeviceSpec::Cpu)?;
//! println!("loss {:?} -> {:?}", summary.first_loss, summary.last_loss);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub use automodel_audio as audio;
pub use automodel_core as core;
pub use automodel_data as data;
pub use automodel_distributed as distributed;
pub use automodel_gemma3n as gemma3n;
pub use automodel_gguf as gguf;
pub use automodel_models as models;
pub use automodel_peft as peft;
pub use automodel_text as text;
pub use automodel_tokenizer as tokenizer;
pub use automodel_train as train;
pub use automodel_vision as vision;

pub use automodel_core::device::{DeviceSpec, OnDevice, run_on};
pub use automodel_core::{AutodiffBackend, Backend};
pub use automodel_gemma3n::{Gemma3nForConditionalGeneration, Gemma3nProcessor, ModelError};
pub use automodel_models::{AutoModel, ModelSource};
pub use automodel_peft::{LoraConfig, PeftModel, load_adapter, merge, save_adapter};
pub use automodel_text::gemma3::Gemma3ForCausalLM;
pub use automodel_text::{Gemma3nForCausalLM, Generate, GenerateOutput, GenerationConfig};
pub use automodel_tokenizer::GemmaTokenizer;
pub use automodel_train::{Recipe, RecipeError, RunOptions, Summary, TrainError};

/// Fine-tune as `recipe` says, on the backend and device `device` names: the recipe is
/// validated first (nothing is loaded from a recipe that cannot work), then the model is loaded,
/// adapted or frozen, and trained; checkpoints go to `options.run_dir`.
pub fn finetune(
    recipe: &Recipe,
    options: &RunOptions,
    device: DeviceSpec,
) -> Result<Summary, TrainError> {
    automodel_train::run_on(recipe, options, device)
}

/// Errors of [`export_gguf`], [`merge_lora`] and [`merge_adapter`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the adapter {path}: {source}")]
    Adapter {
        path: PathBuf,
        source: automodel_peft::PeftError,
    },
    #[error(transparent)]
    Template(#[from] automodel_data::DataError),
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
}

/// `model` (any class) with the LoRA adapter in `dir` (PEFT's files) merged into its weights.
pub fn merge_adapter<B: Backend>(model: AutoModel<B>, dir: &Path) -> Result<AutoModel<B>, Error> {
    fn merged<B: Backend, M: PeftModel<B>>(model: M, dir: &Path) -> Result<M, Error> {
        let (m, cfg, _, _) = load_adapter(model, dir).map_err(|source| Error::Adapter {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(merge(m, &cfg))
    }
    Ok(match model {
        AutoModel::Gemma3(m, tok) => AutoModel::Gemma3(merged(m, dir)?, tok),
        AutoModel::Gemma3nText(m, tok) => AutoModel::Gemma3nText(merged(m, dir)?, tok),
        AutoModel::Gemma3n(m) => AutoModel::Gemma3n(merged(m, dir)?),
    })
}

/// Merge the LoRA adapter in `adapter` into `model` (a GGUF file or a Hugging Face folder) and
/// write a plain Hugging Face folder `out` that transformers loads without PEFT: the weights
/// (in shards of at most `max_shard_bytes`), `config.json`, and the base's tokenizer files (a
/// GGUF file's vocabulary written as Hugging Face's files). Existing model files in `out` are
/// kept unless `overwrite`; the folder is written whole or not at all. Returns the files written.
pub fn merge_lora(
    model: &Path,
    adapter: &Path,
    out: &Path,
    max_shard_bytes: Option<usize>,
    overwrite: bool,
) -> Result<Vec<PathBuf>, Error> {
    models::convert::check_overwrite(out, overwrite)?;
    let source = ModelSource::detect(model)?;
    let device = Default::default();
    let loaded = AutoModel::<automodel_core::CpuBackend>::from_pretrained(
        model,
        &device,
        burn::tensor::DType::F32,
    )?;
    let merged = merge_adapter(loaded, adapter)?;
    // merged in memory first; then the weights and config, then the tokenizer files
    automodel_core::weights::write_folder(out, |dir| -> Result<Vec<PathBuf>, Error> {
        let mut written = merged.save_pretrained(dir, max_shard_bytes)?;
        match (&source, &merged) {
            (ModelSource::Gguf(_), AutoModel::Gemma3(m, tok)) => {
                let n = m.config.max_position_embeddings;
                written.extend(models::convert::write_tokenizer_files(tok, n, dir)?);
            }
            (source, _) => written.extend(automodel_core::weights::copy_side_files(
                source.path(),
                dir,
            )?),
        }
        Ok(written)
    })
}

/// Export a model as a GGUF file for llama.cpp, Ollama or LM Studio: `model` (a GGUF file or a
/// Hugging Face folder) with the LoRA adapter in `adapter` merged first, written to `out` as
/// `options` say (see [`models::export`]). The chat template stored is the source's own, else
/// the folder's, else the built-in Gemma template. The destination is checked before anything is
/// loaded; the file is written whole or not at all.
pub fn export_gguf(
    model: &Path,
    adapter: Option<&Path>,
    out: &Path,
    options: &models::export::ExportOptions,
) -> Result<models::export::ExportSummary, Error> {
    use automodel_core::CpuBackend;
    models::export::check_destination(out, options.overwrite)?;
    let source = ModelSource::detect(model)?;
    models::export::check_exportable(&source)?;
    let mut options = options.clone();
    if options.chat_template.is_none() {
        let template = match &source {
            ModelSource::Folder(dir) => data::ChatTemplate::from_dir(dir)?,
            ModelSource::Gguf(_) => data::ChatTemplate::gemma(),
        };
        options.chat_template = Some(template.jinja);
    }
    let device = Default::default();
    let dtype = burn::tensor::DType::F32;
    let mut loaded = AutoModel::<CpuBackend>::from_pretrained(model, &device, dtype)?;
    if let Some(dir) = adapter {
        loaded = merge_adapter(loaded, dir)?;
    }
    Ok(models::export::export_gguf(
        &loaded, &source, out, &options,
    )?)
}
