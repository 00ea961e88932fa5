//! Token embedding table with Hugging Face's `padding_idx` gradient rule.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Int;

use crate::init::{Init, ParamSource};
use crate::params::{HfParam, ParamList};

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
    /// `{name}.weight`, or a random `N(0, std²)` table.
    pub fn new(
        src: &ParamSource<'_, B>,
        name: &str,
        num: usize,
        dim: usize,
        padding_idx: Option<usize>,
    ) -> Self {
        let w = src.tensor(&format!("{name}.weight"), [num, dim], Init::Normal);
        Self {
            weight: Param::from_tensor(w),
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
                let pad_row = w
                    .detach()
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

    /// Register `{name}.weight`.
    pub fn params(&self, name: &str, out: &mut ParamList<B>) {
        out.push(format!("{name}.weight"), HfParam::D2(self.weight.val()));
    }
}
