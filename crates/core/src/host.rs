//! Where a backend keeps its tensors, for the few passes that run fused on host memory (the LM
//! head's loss, tanh-GELU) instead of one Burn op per step.

/// Whether `B`'s tensors live in host memory (Burn's CPU backend, with or without autodiff).
pub fn applies<B: burn::prelude::Backend>() -> bool {
    std::any::TypeId::of::<B::Device>() == std::any::TypeId::of::<burn::backend::flex::FlexDevice>()
}
