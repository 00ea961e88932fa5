//! AltUp: four residual streams, one of them active, with learned predict/correct mixing.

use automodel_core::Backend;
use automodel_core::init::{Init, Initializer};
use automodel_core::nn::linear::Clamp;
use automodel_core::nn::{Linear, RmsNorm};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

use super::config::Gemma3nTextConfig;

/// HF `Gemma3nTextAltUp`. Streams are stacked as `[K, B, T, H]`.
#[derive(Module, Debug)]
pub struct AltUp<B: Backend> {
    pub correct_output_scale: Param<Tensor<B, 1>>,
    pub correction_coefs: Linear<B>,
    pub prediction_coefs: Linear<B>,
    pub modality_router: Linear<B>,
    pub router_norm: RmsNorm<B>,
    #[module(skip)]
    pub num_inputs: usize,
    #[module(skip)]
    pub active_idx: usize,
    #[module(skip)]
    pub coef_clip: Option<f64>,
    #[module(skip)]
    pub hidden_size: usize,
}

impl<B: Backend> AltUp<B> {
    /// Clamp the stored prediction coefficients to ±`coef_clip` (`altup_coef_clip`; what HF's
    /// training forward does to `prediction_coefs.weight` in place), as a fresh leaf that keeps
    /// the parameter's id and whether it trains. Without a clip, unchanged.
    pub fn clamp_prediction_coefs(mut self) -> Self {
        let Some(clip) = self.coef_clip else {
            return self;
        };
        self.prediction_coefs.weight = self.prediction_coefs.weight.map(|t| {
            let trains = t.is_require_grad();
            // detached after the clamp too: a fresh leaf, outside any graph
            t.detach()
                .clamp(-clip, clip)
                .detach()
                .set_require_grad(trains)
        });
        self
    }

    /// From a checkpoint, or HF's init (zero output scale, small random matrices).
    pub fn new(init: &Initializer<B>, cfg: &Gemma3nTextConfig) -> Self {
        let (k, h) = (cfg.altup_num_inputs, cfg.hidden_size);
        Self {
            correct_output_scale: init.param([h], Init::Zeros),
            correction_coefs: Linear::new(init, k, k),
            prediction_coefs: Linear::new(init, k, k * k),
            modality_router: Linear::new(init, h, k),
            router_norm: RmsNorm::new(init, h, cfg.rms_norm_eps, false),
            num_inputs: k,
            active_idx: cfg.altup_active_idx,
            coef_clip: cfg.altup_coef_clip,
            hidden_size: h,
        }
    }

    /// `tanh(float32(RMSNorm(x)/H · routerᵀ))`, cast back: `[B, T, K]`.
    fn router(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let r = self.router_norm.forward(x) * (1.0 / self.hidden_size as f64);
        self.modality_router
            .forward(r)
            .cast(DType::F32)
            .tanh()
            .cast(dtype)
    }

    /// The active stream of `[K, B, T, H]`.
    pub fn active(&self, x: &Tensor<B, 4>) -> Tensor<B, 3> {
        stream(x, self.active_idx)
    }

    /// `Pred_j = X_j + Σ_k C[j,k]·X_k` with `C = reshape(router(X_active)·Pᵀ, K×K)`.
    ///
    /// In training HF clamps the prediction coefficients to ±`altup_coef_clip` in place before
    /// use: the forward sees clamped values and the gradient passes through unchanged.
    pub fn predict(&self, x: Tensor<B, 4>, training: bool) -> Tensor<B, 4> {
        let [k, b, t, _h] = x.dims();
        let m = self.router(self.active(&x));
        let coefs = match self.coef_clip {
            Some(c) if training => self
                .prediction_coefs
                .forward_clamped(m, Clamp::StraightThrough(c)),
            _ => self.prediction_coefs.forward(m),
        };
        let coefs = coefs.reshape([b, t, k, k]).swap_dims(2, 3);
        let pred = x
            .clone()
            .permute([1, 2, 3, 0])
            .matmul(coefs)
            .permute([3, 0, 1, 2]);
        pred + x
    }

    /// `Corr_j = Pred_j + (router(activated)·Cᵀ + 1)_j · (activated − Pred_active)`.
    ///
    /// In training the correction coefficients are clamped functionally (no gradient to clamped
    /// entries), as transformers 5.24 does.
    pub fn correct(
        &self,
        pred: Tensor<B, 4>,
        activated: Tensor<B, 3>,
        training: bool,
    ) -> Tensor<B, 4> {
        let m = self.router(activated.clone());
        let coefs = match self.coef_clip {
            Some(c) if training => self
                .correction_coefs
                .forward_clamped(m, Clamp::Functional(c)),
            _ => self.correction_coefs.forward(m),
        };
        // `[B, T, K]` → `[K, B, T, 1]`. Unsqueezed before the permute: Burn 0.21's wgpu backend
        // (fusion, the CubeCL stack CUDA shares) reads a reshape of this permuted matmul output
        // wrongly when `B = T = 1` (one decoding step), leaving streams 1.. uncorrected
        // (docs/benchmarks.md).
        let coefs = (coefs + 1.0).unsqueeze_dim::<4>(3).permute([2, 0, 1, 3]);
        let innovation = (activated - self.active(&pred)).unsqueeze_dim::<4>(0);
        innovation * coefs + pred
    }

    /// `x · correct_output_scale`.
    pub fn scale_corrected_output(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let s = self.correct_output_scale.val();
        (x.cast(s.dtype()) * s.unsqueeze::<3>()).cast(dtype)
    }
}

/// Stream `j` of `[K, B, T, H]` as `[B, T, H]`.
pub fn stream<B: Backend>(x: &Tensor<B, 4>, j: usize) -> Tensor<B, 3> {
    x.clone().narrow(0, j, 1).squeeze_dim::<3>(0)
}

/// `Y · r / sqrt(max(mean(Y²), 1e-5))`: rescale `y` to the per-token RMS `r` (activation dtype).
pub fn match_magnitude<B: Backend>(y: Tensor<B, 3>, target_rms: Tensor<B, 3>) -> Tensor<B, 3> {
    let ms = y.clone().powi_scalar(2).mean_dim(2).clamp_min(1e-5).sqrt();
    y * target_rms / ms
}

/// Per-token RMS without epsilon, `sqrt(mean(x²))`.
pub fn rms<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    x.powi_scalar(2).mean_dim(2).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automodel_core::CpuAutodiff as A;

    #[test]
    fn clamping_after_a_step_keeps_a_trainable_leaf_with_its_id() {
        let dev = Default::default();
        let mut cfg = Gemma3nTextConfig::tiny();
        cfg.altup_coef_clip = Some(0.5);
        let init = Initializer::<A>::random(&dev, DType::F32, 1.0);
        let mut altup = AltUp::new(&init, &cfg);
        let k = cfg.altup_num_inputs;
        let big = Tensor::<A, 2>::ones([k, k * k], &dev).mul_scalar(3.0);
        altup.prediction_coefs.weight = Param::from_tensor(big.require_grad());
        let id = altup.prediction_coefs.weight.id;
        for trains in [true, false] {
            let mut a = altup.clone();
            a.prediction_coefs.weight = a
                .prediction_coefs
                .weight
                .map(|t| t.set_require_grad(trains));
            let a = a.clamp_prediction_coefs();
            let w = a.prediction_coefs.weight.val();
            assert_eq!(a.prediction_coefs.weight.id, id);
            assert_eq!(w.is_require_grad(), trains);
            let v: Vec<f32> = w.clone().into_data().into_vec().unwrap();
            assert!(v.iter().all(|&x| x == 0.5), "{v:?}");
            if trains {
                // still a leaf: a loss over it has a gradient for it
                let g = w.clone().sum().backward();
                assert!(w.grad(&g).is_some());
            }
        }
        // no clip configured: unchanged
        let mut a = altup.clone();
        a.coef_clip = None;
        let v: Vec<f32> = a
            .clamp_prediction_coefs()
            .prediction_coefs
            .weight
            .val()
            .into_data()
            .into_vec()
            .unwrap();
        assert!(v.iter().all(|&x| x == 3.0));
    }
}
