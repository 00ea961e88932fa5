//! A recipe carried out: [`run`] loads the model through the registry
//! ([`automodel_models::AutoModel`]), slices it (MatFormer), puts the adapters on or freezes
//! what the recipe freezes, encodes the datasets and trains; [`run_on`] picks the backend a
//! [`DeviceSpec`] names. This is what `automodel-cli finetune` calls.

use std::path::PathBuf;
use std::sync::Arc;

use automodel_core::AutodiffBackend;
use automodel_core::device::{DeviceSpec, OnDevice};
use automodel_data::{DataConfig, Dataset, Loader, Record, Sample};
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_models::AutoModel;
use automodel_text::Gemma3nForCausalLM;
use automodel_text::matformer::MatformerSpec;
use automodel_tokenizer::GemmaTokenizer;
use burn::module::AutodiffModule;
use burn::tensor::DType;

use crate::recipe::{Recipe, RecipeError, TorchDtype};
use crate::trainer::SideFiles;
use crate::{Export, Summary, TrainError, TrainModel, Trainer, Validation};
use automodel_distributed::{Collective, World};

/// Where a run writes and whether it continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The run folder: checkpoints, logs.
    pub run_dir: PathBuf,
    /// Continue from the run folder's latest complete checkpoint.
    pub resume: bool,
    /// This process's place in a data-parallel job (`None`: the only process).
    pub world: Option<World>,
}

impl RunOptions {
    /// The run folder for `recipe`: `output_dir` if given, else `checkpoint.checkpoint_dir`
    /// (relative to the recipe), else with `resume` the newest `runs/<stem>-*` that holds a
    /// checkpoint, else a new `runs/<stem>-<UTC date>-<time>`. The data-parallel world is read
    /// from the environment the launcher sets (torchrun's `RANK`, `WORLD_SIZE`, ...; see
    /// [`World::from_env`]): a process started by `automodel-cli launch` joins its job.
    pub fn for_recipe(
        recipe: &Recipe,
        output_dir: Option<PathBuf>,
        resume: bool,
    ) -> Result<Self, RecipeError> {
        let stem = recipe.stem();
        let run_dir = match (output_dir, &recipe.checkpoint.checkpoint_dir) {
            (Some(d), _) => d,
            (None, Some(d)) => recipe.base().join(d),
            (None, None) if resume => newest_run(stem).ok_or_else(|| RecipeError {
                file: recipe.path.clone(),
                key: None,
                message: format!(
                    "resume: no run of this recipe under runs/{stem}-*; name the run folder"
                ),
            })?,
            (None, None) => {
                let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
                PathBuf::from("runs").join(format!("{stem}-{now}"))
            }
        };
        let world = World::from_env().map_err(|e| RecipeError {
            file: recipe.path.clone(),
            key: None,
            message: e.to_string(),
        })?;
        Ok(Self {
            run_dir,
            resume,
            world,
        })
    }
}

/// The newest `runs/<stem>-*` folder that holds a checkpoint.
fn newest_run(stem: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("runs")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}-")))
                && crate::checkpoint::latest(p).is_some()
        })
        .collect();
    v.sort();
    v.pop()
}

/// Validate `recipe`, fetch the models it names by short name that are missing, and carry it
/// out on the backend and device `device` names (with `distributed.activation_checkpointing`,
/// on Burn's balanced checkpointing).
pub fn run_on(
    recipe: &Recipe,
    options: &RunOptions,
    device: DeviceSpec,
) -> Result<Summary, TrainError> {
    recipe.validate()?;
    recipe.fetch_missing(|m| eprintln!("{m}"))?;
    let device = per_worker(device, options.world.as_ref());
    let job = Job { recipe, options };
    if recipe.distributed.activation_checkpointing {
        automodel_core::device::run_on_checkpointed(device, job)?
    } else {
        automodel_core::device::run_on(device, job)?
    }
}

/// The device of this worker: with a data-parallel world, GPU `N + LOCAL_RANK` for `cuda:N`
/// and `wgpu:N` (so `--device cuda` gives each worker of a machine its own GPU, as
/// `cuda:$LOCAL_RANK` does under torchrun); the CPU and the best/software wgpu adapter as given.
pub fn per_worker(device: DeviceSpec, world: Option<&World>) -> DeviceSpec {
    use automodel_core::device::WgpuAdapter;
    match (world, device) {
        (Some(w), DeviceSpec::Cuda(n)) => DeviceSpec::Cuda(n + w.local_rank),
        (Some(w), DeviceSpec::Wgpu(WgpuAdapter::Discrete(n))) => {
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(n + w.local_rank))
        }
        (_, d) => d,
    }
}

struct Job<'a> {
    recipe: &'a Recipe,
    options: &'a RunOptions,
}

impl OnDevice for Job<'_> {
    type Output = Result<Summary, TrainError>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        run::<B>(self.recipe, self.options, device)
    }
}

fn model_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

/// Validate `recipe` and carry it out on `device`: load (or build) the model, slice it, put
/// the adapters on or freeze, encode the datasets, train. Returns the run's summary.
pub fn run<B: AutodiffBackend>(
    recipe: &Recipe,
    options: &RunOptions,
    device: B::Device,
) -> Result<Summary, TrainError> {
    recipe.validate()?;
    let world_size = options.world.as_ref().map_or(1, |w| w.world_size);
    if let Some(n) = recipe.distributed.dp_size
        && n != world_size
    {
        return Err(TrainError::Config(format!(
            "{}: distributed.dp_size: {n}, but this process is one of {world_size}: start {n} workers with `automodel-cli launch --nproc-per-node {n} -- finetune ...` (or remove the key: the launcher's worker count is used)",
            recipe.path.display()
        )));
    }
    let dtype = match recipe.model.torch_dtype {
        TorchDtype::Float32 => DType::F32,
        TorchDtype::Bfloat16 => DType::BF16,
        TorchDtype::Float16 => unreachable!("refused by validate()"),
    };
    let file = recipe.path.display().to_string();
    automodel_core::device::check_dtype::<B>(&device, dtype)
        .map_err(|e| TrainError::Config(format!("{file}: model.torch_dtype: {e}")))?;
    let model_path = recipe.model_path()?;
    let loaded = match &recipe.model.config {
        None => AutoModel::<B>::from_pretrained(&model_path, &device, dtype).map_err(model_err)?,
        Some(c) => {
            let seed = recipe.model.init_seed.unwrap_or(recipe.seed);
            match recipe.released_config()? {
                // the released sizes, every value from the counter formula
                Some(cfg) => AutoModel::Gemma3n(
                    Gemma3nForConditionalGeneration::<B>::from_counter_weights(
                        &cfg, seed, &device, dtype,
                    )
                    .map_err(model_err)?,
                ),
                None => {
                    automodel_core::seed::<B>(&device, seed);
                    let tok = recipe.text_side(false)?.tokenizer;
                    let dir = recipe.base().join(c);
                    AutoModel::<B>::from_config(&dir, Some(tok), &device, dtype)
                        .map_err(model_err)?
                }
            }
        }
    };
    let spec = recipe.model.matformer.as_ref().map(|m| MatformerSpec {
        ffn_widths: m.ffn_widths.clone(),
        skip_layers: m.skip_layers.clone(),
    });
    if spec.is_some() && matches!(loaded, AutoModel::Gemma3(..)) {
        return Err(TrainError::Config(format!(
            "{file}: model.matformer needs a Gemma 3n model"
        )));
    }
    let side = side_files(recipe, &model_path, &loaded);
    match loaded {
        AutoModel::Gemma3(m, _) => train(m, recipe, options, device, side),
        AutoModel::Gemma3nText(m, _) => {
            // sliced on the inner backend: the sliced tensors become fresh leaves
            let m = match &spec {
                Some(s) => {
                    let mut inner = m.valid();
                    inner.model = automodel_text::matformer::slice_model(inner.model, s)
                        .map_err(model_err)?;
                    Gemma3nForCausalLM::<B>::from_inner(inner)
                }
                None => m,
            };
            train(m, recipe, options, device, side)
        }
        AutoModel::Gemma3n(m) => {
            let m = match &spec {
                Some(s) => Gemma3nForConditionalGeneration::<B>::from_inner(
                    m.valid().with_matformer(s).map_err(model_err)?,
                ),
                None => m,
            };
            train(m, recipe, options, device, side)
        }
    }
}

/// What writes the tokenizer (and other side) files into each checkpoint's `model/`: the
/// source folder's files, or for a GGUF file its vocabulary written as Hugging Face files.
fn side_files<B: automodel_core::Backend>(
    recipe: &Recipe,
    source: &std::path::Path,
    loaded: &AutoModel<B>,
) -> SideFiles {
    let src = source.to_path_buf();
    match loaded {
        AutoModel::Gemma3(m, tok) if src.is_file() => {
            let (tok, n): (GemmaTokenizer, usize) = (tok.clone(), m.config.max_position_embeddings);
            Box::new(move |dir| {
                automodel_models::convert::write_tokenizer_files(&tok, n, dir)
                    .map(|_| ())
                    .map_err(model_err)
            })
        }
        // built from model.config: the tokenizer's folder, when it is one
        _ if recipe.model.config.is_some() => Box::new(move |dir| {
            if src.is_dir() {
                automodel_core::weights::copy_side_files(&src, dir)?;
            }
            Ok(())
        }),
        _ => Box::new(move |dir| {
            automodel_core::weights::copy_side_files(&src, dir)?;
            Ok(())
        }),
    }
}

/// Read a dataset section's records.
fn read(recipe: &Recipe, name: &str, cfg: &DataConfig) -> Result<Vec<Record>, TrainError> {
    cfg.read(recipe.base())
        .map_err(|e| TrainError::Config(format!("{}: {name}: {e}", recipe.path.display())))
}

/// Encode a dataset section's records into a loader.
fn loader(
    recipe: &Recipe,
    name: &str,
    cfg: &DataConfig,
    records: Vec<Record>,
    batch_size: usize,
) -> Result<Loader, TrainError> {
    let at = |e: automodel_data::DataError| {
        TrainError::Config(format!("{}: {name}: {e}", recipe.path.display()))
    };
    let encoder = Arc::new(recipe.encoder(cfg, true)?);
    let data = Dataset::prepare(records, &encoder, cfg.bad_samples).map_err(at)?;
    if data.report.skipped_count() > 0 {
        tracing::warn!("{name}: {}", data.report);
    }
    Loader::new(encoder, Arc::new(data), cfg.loader_config(batch_size)).map_err(at)
}

fn train<B: AutodiffBackend, M: TrainModel<B>>(
    model: M,
    recipe: &Recipe,
    options: &RunOptions,
    device: B::Device,
    side_files: SideFiles,
) -> Result<Summary, TrainError> {
    let file = recipe.path.display().to_string();
    let settings = recipe.settings();
    // the adapters' random initialisation follows the recipe's seed
    automodel_core::seed::<B>(&device, settings.seed);
    let (model, export) = match &recipe.peft {
        Some(cfg) => {
            let peft_err =
                |e: automodel_peft::PeftError| TrainError::Config(format!("{file}: peft: {e}"));
            let (t, prefix) = model.tree();
            let lin = automodel_core::tree::linear_paths(t, prefix);
            let modules = automodel_peft::inject::module_paths(t, prefix);
            let plan = automodel_peft::inject::plan(cfg, &lin, &modules).map_err(peft_err)?;
            let (model, cov) = automodel_peft::apply_lora(model, cfg).map_err(peft_err)?;
            eprintln!(
                "LoRA r {} alpha {}: {} trainable parameters",
                cfg.r,
                cfg.alpha,
                cov.trainable()
            );
            let base_model = recipe
                .model
                .pretrained_model_name_or_path
                .clone()
                .unwrap_or_default();
            (
                model,
                Export::Lora {
                    config: cfg.clone(),
                    plan,
                    base_model,
                },
            )
        }
        None => {
            let freeze = recipe.freeze_config.unwrap_or_default();
            let (model, cov) = automodel_peft::apply_freeze(model, &freeze);
            eprintln!("full fine-tuning: {} trainable parameters", cov.trainable());
            (model, Export::Full)
        }
    };
    let ss = &settings.step_scheduler;
    let records = read(recipe, "dataset", &recipe.dataset)?;
    let train_loader = loader(
        recipe,
        "dataset",
        &recipe.dataset,
        records,
        ss.local_batch_size,
    )?;
    let validation = match &recipe.validation_dataset {
        Some(v) => {
            let records = read(recipe, "validation_dataset", v)?;
            // the prompts of the generation metric (only these samples are kept twice)
            let n = settings.evaluation.num_samples;
            let samples: Vec<Sample> = records
                .iter()
                .filter_map(|r| r.sample.clone().ok())
                .take(n)
                .collect();
            let loader = loader(
                recipe,
                "validation_dataset",
                v,
                records,
                ss.local_batch_size,
            )?;
            Some(Validation::new(loader, &samples, n)?)
        }
        None => None,
    };
    // the rendezvous comes after the slow part (loading, encoding), so that the workers'
    // timeout measures how far apart they are, not how long a model takes to load
    let parallel = match &options.world {
        Some(w) => {
            let inner = burn::tensor::Tensor::<B, 1>::zeros([1], &device)
                .inner()
                .device();
            Some(
                Collective::<B::InnerBackend>::join(w.clone(), &inner)
                    .map_err(|e| TrainError::Parallel(e.to_string()))?,
            )
        }
        None => None,
    };
    let trainer = Trainer {
        model,
        device,
        settings: settings.clone(),
        train: train_loader,
        validation,
        run_dir: options.run_dir.clone(),
        export,
        side_files,
        recipe: recipe.to_yaml(),
        parallel,
    };
    eprintln!(
        "{} steps of {} rows ({} per micro-batch) on {} training samples",
        trainer.total_steps()?,
        ss.global_batch_size,
        ss.local_batch_size,
        trainer.train.data.len()
    );
    trainer.run(options.resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automodel_core::device::WgpuAdapter;

    #[test]
    fn each_worker_of_a_machine_takes_its_own_gpu() {
        let w = World {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            local_world_size: 2,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            node_addr: "127.0.0.1".into(),
            data_port: 29504,
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            per_worker(DeviceSpec::Cuda(0), Some(&w)),
            DeviceSpec::Cuda(1)
        );
        assert_eq!(
            per_worker(DeviceSpec::Cuda(2), Some(&w)),
            DeviceSpec::Cuda(3)
        );
        assert_eq!(per_worker(DeviceSpec::Cuda(2), None), DeviceSpec::Cuda(2));
        assert_eq!(
            per_worker(DeviceSpec::Wgpu(WgpuAdapter::Discrete(0)), Some(&w)),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(1))
        );
        assert_eq!(per_worker(DeviceSpec::Cpu, Some(&w)), DeviceSpec::Cpu);
        assert_eq!(
            per_worker(DeviceSpec::Wgpu(WgpuAdapter::Cpu), Some(&w)),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu)
        );
    }
}
