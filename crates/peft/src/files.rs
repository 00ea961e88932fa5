//! Hugging Face PEFT's adapter files: `adapter_config.json` and `adapter_model.safetensors`
//! (keys `base_model.model.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`;
//! `modules_to_save` weights under their own names). Written atomically; read back with
//! every mismatch named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use automodel_core::Backend;
use automodel_core::config::read_json;
use automodel_core::tree;
use automodel_core::weights::{SafeTensorsFiles, WeightLoader, write_atomic};
use burn::tensor::DType;
use serde_json::{Value, json};

use crate::config::{LoraConfig, Targets};
use crate::error::PeftError;
use crate::inject::{Coverage, Plan, coverage, inject, is_lora_key, module_paths, under_any};
use crate::model::PeftModel;
use crate::target::nearest;

/// PEFT's prefix of every key in an adapter file.
pub const PEFT_PREFIX: &str = "base_model.model.";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Our own settings PEFT has no field for (init, dtype), beside PEFT's config.
pub const AUTOMODEL_CONFIG: &str = "automodel_peft_config.json";

/// The adapted module names, compactly: their last components when those select exactly the
/// adapted linears among all of the model's `modules` (PEFT matches every module, not only
/// linears), else the full names.
fn target_list(adapted: &BTreeSet<String>, modules: &BTreeSet<String>) -> Vec<String> {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let suffixes: BTreeSet<String> = adapted.iter().map(|m| last(m)).collect();
    let exact = modules
        .iter()
        .all(|m| suffixes.contains(&last(m)) == adapted.contains(m));
    if exact {
        suffixes.into_iter().collect()
    } else {
        adapted.iter().cloned().collect()
    }
}

/// Write the adapter of `model` (set up with `cfg` under `plan`) to `dir` in PEFT's format:
/// `adapter_config.json`, `adapter_model.safetensors` and `automodel_peft_config.json`.
/// `base_model` goes into `base_model_name_or_path`. Returns the files written.
pub fn save_adapter<B: Backend, M: PeftModel<B>>(
    model: &M,
    cfg: &LoraConfig,
    plan: &Plan,
    dir: &Path,
    base_model: &str,
) -> Result<Vec<PathBuf>, PeftError> {
    let (t, prefix) = model.tree();
    std::fs::create_dir_all(dir).map_err(|e| PeftError::Adapter {
        path: dir.to_path_buf(),
        message: format!("cannot create the folder: {e}"),
    })?;
    let all = tree::hf_tensors(t, &format!("{PEFT_PREFIX}{prefix}"));
    let mut keep = automodel_core::weights::TensorMap::new();
    for k in all.keys() {
        let rel = &k[PEFT_PREFIX.len()..];
        if is_lora_key(rel) || under_any(rel, &plan.saved) {
            keep.insert_data(k, all.get(k).expect("listed").clone());
        }
    }
    let weights = dir.join(ADAPTER_WEIGHTS);
    keep.save_file(&weights)?;
    let modules = module_paths(t, prefix);
    let config = json!({
        "peft_type": "LORA",
        "task_type": model.task_type(),
        "base_model_name_or_path": base_model,
        "revision": null,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_list(&plan.adapted, &modules),
        "exclude_modules": null,
        "modules_to_save": if plan.saved.is_empty() { Value::Null } else { json!(plan.saved) },
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("serialisable");
    write_atomic(&cfg_path, pretty(&config).as_bytes())?;
    let ours = dir.join(AUTOMODEL_CONFIG);
    write_atomic(
        &ours,
        pretty(&serde_json::to_value(cfg).expect("serialisable")).as_bytes(),
    )?;
    Ok(vec![cfg_path, weights, ours])
}

/// The LoRA settings of a PEFT `adapter_config.json` (ours from `automodel_peft_config.json`
/// when present); settings this implementation does not have are refused by name.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, PeftError> {
    let path = dir.join(ADAPTER_CONFIG);
    let v = read_json(&path)?;
    let bad = |message: String| PeftError::Adapter {
        path: path.clone(),
        message,
    };
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(bad(format!(
                "peft_type is {other:?}; only LORA adapters are supported"
            )));
        }
    }
    for (field, unsupported) in [
        (
            "use_dora",
            v.get("use_dora").and_then(Value::as_bool) == Some(true),
        ),
        (
            "fan_in_fan_out",
            v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true),
        ),
        (
            "bias",
            v.get("bias")
                .and_then(Value::as_str)
                .is_some_and(|b| b != "none"),
        ),
        (
            "rank_pattern",
            v.get("rank_pattern")
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty()),
        ),
        (
            "alpha_pattern",
            v.get("alpha_pattern")
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty()),
        ),
    ] {
        if unsupported {
            return Err(bad(format!("`{field}` = {} is not supported", v[field])));
        }
    }
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let mut cfg = match read_json(&dir.join(AUTOMODEL_CONFIG)) {
        Ok(ours) => automodel_core::config::deserialize::<LoraConfig>(&ours)
            .map_err(|e| e.in_file(&dir.join(AUTOMODEL_CONFIG)))?,
        Err(_) => LoraConfig::default(),
    };
    cfg.r = num("r").ok_or_else(|| bad("`r` is missing".into()))? as usize;
    cfg.alpha = num("lora_alpha").ok_or_else(|| bad("`lora_alpha` is missing".into()))?;
    cfg.dropout = num("lora_dropout").unwrap_or(0.0);
    cfg.use_rslora = v
        .get("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    cfg.target_modules = serde_json::from_value::<Option<Targets>>(v["target_modules"].clone())
        .map_err(|e| bad(format!("`target_modules`: {e}")))?;
    cfg.exclude_modules = None;
    cfg.match_all_linear = false;
    cfg.modules_to_save = match &v["modules_to_save"] {
        Value::Null => Vec::new(),
        m => {
            serde_json::from_value(m.clone()).map_err(|e| bad(format!("`modules_to_save`: {e}")))?
        }
    };
    cfg.validate()
        .map_err(|e| PeftError::Config(e.in_file(&path)))?;
    Ok(cfg)
}

/// Load a PEFT adapter folder onto `model`: the adapted modules are those the file holds
/// matrices for (every one must exist in the model; matrices for the K/V projections of layers
/// that reuse another layer's K/V have nothing to act on and are skipped with a warning), the
/// values are the file's, and everything but the adapter is frozen. Returns the model, the
/// settings and the coverage.
pub fn load_adapter<B: Backend, M: PeftModel<B>>(
    model: M,
    dir: &Path,
) -> Result<(M, LoraConfig, Plan, Coverage), PeftError> {
    let cfg = read_adapter_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let files = SafeTensorsFiles::open(&path)?;
    let (t, prefix) = model.tree();
    let own = prefix.to_string();
    let linears: BTreeSet<String> = tree::linear_paths(t, prefix).into_iter().collect();
    let modules = module_paths(t, prefix);
    let bad = |message: String| PeftError::Adapter {
        path: path.clone(),
        message,
    };
    // the prefix the file names this model's tree with: its own, or an alternative spelling
    let file_prefix = model
        .alternative_prefixes()
        .iter()
        .copied()
        .chain(std::iter::once(own.as_str()))
        .find(|p| {
            files
                .names()
                .any(|k| k.starts_with(&format!("{PEFT_PREFIX}{p}")))
        })
        .unwrap_or(&own)
        .to_string();
    let mut adapted = BTreeSet::new();
    let mut ignored = BTreeSet::new();
    let mut saved_keys = BTreeSet::new();
    for key in files.names() {
        let in_file = key
            .strip_prefix(PEFT_PREFIX)
            .ok_or_else(|| bad(format!("`{key}` does not start with `{PEFT_PREFIX}`")))?;
        let rel = match in_file.strip_prefix(file_prefix.as_str()) {
            Some(r) => format!("{own}{r}"),
            None => in_file.to_string(),
        };
        let rel = rel.as_str();
        let module = rel
            .strip_suffix(".lora_A.weight")
            .or_else(|| rel.strip_suffix(".lora_B.weight"));
        match module {
            Some(m) if linears.contains(m) => {
                adapted.insert(m.to_string());
            }
            Some(m)
                if is_reused_kv(m) && modules.contains(m.rsplit_once('.').map_or(m, |p| p.0)) =>
            {
                ignored.insert(key.to_string());
            }
            Some(m) => {
                return Err(bad(format!(
                    "holds an adapter for `{m}`, which is not a linear layer of the model; nearest: {}",
                    nearest(m, linears.iter().map(String::as_str), 5).join(", ")
                )));
            }
            None => {
                saved_keys.insert(rel.to_string());
            }
        }
    }
    if !ignored.is_empty() {
        tracing::warn!(
            "{}: {} adapter tensor(s) belong to K/V projections of layers that reuse another layer's K/V; they have no effect and are skipped: {}",
            path.display(),
            ignored.len(),
            ignored.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let saved: BTreeSet<String> = cfg
        .modules_to_save
        .iter()
        .flat_map(|m| {
            let t = crate::target::Matcher::new(&Targets::List(vec![m.clone()])).expect("a list");
            modules.iter().filter(move |p| t.matches(p)).cloned()
        })
        .collect();
    if let Some(k) = saved_keys.iter().find(|k| !under_any(k, &saved)) {
        return Err(bad(format!(
            "`{PEFT_PREFIX}{k}` is neither a LoRA matrix nor part of a module in modules_to_save"
        )));
    }
    let plan = Plan { adapted, saved };
    let model = inject(model, &cfg, &plan);
    let (t, _) = model.tree();
    let device = device_of(t);
    let dtype = match cfg.lora_dtype {
        crate::config::LoraDtype::Float32 => DType::F32,
        crate::config::LoraDtype::Bfloat16 => DType::BF16,
    };
    let loader_prefix = format!("{PEFT_PREFIX}{file_prefix}");
    let saved_ref = &plan.saved;
    let loader = WeightLoader::<B>::new(&files, loader_prefix, &device, dtype);
    let model = model.map_tree(|t, prefix| {
        tree::load_where(t, &loader, |rel| {
            is_lora_key(rel) || under_any(&format!("{prefix}{rel}"), saved_ref)
        })
    });
    loader.finish(|rel| ignored.contains(&format!("{PEFT_PREFIX}{file_prefix}{rel}")))?;
    let report = coverage(&model, &plan);
    tracing::info!(
        "LoRA adapter {} on {} (r {}, scale {}):\n{report}",
        dir.display(),
        model.class_name(),
        cfg.r,
        cfg.scale()
    );
    Ok((model, cfg, plan, report))
}

/// `…self_attn.k_proj` / `…self_attn.v_proj`: what a KV-reusing layer lacks.
fn is_reused_kv(module: &str) -> bool {
    module.ends_with("self_attn.k_proj") || module.ends_with("self_attn.v_proj")
}

/// The device of a module's parameters (the default device for a module without any).
fn device_of<B: Backend, M: burn::module::Module<B>>(m: &M) -> B::Device {
    m.devices().into_iter().next().unwrap_or_default()
}
