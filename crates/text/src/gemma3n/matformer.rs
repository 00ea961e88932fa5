//! MatFormer Mix-n-Match: extract a smaller model from a Gemma 3n checkpoint by keeping the first
//! `w` FFN units of each layer and dropping whole layers (`docs/gemma3n-architecture.md` §4).
//!
//! Two paths share one [`SlicePlan`]: [`extract_checkpoint`] slices the stored tensors byte for
//! byte (any dtype) and writes a smaller, loadable checkpoint and config; [`slice_model`] slices a
//! model already in memory (e.g. to run E4B weights as an E2B-sized model).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use automodel_core::Backend;
use automodel_core::weights::{SafeTensorsFiles, TensorMap, write_atomic};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};

use super::config::Gemma3nTextConfig;
use super::model::{Gemma3nTextModel, detect_prefix};
use crate::config::{KvSharing, OneOrMany};
use crate::error::TextError;

/// What to extract: FFN widths of the layers that are kept, and layers to drop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MatformerSpec {
    /// One width per *kept* layer (empty = keep every kept layer's width).
    pub ffn_widths: Vec<usize>,
    /// Original indices of the layers to drop.
    pub skip_layers: Vec<usize>,
}

/// The resolved plan: which original layers survive, with which width, and the new config.
#[derive(Debug, Clone)]
pub struct SlicePlan {
    /// Original index of each new layer.
    pub kept: Vec<usize>,
    /// FFN width of each new layer.
    pub widths: Vec<usize>,
    /// Config of the extracted model.
    pub config: Gemma3nTextConfig,
}

/// Resolve `spec` against `cfg`, refusing anything that would change what the kept layers compute
/// apart from their FFN width: a skipped KV producer, a width larger than the stored one, or a
/// KV-sharing map that would pair a layer with a different producer.
pub fn plan(cfg: &Gemma3nTextConfig, spec: &MatformerSpec) -> Result<SlicePlan, TextError> {
    let l = cfg.num_hidden_layers;
    let mut skip = spec.skip_layers.clone();
    skip.sort_unstable();
    skip.dedup();
    if let Some(&bad) = skip.iter().find(|&&i| i >= l) {
        return Err(TextError::Matformer(format!(
            "cannot skip layer {bad}: the model has {l} layers"
        )));
    }
    let kv = cfg.kv_sharing()?;
    for &i in &skip {
        if kv[i] == KvSharing::Store {
            return Err(TextError::Matformer(format!(
                "layer {i} lends its K/V to the KV-sharing layers and cannot be skipped"
            )));
        }
    }
    let kept: Vec<usize> = (0..l).filter(|i| !skip.contains(i)).collect();
    if kept.is_empty() {
        return Err(TextError::Matformer("every layer would be skipped".into()));
    }
    let old_widths = cfg.intermediate_sizes();
    let widths = if spec.ffn_widths.is_empty() {
        kept.iter().map(|&i| old_widths[i]).collect::<Vec<_>>()
    } else {
        if spec.ffn_widths.len() != kept.len() {
            return Err(TextError::Matformer(format!(
                "{} FFN widths given for {} kept layers (one width per kept layer)",
                spec.ffn_widths.len(),
                kept.len()
            )));
        }
        spec.ffn_widths.clone()
    };
    for (n, (&w, &i)) in widths.iter().zip(&kept).enumerate() {
        if w == 0 || w > old_widths[i] {
            return Err(TextError::Matformer(format!(
                "new layer {n} (original layer {i}): width {w} must be in 1..={}",
                old_widths[i]
            )));
        }
    }
    let first_shared = cfg.first_kv_shared_layer();
    let types = cfg.layer_types();
    let sparsity = cfg.activation_sparsity();
    let mut new = cfg.clone();
    new.num_hidden_layers = kept.len();
    new.intermediate_size = OneOrMany::Many(widths.clone());
    new.num_kv_shared_layers =
        cfg.num_kv_shared_layers - skip.iter().filter(|&&i| i >= first_shared).count();
    new.layer_types = Some(kept.iter().map(|&i| types[i]).collect());
    new.activation_sparsity_pattern = Some(kept.iter().map(|&i| sparsity[i]).collect());
    new.validate()?;
    let new_kv = new.kv_sharing()?;
    for (n, &i) in kept.iter().enumerate() {
        let same = match (kv[i], new_kv[n]) {
            (KvSharing::Reuse { source: a }, KvSharing::Reuse { source: b }) => kept[b] == a,
            (KvSharing::Reuse { .. }, _) | (_, KvSharing::Reuse { .. }) => false,
            _ => true,
        };
        if !same {
            return Err(TextError::Matformer(format!(
                "skipping {skip:?} changes which K/V original layer {i} attends over"
            )));
        }
    }
    Ok(SlicePlan {
        kept,
        widths,
        config: new,
    })
}

/// Slice a model in memory.
pub fn slice_model<B: Backend>(
    model: Gemma3nTextModel<B>,
    spec: &MatformerSpec,
) -> Result<Gemma3nTextModel<B>, TextError> {
    let plan = plan(&model.config, spec)?;
    let new_cfg = plan.config.clone();
    let p = model.config.hidden_size_per_layer_input;
    let device = model.embed_tokens.weight.device();
    let cols: Vec<i64> = plan
        .kept
        .iter()
        .flat_map(|&i| (i * p) as i64..((i + 1) * p) as i64)
        .collect();
    let n = cols.len();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(cols, [n]), &device);
    let Gemma3nTextModel {
        embed_tokens,
        mut embed_tokens_per_layer,
        per_layer_model_projection,
        per_layer_projection_norm,
        altup_projections,
        altup_unembed_projections,
        layers,
        norm,
        ..
    } = model;
    embed_tokens_per_layer.weight =
        Param::from_tensor(embed_tokens_per_layer.weight.val().select(1, idx.clone()));
    let per_layer_model_projection = per_layer_model_projection.select_outputs(idx);
    let mut old_layers: BTreeMap<usize, _> = layers.into_iter().enumerate().collect();
    let kv = new_cfg.kv_sharing()?;
    let types = new_cfg.layer_types();
    let mut new_layers = Vec::with_capacity(plan.kept.len());
    for (n, (&i, &w)) in plan.kept.iter().zip(&plan.widths).enumerate() {
        let Some(mut layer) = old_layers.remove(&i) else {
            return Err(TextError::Matformer(format!("layer {i} does not exist")));
        };
        // adapters on the sliced projections are sliced with them
        let mlp = layer.mlp;
        layer.mlp = crate::mlp::Mlp {
            gate_proj: mlp.gate_proj.narrow_outputs(w),
            up_proj: mlp.up_proj.narrow_outputs(w),
            down_proj: mlp.down_proj.narrow_inputs(w),
            activation_sparsity: mlp.activation_sparsity,
        };
        let spec = &mut layer.self_attn.spec;
        spec.layer_idx = n;
        spec.layer_type = types[n];
        spec.sharing = kv[n];
        new_layers.push(layer);
    }
    Ok(Gemma3nTextModel {
        embed_tokens,
        embed_tokens_per_layer,
        per_layer_model_projection,
        per_layer_projection_norm,
        altup_projections,
        altup_unembed_projections,
        layers: new_layers,
        norm,
        config: new_cfg,
    })
}

#[allow(clippy::single_range_in_vec_init)] // lists of row/column ranges, often of one range
/// Extract a sub-model from the checkpoint folder `src` into `dst`: sliced tensors (same dtype,
/// same key layout, everything outside the text decoder copied unchanged), `config.json` with
/// the updated text fields (all other fields kept), and the small side files
/// (`automodel_core::weights::SIDE_FILES`). Shards the output
/// at `max_shard_bytes` if given.
pub fn extract_checkpoint(
    src: &Path,
    dst: &Path,
    spec: &MatformerSpec,
    max_shard_bytes: Option<usize>,
) -> Result<SlicePlan, TextError> {
    if src == dst {
        return Err(TextError::Matformer(
            "the destination must differ from the source folder".into(),
        ));
    }
    let cfg_path = src.join("config.json");
    let mut cfg_json = automodel_core::config::read_json(&cfg_path)?;
    let cfg = Gemma3nTextConfig::from_value(&cfg_json).map_err(|e| e.in_file(&cfg_path))?;
    let plan = plan(&cfg, spec)?;
    let files = SafeTensorsFiles::open(src)?;
    let prefix = detect_prefix(&files);
    let p = cfg.hidden_size_per_layer_input;
    let blocks: Vec<Range<usize>> = plan.kept.iter().map(|&i| i * p..(i + 1) * p).collect();
    let new_index: BTreeMap<usize, usize> =
        plan.kept.iter().enumerate().map(|(n, &i)| (i, n)).collect();

    let mut out = TensorMap::new();
    for name in files.names() {
        let raw = files.raw(name)?;
        let (r, c) = (
            raw.shape.first().copied().unwrap_or(1),
            raw.shape.get(1).copied().unwrap_or(1),
        );
        let Some(rel) = name.strip_prefix(prefix.as_str()) else {
            out.insert_data(
                name,
                raw_data(name, raw.dtype, raw.shape, raw.bytes.to_vec())?,
            );
            continue;
        };
        let (key, rows, cols): (String, Vec<Range<usize>>, Vec<Range<usize>>) =
            if let Some(rest) = rel.strip_prefix("layers.") {
                let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let Ok(i) = idx.parse::<usize>() else {
                    return Err(TextError::Matformer(format!("unexpected key `{name}`")));
                };
                let Some(&n) = new_index.get(&i) else {
                    continue;
                };
                let w = plan.widths[n];
                let key = format!("{prefix}layers.{n}.{tail}");
                match tail {
                    "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (key, vec![0..w], vec![0..c]),
                    "mlp.down_proj.weight" => (key, vec![0..r], vec![0..w]),
                    _ => (key, vec![0..r], vec![0..c]),
                }
            } else if rel == "embed_tokens_per_layer.weight" {
                (name.to_string(), vec![0..r], blocks.clone())
            } else if rel == "per_layer_model_projection.weight" {
                (name.to_string(), blocks.clone(), vec![0..c])
            } else {
                (name.to_string(), vec![0..r], vec![0..c])
            };
        let whole = rows.len() == 1 && rows[0] == (0..r) && cols.len() == 1 && cols[0] == (0..c);
        if whole || raw.shape.len() != 2 {
            out.insert_data(
                key,
                raw_data(name, raw.dtype, raw.shape, raw.bytes.to_vec())?,
            );
            continue;
        }
        let elem = raw.bytes.len() / (r * c).max(1);
        let mut bytes = Vec::new();
        for rr in &rows {
            for row in rr.clone() {
                for cc in &cols {
                    bytes.extend_from_slice(
                        &raw.bytes[(row * c + cc.start) * elem..(row * c + cc.end) * elem],
                    );
                }
            }
        }
        let nr: usize = rows.iter().map(|x| x.len()).sum();
        let nc: usize = cols.iter().map(|x| x.len()).sum();
        out.insert_data(key, raw_data(name, raw.dtype, &[nr, nc], bytes)?);
    }
    out.save(dst, max_shard_bytes)?;

    // config.json: update the text fields, keep everything else.
    let text_cfg = match cfg_json.get_mut("text_config") {
        Some(t) => t,
        None => &mut cfg_json,
    };
    let obj = text_cfg
        .as_object_mut()
        .ok_or_else(|| TextError::config("text_config", "must be an object"))?;
    let new = &plan.config;
    obj.insert("num_hidden_layers".into(), new.num_hidden_layers.into());
    obj.insert(
        "intermediate_size".into(),
        serde_json::to_value(&new.intermediate_size).unwrap(),
    );
    obj.insert(
        "num_kv_shared_layers".into(),
        new.num_kv_shared_layers.into(),
    );
    obj.insert(
        "layer_types".into(),
        serde_json::to_value(new.layer_types()).unwrap(),
    );
    obj.insert(
        "activation_sparsity_pattern".into(),
        serde_json::to_value(new.activation_sparsity()).unwrap(),
    );
    let text = serde_json::to_string_pretty(&cfg_json).unwrap();
    write_atomic(&dst.join("config.json"), text.as_bytes())?;
    automodel_core::weights::copy_side_files(src, dst)?;
    Ok(plan)
}

fn raw_data(
    name: &str,
    dtype: safetensors::Dtype,
    shape: &[usize],
    bytes: Vec<u8>,
) -> Result<TensorData, TextError> {
    use safetensors::Dtype as S;
    let d = match dtype {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::U8 => DType::U8,
        other => {
            return Err(TextError::Matformer(format!(
                "`{name}` has dtype {other:?}, which extraction cannot copy"
            )));
        }
    };
    Ok(TensorData::from_bytes_vec(bytes, shape.to_vec(), d))
}
