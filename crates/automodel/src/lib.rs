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

/// Errors of [`export_gguf`].
#[derive(Debug, thiserror::Error)]
pub enum ExportGgufError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the adapter {path}: {source}")]
    Adapter {
        path: std::path::PathBuf,
        source: automodel_peft::PeftError,
    },
    #[error(transparent)]
    Template(#[from] automodel_data::DataError),
}

/// Export a model as a GGUF file for llama.cpp, Ollama or LM Studio: `model` (a GGUF file or a
/// Hugging Face folder) with the LoRA adapter in `adapter` merged first, written to `out` as
/// `options` say (see [`models::export`]). The chat template stored is the source's own, else
/// the folder's, else the built-in Gemma template. The destination is checked before anything is
/// loaded; the file is written whole or not at all.
pub fn export_gguf(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    out: &std::path::Path,
    options: &models::export::ExportOptions,
) -> Result<models::export::ExportSummary, ExportGgufError> {
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
    let loaded = AutoModel::<CpuBackend>::from_pretrained(model, &device, dtype)?;
    let loaded = match (loaded, adapter) {
        (m, None) => m,
        (AutoModel::Gemma3(m, tok), Some(dir)) => AutoModel::Gemma3(merged(m, dir)?, tok),
        (AutoModel::Gemma3nText(m, tok), Some(dir)) => AutoModel::Gemma3nText(merged(m, dir)?, tok),
        (AutoModel::Gemma3n(m), Some(dir)) => AutoModel::Gemma3n(merged(m, dir)?),
    };
    Ok(models::export::export_gguf(
        &loaded, &source, out, &options,
    )?)
}

/// `model` with the adapter in `dir` merged into its weights.
fn merged<B: Backend, M: PeftModel<B>>(
    model: M,
    dir: &std::path::Path,
) -> Result<M, ExportGgufError> {
    let (m, cfg, _, _) = load_adapter(model, dir).map_err(|source| ExportGgufError::Adapter {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(merge(m, &cfg))
}
