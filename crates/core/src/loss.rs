//! Hugging Face's causal-LM loss.

use burn::prelude::*;
use burn::tensor::{DType, Int, activation::log_softmax};

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
    let logp = log_softmax(logits, 1)
        .gather(1, safe.unsqueeze_dim(1))
        .reshape([b * (t - 1)]);
    let nll = logp.neg().mask_fill(valid.bool_not(), 0.0);
    Some(nll.sum() / count as f64)
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
}
