//! Freezing for full fine-tuning (recipe section `freeze_config`), with a report of what trains.

use std::collections::BTreeMap;

use automodel_core::Backend;
use automodel_core::tree;
use serde::{Deserialize, Serialize};

use crate::inject::{Component, Coverage, CoverageRow};
use crate::model::PeftModel;

/// Which parts stay fixed in a full fine-tune (Automodel's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeConfig {
    /// Token embedding tables (`embed_tokens`, `embed_tokens_per_layer`, the embedders'
    /// `embedding`).
    pub freeze_embeddings: bool,
    pub freeze_vision_tower: bool,
    pub freeze_audio_tower: bool,
    /// The whole text decoder (its embeddings included).
    pub freeze_language_model: bool,
}

impl FreezeConfig {
    /// Whether the parameter `key` stays fixed.
    pub fn frozen(&self, key: &str) -> bool {
        let embedding = key.ends_with("embed_tokens.weight")
            || key.ends_with("embed_tokens_per_layer.weight")
            || key.ends_with("embedding.weight");
        (self.freeze_embeddings && embedding)
            || match Component::of(key) {
                Component::Vision => self.freeze_vision_tower,
                Component::Audio => self.freeze_audio_tower,
                Component::Text => self.freeze_language_model,
                Component::Embedders => false,
            }
    }
}

/// Freeze what `cfg` says (everything else trains); logs and returns what trains by component.
pub fn apply_freeze<B: Backend, M: PeftModel<B>>(model: M, cfg: &FreezeConfig) -> (M, Coverage) {
    let model = model.map_tree(|t, prefix| tree::set_trainable(t, prefix, |k| !cfg.frozen(k)));
    let (t, prefix) = model.tree();
    let mut rows: BTreeMap<Component, CoverageRow> = BTreeMap::new();
    for p in tree::param_infos(t, prefix) {
        let row = rows.entry(Component::of(&p.key)).or_default();
        row.total += p.numel();
        if p.linear {
            row.linears += 1;
        }
        if !cfg.frozen(&p.key) {
            row.trainable += p.numel();
        }
    }
    let report = Coverage { rows };
    tracing::info!("trainable parameters:\n{report}");
    (model, report)
}
