//! Folding adapters into the base weights: `W ← W + scale · B·A`, the adapters removed.

use std::collections::BTreeMap;

use automodel_core::Backend;
use automodel_core::tree::KeyPath;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::config::LoraConfig;
use crate::model::PeftModel;

/// Collects every adapter's `A` `[in, r]` and `B` `[r, out]` by module path.
struct Collect<B: Backend> {
    path: KeyPath,
    a: BTreeMap<String, Tensor<B, 2>>,
    b: BTreeMap<String, Tensor<B, 2>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.path.key("");
        let to2 = |t: Tensor<B, D>| {
            let d = t.dims();
            t.reshape([d[0], d[D - 1]])
        };
        if let Some(m) = key.strip_suffix(".lora_A.weight") {
            self.a.insert(m.to_string(), to2(param.val()));
        } else if let Some(m) = key.strip_suffix(".lora_B.weight") {
            self.b.insert(m.to_string(), to2(param.val()));
        }
    }
}

/// Adds each adapter's update to its weight and empties the adapter slots.
struct Fold<B: Backend> {
    path: KeyPath,
    deltas: BTreeMap<String, Tensor<B, 2>>,
}

impl<B: Backend> ModuleMapper<B> for Fold<B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.path.key("");
        if key.ends_with(".lora_A.weight") || key.ends_with(".lora_B.weight") {
            let device = param.val().device();
            return Param::from_tensor(Tensor::empty([0; D], &device));
        }
        let Some(delta) = key.strip_suffix(".weight").and_then(|m| self.deltas.get(m)) else {
            return param;
        };
        let id = param.id;
        let w = param.val();
        let dims = w.dims();
        let delta: Tensor<B, D> = delta.clone().reshape(dims).cast(w.dtype());
        Param::initialized(id, (w + delta).detach())
    }
}

/// Merge every adapter of `model` into its base weight (in memory, for fast generation or to
/// save a plain checkpoint). `cfg` gives the scale.
pub fn merge<B: Backend, M: PeftModel<B>>(model: M, cfg: &LoraConfig) -> M {
    let scale = cfg.scale();
    model.map_tree(|t, _| {
        let mut c = Collect {
            path: KeyPath::default(),
            a: BTreeMap::new(),
            b: BTreeMap::new(),
        };
        t.visit(&mut c);
        let deltas =
            c.a.into_iter()
                .filter_map(|(m, a)| {
                    let b = c.b.get(&m)?.clone().cast(a.dtype());
                    Some((m, a.matmul(b) * scale))
                })
                .collect();
        t.map(&mut Fold {
            path: KeyPath::default(),
            deltas,
        })
    })
}
