//! Which part of the model the gradient comes from: each parameter's component (by its HF key),
//! and a watch that warns, naming the component, when the global norm jumps far above its
//! running median. NeMo's Gemma 3n notes report "suspiciously large gradients" in the first
//! hundred steps; these say where they come from.

use std::collections::{BTreeMap, VecDeque};

/// The component a parameter belongs to, from its Hugging Face key: `vision_tower`,
/// `audio_tower`, `embedders` (the multimodal embedders), `per_layer_embeddings` (the per-layer
/// table, its projections, gates and norms), `altup_laurel`, `embed_tokens` (tied with the LM
/// head) or `text_decoder` (everything else: attention, MLP, norms). A LoRA matrix is named for
/// where it sits, prefixed `lora.`.
pub fn component_of(key: &str) -> String {
    let has = |s: &str| key.contains(s);
    let place = if has("vision_tower") {
        "vision_tower"
    } else if has("audio_tower") {
        "audio_tower"
    } else if has("embed_vision") || has("embed_audio") {
        "embedders"
    } else if has("per_layer") {
        // embed_tokens_per_layer, per_layer_model_projection, per_layer_projection_norm,
        // per_layer_input_gate, per_layer_projection, post_per_layer_input_norm
        "per_layer_embeddings"
    } else if has("altup") || has(".laurel.") {
        "altup_laurel"
    } else if has("embed_tokens") || has("lm_head") {
        "embed_tokens"
    } else {
        "text_decoder"
    };
    if has("lora_") {
        format!("lora.{place}")
    } else {
        place.to_string()
    }
}

/// Steps of history the running medians keep.
const WINDOW: usize = 100;
/// Steps seen before a jump can be judged.
const MIN_HISTORY: usize = 5;

/// Warns when a step's global gradient norm is more than `factor` times the median of the
/// steps before it, naming the component whose norm rose most against its own median.
#[derive(Debug, Clone)]
pub struct SpikeWatch {
    factor: f64,
    total: VecDeque<f64>,
    parts: BTreeMap<String, VecDeque<f64>>,
}

impl Default for SpikeWatch {
    fn default() -> Self {
        Self::new(10.0)
    }
}

fn median(v: &VecDeque<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

fn push(v: &mut VecDeque<f64>, x: f64) {
    if v.len() == WINDOW {
        v.pop_front();
    }
    v.push_back(x);
}

impl SpikeWatch {
    /// A watch that warns above `factor` × the running median.
    pub fn new(factor: f64) -> Self {
        Self {
            factor,
            total: VecDeque::new(),
            parts: BTreeMap::new(),
        }
    }

    /// Record step `step`'s norms; a warning when the global norm jumped. Non-finite norms are
    /// not recorded (the step was skipped and said so).
    pub fn observe(
        &mut self,
        step: usize,
        total: f64,
        parts: &BTreeMap<String, f64>,
    ) -> Option<String> {
        if !total.is_finite() {
            return None;
        }
        let warning = match median(&self.total) {
            Some(m) if self.total.len() >= MIN_HISTORY && m > 0.0 && total > self.factor * m => {
                // the component that rose most against its own history
                let culprit = parts
                    .iter()
                    .filter_map(|(name, &x)| {
                        let pm = median(self.parts.get(name)?)?;
                        (pm > 0.0).then_some((name, x, x / pm))
                    })
                    .max_by(|a, b| a.2.total_cmp(&b.2));
                let blame = match culprit {
                    Some((name, x, ratio)) => {
                        format!("; largest rise: {name} ({x:.3e}, {ratio:.0}× its median)")
                    }
                    None => String::new(),
                };
                Some(format!(
                    "step {step}: gradient norm {total:.3e} is {:.0}× the running median {m:.3e}{blame}",
                    total / m
                ))
            }
            _ => None,
        };
        push(&mut self.total, total);
        for (name, &x) in parts {
            if x.is_finite() {
                push(self.parts.entry(name.clone()).or_default(), x);
            }
        }
        warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_component() {
        for (key, want) in [
            (
                "model.vision_tower.timm_model.conv_stem.conv.weight",
                "vision_tower",
            ),
            ("model.audio_tower.conformer.0.norm.weight", "audio_tower"),
            (
                "model.embed_vision.embedding_projection.weight",
                "embedders",
            ),
            (
                "model.language_model.embed_tokens_per_layer.weight",
                "per_layer_embeddings",
            ),
            (
                "model.language_model.layers.3.per_layer_input_gate.weight",
                "per_layer_embeddings",
            ),
            (
                "model.language_model.layers.3.altup.modality_router.weight",
                "altup_laurel",
            ),
            (
                "model.language_model.altup_projections.0.weight",
                "altup_laurel",
            ),
            (
                "model.language_model.layers.0.laurel.linear_left.weight",
                "altup_laurel",
            ),
            ("model.language_model.embed_tokens.weight", "embed_tokens"),
            ("model.embed_tokens.weight", "embed_tokens"),
            (
                "model.language_model.layers.0.self_attn.q_proj.weight",
                "text_decoder",
            ),
            (
                "model.layers.0.mlp.down_proj.lora_A.weight",
                "lora.text_decoder",
            ),
            (
                "model.vision_tower.timm_model.blocks.0.0.conv_exp.lora_B.weight",
                "lora.vision_tower",
            ),
        ] {
            assert_eq!(component_of(key), want, "{key}");
        }
    }

    fn parts(a: f64, b: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("text_decoder".into(), a), ("vision_tower".into(), b)])
    }

    #[test]
    fn a_jump_is_named_by_the_component_that_rose() {
        let mut w = SpikeWatch::new(10.0);
        for s in 1..=6 {
            assert_eq!(w.observe(s, 1.0 + s as f64 * 0.01, &parts(0.9, 0.3)), None);
        }
        // 5× is no spike at factor 10
        assert_eq!(w.observe(7, 5.0, &parts(4.9, 0.4)), None);
        let msg = w
            .observe(8, 40.0, &parts(1.0, 39.0))
            .expect("a 40× jump warns");
        assert!(msg.contains("step 8"), "{msg}");
        assert!(msg.contains("vision_tower"), "{msg}");
        assert!(!msg.contains("text_decoder"), "{msg}");
    }

    #[test]
    fn no_verdict_before_enough_history_or_on_non_finite_norms() {
        let mut w = SpikeWatch::new(10.0);
        assert_eq!(w.observe(1, 1.0, &parts(1.0, 0.1)), None);
        assert_eq!(
            w.observe(2, 1000.0, &parts(1.0, 999.0)),
            None,
            "two steps of history"
        );
        assert_eq!(w.observe(3, f64::NAN, &parts(1.0, 1.0)), None);
        assert_eq!(w.total.len(), 2, "a non-finite norm is not recorded");
    }
}
