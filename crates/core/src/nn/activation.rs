//! Activations and small numerical helpers.

use burn::prelude::*;

/// PyTorch's `gelu(approximate="tanh")` (HF `gelu_pytorch_tanh`):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, in the input dtype.
///
/// The backend's [`crate::Backend::gelu_tanh`]. On Burn's CPU backend in float32 it is one
/// fused pass over the input that also writes the derivative (PyTorch's `GeluBackward`
/// formula); under autodiff every backend attaches that derivative as a single multiplication,
/// where autodiff through the op-by-op form would keep about ten intermediates. Both forms
/// compute the same formula in the same order.
pub fn gelu_tanh<B: crate::Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    B::gelu_tanh(x)
}

/// tanh-GELU on Burn's CPU backend ([`crate::Backend`]'s `Flex` implementation).
pub(crate) mod host {
    use burn::backend::Flex;
    use burn::prelude::*;
    use burn::tensor::{DType, TensorData};
    use rayon::prelude::*;

    use crate::backend::generic::{self, GELU_BETA, GELU_KAPPA};
    use crate::host::vectorized;

    /// `y` and, with `derivative`, `y'` of float32 `x` in one parallel pass (other dtypes: the
    /// generic ops).
    pub fn gelu_tanh<const D: usize>(
        x: Tensor<Flex, D>,
        derivative: bool,
    ) -> (Tensor<Flex, D>, Option<Tensor<Flex, D>>) {
        if x.dtype() != DType::F32 {
            return if derivative {
                let (y, d) = generic::gelu_tanh_with_derivative(x);
                (y, Some(d))
            } else {
                (generic::gelu_tanh(x), None)
            };
        }
        const BLOCK: usize = 4096;
        let (beta, kappa) = (GELU_BETA as f32, GELU_KAPPA as f32);
        let (device, shape) = (x.device(), x.shape());
        let data = x.into_data();
        let xs = data.as_slice::<f32>().expect("float32 input");
        let mut y = vec![0f32; xs.len()];
        let fwd = |x: f32| {
            let inner = beta * (x + kappa * (x * x * x));
            let t = crate::host::tanh(inner);
            (x * 0.5 * (t + 1.0), t)
        };
        let tensor = |v: Vec<f32>| {
            Tensor::<Flex, D>::from_data(TensorData::new(v, shape.clone()), (&device, DType::F32))
        };
        if !derivative {
            (xs.par_chunks(BLOCK), y.par_chunks_mut(BLOCK))
                .into_par_iter()
                .for_each(|(xc, yc)| {
                    vectorized(|| {
                        for (&x, y) in xc.iter().zip(yc) {
                            *y = fwd(x).0;
                        }
                    })
                });
            return (tensor(y), None);
        }
        let mut dy = vec![0f32; xs.len()];
        (
            xs.par_chunks(BLOCK),
            y.par_chunks_mut(BLOCK),
            dy.par_chunks_mut(BLOCK),
        )
            .into_par_iter()
            .for_each(|(xc, yc, dc)| {
                vectorized(|| {
                    for ((&x, y), d) in xc.iter().zip(yc).zip(dc) {
                        let (v, t) = fwd(x);
                        *y = v;
                        // PyTorch's GeluBackward (tanh): 0.5·(1 + t) + 0.5·x·(1 − t²)·β·(1 + 3κx²)
                        let left = 0.5 * x;
                        let inner_d = beta * (1.0 + 3.0 * kappa * (x * x));
                        *d = 0.5 * (1.0 + t) + left * (1.0 - t * t) * inner_d;
                    }
                })
            });
        (tensor(y), Some(tensor(dy)))
    }
}

/// Soft-capping `cap·tanh(x / cap)`, in the input dtype.
pub fn softcap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    (x / cap).tanh() * cap
}

/// [`softcap`] with `cap` when there is one, else `x` as it is (a config's optional
/// `final_logit_softcapping`).
pub fn softcap_opt<B: Backend, const D: usize>(x: Tensor<B, D>, cap: Option<f64>) -> Tensor<B, D> {
    match cap {
        Some(cap) => softcap(x, cap),
        None => x,
    }
}

/// Inverse of the standard normal CDF, Φ⁻¹(p), for 0 < p < 1.
///
/// Acklam's rational approximation refined by one Halley step (relative error < 1e-15), so
/// that rounding to f32 gives what `torch.distributions.Normal(0, 1).icdf` gives in float32
/// (Φ⁻¹(0.95) = 1.6448535919189453, Φ⁻¹(0.9) = 1.2815515995025635).
pub fn normal_icdf(p: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "normal_icdf needs 0 < p < 1, got {p}");
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let plow = 0.02425;
    let x = if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // One Halley refinement step on Φ(x) − p.
    let e = 0.5 * erfc(-x / std::f64::consts::SQRT_2) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// Complementary error function (W. J. Cody's rational approximations, |rel. error| < 1e-15).
fn erfc(x: f64) -> f64 {
    // Numerical Recipes' erfc via Chebyshev fit (fractional error < 1.2e-7) is not enough for the
    // refinement step; use the continued-fraction/series split instead.
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        // erf series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum: f64 = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Continued fraction (Lentz) for erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))).
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for i in 1..300 {
            let a = i as f64 / 2.0;
            d = x + a * d;
            d = if d == 0.0 { 1e-300 } else { 1.0 / d };
            c = x + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn icdf_matches_torch_float32() {
        assert_eq!(normal_icdf(0.95) as f32, 1.644_853_6_f32);
        assert_eq!(normal_icdf(0.9) as f32, 1.281_551_6_f32);
        assert!((normal_icdf(0.5)).abs() < 1e-15);
        assert!((normal_icdf(0.01) + 2.326_347_874_040_841).abs() < 1e-12);
        assert!((normal_icdf(0.999) - 3.090_232_306_167_813_5).abs() < 1e-12);
    }

    #[test]
    fn gelu_tanh_on_the_host_has_the_values_and_gradient_of_the_ops() {
        type A = burn::backend::Autodiff<crate::CpuBackend>;
        let dev = Default::default();
        // 10⁴ points over [-8, 8] (several parallel blocks), plus exact zeros and large values
        let mut xs: Vec<f32> = (0..10_000)
            .map(|i| -8.0 + 16.0 * i as f32 / 9_999.0)
            .collect();
        xs.extend([0.0, -0.0, 30.0, -30.0, 1e-7]);
        let n = xs.len();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let run = |host: bool| {
            let x =
                Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [n]), &dev).require_grad();
            let u = Tensor::<A, 1>::from_data(TensorData::new(up.clone(), [n]), &dev);
            // through a tracked intermediate, as in a model (not only a leaf)
            let mid = x.clone() * 1.0;
            let y = if host {
                gelu_tanh(mid)
            } else {
                crate::backend::generic::gelu_tanh(mid)
            };
            let g = (y.clone() * u).sum().backward();
            let dx = x.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap();
            (y.into_data().to_vec::<f32>().unwrap(), dx)
        };
        let ((y_h, g_h), (y_o, g_o)) = (run(true), run(false));
        // the same formula with the vectorised `tanh` (a few ulp from libm's): values within a
        // few ulp of the ops' (absolutely, near GELU's zeros)
        for i in 0..n {
            let tol = 4e-7 * (1.0 + y_o[i].abs());
            assert!(
                (y_h[i] - y_o[i]).abs() <= tol,
                "x {}: {} vs {}",
                xs[i],
                y_h[i],
                y_o[i]
            );
        }
        for i in 0..n {
            let tol = 2e-6 * (1.0 + g_o[i].abs());
            assert!(
                (g_h[i] - g_o[i]).abs() <= tol,
                "x {}: {} vs {}",
                xs[i],
                g_h[i],
                g_o[i]
            );
        }
        // and the gradient is GELU's derivative (central differences in f64)
        let f = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        };
        for i in (0..10_000).step_by(97) {
            let v = xs[i] as f64;
            let want = up[i] as f64 * (f(v + 1e-5) - f(v - 1e-5)) / 2e-5;
            assert!(
                (g_h[i] as f64 - want).abs() < 1e-5,
                "x {v}: {} vs {want}",
                g_h[i]
            );
        }
        // untracked input (inference, frozen paths): values only
        let x = Tensor::<crate::CpuBackend, 1>::from_data(TensorData::new(xs.clone(), [n]), &dev);
        assert_eq!(
            gelu_tanh(x.clone()).into_data().to_vec::<f32>().unwrap(),
            y_h
        );
        // the derivative the generic implementation attaches under autodiff (what CUDA and wgpu
        // run) is the host pass's, and its value the host's
        use crate::Backend as _;
        let (yg, dg) = crate::backend::generic::gelu_tanh_with_derivative(x.clone());
        let (yf, df) = crate::CpuBackend::gelu_tanh_with_derivative(x);
        let (yg, dg, yf, df) = (
            yg.into_data().to_vec::<f32>().unwrap(),
            dg.into_data().to_vec::<f32>().unwrap(),
            yf.into_data().to_vec::<f32>().unwrap(),
            df.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(yf, y_h);
        for i in 0..n {
            assert!(
                (yg[i] - yf[i]).abs() <= 4e-7 * (1.0 + yf[i].abs()),
                "x {}",
                xs[i]
            );
            assert!(
                (dg[i] - df[i]).abs() <= 2e-6 * (1.0 + df[i].abs()),
                "x {}",
                xs[i]
            );
        }
    }

    #[test]
    fn gelu_tanh_matches_formula() {
        type B = crate::CpuBackend;
        let x = Tensor::<B, 1>::from_floats([-3.0, -0.5, 0.0, 0.7, 2.5], &Default::default());
        let got = gelu_tanh(x.clone()).into_data().to_vec::<f32>().unwrap();
        for (g, v) in got.iter().zip([-3.0f64, -0.5, 0.0, 0.7, 2.5]) {
            let want = 0.5
                * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
            assert!((*g as f64 - want).abs() < 1e-6, "{g} vs {want}");
        }
    }
}
