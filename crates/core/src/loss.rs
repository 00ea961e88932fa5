//! Hugging Face's causal-LM loss.

use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

use crate::backend::{HeadGrads, HeadLoss, HeadLossInput};
use crate::nn::constant;

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

/// The summed loss of a batch and how many label tokens it covers. The mean is
/// `sum / num_label_tokens`; a trainer that accumulates micro-batches divides the sum by the
/// global batch's count instead (not a mean of means).
#[derive(Debug, Clone)]
pub struct LossSum<B: Backend> {
    /// Sum of the token losses, float32 `[1]`.
    pub sum: Tensor<B, 1>,
    pub num_label_tokens: usize,
}

impl<B: Backend> LossSum<B> {
    /// The mean over label tokens (HF's loss).
    pub fn mean(&self) -> Tensor<B, 1> {
        self.sum.clone() / self.num_label_tokens as f64
    }
}

/// Rows of logits one chunk of [`lm_head_loss`] holds: about 256 MiB of float32 logits (256
/// rows of a 262k vocabulary). Fewer rows per chunk hold less, but the head's two matmuls then
/// re-read the whole table per chunk for little work each: `dz · W` over 64 rows ran at half the
/// speed of 256 rows, and the 270M's LoRA step was 10–13 % slower with 64 MiB chunks
/// (docs/benchmarks.md).
fn chunk_rows(vocab: usize) -> usize {
    ((256 << 20) / (4 * vocab.max(1))).max(1)
}

/// The LM head and HF's causal-LM loss in one, for training: `hidden` `[B, T, H]` (the final
/// hidden states), the head `table` `[V, H]` (a tied embedding), optional logit soft-cap,
/// unshifted `labels` `[B, T]`.
///
/// Only positions whose next label is not `-100` are computed, in chunks of rows, so
/// `[B, T, V]` logits never exist: the value and the gradients are computed chunk by chunk
/// without the autodiff graph (softmax minus one-hot through the soft-cap, in float32 with the
/// blocked log-sum-exp), and attached to `hidden` and `table` as `Σ hidden ⊙ G_h + Σ table ⊙ G_w`
/// minus its detached value, so the result carries the exact loss value and backward delivers
/// exactly `G_h` and `G_w`. With `grad` false (evaluation) no gradient is computed; `G_w` is
/// skipped when the table is frozen.
///
/// Returns `None` when no position is labelled. Labels must lie in `[0, V)` or be `-100`.
pub fn lm_head_loss<B: crate::Backend>(
    hidden: Tensor<B, 3>,
    table: Tensor<B, 2>,
    softcap: Option<f64>,
    labels: Tensor<B, 2, Int>,
    grad: bool,
) -> Option<LossSum<B>> {
    let v = table.dims()[0];
    let mut step = chunk_rows(v);
    // a chunk's float32 logits within the largest tensor the device can address
    if let Some(max) = B::max_tensor_bytes(&table.device()) {
        step = step.min((max as usize / (4 * v.max(1))).max(1));
    }
    lm_head_loss_in_chunks(hidden, table, softcap, labels, grad, step, false)
}

/// [`lm_head_loss`] with chunks of `step` rows; `generic` takes [`generic::head_loss`] instead
/// of the backend's own (for the tests that hold the two against each other).
fn lm_head_loss_in_chunks<B: crate::Backend>(
    hidden: Tensor<B, 3>,
    table: Tensor<B, 2>,
    softcap: Option<f64>,
    labels: Tensor<B, 2, Int>,
    grad: bool,
    step: usize,
    generic: bool,
) -> Option<LossSum<B>> {
    let [b, t, h] = hidden.dims();
    let [v, _] = table.dims();
    let device = hidden.device();
    let dtype = hidden.dtype();
    let lab = labels
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int labels");
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for bi in 0..b {
        for p in 0..t.saturating_sub(1) {
            let y = lab[bi * t + p + 1];
            if y != IGNORE_INDEX {
                rows.push((bi * t + p) as i64);
                targets.push(y.clamp(0, v as i64 - 1));
            }
        }
    }
    let n = rows.len();
    if n == 0 {
        return None;
    }
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let selected = hidden.reshape([b * t, h]).select(0, idx); // [N, H]
    // constants: no gradient is computed for these copies (a trainable table's `detach` alone
    // would still ask for one, see `nn::constant`)
    let (hd, wd) = (constant(selected.clone()), constant(table.clone()));
    let want = HeadGrads {
        hidden: grad,
        table: grad && table.is_require_grad(),
    };
    let input = HeadLossInput {
        hidden: hd,
        table: wd,
        targets: &targets,
        softcap,
        want,
        chunk: step,
    };
    let parts = if generic {
        crate::backend::generic::head_loss(input)
    } else {
        B::head_loss(input)
    };
    let mut sum = parts.loss;
    if let Some(g_h) = parts.hidden {
        let mut surrogate = (selected * g_h).cast(DType::F32).sum();
        if let Some(gw) = parts.table {
            surrogate = surrogate + (table * gw.cast(dtype)).cast(DType::F32).sum();
        }
        sum = sum + (surrogate.clone() - surrogate.detach());
    }
    Some(LossSum {
        sum,
        num_label_tokens: n,
    })
}

/// [`crate::Backend::head_loss`]: the chunks' logits, loss and `d loss / d logits` with Burn
/// ops, or (`host`, float32 tensors in host memory) one fused pass per row over each chunk and
/// `G_w` accumulated in place.
pub(crate) fn head_loss_in_chunks<B: Backend>(
    input: HeadLossInput<'_, B>,
    host: bool,
) -> HeadLoss<B> {
    let HeadLossInput {
        hidden: hd,
        table: wd,
        targets,
        softcap,
        want,
        chunk: step,
    } = input;
    let n = targets.len();
    let [v, h] = wd.dims();
    let device = hd.device();
    let dtype = hd.dtype();
    let grad = want.hidden || want.table;
    let targets_t = Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [n]), &device);
    let mut total = Tensor::<B, 1>::zeros([1], (&device, DType::F32));
    let mut g_h = Vec::new();
    let mut g_w = TableGrad::<B>::new(host, v, h);
    for start in (0..n).step_by(step.max(1)) {
        let len = step.max(1).min(n - start);
        let hc = hd.clone().narrow(0, start, len);
        let logits = hc.clone().matmul(wd.clone().transpose());
        let (loss, dz) = if host {
            chunk_on_host(logits, &targets[start..start + len], softcap, grad)
        } else {
            let tc = targets_t.clone().narrow(0, start, len).reshape([len, 1]);
            chunk_with_ops(logits, tc, softcap, grad)
        };
        total = total + loss;
        let Some(dz) = dz else { continue };
        let dz = dz.cast(dtype);
        if want.hidden {
            g_h.push(dz.clone().matmul(wd.clone()));
        }
        if want.table {
            g_w.add(hc, dz, start + len == n);
        }
    }
    HeadLoss {
        loss: total,
        hidden: (want.hidden && !g_h.is_empty()).then(|| Tensor::cat(g_h, 0)),
        table: g_w.finish(&device),
    }
}

/// `G_w = Σ_chunks dzᵀ · hc` `[V, H]`, the tied table's gradient, summed over the chunks.
///
/// With Burn ops, the chunks are grouped to at least H rows and each group's `hcᵀ · dz` `[H, V]`
/// (which reads both operands along their rows) is added up; the sum is then copied to `[V, H]`
/// once. In host memory, each chunk is accumulated in place into one `[V, H]` buffer by the
/// same GEMM Burn's CPU backend calls: one table-sized buffer in all, where the ops take three
/// (the product, the copy Burn's CPU matmul makes of its output, and the transposed copy).
struct TableGrad<B: Backend> {
    host: Option<Vec<f32>>,
    group: Vec<(Tensor<B, 2>, Tensor<B, 2>)>,
    sum_t: Option<Tensor<B, 2>>,
    v: usize,
    h: usize,
}

impl<B: Backend> TableGrad<B> {
    fn new(on_host: bool, v: usize, h: usize) -> Self {
        Self {
            host: on_host.then(Vec::new),
            group: Vec::new(),
            sum_t: None,
            v,
            h,
        }
    }

    /// Add `dzᵀ · hc` for one chunk (`hc` `[len, H]`, `dz` `[len, V]`).
    fn add(&mut self, hc: Tensor<B, 2>, dz: Tensor<B, 2>, last: bool) {
        let (v, h) = (self.v, self.h);
        if let Some(acc) = &mut self.host {
            let len = hc.dims()[0];
            let first = acc.is_empty();
            if first {
                acc.resize(v * h, 0.0);
            }
            let hc = hc.into_data();
            let dz = dz.into_data();
            let hc = hc.as_slice::<f32>().expect("float32 hidden states");
            let dz = dz.as_slice::<f32>().expect("float32 logits gradient");
            assert!(hc.len() == len * h && dz.len() == len * v && acc.len() == v * h);
            // SAFETY: dst `[V, H]` row-major (row stride H), lhs = dzᵀ `[V, len]` read from
            // dz `[len, V]` row-major (row stride 1, column stride V), rhs = hc `[len, H]`
            // row-major; the lengths are checked above, and dst aliases neither input.
            unsafe {
                gemm::gemm(
                    v,
                    h,
                    len,
                    acc.as_mut_ptr(),
                    1,
                    h as isize,
                    !first,
                    dz.as_ptr(),
                    v as isize,
                    1,
                    hc.as_ptr(),
                    1,
                    h as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
            return;
        }
        self.group.push((hc, dz));
        let rows: usize = self.group.iter().map(|(x, _)| x.dims()[0]).sum();
        if rows >= h || last {
            // one matmul per group of at least H rows: G_wᵀ `[H, V]` is written once per group
            // instead of once per chunk (holding ≤ H rows of `dz` costs no more than G_w)
            let (hs, dzs): (Vec<_>, Vec<_>) = std::mem::take(&mut self.group).into_iter().unzip();
            let part = Tensor::cat(hs, 0)
                .transpose()
                .matmul(Tensor::cat(dzs, 0))
                .cast(DType::F32);
            self.sum_t = Some(match self.sum_t.take() {
                Some(s) => s + part,
                None => part,
            });
        }
    }

    /// G_w `[V, H]`, contiguous (float32), or `None` when nothing was added.
    fn finish(self, device: &B::Device) -> Option<Tensor<B, 2>> {
        let (v, h) = (self.v, self.h);
        match self.host {
            Some(acc) if !acc.is_empty() => Some(Tensor::from_data(
                TensorData::new(acc, [v, h]),
                (device, DType::F32),
            )),
            Some(_) => None,
            // contiguous, so that Σ table ⊙ G_w and its backward run on contiguous buffers
            None => self
                .sum_t
                .map(|s| s.transpose().reshape([v * h]).reshape([v, h])),
        }
    }
}

/// One chunk's summed loss `[1]` and, with `grad`, `d loss / d logits` (float32) from its logits
/// `[len, V]` and targets `[len, 1]`, with Burn ops (any backend).
fn chunk_with_ops<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    softcap: Option<f64>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 2>>) {
    let logits = crate::nn::softcap_opt(logits, softcap).cast(DType::F32);
    // the log-sum-exp with its exponentials kept: softmax = e / Σe needs no second exp
    let max = logits.clone().max_dim(1);
    let e = (logits.clone() - max.clone()).exp();
    let sum = blocked_row_sum(e.clone());
    let lse = sum.clone().log() + max;
    let picked = logits.clone().gather(1, targets.clone());
    let loss = (lse - picked).sum();
    if !grad {
        return (loss, None);
    }
    // d(Σ nll)/d logits = softmax − one-hot (−1 added at the targets), then through the soft-cap
    let len = targets.dims()[0];
    let mut dz = (e / sum).scatter(
        1,
        targets,
        Tensor::ones([len, 1], (&logits.device(), DType::F32)).neg(),
        burn::tensor::IndexingUpdateOp::Add,
    );
    if let Some(cap) = softcap {
        let th = logits / cap;
        dz = dz * (th.clone() * th).neg().add_scalar(1.0);
    }
    (loss, Some(dz))
}

/// [`chunk_with_ops`] for float32 logits in host memory: one fused pass per row (see [`host`]),
/// in place on the logits' buffer.
fn chunk_on_host<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 2>>) {
    let device = logits.device();
    let v = logits.dims()[1];
    let mut data = logits.into_data();
    let buf = data.as_mut_slice::<f32>().expect("float32 logits");
    let loss = host::softmax_xent_rows(buf, v, targets, softcap.map(|c| c as f32), grad);
    let loss = Tensor::from_data(
        TensorData::new(vec![loss as f32], [1]),
        (&device, DType::F32),
    );
    (
        loss,
        grad.then(|| Tensor::from_data(data, (&device, DType::F32))),
    )
}

/// The loss's element-wise work on one chunk of float32 logits in host memory, in one fused pass
/// per row instead of Burn's one op (and one fresh buffer) per step: soft-cap, max, `exp`, the
/// blocked sum, the log-sum-exp, and the gradient `softmax − one-hot` through the soft-cap,
/// written over the logits. Burn's CPU backend runs each of those as a separate pass with scalar
/// `exp`/`tanh`; here `exp` is a branch-free polynomial the compiler vectorises.
mod host {
    use rayon::prelude::*;

    use crate::host::{exp, fold_lanes, tanh, vectorized};

    /// Rows of `buf` (`[rows, v]`, row-major) are logits; `targets[i]` is row `i`'s label.
    /// Returns the summed loss `Σ (lse − x[target])` (f64). With `grad`, each row is replaced by
    /// `d loss / d logits` (before the soft-cap when one is given).
    pub fn softmax_xent_rows(
        buf: &mut [f32],
        v: usize,
        targets: &[i64],
        softcap: Option<f32>,
        grad: bool,
    ) -> f64 {
        buf.par_chunks_mut(v)
            .zip(targets.par_iter())
            .map(|(row, &t)| vectorized(|| row_pass(row, t as usize, softcap, grad)))
            .sum()
    }

    /// One row, inlined into [`vectorized`]'s AVX-512 / AVX2 copies. Sums and the max run
    /// in [`fold_lanes`]' interleaved order, so the loops vectorise.
    #[inline(always)]
    fn row_pass(row: &mut [f32], t: usize, softcap: Option<f32>, grad: bool) -> f64 {
        if let Some(cap) = softcap {
            let inv = 1.0 / cap;
            row.iter_mut().for_each(|x| *x = cap * tanh(*x * inv));
        }
        let max = fold_lanes(row, f32::NEG_INFINITY, f32::max);
        let picked = row[t];
        // blocked sum (1024 per block, f32 within a block, f64 across), as `blocked_row_sum`
        let keep = grad && softcap.is_none();
        let mut sum = 0.0f64;
        let mut scratch = [0f32; super::SUM_BLOCK];
        for block in row.chunks_mut(super::SUM_BLOCK) {
            let e = if keep {
                &mut *block
            } else {
                let e = &mut scratch[..block.len()];
                e.copy_from_slice(block);
                e
            };
            e.iter_mut().for_each(|x| *x = exp(*x - max));
            sum += f64::from(fold_lanes(e, 0.0, |a, b| a + b));
        }
        let lse = sum.ln() + f64::from(max);
        if grad {
            let inv = (1.0 / sum) as f32;
            match softcap {
                // the row holds the exponentials
                None => row.iter_mut().for_each(|e| *e *= inv),
                // the row holds the capped logits: softmax · (1 − (x / cap)²)
                Some(cap) => {
                    let ic = 1.0 / cap;
                    row.iter_mut().for_each(|x| {
                        let th = *x * ic;
                        *x = exp(*x - max) * inv * (1.0 - th * th);
                    });
                }
            }
            let d = match softcap {
                None => 1.0,
                Some(cap) => {
                    let th = picked / cap;
                    1.0 - th * th
                }
            };
            row[t] -= d;
        }
        lse - f64::from(picked)
    }
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
    fn lm_head_loss_has_the_value_and_gradients_of_the_full_loss() {
        type A = burn::backend::Autodiff<B>;
        let dev = Default::default();
        let (b, t, h, v) = (2, 5, 4, 3000);
        let hv: Vec<f32> = uniform(b * t * h, 3)
            .into_iter()
            .map(|u| 4.0 * u - 2.0)
            .collect();
        let wv: Vec<f32> = uniform(v * h, 4)
            .into_iter()
            .map(|u| 2.0 * u - 1.0)
            .collect();
        let labels =
            Tensor::<A, 2, Int>::from_ints([[7, 1, -100, 2999, 5], [0, -100, -100, 42, 17]], &dev);
        for (cap, host) in [
            (None, true),
            (Some(3.0), true),
            (None, false),
            (Some(3.0), false),
        ] {
            let run = |chunked: bool| {
                let hid = Tensor::<A, 3>::from_data(TensorData::new(hv.clone(), [b, t, h]), &dev)
                    .require_grad();
                let w = Tensor::<A, 2>::from_data(TensorData::new(wv.clone(), [v, h]), &dev)
                    .require_grad();
                let loss = if chunked {
                    // 5 labelled rows in chunks of 4: two chunks
                    lm_head_loss_in_chunks(
                        hid.clone(),
                        w.clone(),
                        cap,
                        labels.clone(),
                        true,
                        4,
                        !host,
                    )
                    .unwrap()
                    .mean()
                } else {
                    let mut logits = hid
                        .clone()
                        .reshape([b * t, h])
                        .matmul(w.clone().transpose())
                        .reshape([b, t, v]);
                    if let Some(c) = cap {
                        logits = crate::nn::softcap(logits, c);
                    }
                    causal_lm_loss(logits, labels.clone()).unwrap()
                };
                let value = loss.clone().into_scalar().elem::<f32>();
                let grads = loss.backward();
                let gh = hid
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                let gw = w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
                (value, gh, gw)
            };
            let (lf, ghf, gwf) = run(false);
            let (lc, ghc, gwc) = run(true);
            assert!((lf - lc).abs() <= 1e-6 * lf.abs(), "{lf} vs {lc}");
            for (a, e) in [(ghc, ghf), (gwc, gwf)] {
                let max = e.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = a
                    .iter()
                    .zip(&e)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    err <= 1e-5 * max + 1e-9,
                    "cap {cap:?}, host {host}: {err} of {max}"
                );
            }
        }
        // evaluation: the same value, no gradient work; nothing labelled: None
        let hid = Tensor::<B, 3>::from_data(TensorData::new(hv.clone(), [b, t, h]), &dev);
        let w = Tensor::<B, 2>::from_data(TensorData::new(wv.clone(), [v, h]), &dev);
        let l = lm_head_loss(hid.clone(), w.clone(), None, labels.inner(), false).unwrap();
        assert_eq!(l.num_label_tokens, 5);
        let none = Tensor::<B, 2, Int>::from_ints([[1, -100, -100, -100, -100]; 2], &dev);
        assert!(lm_head_loss(hid, w, None, none, false).is_none());
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
