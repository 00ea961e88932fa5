//! How a freshly built module's parameters are filled: a random initialisation, or shape-only
//! placeholders that a checkpoint then replaces (see [`crate::tree::load`]).
//!
//! Constructors take an [`Initializer`] and the sizes; they never name a checkpoint key. A
//! parameter's key is its field path in the module tree ([`crate::tree`]), so each key is written
//! exactly once: as a field name.

use crate::Backend;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};

/// What a parameter holds after a random initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with the initializer's standard deviation.
    Normal,
}

/// Random values, or shapes only.
#[derive(Debug, Clone)]
pub enum Initializer<B: Backend> {
    /// Matrices `N(0, std²)`, norm scales one (zero for `1 + w` norms).
    Random {
        device: B::Device,
        dtype: DType,
        std: f64,
    },
    /// Every parameter is a broadcast view of one zero: a full-size model costs no memory. Used
    /// to build a model before loading a checkpoint into it, and to count parameters. Not for
    /// computing.
    Shapes { device: B::Device, dtype: DType },
}

impl<B: Backend> Initializer<B> {
    /// A random initializer.
    pub fn random(device: &B::Device, dtype: DType, std: f64) -> Self {
        Initializer::Random {
            device: device.clone(),
            dtype,
            std,
        }
    }

    /// A shapes-only initializer.
    pub fn shapes(device: &B::Device, dtype: DType) -> Self {
        Initializer::Shapes {
            device: device.clone(),
            dtype,
        }
    }

    /// The device parameters are created on.
    pub fn device(&self) -> B::Device {
        match self {
            Initializer::Random { device, .. } | Initializer::Shapes { device, .. } => {
                device.clone()
            }
        }
    }

    /// The dtype parameters are created with.
    pub fn dtype(&self) -> DType {
        match self {
            Initializer::Random { dtype, .. } | Initializer::Shapes { dtype, .. } => *dtype,
        }
    }

    /// A tensor of `shape` filled as `init` says.
    pub fn tensor<const D: usize>(&self, shape: [usize; D], init: Init) -> Tensor<B, D> {
        match self {
            Initializer::Random { device, dtype, std } => match init {
                Init::Zeros => Tensor::zeros(shape, (device, *dtype)),
                Init::Ones => Tensor::ones(shape, (device, *dtype)),
                // drawn from the CPU backend's generator (seeded by [`crate::seed`]) and moved to
                // the device: the same seed gives the same weights on every backend
                Init::Normal => Tensor::<B, D>::from_data(
                    Tensor::<burn::backend::Flex, D>::random(
                        shape,
                        Distribution::Normal(0.0, *std),
                        &Default::default(),
                    )
                    .into_data(),
                    device,
                )
                .cast(*dtype),
            },
            Initializer::Shapes { device, dtype } => {
                Tensor::<B, D>::zeros([1; D], (device, *dtype)).expand(shape)
            }
        }
    }

    /// A trainable parameter of `shape`.
    pub fn param<const D: usize>(&self, shape: [usize; D], init: Init) -> Param<Tensor<B, D>> {
        Param::from_tensor(self.tensor(shape, init))
    }
}
