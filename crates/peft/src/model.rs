//! The models adapters go on, and the names PEFT knows them by.

use automodel_core::Backend;
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_text::{Gemma3nForCausalLM, Gemma3nTextModel};
use burn::module::Module;

/// A model whose linear layers can carry adapters. [`PeftModel::tree`] is the module tree with
/// the prefix that turns its field paths into the module names of the Hugging Face class PEFT
/// wraps (an adapter file's keys are `base_model.model.` + those names).
pub trait PeftModel<B: Backend>: Sized {
    type Tree: Module<B>;

    /// The tree and its key prefix.
    fn tree(&self) -> (&Self::Tree, &str);
    /// Transform the tree (the prefix is passed along).
    fn map_tree(self, f: impl FnOnce(Self::Tree, &str) -> Self::Tree) -> Self;
    /// Other prefixes an adapter file for this model may use (an adapter trained on the full
    /// Gemma 3n names the text decoder `model.language_model.`; the text-only class `model.`).
    fn alternative_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    /// PEFT's `task_type` for this class (`CAUSAL_LM` for causal LMs).
    fn task_type(&self) -> Option<&'static str>;
    /// The Hugging Face class name.
    fn class_name(&self) -> &'static str;
}

/// A model whose own field paths are PEFT's names (no prefix).
macro_rules! whole_model {
    ($model:ident, $task:expr) => {
        impl<B: Backend> PeftModel<B> for $model<B> {
            type Tree = Self;

            fn tree(&self) -> (&Self, &str) {
                (self, "")
            }
            fn map_tree(self, f: impl FnOnce(Self, &str) -> Self) -> Self {
                f(self, "")
            }
            fn task_type(&self) -> Option<&'static str> {
                $task
            }
            fn class_name(&self) -> &'static str {
                stringify!($model)
            }
        }
    };
}

whole_model!(Gemma3ForCausalLM, Some("CAUSAL_LM"));
whole_model!(Gemma3nForConditionalGeneration, None);

/// HF's `Gemma3nForCausalLM` keeps its decoder under `model.`, whatever checkpoint layout it was
/// loaded from.
const GEMMA3N_CAUSAL_PREFIX: &str = "model.";

impl<B: Backend> PeftModel<B> for Gemma3nForCausalLM<B> {
    type Tree = Gemma3nTextModel<B>;

    fn tree(&self) -> (&Gemma3nTextModel<B>, &str) {
        (&self.model, GEMMA3N_CAUSAL_PREFIX)
    }
    fn map_tree(self, f: impl FnOnce(Gemma3nTextModel<B>, &str) -> Gemma3nTextModel<B>) -> Self {
        Self {
            model: f(self.model, GEMMA3N_CAUSAL_PREFIX),
            prefix: self.prefix,
        }
    }
    fn alternative_prefixes(&self) -> &'static [&'static str] {
        &["model.language_model."]
    }
    fn task_type(&self) -> Option<&'static str> {
        Some("CAUSAL_LM")
    }
    fn class_name(&self) -> &'static str {
        "Gemma3nForCausalLM"
    }
}
