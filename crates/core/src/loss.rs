//! Hugging Face's causal-LM loss.

use burn::prelude::*;
use burn::tensor::{DType, Int};

/// Label value that is ignored by the loss.
pub const IGNORE_INDEX: i64 = -100;

/// `ForCausalLMLoss`: logits `[B, T, V]` predict `labels[:, 1:]` from positions `..T-1`; labels
/// equal to `-100` are ignored; the result is the mean over labelled tokens of the whole batch,
/// computed in float32. Returns a scalar `[1]` tensor, or `None` when no token is labelled (HF
/// would return NaN).
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> Option<Tensor<B, 1>> {
    let [b, t, v] = logits.dims();
    if t < 2 {
        return None;
    }
    let logits = logits
        .narrow(1, 0, t - 1)
        .cast(DType::F32)
        .reshape([b * (t - 1), v]);
    let labels = labels.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    let valid = labels.clone().not_equal_elem(IGNORE_INDEX);
    let count: i64 = valid.clone().int().sum().into_scalar().elem();
    if count == 0 {
        return None;
    }
    let safe = labels
        .mask_fill(valid.clone().bool_not(), 0)
        .clamp(0, v as i64 - 1);
    let picked = logits
        .clone()
        .gather(1, safe.unsqueeze_dim(1))
        .reshape([b * (t - 1)]);
    let nll = (logsumexp_rows(logits) - picked).mask_fill(valid.bool_not(), 0.0);
    Some(nll.sum() / count as f64)
}

/// Rows longer than this are summed in blocks of this size (see [`blocked_row_sum`]).
const SUM_BLOCK: usize = 1024;

/// `log(sum(exp(x)))` over the last dim of `[N, V]`, giving `[N]`, with a detached max shift and
/// a [`blocked_row_sum`]. Its gradient is `softmax(x)`.
pub fn logsumexp_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = x.dims();
    let max = x.clone().detach().max_dim(1);
    let sum = blocked_row_sum((x - max.clone()).exp());
    (sum.log() + max).reshape([n])
}

/// Sum over the last dim of `[N, V]` (giving `[N, 1]`) in blocks of at most 1024 elements
/// and then over the block sums, recursively. A flat float32 sum over a 262k-token vocabulary
/// (as the CPU backend does it, in a few SIMD lanes) loses about 5e-5 of the total. That error
/// scales every softmax probability alike and, after `p - onehot` cancels, shows up as a 1e-3
/// relative error in the gradients. Blocking keeps each partial sum short, close to PyTorch's
/// cascade summation.
pub fn blocked_row_sum<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, v] = x.dims();
    if v <= SUM_BLOCK {
        return x.sum_dim(1);
    }
    let blocks = v.div_ceil(SUM_BLOCK);
    let padded = blocks * SUM_BLOCK;
    let x = if padded == v {
        x
    } else {
        let zeros = Tensor::<B, 2>::zeros([n, padded - v], &x.device()).cast(x.dtype());
        Tensor::cat(vec![x, zeros], 1)
    };
    let partial = x
        .reshape([n, blocks, SUM_BLOCK])
        .sum_dim(2)
        .reshape([n, blocks]);
    blocked_row_sum(partial)
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::CpuBackend;

    #[test]
    fn shifts_ignores_and_averages() {
        let dev = Default::default();
        // B=1, T=3, V=2
        let logits = Tensor::<B, 3>::from_floats([[[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]], &dev);
        let labels = Tensor::<B, 2, Int>::from_ints([[7, 1, -100]], &dev);
        let l = causal_lm_loss(logits.clone(), labels)
            .unwrap()
            .into_scalar()
            .elem::<f32>() as f64;
        // only position 0 predicts label 1: -log_softmax([0, 1])[1]
        let want = -(1.0f64 - (1.0f64.exp() + 1.0).ln());
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        let none = Tensor::<B, 2, Int>::from_ints([[1, -100, -100]], &dev);
        assert!(causal_lm_loss(logits, none).is_none());
    }

    /// Deterministic values in (0, 1) (a small LCG, so the test needs no RNG crate).
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 + 0.5) / (1u64 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn blocked_sum_of_a_vocabulary_row_is_accurate() {
        let dev = Default::default();
        // one Gemma-sized row (2^18) and one that needs padding (Gemma 3n's 262400 = 256 * 1025)
        for v in [262_144usize, 262_400] {
            let vals = uniform(2 * v, v as u64);
            let exact: Vec<f64> = vals
                .chunks(v)
                .map(|r| r.iter().map(|&x| x as f64).sum())
                .collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(vals, [2, v]), &dev);
            let got = blocked_row_sum(x.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            for (g, e) in got.iter().zip(&exact) {
                let rel = (*g as f64 - e).abs() / e;
                assert!(rel < 1e-6, "V={v}: blocked sum off by {rel:e}");
            }
            assert_eq!(blocked_row_sum(x).dims(), [2, 1]);
        }
        // short rows take the plain path and keep their shape
        let x = Tensor::<B, 2>::from_floats([[1.0, 2.0, 3.0]], &dev);
        assert_eq!(
            blocked_row_sum(x).into_data().to_vec::<f32>().unwrap(),
            [6.0]
        );
    }

    #[test]
    fn logsumexp_rows_matches_f64_and_its_gradient_is_softmax() {
        type A = burn::backend::Autodiff<B>;
        let dev = Default::default();
        let v = 5000; // padded to 5 blocks of 1024
        let vals: Vec<f32> = uniform(v, 7).into_iter().map(|u| 20.0 * u - 10.0).collect();
        let m = vals.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let s: f64 = vals.iter().map(|&x| (x as f64 - m).exp()).sum();
        let want = m + s.ln();
        let x =
            Tensor::<A, 2>::from_data(TensorData::new(vals.clone(), [1, v]), &dev).require_grad();
        let lse = logsumexp_rows(x.clone());
        let got = lse.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let grads = lse.sum().backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g.len(), v);
        for (gi, xi) in g.iter().zip(&vals) {
            let p = (*xi as f64 - want).exp();
            assert!((*gi as f64 - p).abs() < 1e-6 * p.max(1e-3), "{gi} vs {p}");
        }
    }
}
