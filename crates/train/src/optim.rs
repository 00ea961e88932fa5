//! AdamW with PyTorch's semantics, global-norm gradient clipping, and state keyed by parameter
//! name.
//!
//! The update is [`crate::adamw::AdamWStep`]: `torch.optim.AdamW`'s single-tensor path, op for
//! op (decoupled decay `p ← p·(1 − lr·wd)`, then `p ← p − lr/(1 − β1ᵗ)·m/(√v/√(1 − β2ᵗ) + ε)`),
//! with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, weight decay 0.01), in place on the CPU
//! backend. Burn's `AdamW` is not used: it orders the arithmetic differently, its defaults differ
//! (ε = 1e-5, weight decay 1e-4), and its tensor ops hold several parameter-sized temporaries,
//! which made the optimizer step the peak of a full fine-tuning step. Around it:
//!
//! * clipping by the **global** L2 norm over every gradient, as `torch.nn.utils.clip_grad_norm_`
//!   (Burn's `GradientClipping::Norm` clips each tensor on its own);
//! * state keyed by the parameter's Hugging Face name, so it is saved and restored by name;
//! * float32 master weights and moments for parameters stored in a lower precision: the update
//!   runs on the float32 copy and the parameter receives its rounded value.

use std::collections::BTreeMap;

use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::tree::KeyPath;
use automodel_core::weights::TensorMap;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Recipe `optimizer` (AdamW; PyTorch's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `adamw` (the only one for now).
    pub name: String,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Decoupled weight decay (PyTorch's AdamW default 0.01), on every trainable parameter.
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: "adamw".into(),
            lr: 1e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(format!("optimizer.{m}")));
        if !matches!(
            self.name.to_ascii_lowercase().as_str(),
            "adamw" | "torch.optim.adamw"
        ) {
            return bad(format!(
                "name: `{}` is not supported (expected `adamw`)",
                self.name
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr: {} is not a positive number", self.lr));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("betas: {:?} must lie in [0, 1)", self.betas));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("eps: {} is not a positive number", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay: {} must be ≥ 0", self.weight_decay));
        }
        Ok(())
    }
}

/// One parameter's state, flattened (float32).
#[derive(Debug, Clone)]
pub struct ParamState<B: Backend> {
    /// Steps taken (PyTorch's `step`).
    pub step: usize,
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
    /// The float32 master copy of a parameter stored in a lower precision.
    pub master: Option<Tensor<B, 1>>,
}

/// AdamW over a module's trainable parameters, state by name.
pub struct Optimizer<B: AutodiffBackend> {
    pub config: OptimizerConfig,
    /// Key prefix of the names (the model's HF prefix).
    prefix: String,
    pub states: BTreeMap<String, ParamState<B::InnerBackend>>,
}

impl<B: AutodiffBackend> Optimizer<B> {
    pub fn new(config: OptimizerConfig, prefix: &str) -> Result<Self, TrainError> {
        config.validate()?;
        Ok(Self {
            config,
            prefix: prefix.to_string(),
            states: BTreeMap::new(),
        })
    }

    /// One update with `grads` multiplied by `grad_scale` (the clipping factor) at rate `lr`.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: &mut GradientsParams,
        grad_scale: f64,
    ) -> M {
        let mut m = StepMapper::<B> {
            config: &self.config,
            states: &mut self.states,
            grads,
            lr,
            scale: grad_scale,
            path: KeyPath::default(),
            prefix: &self.prefix,
        };
        module.map(&mut m)
    }

    /// Save the state into `dir`: `optimizer.safetensors` with `{name}.exp_avg`,
    /// `{name}.exp_avg_sq` and `{name}.master` (the float32 value of the parameter) for every
    /// parameter with a state, in HF layout, and `optimizer.json` (settings and step counts).
    pub fn save<M: AutodiffModule<B>>(
        &self,
        module: &M,
        dir: &std::path::Path,
    ) -> Result<(), TrainError> {
        struct Save<'a, B: AutodiffBackend> {
            states: &'a BTreeMap<String, ParamState<B::InnerBackend>>,
            prefix: &'a str,
            path: KeyPath,
            out: TensorMap,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Save<'_, B> {
            fn enter_module(&mut self, name: &str, container: &str) {
                self.path.enter(name, container);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let name = self.path.key(self.prefix);
                let Some(s) = self.states.get(&name) else {
                    return;
                };
                let value = param.val().inner();
                let dims = value.dims();
                let n: usize = dims.iter().product();
                let linear = self.path.is_linear_weight();
                let master = s
                    .master
                    .clone()
                    .unwrap_or_else(|| value.cast(DType::F32).reshape([n]));
                for (suffix, t) in [
                    ("exp_avg", &s.exp_avg),
                    ("exp_avg_sq", &s.exp_avg_sq),
                    ("master", &master),
                ] {
                    self.out
                        .insert_data(format!("{name}.{suffix}"), to_hf(t.clone(), &dims, linear));
                }
            }
        }
        let mut v = Save::<B> {
            states: &self.states,
            prefix: &self.prefix,
            path: KeyPath::default(),
            out: TensorMap::new(),
        };
        module.visit(&mut v);
        std::fs::create_dir_all(dir).map_err(|e| TrainError::file(dir, e))?;
        v.out.save_file(&dir.join(OPTIMIZER_TENSORS))?;
        let steps: BTreeMap<&String, usize> =
            self.states.iter().map(|(k, s)| (k, s.step)).collect();
        crate::checkpoint::write_json(
            &dir.join(OPTIMIZER_JSON),
            &serde_json::json!({ "config": self.config, "steps": steps }),
        )
    }

    /// Restore what [`Optimizer::save`] wrote into `dir`: the moments, and every saved
    /// parameter's value from its float32 master copy. A saved name the module lacks, or one
    /// that is not trainable here, is an error (the run's adapters or freezing changed).
    pub fn load<M: AutodiffModule<B>>(
        &mut self,
        module: M,
        dir: &std::path::Path,
    ) -> Result<M, TrainError> {
        let json = dir.join(OPTIMIZER_JSON);
        let text = std::fs::read_to_string(&json).map_err(|e| TrainError::file(&json, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::file(&json, e))?;
        let steps: BTreeMap<String, usize> = serde_json::from_value(v["steps"].clone())
            .map_err(|e| TrainError::file(&json, format!("steps: {e}")))?;
        let files = automodel_core::weights::SafeTensorsFiles::open(dir.join(OPTIMIZER_TENSORS))?;
        struct Load<'a, B: AutodiffBackend> {
            steps: &'a BTreeMap<String, usize>,
            files: &'a automodel_core::weights::SafeTensorsFiles,
            states: BTreeMap<String, ParamState<B::InnerBackend>>,
            prefix: &'a str,
            path: KeyPath,
            error: Option<TrainError>,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Load<'_, B> {
            fn enter_module(&mut self, name: &str, container: &str) {
                self.path.enter(name, container);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.exit();
            }
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let name = self.path.key(self.prefix);
                let Some(&step) = self.steps.get(&name) else {
                    return param;
                };
                let (id, tensor, mapper) = param.consume();
                let dims = tensor.dims();
                let linear = self.path.is_linear_weight();
                let device = tensor.device();
                let mut get = |suffix: &str| -> Option<Tensor<B::InnerBackend, 1>> {
                    let key = format!("{name}.{suffix}");
                    match self.files.to_f32_vec(&key) {
                        Ok(v) if v.len() == dims.iter().product::<usize>() => {
                            Some(from_hf::<B::InnerBackend>(v, &dims, linear, &device))
                        }
                        Ok(v) => {
                            self.error.get_or_insert(TrainError::Config(format!(
                                "the optimizer state's `{key}` has {} values; the parameter has {dims:?}",
                                v.len()
                            )));
                            None
                        }
                        Err(e) => {
                            self.error.get_or_insert(e.into());
                            None
                        }
                    }
                };
                let (Some(m), Some(v), Some(master)) =
                    (get("exp_avg"), get("exp_avg_sq"), get("master"))
                else {
                    return Param::from_mapped_value(id, tensor, mapper);
                };
                if !tensor.is_require_grad() {
                    self.error.get_or_insert(TrainError::Config(format!(
                        "the optimizer state holds `{name}`, which does not train in this run (were peft or freeze_config changed?)"
                    )));
                }
                let dtype = tensor.dtype();
                let low = dtype != DType::F32;
                let value = Tensor::<B, D>::from_inner(master.clone().reshape(dims).cast(dtype))
                    .require_grad();
                self.states.insert(
                    name,
                    ParamState {
                        step,
                        exp_avg: m,
                        exp_avg_sq: v,
                        master: low.then_some(master),
                    },
                );
                Param::from_mapped_value(id, value, mapper)
            }
        }
        let mut l = Load::<B> {
            steps: &steps,
            files: &files,
            states: BTreeMap::new(),
            prefix: &self.prefix,
            path: KeyPath::default(),
            error: None,
        };
        let module = module.map(&mut l);
        if let Some(e) = l.error {
            return Err(e);
        }
        if let Some(missing) = steps.keys().find(|k| !l.states.contains_key(*k)) {
            return Err(TrainError::Config(format!(
                "{}: the optimizer state holds `{missing}`, which this model does not have",
                dir.display()
            )));
        }
        self.states = l.states;
        Ok(module)
    }
}

pub const OPTIMIZER_TENSORS: &str = "optimizer.safetensors";
pub const OPTIMIZER_JSON: &str = "optimizer.json";

/// `t` (module layout, flattened) as HF-layout float32 data of `shape`.
fn to_hf<B: Backend>(t: Tensor<B, 1>, dims: &[usize], linear: bool) -> TensorData {
    let (data, shape) = if linear {
        // the module keeps [in, out]; HF stores [out, in]
        let (i, o) = (dims[0], dims[1]);
        (t.reshape([i, o]).transpose().into_data(), vec![o, i])
    } else {
        (t.into_data(), dims.to_vec())
    };
    let v: Vec<f32> = data.convert::<f32>().into_vec().expect("float32 state");
    TensorData::new(v, shape)
}

/// HF-layout values back to the module layout (`dims`), flattened.
fn from_hf<B: Backend>(
    v: Vec<f32>,
    dims: &[usize],
    linear: bool,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = v.len();
    let t = Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device);
    if linear {
        let (i, o) = (dims[0], dims[1]);
        t.reshape([o, i]).transpose().reshape([n])
    } else {
        t
    }
}

struct StepMapper<'a, B: AutodiffBackend> {
    config: &'a OptimizerConfig,
    states: &'a mut BTreeMap<String, ParamState<B::InnerBackend>>,
    grads: &'a mut GradientsParams,
    lr: f64,
    scale: f64,
    path: KeyPath,
    prefix: &'a str,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let name = self.path.key(self.prefix);
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let dtype = tensor.dtype();
        let require_grad = tensor.is_require_grad();
        let grad = grad.cast(DType::F32);
        let prev = self.states.remove(&name);
        let value = match prev.as_ref().and_then(|s| s.master.clone()) {
            Some(m) => m.reshape(dims),
            None => tensor.inner().cast(DType::F32),
        };
        let (step, exp_avg, exp_avg_sq) = match prev {
            Some(s) => (
                s.step + 1,
                s.exp_avg.reshape(dims),
                s.exp_avg_sq.reshape(dims),
            ),
            None => {
                let zeros = || Tensor::zeros(dims, (&grad.device(), DType::F32));
                (1, zeros(), zeros())
            }
        };
        let (new, exp_avg, exp_avg_sq) =
            crate::adamw::adamw_step(self.config, self.lr, step, self.scale)
                .apply(value, grad, exp_avg, exp_avg_sq);
        let low = dtype != DType::F32;
        self.states.insert(
            name,
            ParamState {
                step,
                exp_avg: exp_avg.reshape([n]),
                exp_avg_sq: exp_avg_sq.reshape([n]),
                master: low.then(|| new.clone().reshape([n])),
            },
        );
        let mut t = Tensor::from_inner(if low { new.cast(dtype) } else { new });
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// The gradient norms of one step: the global L2 norm and one per component
/// ([`crate::grad_watch::component_of`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GradNorms {
    /// The global L2 norm, as `torch.nn.utils.clip_grad_norm_` computes it.
    pub total: f64,
    /// The L2 norm over each component's gradients (components with a gradient only).
    pub components: BTreeMap<String, f64>,
}

/// The global L2 norm of every gradient in `grads` (over the parameters of `module`), as
/// `torch.nn.utils.clip_grad_norm_` computes it: the norm of the per-tensor norms.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    grad_norms(module, grads).total
}

/// [`global_grad_norm`] and the norm of each component's gradients, read from the device in one
/// go per component.
pub fn grad_norms<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> GradNorms {
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        path: KeyPath,
        sums: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                // in slices of 4 Mi elements: the squares of a whole 262144 × 640 table would
                // be a 640 MiB temporary
                const SLICE: usize = 1 << 22;
                let n = g.shape().num_elements();
                let g = g.reshape([n]);
                let sq = (0..n)
                    .step_by(SLICE)
                    .map(|s| {
                        g.clone()
                            .narrow(0, s, SLICE.min(n - s))
                            .cast(DType::F32)
                            .square()
                            .sum()
                    })
                    .reduce(|a, b| a + b)
                    .expect("a gradient has elements");
                let part = crate::grad_watch::component_of(&self.path.key(""));
                let sum = match self.sums.remove(&part) {
                    Some(s) => s + sq,
                    None => sq,
                };
                self.sums.insert(part, sum);
            }
        }
    }
    let mut v = Norm::<B> {
        grads,
        path: KeyPath::default(),
        sums: BTreeMap::new(),
    };
    module.visit(&mut v);
    let squares: BTreeMap<String, f64> = v
        .sums
        .into_iter()
        .map(|(k, s)| (k, s.into_scalar().elem::<f64>()))
        .collect();
    GradNorms {
        total: squares.values().sum::<f64>().sqrt(),
        components: squares.into_iter().map(|(k, s)| (k, s.sqrt())).collect(),
    }
}

/// PyTorch's clipping factor: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(m) => (m / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automodel_core::CpuAutodiff as A;
    use automodel_core::init::Initializer;
    use automodel_core::nn::Linear;

    /// torch.optim.AdamW by hand for one scalar sequence of gradients.
    fn torch_adamw(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            p -= lr / (1.0 - b1.powi(t)) * m / denom;
        }
        p
    }

    #[test]
    fn adamw_follows_torch_and_clips_by_the_global_norm() {
        let dev = Default::default();
        let init = Initializer::<A>::random(&dev, DType::F32, 0.5);
        let lin = Linear::<A>::new(&init, 3, 2);
        let values =
            |t: Tensor<A, 2>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().unwrap() };
        let w0 = values(lin.weight.val());
        let mut opt = Optimizer::<A>::new(OptimizerConfig::default(), "").unwrap();
        let x = Tensor::<A, 2>::from_floats([[1.0, -2.0, 0.5]], &dev);
        let mut lin = lin;
        let mut all_grads: Vec<Vec<f32>> = Vec::new();
        for _ in 0..3 {
            let y = lin.forward(x.clone()).powi_scalar(2).sum();
            let mut g = GradientsParams::from_grads(y.backward(), &lin);
            let gv = values(Tensor::from_inner(
                g.get::<burn::backend::Flex, 2>(lin.weight.id).unwrap(),
            ));
            let norm = global_grad_norm(&lin, &g);
            let want = gv.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - want).abs() < 1e-4 * want.max(1.0));
            all_grads.push(gv);
            lin = opt.step(1e-2, lin, &mut g, 1.0);
        }
        let w = values(lin.weight.val());
        for i in 0..w.len() {
            let gs: Vec<f64> = all_grads.iter().map(|g| g[i] as f64).collect();
            let want = torch_adamw(w0[i] as f64, &gs, 1e-2, 0.01);
            assert!((w[i] as f64 - want).abs() < 1e-5, "{i}: {} vs {want}", w[i]);
        }
        assert_eq!(opt.states["weight"].step, 3);
        assert_eq!(clip_factor(2.0, Some(1.0)), 1.0 / (2.0 + 1e-6));
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        assert_eq!(clip_factor(5.0, None), 1.0);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = OptimizerConfig {
            eps: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("optimizer.eps"), "{e}");
        let e = OptimizerConfig {
            name: "sgd".into(),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("sgd"), "{e}");
    }

    #[test]
    fn low_precision_parameters_keep_float32_masters_and_state_round_trips_by_name() {
        let dev = Default::default();
        let init = Initializer::<A>::random(&dev, DType::BF16, 0.5);
        let mut lin = Linear::<A>::new(&init, 3, 2);
        let x = Tensor::<A, 2>::from_floats([[1.0, -2.0, 0.5]], &dev).cast(DType::BF16);
        let mut opt = Optimizer::<A>::new(OptimizerConfig::default(), "").unwrap();
        for _ in 0..2 {
            let y = lin.forward(x.clone()).cast(DType::F32).powi_scalar(2).sum();
            let mut g = GradientsParams::from_grads(y.backward(), &lin);
            lin = opt.step(1e-3, lin, &mut g, 1.0);
        }
        assert_eq!(lin.weight.val().dtype(), DType::BF16);
        let s = &opt.states["weight"];
        let master = s
            .master
            .clone()
            .expect("a float32 master for a bf16 parameter");
        assert_eq!(master.dtype(), DType::F32);
        let rounded: Vec<f32> = master
            .clone()
            .cast(DType::BF16)
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        let dims = lin.weight.val().dims();
        let param: Vec<f32> = lin
            .weight
            .val()
            .inner()
            .cast(DType::F32)
            .reshape([dims[0] * dims[1]])
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        assert_eq!(param, rounded, "the parameter is its master, rounded");

        // saved by name, restored into a fresh module: same state, same values
        let dir = tempfile::tempdir().unwrap();
        opt.save(&lin, dir.path()).unwrap();
        let fresh = Linear::<A>::new(&init, 3, 2);
        let mut again = Optimizer::<A>::new(OptimizerConfig::default(), "").unwrap();
        let restored = again.load(fresh, dir.path()).unwrap();
        let flat = |t: Tensor<burn::backend::Flex, 1>| -> Vec<f32> {
            t.into_data().convert::<f32>().into_vec().unwrap()
        };
        let r = &again.states["weight"];
        assert_eq!(r.step, 2);
        assert_eq!(flat(r.exp_avg.clone()), flat(s.exp_avg.clone()));
        assert_eq!(flat(r.exp_avg_sq.clone()), flat(s.exp_avg_sq.clone()));
        assert_eq!(flat(r.master.clone().unwrap()), flat(master));
        let weights = |l: &Linear<A>| flat(l.weight.val().inner().cast(DType::F32).reshape([6]));
        assert_eq!(weights(&restored), weights(&lin));
        // a state for a parameter this module does not train is refused
        let frozen =
            automodel_core::tree::set_trainable(Linear::<A>::new(&init, 3, 2), "", |_| false);
        let e = Optimizer::<A>::new(OptimizerConfig::default(), "")
            .unwrap()
            .load(frozen, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not train"), "{e}");
    }
}
