//! The matmul of a linear layer or LM head: Burn's, except for a single row in host memory.
//!
//! Decoding multiplies one row by every weight. burn-flex hands that to `gemm`, whose
//! matrix-vector kernels run on one thread whatever parallelism is asked for, so greedy decoding
//! of the 270M used one of two cores (`user` ≈ `real`, 76 % of the samples in `gemm`'s
//! vector kernels). One row is bound by memory bandwidth, not arithmetic: [`matmul`] splits the
//! weight's columns into one block per thread and runs the blocks in parallel. Each output is
//! the same dot product of the same kernel as before, so the floats are identical (tested).

use burn::prelude::*;

/// Below this many weights (`k · n`) one row stays on one thread: the split costs more than it
/// saves.
const SPLIT_MIN_WEIGHTS: usize = 1 << 16;

/// `x · w` for `x` `[..., k]` and `w` `[k, n]` (any strides; a transposed view is read in place),
/// as the backend's [`crate::Backend::matmul`] computes it over `x` flattened to `[rows, k]`.
///
/// On Burn's CPU backend a single row with a weight of at least [`SPLIT_MIN_WEIGHTS`] elements,
/// outside autodiff, is computed as column blocks in parallel; everything else is Burn's matmul.
pub fn matmul<B: crate::Backend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let [k, n] = w.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    B::matmul(x.reshape([rows, k]), w).reshape(out_dims)
}

/// The CPU backend's matmul ([`crate::Backend`]'s `Flex` implementation).
pub(crate) mod host {
    use burn::backend::Flex;
    use burn::prelude::*;
    use rayon::prelude::*;

    use super::SPLIT_MIN_WEIGHTS;

    /// `x` `[rows, k]` · `w` `[k, n]`: one row split into column blocks over the threads.
    pub fn matmul(x: Tensor<Flex, 2>, w: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        let ([rows, _], [k, n]) = (x.dims(), w.dims());
        let threads = rayon::current_num_threads();
        if rows != 1 || threads < 2 || k * n < SPLIT_MIN_WEIGHTS {
            return x.matmul(w);
        }
        let block = n.div_ceil(threads);
        let parts: Vec<Tensor<Flex, 2>> = (0..n.div_ceil(block))
            .into_par_iter()
            .map(|i| {
                let start = i * block;
                x.clone()
                    .matmul(w.clone().narrow(1, start, block.min(n - start)))
            })
            .collect();
        Tensor::cat(parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type F = crate::CpuBackend;
    type A = crate::CpuAutodiff;

    fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    /// One row against a wide weight, stored both ways (`[k, n]`, and the transposed view of an
    /// `[n, k]` table as the tied LM head reads it): the split gives Burn's floats exactly.
    #[test]
    fn one_row_split_over_threads_gives_the_same_floats() {
        let dev = Default::default();
        let (k, n) = (96, 4099);
        let x = Tensor::<F, 3>::random([1, 1, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<F, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        let table = Tensor::<F, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for w in [w, table.transpose()] {
            let want = values(x.clone().reshape([1, k]).matmul(w.clone()));
            let got = pool.install(|| matmul(x.clone(), w.clone()));
            assert_eq!(got.dims(), [1, 1, n]);
            assert_eq!(values(got), want);
        }
    }

    /// Several rows, and rows that carry gradients, take Burn's matmul; gradients still flow.
    #[test]
    fn several_rows_and_autodiff_match_burns_matmul() {
        let dev = Default::default();
        let (k, n) = (64, 2048);
        let x = Tensor::<F, 3>::random([2, 3, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<F, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        let want = values(x.clone().matmul(w.clone().unsqueeze::<3>()));
        assert_eq!(values(matmul(x, w.clone())), want);

        let xa = Tensor::<A, 2>::from_data(TensorData::new(vec![0.5f32; k], [1, k]), &dev)
            .require_grad();
        let wa = Tensor::<A, 2>::from_inner(w).require_grad();
        let grads = matmul(xa.clone(), wa.clone()).sum().backward();
        let gx = values(xa.grad(&grads).unwrap());
        // d/dx Σ x·w = the row sums of w
        let row_sums = values(wa.clone().inner().sum_dim(1).reshape([1, k]));
        for (g, s) in gx.iter().zip(&row_sums) {
            assert!((g - s).abs() <= 1e-4 * s.abs().max(1.0), "{g} vs {s}");
        }
        // a tracked intermediate (not a leaf: `is_require_grad` is false for it) still gets its
        // gradient, through a weight computed from a parameter
        let w2 = wa.clone() * 2.0;
        let grads = matmul(xa.clone() * 1.0, w2).sum().backward();
        let gx2 = values(xa.grad(&grads).unwrap());
        for (g, s) in gx2.iter().zip(&row_sums) {
            assert!(
                (g - 2.0 * s).abs() <= 2e-4 * s.abs().max(1.0),
                "{g} vs 2·{s}"
            );
        }
        assert!(wa.grad(&grads).is_some());
    }
}
