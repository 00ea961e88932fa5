//! Gated feed-forward network with optional gaussian top-k activation sparsity.

use automodel_core::Backend;
use automodel_core::init::Initializer;
use automodel_core::nn::{Linear, gelu_tanh, normal_icdf};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// `down(gelu_tanh(sparsify(gate(x))) ⊙ up(x))` (HF `Gemma3MLP` / `Gemma3nTextMLP`). The width
/// is per layer (MatFormer); Gemma 3 has no sparsity.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    /// Target sparsity `s` of the gaussian top-k (0 = off).
    #[module(skip)]
    pub activation_sparsity: f64,
}

impl<B: Backend> Mlp<B> {
    pub fn new(init: &Initializer<B>, hidden: usize, width: usize, sparsity: f64) -> Self {
        Self {
            gate_proj: Linear::new(init, hidden, width),
            up_proj: Linear::new(init, hidden, width),
            down_proj: Linear::new(init, width, hidden),
            activation_sparsity: sparsity,
        }
    }

    /// FFN width.
    pub fn width(&self) -> usize {
        self.gate_proj.d_out()
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut gate = self.gate_proj.forward(x.clone());
        if self.activation_sparsity > 0.0 {
            gate = gaussian_topk(gate, self.activation_sparsity);
        }
        let up = self.up_proj.forward(x);
        self.down_proj.forward(gelu_tanh(gate) * up)
    }
}

/// `relu(g − (mean(g) + std(g)·Φ⁻¹(s)))` over the last dimension, population std, in the input
/// dtype; Φ⁻¹(s) is computed in float32 and rounded to the input dtype, as HF does.
pub fn gaussian_topk<B: Backend, const D: usize>(g: Tensor<B, D>, sparsity: f64) -> Tensor<B, D> {
    let z = normal_icdf(sparsity) as f32;
    let (var, mean) = g.clone().var_mean_bias(D - 1);
    let cutoff = mean + var.sqrt() * (z as f64);
    relu(g - cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = automodel_core::CpuBackend;

    #[test]
    fn gaussian_topk_keeps_about_the_top_five_percent() {
        let dev = Default::default();
        let g = Tensor::<B, 2>::random(
            [4, 4000],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let y = gaussian_topk(g, 0.95).into_data().to_vec::<f32>().unwrap();
        let kept = y.iter().filter(|v| **v > 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.05).abs() < 0.01, "kept {kept}");
        assert!(y.iter().all(|v| *v >= 0.0));
    }
}
