//! Gemma 3 in GGUF: llama.cpp names → Hugging Face names, the config from the metadata, and a
//! [`TensorSource`] that serves dequantized tensors under HF names.

use std::collections::BTreeMap;

use automodel_core::WeightError;
use automodel_core::error::KeyProblem;
use automodel_core::weights::TensorSource;
use burn::tensor::TensorData;

use crate::export::DecoderHparams;
use crate::reader::{GgufError, GgufFile, GgufValue};

/// A decoder layer's tensors: llama.cpp's name, Hugging Face's, and whether the converter
/// stores the weight as `1 + w` (Gemma 3 norms compute `x · (1 + w)`; HF keeps `w`).
pub(crate) const LAYER_TENSORS: [(&str, &str, bool); 13] = [
    ("attn_q.weight", "self_attn.q_proj.weight", false),
    ("attn_k.weight", "self_attn.k_proj.weight", false),
    ("attn_v.weight", "self_attn.v_proj.weight", false),
    ("attn_output.weight", "self_attn.o_proj.weight", false),
    ("attn_q_norm.weight", "self_attn.q_norm.weight", true),
    ("attn_k_norm.weight", "self_attn.k_norm.weight", true),
    ("attn_norm.weight", "input_layernorm.weight", true),
    (
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
        true,
    ),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight", true),
    (
        "post_ffw_norm.weight",
        "post_feedforward_layernorm.weight",
        true,
    ),
    ("ffn_gate.weight", "mlp.gate_proj.weight", false),
    ("ffn_up.weight", "mlp.up_proj.weight", false),
    ("ffn_down.weight", "mlp.down_proj.weight", false),
];

/// The HF name of a llama.cpp Gemma tensor, and whether it is a norm weight that the converter
/// stored as `1 + w` (HF keeps `w`; Gemma 3 norms compute `x · (1 + w)`).
pub fn hf_name(gguf: &str) -> Option<(String, bool)> {
    if gguf == "token_embd.weight" {
        return Some(("model.embed_tokens.weight".into(), false));
    }
    if gguf == "output_norm.weight" {
        return Some(("model.norm.weight".into(), true));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, tail) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let (_, name, norm) = LAYER_TENSORS.iter().find(|(g, _, _)| *g == tail)?;
    Some((format!("model.layers.{idx}.{name}"), *norm))
}

/// The llama.cpp name of an HF Gemma 3 tensor (the inverse of [`hf_name`]), and whether the
/// converter stores it as `1 + w`.
pub fn gguf_name(hf: &str) -> Option<(String, bool)> {
    let rest = hf.strip_prefix("model.")?;
    if rest == "embed_tokens.weight" {
        return Some(("token_embd.weight".into(), false));
    }
    if rest == "norm.weight" {
        return Some(("output_norm.weight".into(), true));
    }
    let (idx, tail) = rest.strip_prefix("layers.")?.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let (g, _, norm) = LAYER_TENSORS.iter().find(|(_, h, _)| *h == tail)?;
    Some((format!("blk.{idx}.{g}"), *norm))
}

/// What llama.cpp's `gemma3` architecture reads from a file, from the HF config.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Hparams {
    pub decoder: DecoderHparams,
    pub feed_forward_length: usize,
    pub attn_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: f64,
}

impl Gemma3Hparams {
    /// The `gemma3.*` metadata as llama.cpp's converter writes it, plus what llama.cpp would
    /// otherwise assume wrongly: the per-layer sliding pattern when it is not every sixth layer
    /// global, and the local RoPE base when it is not 10,000. A model llama.cpp would run
    /// differently is refused, naming the field.
    pub fn metadata(&self) -> Result<Vec<(String, GgufValue)>, String> {
        let d = &self.decoder;
        if let Some(c) = self.attn_logit_softcapping {
            return Err(format!(
                "attn_logit_softcapping is {c}; llama.cpp's gemma3 has no attention soft-capping"
            ));
        }
        // llama.cpp scales queries by 1/√head_dim, except for the 62-layer 27B: 1/√(hidden/heads)
        let scalar = if d.block_count == 62 {
            (d.embedding_length / d.head_count.max(1)) as f64
        } else {
            d.head_dim as f64
        };
        if self.query_pre_attn_scalar != scalar {
            return Err(format!(
                "query_pre_attn_scalar is {}; llama.cpp's gemma3 uses {scalar} for a model of {} layers",
                self.query_pre_attn_scalar, d.block_count
            ));
        }
        let ff = GgufValue::U32(self.feed_forward_length as u32);
        let every_sixth = d
            .sliding
            .iter()
            .enumerate()
            .all(|(i, s)| *s == ((i + 1) % 6 != 0));
        let pattern = (
            "attention.sliding_window_pattern",
            sliding_pattern(&d.sliding),
        );
        d.metadata(
            "gemma3",
            ff,
            if every_sixth { vec![] } else { vec![pattern] },
        )
    }
}

/// `…attention.sliding_window_pattern`: per layer, whether it attends in a sliding window.
pub(crate) fn sliding_pattern(sliding: &[bool]) -> GgufValue {
    GgufValue::Array(sliding.iter().map(|s| GgufValue::Bool(*s)).collect())
}

/// The GGUF metadata key an HF config field of [`Gemma3Gguf::hf_config`] comes from.
pub fn metadata_key(hf_field: &str) -> Option<&'static str> {
    Some(match hf_field {
        "vocab_size" => "tokenizer.ggml.tokens",
        "hidden_size" => "gemma3.embedding_length",
        "intermediate_size" => "gemma3.feed_forward_length",
        "num_hidden_layers" | "layer_types" => "gemma3.block_count",
        "num_attention_heads" => "gemma3.attention.head_count",
        "num_key_value_heads" => "gemma3.attention.head_count_kv",
        "head_dim" | "query_pre_attn_scalar" => "gemma3.attention.key_length",
        "rms_norm_eps" => "gemma3.attention.layer_norm_rms_epsilon",
        "max_position_embeddings" => "gemma3.context_length",
        "sliding_window" => "gemma3.attention.sliding_window",
        "rope_theta" => "gemma3.rope.freq_base",
        "bos_token_id" => "tokenizer.ggml.bos_token_id",
        "eos_token_id" => "tokenizer.ggml.eos_token_id",
        "pad_token_id" => "tokenizer.ggml.padding_token_id",
        _ => return None,
    })
}

/// A Gemma 3 GGUF file seen as HF-named f32 tensors.
#[derive(Debug)]
pub struct Gemma3Gguf {
    pub file: GgufFile,
    /// HF name → (GGUF name, norm shift).
    names: BTreeMap<String, (String, bool)>,
}

impl Gemma3Gguf {
    /// Wrap a parsed file; every tensor must be a known Gemma 3 tensor.
    pub fn new(file: GgufFile) -> Result<Self, GgufError> {
        let arch = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if arch != "gemma3" {
            return Err(GgufError::Format {
                path: file.path.clone(),
                message: format!("general.architecture is `{arch}`, expected `gemma3`"),
            });
        }
        let mut names = BTreeMap::new();
        for g in file.tensors.keys() {
            let (hf, norm) = hf_name(g).ok_or_else(|| GgufError::Format {
                path: file.path.clone(),
                message: format!("unknown Gemma 3 tensor `{g}`"),
            })?;
            names.insert(hf, (g.clone(), norm));
        }
        Ok(Self { file, names })
    }

    /// The HF `Gemma3TextConfig` the metadata describes (HF field names).
    pub fn hf_config(&self) -> Result<serde_json::Value, GgufError> {
        let f = &self.file;
        let err = |k: &str| GgufError::Format {
            path: f.path.clone(),
            message: format!("metadata `{k}` is missing or not a number"),
        };
        let u = |k: &str| f.get(k).and_then(|v| v.as_u64()).ok_or_else(|| err(k));
        let fl = |k: &str| f.get(k).and_then(|v| v.as_f64()).ok_or_else(|| err(k));
        let opt = |k: &str, default: u64| f.get(k).and_then(|v| v.as_u64()).unwrap_or(default);
        let layers = u("gemma3.block_count")?;
        let vocab = f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| err("tokenizer.ggml.tokens"))?;
        let head_dim = u("gemma3.attention.key_length")?;
        // Gemma 3: every sixth layer is global.
        let layer_types: Vec<&str> = (0..layers)
            .map(|i| {
                if (i + 1) % 6 == 0 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        Ok(serde_json::json!({
            "model_type": "gemma3_text",
            "vocab_size": vocab,
            "hidden_size": u("gemma3.embedding_length")?,
            "intermediate_size": u("gemma3.feed_forward_length")?,
            "num_hidden_layers": layers,
            "num_attention_heads": u("gemma3.attention.head_count")?,
            "num_key_value_heads": u("gemma3.attention.head_count_kv")?,
            "head_dim": head_dim,
            "rms_norm_eps": fl("gemma3.attention.layer_norm_rms_epsilon")?,
            "max_position_embeddings": u("gemma3.context_length")?,
            "sliding_window": u("gemma3.attention.sliding_window")?,
            "query_pre_attn_scalar": head_dim,
            "rope_theta": fl("gemma3.rope.freq_base")?,
            "rope_local_base_freq": 10000.0,
            "layer_types": layer_types,
            "bos_token_id": opt("tokenizer.ggml.bos_token_id", 2),
            "eos_token_id": opt("tokenizer.ggml.eos_token_id", 1),
            "pad_token_id": opt("tokenizer.ggml.padding_token_id", 0),
        }))
    }
}

impl Gemma3Gguf {
    /// A config error about a field of [`Self::hf_config`] as an error about this file's
    /// metadata: the file, the GGUF key, the value, and the HF field it became.
    pub fn metadata_error(&self, e: automodel_core::ConfigError) -> GgufError {
        let message = match &e {
            automodel_core::ConfigError::Field { field, message, .. } => {
                match metadata_key(field) {
                    Some(key) => {
                        let value = self
                            .file
                            .get(key)
                            .map(|v| match v {
                                GgufValue::Array(a) => format!("an array of {}", a.len()),
                                v => format!("{v:?}"),
                            })
                            .unwrap_or_else(|| "absent".into());
                        format!("metadata `{key}` ({value}, the model's `{field}`): {message}")
                    }
                    None => format!("the model's `{field}`: {message}"),
                }
            }
            other => other.to_string(),
        };
        GgufError::Format {
            path: self.file.path.clone(),
            message,
        }
    }
}

impl TensorSource for Gemma3Gguf {
    fn origin(&self) -> Option<std::path::PathBuf> {
        Some(self.file.path.clone())
    }

    fn tensor_names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        let (g, _) = self.names.get(name)?;
        self.file.tensors.get(g).map(|t| t.shape())
    }

    fn tensor_data(&self, name: &str) -> Result<TensorData, WeightError> {
        let (g, norm) = self
            .names
            .get(name)
            .ok_or_else(|| WeightError::NoSuchTensor {
                key: name.to_string(),
            })?;
        let shape = self.file.tensors[g].shape();
        let mut v = self.file.dequantize(g).map_err(|e| WeightError::Mismatch {
            problems: vec![KeyProblem::Unreadable {
                key: name.to_string(),
                message: e.to_string(),
            }],
        })?;
        if *norm {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        Ok(TensorData::new(v, shape))
    }
}
