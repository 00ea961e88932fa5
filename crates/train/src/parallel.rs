//! Data parallelism in the trainer: which micro-batches of a step a worker runs, and the sum
//! over workers of the gradients and the loss, before the global-norm clip.
//!
//! Every worker reads the whole global batch in the same seeded order (so the label-token
//! count that normalises the loss is the global batch's, and the data position saved in a
//! checkpoint does not depend on the number of workers), runs its share of the micro-batches,
//! and the gradients are summed once per step in one bucketed all-reduce. Every worker then
//! holds the same gradients and takes the same optimizer step: N workers reproduce one process
//! accumulating the same micro-batches.

use automodel_core::AutodiffBackend;
use automodel_distributed::Collective;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;

use crate::error::TrainError;

/// The micro-batches (indices `0..acc`) worker `rank` of `world` runs: every `world`-th one.
pub fn share(acc: usize, rank: usize, world: usize) -> impl Iterator<Item = usize> {
    (rank..acc).step_by(world.max(1))
}

/// Check that `acc` micro-batches per step can be shared evenly by `world` workers.
pub fn check_share(
    acc: usize,
    world: usize,
    global: usize,
    local: usize,
) -> Result<(), TrainError> {
    if world > 1 && !acc.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "step_scheduler: global_batch_size {global} / local_batch_size {local} = {acc} micro-batches per step cannot be shared by {world} workers: make global_batch_size a multiple of local_batch_size × {world} ({})",
            local * world
        )));
    }
    Ok(())
}

/// Replace `grads` by their sum over every worker and return the summed `loss` (this worker's
/// share of the step's loss) and whether any worker asked to stop (`stop`: this one's request),
/// so that all stop after the same step. Every trainable parameter takes part, with zeros where this
/// worker has no gradient for it (a tower its micro-batches did not use); a parameter no
/// worker has a gradient for stays without one, as in one process.
pub fn all_reduce<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    loss: Option<Tensor<B::InnerBackend, 1>>,
    collective: &Collective<B::InnerBackend>,
    device: &B::Device,
    stop: bool,
) -> Result<(f64, bool), TrainError> {
    let inner_device = Tensor::<B, 1>::zeros([1], device).inner().device();
    let mut gather = Gather::<B> {
        grads,
        parts: Vec::new(),
        flags: Vec::new(),
        device: inner_device.clone(),
    };
    model.visit(&mut gather);
    let Gather { parts, flags, .. } = gather;
    let n_flags = flags.len();
    let mut all = parts;
    all.push(Tensor::from_floats(flags.as_slice(), &inner_device));
    all.push(Tensor::from_floats(
        [if stop { 1.0f32 } else { 0.0 }],
        &inner_device,
    ));
    all.push(match loss {
        Some(l) => l.cast(DType::F32).reshape([1]),
        None => Tensor::zeros([1], &inner_device),
    });
    let flat = Tensor::cat(all, 0);
    let total = flat.dims()[0];
    let summed = collective
        .all_reduce_sum(flat, "the step's gradients")
        .map_err(|e| TrainError::Parallel(e.to_string()))?;
    let flags: Vec<f32> = summed
        .clone()
        .narrow(0, total - 2 - n_flags, n_flags)
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::Parallel(format!("the summed flags: {e:?}")))?;
    let loss = summed
        .clone()
        .narrow(0, total - 1, 1)
        .into_scalar()
        .elem::<f64>();
    let stop = summed
        .clone()
        .narrow(0, total - 2, 1)
        .into_scalar()
        .elem::<f64>()
        > 0.0;
    let mut scatter = Scatter::<B> {
        grads,
        summed,
        flags,
        offset: 0,
        index: 0,
    };
    model.visit(&mut scatter);
    Ok((loss, stop))
}

/// Whether a parameter takes part: it has a gradient here or is trainable.
fn takes_part<B: AutodiffBackend, const D: usize>(
    param: &Param<Tensor<B, D>>,
    grads: &GradientsParams,
) -> bool {
    grads.get::<B::InnerBackend, D>(param.id).is_some() || param.val().is_require_grad()
}

/// Each trainable parameter's gradient flattened to float32 (zeros where absent), and a flag
/// of its presence.
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    flags: Vec<f32>,
    device: <B::InnerBackend as burn::tensor::backend::BackendTypes>::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !takes_part(param, self.grads) {
            return;
        }
        let n = param.val().shape().num_elements();
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => {
                self.parts.push(g.reshape([n]).cast(DType::F32));
                self.flags.push(1.0);
            }
            None => {
                self.parts.push(Tensor::zeros([n], &self.device));
                self.flags.push(0.0);
            }
        }
    }
}

/// The summed gradients put back, in their parameters' shapes and dtypes.
struct Scatter<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    summed: Tensor<B::InnerBackend, 1>,
    flags: Vec<f32>,
    offset: usize,
    index: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !takes_part(param, self.grads) {
            return;
        }
        let value = param.val();
        let (shape, dtype) = (value.shape(), value.dtype());
        let n = shape.num_elements();
        let (offset, present) = (self.offset, self.flags[self.index] > 0.0);
        self.offset += n;
        self.index += 1;
        if !present {
            return;
        }
        let id: ParamId = param.id;
        let g = self
            .summed
            .clone()
            .narrow(0, offset, n)
            .cast(dtype)
            .reshape(shape);
        self.grads.register::<B::InnerBackend, D>(id, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_a_step_evenly() {
        assert_eq!(share(4, 0, 2).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(share(4, 1, 2).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(share(3, 0, 1).collect::<Vec<_>>(), [0, 1, 2]);
        check_share(4, 2, 8, 2).unwrap();
        check_share(3, 1, 3, 1).unwrap();
        let e = check_share(3, 2, 6, 2).unwrap_err().to_string();
        assert!(e.contains("multiple of local_batch_size × 2 (4)"), "{e}");
    }
}
