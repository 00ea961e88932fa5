//! Token embedding table with Hugging Face's `padding_idx` gradient rule.

use crate::Backend;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Int;

use crate::init::{Init, Initializer};

/// An `[num, dim]` lookup table. Like `nn.Embedding(padding_idx=p)`, the row `p` receives no
/// gradient through the lookup (it still does through any other use of the table, such as a
/// tied output head).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub padding_idx: Option<usize>,
}

impl<B: Backend> Embedding<B> {
    /// A `[num, dim]` table, random `N(0, std²)` (or shapes only).
    pub fn new(init: &Initializer<B>, num: usize, dim: usize, padding_idx: Option<usize>) -> Self {
        Self {
            weight: init.param([num, dim], Init::Normal),
            padding_idx,
        }
    }

    /// Number of rows.
    pub fn num(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Look `ids` `[B, T]` up → `[B, T, dim]`. Ids must be in range (callers validate).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let dim = self.dim();
        let w = self.weight.val();
        let out = w
            .clone()
            .select(0, ids.clone().reshape([b * t]))
            .reshape([b, t, dim]);
        match self.padding_idx {
            None => out,
            Some(p) => {
                // Rows looked up at padding ids come from a detached copy of row p.
                let pad_row = super::constant(w)
                    .narrow(0, p, 1)
                    .reshape([1, 1, dim])
                    .expand([b, t, dim]);
                let is_pad = ids
                    .equal_elem(p as i64)
                    .unsqueeze_dim::<3>(2)
                    .expand([b, t, dim]);
                out.mask_where(is_pad, pad_row)
            }
        }
    }

    /// The tied LM head: `hidden` `[B, T, dim]` times the tableᵀ → logits `[B, T, V]`. Done as a
    /// 2-D matmul ([`super::matmul`]) that reads the transposed table through its strides:
    /// reshaping the transposed view to 3-D would copy the whole table (670 MB for Gemma's
    /// vocabulary) on every call.
    pub fn tied_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        super::matmul(hidden, self.weight.val().transpose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    type A = burn::backend::Autodiff<crate::CpuBackend>;

    #[test]
    fn tied_head_is_hidden_times_table_transposed_with_gradients() {
        let dev = Default::default();
        let init = Initializer::<A>::random(&dev, DType::F32, 1.0);
        let e = Embedding::<A>::new(&init, 5, 3, Some(0));
        let h = Tensor::<A, 3>::from_floats(
            [
                [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]],
                [[0.0, 3.0, 1.0], [1.0, 1.0, 1.0]],
            ],
            &dev,
        )
        .require_grad();
        let logits = e.tied_head(h.clone());
        assert_eq!(logits.dims(), [2, 2, 5]);
        let w = e.weight.val().into_data().to_vec::<f32>().unwrap();
        let hv = h.clone().into_data().to_vec::<f32>().unwrap();
        let got = logits.clone().into_data().to_vec::<f32>().unwrap();
        for bt in 0..4 {
            for v in 0..5 {
                let want: f32 = (0..3).map(|k| hv[bt * 3 + k] * w[v * 3 + k]).sum();
                assert!((got[bt * 5 + v] - want).abs() < 1e-5);
            }
        }
        // d(sum logits)/dW[v] = sum of hidden rows; d/dh = sum of table rows (padding row too:
        // the padding rule is for lookups only)
        let grads = logits.sum().backward();
        let gw = e
            .weight
            .grad(&grads)
            .unwrap()
            .to_data()
            .to_vec::<f32>()
            .unwrap();
        let col: Vec<f32> = (0..3)
            .map(|k| (0..4).map(|bt| hv[bt * 3 + k]).sum())
            .collect();
        for v in 0..5 {
            for k in 0..3 {
                assert!((gw[v * 3 + k] - col[k]).abs() < 1e-5);
            }
        }
        let gh = h.grad(&grads).unwrap().to_data().to_vec::<f32>().unwrap();
        let rows: Vec<f32> = (0..3).map(|k| (0..5).map(|v| w[v * 3 + k]).sum()).collect();
        assert!((gh[0] - rows[0]).abs() < 1e-5 && (gh[11] - rows[2]).abs() < 1e-5);
    }
}
