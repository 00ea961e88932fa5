//! Named parameters in Hugging Face layout: one list that serves saving and gradient export.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use crate::weights::TensorMap;

/// A parameter tensor as the model holds it, with how to turn it into the HF layout.
#[derive(Debug, Clone)]
pub enum HfParam<B: Backend> {
    /// Stored exactly as HF stores it.
    D1(Tensor<B, 1>),
    /// Stored exactly as HF stores it.
    D2(Tensor<B, 2>),
    /// A linear weight kept as `[in, out]`; HF stores `[out, in]`.
    Linear(Tensor<B, 2>),
    /// Stored exactly as HF stores it.
    D3(Tensor<B, 3>),
    /// Stored exactly as HF stores it (conv weights).
    D4(Tensor<B, 4>),
}

impl<B: Backend> HfParam<B> {
    /// Shape in HF layout.
    pub fn hf_shape(&self) -> Vec<usize> {
        match self {
            HfParam::D1(t) => t.dims().to_vec(),
            HfParam::D2(t) => t.dims().to_vec(),
            HfParam::Linear(t) => {
                let [i, o] = t.dims();
                vec![o, i]
            }
            HfParam::D3(t) => t.dims().to_vec(),
            HfParam::D4(t) => t.dims().to_vec(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.hf_shape().iter().product()
    }

    /// The value in HF layout.
    pub fn hf_data(&self) -> TensorData {
        match self {
            HfParam::D1(t) => t.to_data(),
            HfParam::D2(t) => t.to_data(),
            HfParam::Linear(t) => t.clone().transpose().into_data(),
            HfParam::D3(t) => t.to_data(),
            HfParam::D4(t) => t.to_data(),
        }
    }
}

impl<B: AutodiffBackend> HfParam<B> {
    /// The gradient in HF layout, if the parameter took part in the backward pass.
    pub fn hf_grad(&self, grads: &B::Gradients) -> Option<TensorData> {
        match self {
            HfParam::D1(t) => t.grad(grads).map(|g| g.into_data()),
            HfParam::D2(t) => t.grad(grads).map(|g| g.into_data()),
            HfParam::Linear(t) => t.grad(grads).map(|g| g.transpose().into_data()),
            HfParam::D3(t) => t.grad(grads).map(|g| g.into_data()),
            HfParam::D4(t) => t.grad(grads).map(|g| g.into_data()),
        }
    }
}

/// Parameters by HF key, in module order.
#[derive(Debug, Clone)]
pub struct ParamList<B: Backend> {
    pub entries: Vec<(String, HfParam<B>)>,
}

impl<B: Backend> Default for ParamList<B> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<B: Backend> ParamList<B> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a parameter.
    pub fn push(&mut self, key: impl Into<String>, p: HfParam<B>) {
        self.entries.push((key.into(), p));
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, p)| p.numel()).sum()
    }

    /// Keys in order.
    pub fn keys(&self) -> Vec<&str> {
        self.entries.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Materialise every value in HF layout, keys prefixed with `prefix`.
    pub fn to_tensor_map(&self, prefix: &str) -> TensorMap {
        let mut m = TensorMap::new();
        for (k, p) in &self.entries {
            m.insert_data(format!("{prefix}{k}"), p.hf_data());
        }
        m
    }
}

/// `"{prefix}.{name}"`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
