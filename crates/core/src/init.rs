//! Where a model's parameters come from: a checkpoint or a random initialisation. Every module
//! has a single constructor taking a [`ParamSource`], so loading and `from_config` share code.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use crate::weights::WeightLoader;

/// How a parameter is initialised when there is no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with the source's standard deviation.
    Normal,
}

/// A checkpoint to read parameters from, or the settings of a random initialisation.
pub enum ParamSource<'a, B: Backend> {
    /// Read every parameter from the checkpoint (problems are collected by the loader).
    Checkpoint(&'a WeightLoader<'a, B>),
    /// Random initialisation: matrices `N(0, std²)`, norm scales one (zero for `1 + w` norms).
    Random {
        device: B::Device,
        dtype: DType,
        std: f64,
    },
    /// Shapes only: every parameter is a broadcast view of one zero, so a full-size model can be
    /// built to count or list its parameters without allocating them. Not for computing.
    Shapes { device: B::Device, dtype: DType },
}

impl<'a, B: Backend> ParamSource<'a, B> {
    /// A random source.
    pub fn random(device: &B::Device, dtype: DType, std: f64) -> Self {
        ParamSource::Random {
            device: device.clone(),
            dtype,
            std,
        }
    }

    /// The device parameters are created on.
    pub fn device(&self) -> B::Device {
        match self {
            ParamSource::Checkpoint(l) => l.device().clone(),
            ParamSource::Random { device, .. } | ParamSource::Shapes { device, .. } => {
                device.clone()
            }
        }
    }

    /// The dtype parameters are created with.
    pub fn dtype(&self) -> DType {
        match self {
            ParamSource::Checkpoint(l) => l.dtype(),
            ParamSource::Random { dtype, .. } | ParamSource::Shapes { dtype, .. } => *dtype,
        }
    }

    /// The checkpoint tensor `name` (in its stored layout), or a fresh one.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<B, D> {
        match self {
            ParamSource::Checkpoint(l) => l.tensor(name, shape),
            ParamSource::Random { device, dtype, std } => match init {
                Init::Zeros => Tensor::zeros(shape, (device, *dtype)),
                Init::Ones => Tensor::ones(shape, (device, *dtype)),
                Init::Normal => {
                    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, *std), device)
                        .cast(*dtype)
                }
            },
            ParamSource::Shapes { device, dtype } => {
                Tensor::<B, D>::zeros([1; D], (device, *dtype)).expand(shape)
            }
        }
    }
}
