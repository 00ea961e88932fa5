//! Gemma 3n's text model in GGUF as llama.cpp's converter writes it (`Gemma3NModel`): names,
//! the AltUp projections stacked, the embeddings padded to the multimodal vocabulary, and the
//! `gemma3n.*` metadata. Norms are stored as they are (Gemma 3n's RMSNorm scales by `w`, not
//! `1 + w`).

use crate::export::DecoderHparams;
use crate::gemma3::{LAYER_TENSORS, sliding_pattern};
use crate::reader::GgufValue;

/// Gemma 3n's own per-layer tensors: Hugging Face's name after `layers.N.`, llama.cpp's after
/// `blk.N.`.
const LAYER_EXTRA: [(&str, &str); 11] = [
    ("per_layer_input_gate.weight", "inp_gate.weight"),
    ("per_layer_projection.weight", "proj.weight"),
    ("post_per_layer_input_norm.weight", "post_norm.weight"),
    ("altup.correction_coefs.weight", "altup_correct_coef.weight"),
    ("altup.correct_output_scale", "altup_correct_scale.weight"),
    ("altup.prediction_coefs.weight", "altup_predict_coef.weight"),
    ("altup.modality_router.weight", "altup_router.weight"),
    ("altup.router_norm.weight", "altup_router_norm.weight"),
    ("laurel.linear_left.weight", "laurel_l.weight"),
    ("laurel.linear_right.weight", "laurel_r.weight"),
    ("laurel.post_laurel_norm.weight", "laurel_post_norm.weight"),
];

/// How an HF tensor of the Gemma 3n text model goes into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Stored under this name.
    Tensor(String),
    /// Slice `index` of the stacked tensor `name` (`[3, n, n]`: AltUp's projections).
    Stacked { name: String, index: usize },
}

/// Where the HF tensor `key` (of `model.language_model.` or `model.`, the prefix stripped) goes.
pub fn placement(key: &str) -> Option<Placement> {
    let t = |s: &str| Some(Placement::Tensor(s.to_string()));
    match key {
        "embed_tokens.weight" => return t("token_embd.weight"),
        "embed_tokens_per_layer.weight" => return t("per_layer_token_embd.weight"),
        "per_layer_model_projection.weight" => return t("per_layer_model_proj.weight"),
        "per_layer_projection_norm.weight" => return t("per_layer_proj_norm.weight"),
        "norm.weight" => return t("output_norm.weight"),
        _ => {}
    }
    for (hf, gguf) in [
        ("altup_projections.", "altup_proj.weight"),
        ("altup_unembed_projections.", "altup_unembd_proj.weight"),
    ] {
        if let Some(rest) = key.strip_prefix(hf) {
            let index: usize = rest.strip_suffix(".weight")?.parse().ok()?;
            return Some(Placement::Stacked {
                name: gguf.to_string(),
                index,
            });
        }
    }
    let (idx, tail) = key.strip_prefix("layers.")?.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let g = LAYER_TENSORS
        .iter()
        .find(|(_, h, _)| *h == tail)
        .map(|(g, _, _)| *g)
        .or_else(|| {
            LAYER_EXTRA
                .iter()
                .find(|(h, _)| *h == tail)
                .map(|(_, g)| *g)
        })?;
    Some(Placement::Tensor(format!("blk.{idx}.{g}")))
}

/// What llama.cpp's `gemma3n` architecture reads from a file, from the HF text config.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3nHparams {
    pub decoder: DecoderHparams,
    /// Per layer (MatFormer widths).
    pub feed_forward_length: Vec<usize>,
    /// Whether the config gave a list (else one width for every layer).
    pub feed_forward_is_list: bool,
    pub altup_active_idx: usize,
    pub altup_num_inputs: usize,
    pub embedding_length_per_layer_input: usize,
    pub shared_kv_layers: usize,
    /// `Normal(0, 1).icdf(p)` of each layer's activation sparsity `p` (−∞ for 0).
    pub activation_sparsity_scale: Vec<f64>,
}

impl Gemma3nHparams {
    /// The `gemma3n.*` metadata as llama.cpp's converter writes it (plus the local RoPE base
    /// when it is not llama.cpp's 10,000). Refuses what the converter refuses.
    pub fn metadata(&self) -> Result<Vec<(String, GgufValue)>, String> {
        if self.altup_num_inputs != 4 {
            return Err(format!(
                "altup_num_inputs is {}; llama.cpp's gemma3n takes 4",
                self.altup_num_inputs
            ));
        }
        let n = self.decoder.block_count;
        for (what, len) in [
            ("intermediate_size", self.feed_forward_length.len()),
            (
                "activation_sparsity_pattern",
                self.activation_sparsity_scale.len(),
            ),
        ] {
            if len != n {
                return Err(format!("{what} has {len} entries for {n} layers"));
            }
        }
        let u = |v: usize| GgufValue::U32(v as u32);
        // the converter writes HF's `intermediate_size` as it finds it: one width or a list
        let ff = if self.feed_forward_is_list {
            GgufValue::Array(
                self.feed_forward_length
                    .iter()
                    .map(|v| GgufValue::I32(*v as i32))
                    .collect(),
            )
        } else {
            u(self.feed_forward_length.first().copied().unwrap_or(0))
        };
        let scales = self.activation_sparsity_scale.iter();
        let extra = vec![
            ("altup.active_idx", u(self.altup_active_idx)),
            ("altup.num_inputs", u(self.altup_num_inputs)),
            (
                "embedding_length_per_layer_input",
                u(self.embedding_length_per_layer_input),
            ),
            ("attention.shared_kv_layers", u(self.shared_kv_layers)),
            (
                "activation_sparsity_scale",
                GgufValue::Array(scales.map(|s| GgufValue::F32(*s as f32)).collect()),
            ),
            (
                "attention.sliding_window_pattern",
                sliding_pattern(&self.decoder.sliding),
            ),
        ];
        self.decoder.metadata("gemma3n", ff, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_converter() {
        let p = |k: &str| placement(k);
        let t = |s: &str| Some(Placement::Tensor(s.into()));
        assert_eq!(
            p("embed_tokens_per_layer.weight"),
            t("per_layer_token_embd.weight")
        );
        assert_eq!(
            p("layers.3.altup.correct_output_scale"),
            t("blk.3.altup_correct_scale.weight")
        );
        assert_eq!(
            p("layers.0.self_attn.q_norm.weight"),
            t("blk.0.attn_q_norm.weight")
        );
        assert_eq!(
            p("layers.2.laurel.linear_left.weight"),
            t("blk.2.laurel_l.weight")
        );
        assert_eq!(
            p("altup_unembed_projections.2.weight"),
            Some(Placement::Stacked {
                name: "altup_unembd_proj.weight".into(),
                index: 2
            })
        );
        assert_eq!(p("layers.0.unknown.weight"), None);
        assert_eq!(p("lm_head.weight"), None);
    }
}
