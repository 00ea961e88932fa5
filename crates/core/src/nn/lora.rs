//! The LoRA slots of a [`crate::nn::Linear`]: `lora_A` and `lora_B`, each empty or holding one
//! trainable matrix, so that an adapter is part of the module tree under PEFT's own key
//! (`….q_proj.lora_A.weight`).
//!
//! A slot is a module of its own with a hand-written [`Module`] implementation so that an empty
//! slot can be filled by a [`ModuleMapper`]: when mapped, an empty slot offers a zero-size
//! probe parameter at `lora_A.weight` (and, for `lora_B`, `lora_B.scale` and `lora_B.dropout`);
//! a mapper that answers with a real tensor creates the adapter there (the PEFT crate's
//! injector), every other mapper hands the empty probe back and the slot stays empty. A mapper
//! that answers a filled slot with an empty tensor empties it (after a merge). Visitors never see
//! an empty slot.

use crate::AutodiffBackend;
use crate::Backend;
use burn::module::{
    AutodiffModule, Content, Devices, HasAutodiffModule, Module, ModuleDisplay,
    ModuleDisplayDefault, ModuleMapper, ModuleVisitor, Param,
};
use burn::prelude::*;

/// How the naming tree sees a slot's field (its `weight` is kept transposed, like a
/// [`crate::nn::Linear`]'s).
pub const LORA_CONTAINER: &str = "Struct:LoraMatrix";

/// One LoRA matrix, kept as `[in, out]` for the forward matmul (PEFT stores `[out, in]`):
/// `lora_A` is `[d_in, r]`, `lora_B` is `[r, d_out]`. `lora_B` also carries the adapter's
/// scale (`alpha / r`, or `alpha / √r` with rsLoRA) and input dropout probability.
#[derive(Debug, Clone)]
pub struct LoraMatrix<B: Backend> {
    pub weight: Option<Param<Tensor<B, 2>>>,
    pub scale: f64,
    pub dropout: f64,
}

impl<B: Backend> Default for LoraMatrix<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Backend> LoraMatrix<B> {
    /// No adapter.
    pub fn empty() -> Self {
        Self {
            weight: None,
            scale: 0.0,
            dropout: 0.0,
        }
    }

    /// A matrix `[in, out]` (with the scale and dropout that matter for `lora_B`).
    pub fn new(weight: Tensor<B, 2>, scale: f64, dropout: f64) -> Self {
        Self {
            weight: Some(Param::from_tensor(weight)),
            scale,
            dropout,
        }
    }

    /// The matrix, when there is one.
    pub fn val(&self) -> Option<Tensor<B, 2>> {
        self.weight.as_ref().map(|p| p.val())
    }

    /// The same slot with its matrix transformed (a fresh parameter); an empty slot stays empty.
    pub fn map_matrix(self, f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>) -> Self {
        Self {
            weight: self.weight.map(|w| Param::from_tensor(f(w.val()))),
            ..self
        }
    }

    /// Offer a zero-size probe to `mapper` at `name`; `Some` when it answers with a tensor.
    fn probe<M: ModuleMapper<B>, const D: usize>(
        mapper: &mut M,
        name: &str,
    ) -> Option<Param<Tensor<B, D>>> {
        let empty = Tensor::<B, D>::empty([0; D], &Default::default());
        mapper.enter_module(name, LORA_CONTAINER);
        let got = mapper.map_float(Param::from_tensor(empty));
        mapper.exit_module(name, LORA_CONTAINER);
        (got.val().dims().iter().product::<usize>() > 0).then_some(got)
    }
}

impl<B: Backend> Module<B> for LoraMatrix<B> {
    type Record = Option<Param<Tensor<B, 2>>>;

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        if let Some(w) = &self.weight {
            visitor.enter_module("weight", LORA_CONTAINER);
            visitor.visit_float(w);
            visitor.exit_module("weight", LORA_CONTAINER);
        }
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        match self.weight {
            Some(w) => {
                mapper.enter_module("weight", LORA_CONTAINER);
                let w = mapper.map_float(w);
                mapper.exit_module("weight", LORA_CONTAINER);
                // a mapper that answers with an empty tensor removes the adapter (a merge)
                let keep = w.val().dims().iter().product::<usize>() > 0;
                Self {
                    weight: keep.then_some(w),
                    ..self
                }
            }
            None => match Self::probe::<M, 2>(mapper, "weight") {
                None => self,
                Some(w) => {
                    let scalar = |p: Option<Param<Tensor<B, 1>>>| {
                        p.map_or(0.0, |p| p.val().into_scalar().elem::<f64>())
                    };
                    let scale = scalar(Self::probe::<M, 1>(mapper, "scale"));
                    let dropout = scalar(Self::probe::<M, 1>(mapper, "dropout"));
                    Self {
                        weight: Some(w),
                        scale,
                        dropout,
                    }
                }
            },
        }
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            weight: self.weight.load_record(record),
            ..self
        }
    }

    fn into_record(self) -> Self::Record {
        self.weight.into_record()
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            weight: self.weight.to_device(device),
            ..self
        }
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            weight: self.weight.fork(device),
            ..self
        }
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.weight.collect_devices(devices)
    }
}

impl<B: Backend> ModuleDisplayDefault for LoraMatrix<B> {
    fn content(&self, content: Content) -> Option<Content> {
        match &self.weight {
            Some(w) => content.add_single(&format!("{:?}", w.dims())).optional(),
            None => content.add_single("None").optional(),
        }
    }
}

impl<B: Backend> ModuleDisplay for LoraMatrix<B> {}

impl<B: AutodiffBackend> AutodiffModule<B> for LoraMatrix<B> {
    type InnerModule = LoraMatrix<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        LoraMatrix {
            weight: self.weight.as_ref().map(|w| w.valid()),
            scale: self.scale,
            dropout: self.dropout,
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        LoraMatrix {
            weight: module.weight.map(Param::from_inner),
            scale: module.scale,
            dropout: module.dropout,
        }
    }
}

impl<B: AutodiffBackend> HasAutodiffModule<B> for LoraMatrix<B::InnerBackend> {
    type TrainModule = LoraMatrix<B>;
}
