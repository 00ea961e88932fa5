//! The naming tree: a parameter's Hugging Face key is its field path in the Burn module tree.
//!
//! Modules mirror Hugging Face's module layout field by field (`layers` → `0` → `self_attn` →
//! `q_proj` → `weight`), so Burn's derived [`Module::visit`]/[`Module::map`] walk *is* the naming
//! tree and every key is written once, as a field name. On that walk:
//!
//! * a `Vec` element is named by its index, an `Option` adds nothing, and an enum variant adds
//!   nothing either (a block that may be one of several kinds keeps its position's name);
//! * a [`crate::nn::Linear`] keeps its weight as `[in, out]` for the forward matmul, while HF
//!   stores `[out, in]`: the walk knows a `Linear`'s `weight` and transposes it on the way in and
//!   out.
//!
//! One walk serves loading ([`load`]), saving ([`hf_tensors`]), gradient export ([`hf_grads`]),
//! listing every parameter with its [`ParamId`] ([`param_infos`]), listing every linear layer
//! ([`linear_paths`], what LoRA targets) and freezing by name ([`set_trainable`]).

use crate::AutodiffBackend;
use crate::Backend;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

use burn::tensor::DType;

use crate::WeightError;
use crate::weights::{TensorMap, TensorSource, WeightLoader};

/// The path of the module being visited or mapped: what a [`ModuleVisitor`] or [`ModuleMapper`]
/// keeps to know the HF key of each parameter (enum variants add no segment).
#[derive(Debug, Default)]
pub struct KeyPath {
    /// `(segment, container type)`; the segment is `None` for enum variants.
    segs: Vec<(Option<String>, String)>,
}

impl KeyPath {
    /// On `enter_module`.
    pub fn enter(&mut self, name: &str, container: &str) {
        let seg = (!container.starts_with("Enum:")).then(|| name.to_string());
        self.segs.push((seg, container.to_string()));
    }

    /// On `exit_module`.
    pub fn exit(&mut self) {
        self.segs.pop();
    }

    /// `{prefix}{a.b.c}`.
    pub fn key(&self, prefix: &str) -> String {
        let mut key = prefix.to_string();
        for s in self.segs.iter().filter_map(|(s, _)| s.as_deref()) {
            if !key.is_empty() && !key.ends_with('.') {
                key.push('.');
            }
            key.push_str(s);
        }
        key
    }

    /// Whether the parameter being visited is the `weight` of a [`crate::nn::Linear`] or of one
    /// of its LoRA matrices (kept `[in, out]`, stored `[out, in]`).
    pub fn is_linear_weight(&self) -> bool {
        matches!(self.segs.last(), Some((Some(s), c))
            if s == "weight" && (c == LINEAR_CONTAINER || c == LORA_CONTAINER))
    }
}

/// How Burn's derive names the fields of [`crate::nn::Linear`].
const LINEAR_CONTAINER: &str = "Struct:Linear";
use crate::nn::lora::LORA_CONTAINER;

/// `shape` in HF layout: reversed for a linear weight (`[in, out]` → `[out, in]`).
fn hf_shape(dims: &[usize], linear: bool) -> Vec<usize> {
    let mut s = dims.to_vec();
    if linear {
        s.reverse();
    }
    s
}

/// One parameter of a module tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// The Hugging Face key, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub key: String,
    /// Burn's id of the parameter (what optimizers and gradients are keyed by).
    pub id: ParamId,
    /// Shape in HF layout.
    pub shape: Vec<usize>,
    /// A linear weight (kept transposed in the module).
    pub linear: bool,
    /// Whether it requires a gradient.
    pub trainable: bool,
}

impl ParamInfo {
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct InfoVisitor<'a> {
    prefix: &'a str,
    path: KeyPath,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for InfoVisitor<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let linear = self.path.is_linear_weight();
        let value = param.val();
        self.out.push(ParamInfo {
            key: self.path.key(self.prefix),
            id: param.id,
            shape: hf_shape(&value.dims(), linear),
            linear,
            trainable: value.is_require_grad(),
        });
    }
}

/// Every parameter of `module`, in module order, keys prefixed with `prefix`.
pub fn param_infos<B: Backend, M: Module<B>>(module: &M, prefix: &str) -> Vec<ParamInfo> {
    let mut v = InfoVisitor {
        prefix,
        path: KeyPath::default(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The module path (key without `.weight`) of every [`crate::nn::Linear`] in `module`.
pub fn linear_paths<B: Backend, M: Module<B>>(module: &M, prefix: &str) -> Vec<String> {
    param_infos(module, prefix)
        .into_iter()
        .filter(|p| p.linear)
        .map(|p| p.key.trim_end_matches(".weight").to_string())
        .collect()
}

struct ValueVisitor<'a> {
    prefix: &'a str,
    path: KeyPath,
    out: TensorMap,
}

impl<B: Backend> ModuleVisitor<B> for ValueVisitor<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let mut v = param.val();
        if self.path.is_linear_weight() {
            v = v.transpose();
        }
        self.out.insert(self.path.key(self.prefix), v);
    }
}

/// Every parameter's value in HF layout, by HF key (what a checkpoint stores).
pub fn hf_tensors<B: Backend, M: Module<B>>(module: &M, prefix: &str) -> TensorMap {
    let mut v = ValueVisitor {
        prefix,
        path: KeyPath::default(),
        out: TensorMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Write a model folder: [`hf_tensors`] of `module` under `prefix`, saved in `dir` by
/// [`TensorMap::save`] (one `model.safetensors`, or shards of at most `max_shard_bytes` with an
/// index), and `config` as `config.json`, every file atomically. Returns the files written.
pub fn save_pretrained<B: Backend, M: Module<B>>(
    module: &M,
    prefix: &str,
    config: &serde_json::Value,
    dir: &std::path::Path,
    max_shard_bytes: Option<usize>,
) -> Result<Vec<std::path::PathBuf>, WeightError> {
    let mut written = hf_tensors(module, prefix).save(dir, max_shard_bytes)?;
    let text = serde_json::to_string_pretty(config).expect("serialisable");
    let path = dir.join("config.json");
    crate::weights::write_atomic(&path, text.as_bytes())?;
    written.push(path);
    Ok(written)
}

struct GradVisitor<'a, B: AutodiffBackend> {
    prefix: &'a str,
    grads: &'a B::Gradients,
    path: KeyPath,
    out: TensorMap,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradVisitor<'_, B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(mut g) = param.val().grad(self.grads) {
            if self.path.is_linear_weight() {
                g = g.transpose();
            }
            self.out.insert(self.path.key(self.prefix), g);
        }
    }
}

/// The gradient of every parameter that took part in the backward pass, in HF layout, by HF key.
pub fn hf_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    prefix: &str,
    grads: &B::Gradients,
) -> TensorMap {
    let mut v = GradVisitor {
        prefix,
        grads,
        path: KeyPath::default(),
        out: TensorMap::new(),
    };
    module.visit(&mut v);
    v.out
}

struct LoadMapper<'a, 'b, B: Backend, F: Fn(&str) -> bool> {
    loader: &'a WeightLoader<'b, B>,
    path: KeyPath,
    wanted: F,
}

impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for LoadMapper<'_, '_, B, F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let linear = self.path.is_linear_weight();
        let dims = param.val().dims();
        if dims.contains(&0) || !(self.wanted)(&self.path.key("")) {
            return param; // an empty adapter slot's probe, or a parameter not asked for
        }
        let mut shape = dims;
        if linear {
            shape.reverse();
        }
        // a missing or mis-shaped tensor is recorded and the parameter kept as it is (a shapes-only
        // parameter allocates nothing): a config that names more layers than the checkpoint holds
        // costs no memory before `finish` reports it
        let Some(mut t) = self.loader.try_tensor(&self.path.key(""), shape) else {
            return param;
        };
        if linear {
            // materialise the transpose so the forward matmul reads contiguous memory
            let (device, dtype) = (t.device(), t.dtype());
            t = Tensor::from_data(t.transpose().into_data(), (&device, dtype));
        }
        let id = param.id;
        param.transform_for_load(t, id)
    }
}

/// Replace every parameter of `module` by the checkpoint tensor at its key (relative to the
/// loader's prefix). Problems (missing keys, wrong shapes, unreadable data) are collected by the
/// loader; [`WeightLoader::finish`] reports them all and every key no parameter asked for.
pub fn load<B: Backend, M: Module<B>>(module: M, loader: &WeightLoader<'_, B>) -> M {
    load_where(module, loader, |_| true)
}

/// [`load`] for the parameters whose key (relative to the loader's prefix) `wanted` accepts;
/// the others keep their values.
pub fn load_where<B: Backend, M: Module<B>>(
    module: M,
    loader: &WeightLoader<'_, B>,
    wanted: impl Fn(&str) -> bool,
) -> M {
    module.map(&mut LoadMapper {
        loader,
        path: KeyPath::default(),
        wanted,
    })
}

/// Load a component (a tower, a decoder) that is stored either inside a full checkpoint, under
/// `prefix` (detected by the key `{prefix}{probe}`; only keys under the prefix are checked), or
/// alone with bare keys (then every key must be used). One error lists every problem.
pub fn load_component<B: Backend, M: Module<B>>(
    module: M,
    files: &dyn TensorSource,
    prefix: &str,
    probe: &str,
    device: &B::Device,
    dtype: DType,
) -> Result<M, WeightError> {
    let full = files.tensor_shape(&format!("{prefix}{probe}")).is_some();
    let loader = WeightLoader::<B>::new(files, if full { prefix } else { "" }, device, dtype);
    let module = load(module, &loader);
    loader.finish(|_| false)?;
    Ok(module)
}

struct TrainableMapper<'a, F: FnMut(&str) -> bool> {
    prefix: &'a str,
    trainable: F,
    path: KeyPath,
}

impl<B: Backend, F: FnMut(&str) -> bool> ModuleMapper<B> for TrainableMapper<'_, F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if param.val().dims().contains(&0) {
            return param; // an empty adapter slot's probe
        }
        let keep = (self.trainable)(&self.path.key(self.prefix));
        param.set_require_grad(keep)
    }
}

/// Mark each parameter trainable (gradient computed) or frozen by its HF key. A frozen parameter
/// takes no part in the backward pass: no gradient is computed or kept for it.
pub fn set_trainable<B: Backend, M: Module<B>>(
    module: M,
    prefix: &str,
    trainable: impl FnMut(&str) -> bool,
) -> M {
    module.map(&mut TrainableMapper {
        prefix,
        trainable,
        path: KeyPath::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{Init, Initializer};
    use crate::nn::{Linear, RmsNorm};
    use crate::weights::SafeTensorsFiles;

    type B = crate::CpuBackend;
    type A = burn::backend::Autodiff<B>;

    #[derive(Module, Debug)]
    struct Inner<B: Backend> {
        q_proj: Linear<B>,
        norm: RmsNorm<B>,
        gate: Option<Linear<B>>,
    }

    #[derive(Module, Debug)]
    #[allow(clippy::large_enum_variant)]
    enum Either<B: Backend> {
        First(Inner<B>),
        Second(Linear<B>),
    }

    #[derive(Module, Debug)]
    struct Outer<B: Backend> {
        layers: Vec<Either<B>>,
        scale: Param<Tensor<B, 1>>,
    }

    fn outer<B: Backend>(init: &Initializer<B>) -> Outer<B> {
        Outer {
            layers: vec![
                Either::First(Inner {
                    q_proj: Linear::new(init, 3, 2),
                    norm: RmsNorm::new(init, 3, 1e-6, false),
                    gate: None,
                }),
                Either::Second(Linear::new(init, 2, 4)),
            ],
            scale: init.param([5], Init::Ones),
        }
    }

    #[test]
    fn keys_follow_fields_with_transparent_enums_and_options() {
        let dev = Default::default();
        let m = outer::<B>(&Initializer::random(&dev, DType::F32, 1.0));
        let infos = param_infos(&m, "model.");
        let keys: Vec<&str> = infos.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "model.layers.0.q_proj.weight",
                "model.layers.0.norm.weight",
                "model.layers.1.weight",
                "model.scale"
            ]
        );
        assert_eq!(infos[0].shape, [2, 3], "HF layout [out, in]");
        assert!(infos[0].linear && !infos[1].linear && infos[2].linear);
        assert_eq!(
            linear_paths(&m, ""),
            ["layers.0.q_proj".to_string(), "layers.1".to_string()]
        );
        // ids are Burn's own
        let Either::First(inner) = &m.layers[0] else {
            unreachable!()
        };
        assert_eq!(infos[0].id, inner.q_proj.weight.id);
    }

    #[test]
    fn save_load_round_trip_transposes_linears_and_reports_problems() {
        let dev = Default::default();
        let m = outer::<B>(&Initializer::random(&dev, DType::F32, 1.0));
        let map = hf_tensors(&m, "");
        let q = map.get("layers.0.q_proj.weight").unwrap();
        assert_eq!(q.shape.to_vec(), vec![2, 3]);
        let dir = tempfile::tempdir().unwrap();
        map.save(dir.path(), None).unwrap();
        let files = SafeTensorsFiles::open(dir.path()).unwrap();
        let loader = WeightLoader::<B>::new(&files, "", &dev, DType::F32);
        let back = load(outer::<B>(&Initializer::shapes(&dev, DType::F32)), &loader);
        loader.finish(|_| false).unwrap();
        let Either::First(a) = &m.layers[0] else {
            unreachable!()
        };
        let Either::First(b) = &back.layers[0] else {
            unreachable!()
        };
        assert_eq!(a.q_proj.weight.val().dims(), [3, 2]);
        assert_eq!(
            a.q_proj.weight.val().into_data(),
            b.q_proj.weight.val().into_data()
        );
        // a model with one more parameter than the file: named, not zero-filled silently
        let loader = WeightLoader::<B>::new(&files, "", &dev, DType::F32);
        let mut bigger = outer::<B>(&Initializer::shapes(&dev, DType::F32));
        if let Either::First(i) = &mut bigger.layers[0] {
            i.gate = Some(Linear::new(&Initializer::shapes(&dev, DType::F32), 3, 3));
        }
        let _ = load(bigger, &loader);
        let err = loader.finish(|_| false).unwrap_err().to_string();
        // a missing linear costs no memory: a shapes-only 100 000 × 100 000 layer (40 GB if it
        // were materialised) is reported, not transposed into a buffer
        let loader = WeightLoader::<B>::new(&files, "", &dev, DType::F32);
        let mut huge = outer::<B>(&Initializer::shapes(&dev, DType::F32));
        if let Either::First(i) = &mut huge.layers[0] {
            i.gate = Some(Linear::new(
                &Initializer::shapes(&dev, DType::F32),
                100_000,
                100_000,
            ));
        }
        let _ = load(huge, &loader);
        let huge_err = loader.finish(|_| false).unwrap_err().to_string();
        assert!(
            huge_err.contains("missing `layers.0.gate.weight` (expected shape [100000, 100000])"),
            "{huge_err}"
        );
        assert!(
            err.contains("missing `layers.0.gate.weight` (expected shape [3, 3])"),
            "{err}"
        );
    }

    #[test]
    fn frozen_parameters_get_no_gradient_and_grads_come_in_hf_layout() {
        let dev = Default::default();
        let m = outer::<A>(&Initializer::random(&dev, DType::F32, 1.0));
        let m = set_trainable(m, "", |k| k.contains("q_proj"));
        let infos = param_infos(&m, "");
        let trainable: Vec<&str> = infos
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.key.as_str())
            .collect();
        assert_eq!(trainable, ["layers.0.q_proj.weight"]);
        let Either::First(inner) = &m.layers[0] else {
            unreachable!()
        };
        let x = Tensor::<A, 2>::ones([1, 3], &dev);
        let y = inner.q_proj.forward(inner.norm.forward(x)).sum();
        let y = y + m.scale.val().sum();
        let grads = y.backward();
        let g = hf_grads(&m, "", &grads);
        assert_eq!(g.keys().collect::<Vec<_>>(), ["layers.0.q_proj.weight"]);
        assert_eq!(
            g.get("layers.0.q_proj.weight").unwrap().shape.to_vec(),
            vec![2, 3]
        );
    }
}
