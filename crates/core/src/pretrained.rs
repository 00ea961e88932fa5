//! [`Pretrained`]: a component (a tower, a decoder) that loads from a Hugging Face checkpoint on
//! its own or from inside a full model's checkpoint, or starts from a random initialisation.

use std::path::Path;

use crate::Backend;
use burn::module::Module;
use burn::tensor::DType;

use crate::config::ConfigError;
use crate::error::WeightError;
use crate::init::Initializer;
use crate::tree::load_component;
use crate::tree::param_infos;
use crate::weights::{CounterWeights, TensorSource, open_checkpoint};

/// A component with its config, its key prefix inside a full checkpoint, and a constructor; the
/// loading paths come with it.
pub trait Pretrained<B: Backend>: Module<B> + Sized {
    type Config;
    type Error: From<WeightError> + From<ConfigError>;
    /// Where the component's keys live inside a full checkpoint (`model.audio_tower.`).
    const PREFIX: &'static str;
    /// A key (relative to the prefix) every checkpoint of the component holds.
    const PROBE: &'static str;

    /// The component `cfg` describes, filled by `init` (errors for a config it cannot build).
    fn build(init: &Initializer<B>, cfg: &Self::Config) -> Result<Self, Self::Error>;
    /// Read the config from a `config.json` (full or bare).
    fn read_config(path: &Path) -> Result<Self::Config, ConfigError>;
    /// Standard deviation of a random initialisation.
    fn init_std(cfg: &Self::Config) -> f64;

    /// Load from checkpoint files (keys under [`Self::PREFIX`], or bare keys), reporting every
    /// missing, unexpected or mis-shaped key at once.
    fn from_files(
        files: &dyn TensorSource,
        cfg: &Self::Config,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, Self::Error> {
        let model = Self::build(&Initializer::shapes(device, dtype), cfg)?;
        Ok(load_component(
            model,
            files,
            Self::PREFIX,
            Self::PROBE,
            device,
            dtype,
        )?)
    }

    /// Load from a checkpoint folder or file; the config comes from `config.json` beside it.
    fn from_pretrained(
        path: impl AsRef<Path>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, Self::Error> {
        let (config, files) = open_checkpoint(path.as_ref())?;
        Self::from_files(&files, &Self::read_config(&config)?, device, dtype)
    }

    /// Weights from the counter formula ([`crate::weights::CounterWeights`]): every value a hash
    /// of its full-model key, `seed` and index, the same bits the reference's numpy computes.
    fn from_counter_weights(
        cfg: &Self::Config,
        seed: u64,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, Self::Error> {
        let shapes = Self::build(&Initializer::shapes(device, dtype), cfg)?;
        let weights = CounterWeights::new(
            seed,
            param_infos(&shapes, Self::PREFIX)
                .into_iter()
                .map(|p| (p.key, p.shape)),
        )
        .with_dtype(dtype);
        Self::from_files(&weights, cfg, device, dtype)
    }

    /// A random initialisation.
    fn init(cfg: &Self::Config, device: &B::Device, dtype: DType) -> Result<Self, Self::Error> {
        Self::build(
            &Initializer::random(device, dtype, Self::init_std(cfg)),
            cfg,
        )
    }
}
