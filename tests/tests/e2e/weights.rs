//! Loading and saving Hugging Face checkpoints with the golden tiny model.

use crate::common;

use automodel_core::CpuBackend as B;
use automodel_core::weights::{SafeTensorsFiles, TensorMap};
use automodel_text::generate::ids_tensor;
use automodel_text::{ForwardOptions, Gemma3nForCausalLM, Gemma3nTextConfig};
use burn::tensor::{DType, TensorData};
use common::{case, max_diff};

/// Load a checkpoint folder with its own config.json.
fn load(dir: impl AsRef<std::path::Path>, dtype: DType) -> Gemma3nForCausalLM<B> {
    Gemma3nForCausalLM::<B>::from_pretrained(dir.as_ref(), None, &Default::default(), dtype)
        .unwrap()
}

fn cfg() -> Gemma3nTextConfig {
    Gemma3nTextConfig::from_file(case("text").join("config.json")).unwrap()
}

fn logits(model: &Gemma3nForCausalLM<B>) -> Vec<f32> {
    let ids = vec![vec![
        2i64, 105, 130, 131, 132, 107, 200, 201, 202, 203, 204, 205,
    ]];
    let out = model
        .forward(
            ids_tensor::<B>(&ids, &Default::default()),
            None,
            None,
            ForwardOptions::default(),
        )
        .unwrap();
    out.logits
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn save_and_reload_round_trip_single_and_sharded() {
    let model = load(case("text"), DType::F32);
    let src = SafeTensorsFiles::open(case("text")).unwrap();
    let want_keys: Vec<&str> = src
        .names()
        .filter(|k| k.starts_with("model.language_model."))
        .collect();
    let reference = logits(&model);

    for shard in [None, Some(64 * 1024)] {
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path(), shard).unwrap();
        let saved = SafeTensorsFiles::open(dir.path()).unwrap();
        assert_eq!(
            saved.names().collect::<Vec<_>>(),
            want_keys,
            "same key layout"
        );
        if shard.is_some() {
            assert!(dir.path().join("model.safetensors.index.json").is_file());
            assert!(saved.paths().len() > 1);
        }
        for k in &want_keys {
            assert_eq!(
                saved.raw(k).unwrap().bytes,
                src.raw(k).unwrap().bytes,
                "{k} changed on the way"
            );
        }
        let again = load(dir.path(), DType::F32);
        assert_eq!(logits(&again), reference);
    }
}

#[test]
fn any_stored_float_dtype_loads_into_the_requested_one() {
    let bf16_dir = case("text_bf16");
    let as_f32 = load(&bf16_dir, DType::F32);
    assert_eq!(as_f32.model.embed_tokens.weight.val().dtype(), DType::F32);
    let as_bf16 = load(case("text"), DType::BF16);
    assert_eq!(
        as_bf16.model.layers[0].mlp.gate_proj.weight.val().dtype(),
        DType::BF16
    );
    // bf16 values are exactly representable in f32: same logits up to compute precision.
    assert!(max_diff(&logits(&as_f32), &logits(&as_bf16)) < 1.0);
    let stored = SafeTensorsFiles::open(bf16_dir.join("model.safetensors")).unwrap();
    let w = stored
        .to_f32_vec("model.language_model.norm.weight")
        .unwrap();
    assert_eq!(
        as_f32
            .model
            .norm
            .weight
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        w
    );
}

fn checkpoint_with(edit: impl FnOnce(&mut Vec<(String, TensorData)>)) -> tempfile::TempDir {
    let src = SafeTensorsFiles::open(case("text")).unwrap();
    let mut entries: Vec<(String, TensorData)> = src
        .names()
        .map(|k| (k.to_string(), src.float_data(k).unwrap()))
        .collect();
    edit(&mut entries);
    let mut map = TensorMap::new();
    for (k, v) in entries {
        map.insert_data(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    map.save(dir.path(), None).unwrap();
    std::fs::copy(
        case("text").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn every_mismatch_is_listed_in_one_error() {
    let dir = checkpoint_with(|e| {
        e.retain(|(k, _)| k != "model.language_model.layers.1.mlp.up_proj.weight");
        e.push((
            "model.language_model.layers.0.surprise.weight".into(),
            TensorData::new(vec![1.0f32], [1]),
        ));
        for (k, v) in e.iter_mut() {
            if k == "model.language_model.norm.weight" {
                *v = TensorData::new(vec![1.0f32; 32], [32]);
            }
        }
    });
    let err = Gemma3nForCausalLM::<B>::from_pretrained(
        dir.path(),
        Some(cfg()),
        &Default::default(),
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains(
            "missing `model.language_model.layers.1.mlp.up_proj.weight` (expected shape [96, 64])"
        ),
        "{err}"
    );
    assert!(
        err.contains("unexpected `model.language_model.layers.0.surprise.weight`"),
        "{err}"
    );
    assert!(
        err.contains("`model.language_model.norm.weight` has shape [32], expected [64]"),
        "{err}"
    );
}

#[test]
fn zero_kv_weights_of_reusing_layers_are_accepted_and_ignored() {
    // Released checkpoints still carry (zero) k/v weights for the KV-reusing layers 4 and 5.
    let dir = checkpoint_with(|e| {
        for l in [4, 5] {
            let p = format!("model.language_model.layers.{l}.self_attn.");
            e.push((
                format!("{p}k_proj.weight"),
                TensorData::new(vec![0.0f32; 64 * 64], [64, 64]),
            ));
            e.push((
                format!("{p}v_proj.weight"),
                TensorData::new(vec![0.0f32; 64 * 64], [64, 64]),
            ));
            e.push((
                format!("{p}k_norm.weight"),
                TensorData::new(vec![0.0f32; 32], [32]),
            ));
        }
    });
    let model = load(dir.path(), DType::F32);
    let reference = load(case("text"), DType::F32);
    assert!(model.model.layers[4].self_attn.k_proj.is_none());
    assert_eq!(logits(&model), logits(&reference));
}

#[test]
fn text_only_checkpoints_with_model_prefix_load() {
    // Gemma3nForCausalLM layout: `model.*` keys and a bare text config.
    let dir = checkpoint_with(|e| {
        e.retain(|(k, _)| k.starts_with("model.language_model."));
        for (k, _) in e.iter_mut() {
            *k = k.replacen("model.language_model.", "model.", 1);
        }
    });
    let text_cfg = serde_json::to_string(&cfg()).unwrap();
    std::fs::write(dir.path().join("config.json"), text_cfg).unwrap();
    let model = load(dir.path(), DType::F32);
    assert_eq!(model.prefix, "model.");
    let reference = load(case("text"), DType::F32);
    assert_eq!(logits(&model), logits(&reference));
}
