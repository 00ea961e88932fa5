//! One AdamW update of one parameter, in the order and precision of `torch.optim.AdamW`'s
//! single-tensor path (the one PyTorch takes on the CPU):
//!
//! ```text
//! g ← g·clip                       (clip_grad_norm_'s in-place scaling)
//! p ← p·(1 − lr·wd)                (param.mul_)
//! m ← m + (1 − β1)·(g − m)         (exp_avg.lerp_; g − (g − m)·β1 when 1 − β1 ≥ 0.5)
//! v ← v·β2 + ((1 − β2)·g)·g        (exp_avg_sq.mul_(β2).addcmul_)
//! d ← √v / √(1 − β2ᵗ) + ε          (denom)
//! p ← p + (−lr/(1 − β1ᵗ))·m / d    (param.addcdiv_)
//! ```
//!
//! with every scalar computed in float64, as Python does, and applied in float32, as PyTorch's
//! float32 kernels do.
//!
//! Two implementations with identical floats ([`crate::Backend::adamw`]): Burn tensor ops for
//! any backend ([`crate::backend::generic::adamw`]), and, for float32 tensors on Burn's CPU
//! backend, one parallel pass that updates the parameter and both moments in place. The tensor-op form holds about four
//! parameter-sized temporaries at once; for the tied 262144 × 640 embedding of Gemma 3 270M that
//! is 2.7 GB more at the optimizer step, the peak of a full fine-tuning step, which the in-place
//! pass does not need.

use burn::prelude::*;

/// The float32 scalars of one AdamW update at step `t` (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// The gradient's scale (the clipping factor).
    pub grad_scale: f32,
    /// `1 − lr·wd`.
    pub decay: f32,
    /// The lerp weight `1 − β1`.
    pub weight: f32,
    /// `1 − weight`, used instead when `weight ≥ 0.5` (PyTorch's lerp).
    pub one_minus_weight: f32,
    pub beta2: f32,
    /// `1 − β2`.
    pub one_minus_beta2: f32,
    /// `√(1 − β2ᵗ)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `−lr / (1 − β1ᵗ)`.
    pub neg_step_size: f32,
}

impl AdamWStep {
    /// The step with AdamW's `betas`, `weight_decay` and `eps`, learning rate `lr` and gradient
    /// scale (clipping factor) `grad_scale`.
    pub fn new(
        [beta1, beta2]: [f64; 2],
        weight_decay: f64,
        eps: f64,
        lr: f64,
        step: usize,
        grad_scale: f64,
    ) -> Self {
        let t = step as f64;
        let weight = (1.0 - beta1) as f32;
        Self {
            grad_scale: grad_scale as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            weight,
            one_minus_weight: 1.0 - weight,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
            eps: eps as f32,
            neg_step_size: (-(lr / (1.0 - beta1.powf(t)))) as f32,
        }
    }

    /// The update of one element: `(p, m, v)` after the step with gradient `g`.
    #[inline(always)]
    fn element(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = g * self.grad_scale;
        let p = p * self.decay;
        let m = if self.weight < 0.5 {
            m + (g - m) * self.weight
        } else {
            g - (g - m) * self.one_minus_weight
        };
        let v = v * self.beta2 + g * self.one_minus_beta2 * g;
        let d = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        (p + m * self.neg_step_size / d, m, v)
    }

    /// The update on float32 tensors of one shape: `(p, m, v)` after the step, as the
    /// backend's [`crate::Backend::adamw`] computes it.
    pub fn apply<B: crate::Backend, const D: usize>(
        &self,
        p: Tensor<B, D>,
        g: Tensor<B, D>,
        m: Tensor<B, D>,
        v: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
        let out = B::adamw(AdamWInput {
            step: self,
            param: p,
            grad: g,
            exp_avg: m,
            exp_avg_sq: v,
        });
        (out.param, out.exp_avg, out.exp_avg_sq)
    }
}

/// What [`crate::Backend::adamw`] takes: the step's scalars, and a float32 parameter with its
/// gradient and moments, all of one shape.
#[derive(Debug, Clone)]
pub struct AdamWInput<'a, B: Backend, const D: usize> {
    pub step: &'a AdamWStep,
    pub param: Tensor<B, D>,
    pub grad: Tensor<B, D>,
    pub exp_avg: Tensor<B, D>,
    pub exp_avg_sq: Tensor<B, D>,
}

impl<'a, B: Backend, const D: usize> AdamWInput<'a, B, D> {
    /// The same input with every tensor passed through `f`.
    pub fn map<C: Backend>(self, f: impl Fn(Tensor<B, D>) -> Tensor<C, D>) -> AdamWInput<'a, C, D> {
        AdamWInput {
            step: self.step,
            param: f(self.param),
            grad: f(self.grad),
            exp_avg: f(self.exp_avg),
            exp_avg_sq: f(self.exp_avg_sq),
        }
    }
}

/// What [`crate::Backend::adamw`] returns: the parameter and its moments after the step.
#[derive(Debug, Clone)]
pub struct AdamWState<B: Backend, const D: usize> {
    pub param: Tensor<B, D>,
    pub exp_avg: Tensor<B, D>,
    pub exp_avg_sq: Tensor<B, D>,
}

impl<B: Backend, const D: usize> AdamWState<B, D> {
    /// The same state with every tensor passed through `f`.
    pub fn map<C: Backend>(self, f: impl Fn(Tensor<B, D>) -> Tensor<C, D>) -> AdamWState<C, D> {
        AdamWState {
            param: f(self.param),
            exp_avg: f(self.exp_avg),
            exp_avg_sq: f(self.exp_avg_sq),
        }
    }
}

/// AdamW on Burn's CPU backend ([`crate::Backend`]'s `Flex` implementation).
pub(crate) mod host {
    use burn::backend::Flex;
    use burn::prelude::*;
    use burn::tensor::{DType, TensorData};

    use super::{AdamWInput, AdamWState};
    use crate::host::vectorized;

    /// The update in host memory: the parameter's and the moments' buffers are updated in place
    /// when nothing else holds them (copied once otherwise); other dtypes take the generic ops.
    pub fn adamw<const D: usize>(input: AdamWInput<'_, Flex, D>) -> AdamWState<Flex, D> {
        use rayon::prelude::*;
        let tensors = [&input.param, &input.grad, &input.exp_avg, &input.exp_avg_sq];
        if tensors.iter().any(|t| t.dtype() != DType::F32) {
            return crate::backend::generic::adamw(input);
        }
        const BLOCK: usize = 1 << 14;
        let (s, device, shape) = (input.step, input.param.device(), input.param.shape());
        let (mut pd, gd) = (host_f32(input.param), host_f32(input.grad));
        let (mut md, mut vd) = (host_f32(input.exp_avg), host_f32(input.exp_avg_sq));
        {
            let gs = gd.as_slice::<f32>().expect("float32 data");
            let ps = pd.as_mut_slice::<f32>().expect("float32 data");
            let ms = md.as_mut_slice::<f32>().expect("float32 data");
            let vs = vd.as_mut_slice::<f32>().expect("float32 data");
            (
                ps.par_chunks_mut(BLOCK),
                gs.par_chunks(BLOCK),
                ms.par_chunks_mut(BLOCK),
                vs.par_chunks_mut(BLOCK),
            )
                .into_par_iter()
                .for_each(|(pc, gc, mc, vc)| {
                    vectorized(|| {
                        for (((p, &g), m), v) in pc.iter_mut().zip(gc).zip(mc).zip(vc) {
                            (*p, *m, *v) = s.element(*p, g, *m, *v);
                        }
                    })
                });
        }
        drop(gd);
        let back = |d: TensorData| -> Tensor<Flex, D> {
            Tensor::<Flex, 1>::from_data(d, (&device, DType::F32)).reshape(shape.clone())
        };
        AdamWState {
            param: back(pd),
            exp_avg: back(md),
            exp_avg_sq: back(vd),
        }
    }

    /// `t`'s float32 values as host data, flat: its own buffer when nothing else holds it.
    fn host_f32<const D: usize>(t: Tensor<Flex, D>) -> TensorData {
        let n = t.shape().num_elements();
        let mut d = t.reshape([n]).into_data();
        if d.as_mut_slice::<f32>().is_err() {
            // a buffer bytemuck cannot view as f32 (misaligned): copy it once
            d = TensorData::new(d.to_vec::<f32>().expect("float32 data"), [n]);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff as A;
    use burn::tensor::TensorData;

    type F = burn::backend::Flex;

    fn values<const D: usize>(t: Tensor<F, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h as f32 / (1 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// The in-place host pass gives the tensor ops' floats exactly, for both lerp branches, with
    /// and without clipping and decay, over several steps (more elements than one block, so
    /// the pass runs in parallel).
    #[test]
    fn host_pass_is_bit_identical_to_the_tensor_ops() {
        let dev = Default::default();
        let n = 40_000;
        let t = |v: Vec<f32>| Tensor::<F, 2>::from_data(TensorData::new(v, [200, n / 200]), &dev);
        for (beta1, wd, clip) in [(0.9, 0.01, 1.0), (0.3, 0.0, 0.37), (0.9, 0.1, 0.5)] {
            let p0 = data(n, 1, 2.0);
            let (mut a, mut b) = (
                (t(p0.clone()), t(vec![0.0; n]), t(vec![0.0; n])),
                (t(p0), t(vec![0.0; n]), t(vec![0.0; n])),
            );
            for step in 1..=3 {
                let s = AdamWStep::new([beta1, 0.999], wd, 1e-8, 1e-2, step, clip);
                let g = data(n, 7 + step as u32, 0.01);
                let out = crate::backend::generic::adamw(AdamWInput {
                    step: &s,
                    param: a.0,
                    grad: t(g.clone()),
                    exp_avg: a.1,
                    exp_avg_sq: a.2,
                });
                a = (out.param, out.exp_avg, out.exp_avg_sq);
                b = s.apply(b.0, t(g), b.1, b.2);
                assert_eq!(b.0.dims(), [200, n / 200]);
            }
            assert_eq!(values(a.0), values(b.0), "parameter, β1 {beta1}");
            assert_eq!(values(a.1), values(b.1), "exp_avg, β1 {beta1}");
            assert_eq!(values(a.2), values(b.2), "exp_avg_sq, β1 {beta1}");
        }
    }

    /// torch.optim.AdamW in float64 for one element: the float32 step stays within float32
    /// rounding of it.
    #[test]
    fn one_element_follows_torch_in_float64() {
        let (lr, clip) = (1e-2, 0.5);
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (0.75f32, 0f32, 0f32);
        let (mut pw, mut mw, mut vw) = (0.75f64, 0f64, 0f64);
        for (t, g) in [0.3f32, -1.2, 0.05, 2.0].into_iter().enumerate() {
            let step = t + 1;
            (p, m, v) =
                AdamWStep::new([0.9, 0.999], 0.01, 1e-8, lr, step, clip).element(p, g, m, v);
            let g = g as f64 * clip;
            pw *= 1.0 - lr * 0.01;
            mw += (1.0 - b1) * (g - mw);
            vw = vw * b2 + (1.0 - b2) * g * g;
            let d = vw.sqrt() / (1.0 - b2.powi(step as i32)).sqrt() + eps;
            pw -= lr / (1.0 - b1.powi(step as i32)) * mw / d;
            assert!((p as f64 - pw).abs() < 1e-6, "step {step}: {p} vs {pw}");
            assert!((m as f64 - mw).abs() < 1e-6 * mw.abs().max(1e-3));
            assert!((v as f64 - vw).abs() < 1e-6 * vw.abs().max(1e-6));
        }
    }

    /// On the CPU backend `apply` takes the host pass and updates a uniquely held buffer where
    /// it lies; on the autodiff backend it gives the same floats.
    #[test]
    fn the_host_pass_updates_a_uniquely_held_buffer_in_place() {
        let dev = Default::default();
        let n = 5000;
        let mk = |v: Vec<f32>| Tensor::<F, 1>::from_data(TensorData::new(v, [n]), &dev);
        let p = mk(data(n, 3, 1.0));
        let addr = p.clone().into_primitive().tensor().data_arc().as_ptr() as usize;
        let s = AdamWStep::new([0.9, 0.999], 0.01, 1e-8, 1e-3, 1, 1.0);
        let (p, _, _) = s.apply(p, mk(data(n, 4, 0.1)), mk(vec![0.0; n]), mk(vec![0.0; n]));
        let after = p.clone().into_primitive().tensor().data_arc().as_ptr() as usize;
        // the clone taken above was dropped before `apply`; only `p` held the buffer
        assert_eq!(addr, after, "the parameter's buffer was reallocated");
        // the autodiff backend (what the trainer holds) runs its inner backend's pass
        let (pa, _, _) = s.apply(
            Tensor::<A, 1>::from_inner(mk(data(n, 3, 1.0))),
            Tensor::from_inner(mk(data(n, 4, 0.1))),
            Tensor::from_inner(mk(vec![0.0; n])),
            Tensor::from_inner(mk(vec![0.0; n])),
        );
        assert_eq!(values(pa.inner()), values(p));
    }
}
