//! LoRA on the tiny golden Gemma 3n and on a random Gemma 3: targeting, freezing, coverage,
//! adapter files both ways, merging, MatFormer slicing with adapters.

use std::path::PathBuf;

use automodel_core::Backend;
use automodel_core::tree;
use automodel_core::weights::{SafeTensorsFiles, TensorMap};
use automodel_core::{CpuAutodiff as A, CpuBackend as B};
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_peft::files::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX};
use automodel_peft::{
    Component, FreezeConfig, LoraConfig, PeftError, PeftModel, Targets, apply_freeze, apply_lora,
    load_adapter, merge, save_adapter,
};
use automodel_text::gemma3::{Gemma3ForCausalLM, Gemma3TextConfig};
use automodel_text::generate::ids_tensor;
use automodel_text::matformer::{MatformerSpec, slice_model};
use automodel_text::{
    CausalLm, ForwardOptions, Gemma3nForCausalLM, TextError, TrainBatch, TrainOptions,
};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::DType;

fn reference(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../reference")
        .join(case)
}

fn text_model<Bk: Backend>() -> Gemma3nForCausalLM<Bk> {
    Gemma3nForCausalLM::from_pretrained(
        reference("golden/text"),
        None,
        &Default::default(),
        DType::F32,
    )
    .unwrap()
}

fn ids() -> Vec<Vec<i64>> {
    vec![vec![
        2, 105, 130, 131, 107, 140, 150, 160, 170, 180, 190, 200,
    ]]
}

fn flat<Bk: Backend>(t: Tensor<Bk, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn logits<Bk: Backend>(m: &Gemma3nForCausalLM<Bk>) -> Vec<f32> {
    let ids = ids_tensor::<Bk>(&ids(), &Default::default());
    flat(
        m.forward(ids, None, None, ForwardOptions::default())
            .unwrap()
            .logits,
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn lora(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        target_modules: Some(Targets::List(
            targets.iter().map(|s| s.to_string()).collect(),
        )),
        ..Default::default()
    }
}

#[test]
fn adapters_start_as_a_no_op_and_only_they_get_gradients() {
    let base = text_model::<A>();
    let before = logits(&base.valid());
    let (m, report) = apply_lora(base, &lora(&["q_proj", "v_proj"])).unwrap();
    // 6 q_proj, and v_proj in the 4 layers that compute their own K/V (layers 4 and 5 reuse)
    assert_eq!(report.adapted(), 10);
    assert_eq!(report.rows[&Component::Text].adapted, 10);
    let r = 4;
    let want: usize = 6 * (64 * r + r * 128) + 4 * (64 * r + r * 64);
    assert_eq!(report.trainable(), want);
    assert_eq!(logits(&m.valid()), before, "lora_B starts at zero");
    let ids = ids_tensor::<A>(&ids(), &Default::default());
    let loss = m
        .forward_train(&TrainBatch::text(ids.clone(), ids), TrainOptions::train())
        .unwrap()
        .loss
        .unwrap()
        .mean();
    let grads = loss.backward();
    let got = tree::hf_grads(&m.model, "model.", &grads);
    assert_eq!(
        got.len(),
        20,
        "one gradient per adapter matrix, none for frozen weights"
    );
    assert!(got.keys().all(|k| k.contains(".lora_")));
    assert!(
        got.keys()
            .any(|k| k == "model.layers.0.self_attn.q_proj.lora_B.weight")
    );
}

#[test]
fn targets_that_match_nothing_name_the_nearest_modules() {
    let err = apply_lora(text_model::<B>(), &lora(&["q_prj"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`q_prj` matches no linear layer") && err.contains("q_proj"),
        "{err}"
    );
    // the audio tower of a text-only model: nothing to adapt, said so
    let cfg = LoraConfig {
        target_modules: Some(Targets::List(vec!["*audio_tower*".into()])),
        ..Default::default()
    };
    assert!(matches!(
        apply_lora(text_model::<B>(), &cfg),
        Err(PeftError::Target(_))
    ));
    let cfg = LoraConfig {
        modules_to_save: vec!["embed_audio".into()],
        ..lora(&["q_proj"])
    };
    let err = apply_lora(text_model::<B>(), &cfg).unwrap_err().to_string();
    assert!(err.contains("modules_to_save: `embed_audio`"), "{err}");
}

#[test]
fn a_saved_adapter_loads_back_to_the_same_logits_and_merges() {
    // the Python-written adapter of the golden lora_text case, on the full model
    let case = reference("golden-peft/lora_text");
    let full = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        &case,
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    let (m, cfg, plan, report) = load_adapter(full, &case).unwrap();
    assert_eq!(report.adapted(), 38);
    let text_logits = |m: &Gemma3nForConditionalGeneration<B>| {
        let input = automodel_gemma3n::MultimodalInput::text(ids());
        flat(m.forward(&input, ForwardOptions::default()).unwrap().logits)
    };
    let adapted = text_logits(&m);
    // write it again: the same keys and shapes as PEFT's file, and it loads back exactly
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m, &cfg, &plan, dir.path(), "golden/text").unwrap();
    let ours = SafeTensorsFiles::open(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
    let theirs = SafeTensorsFiles::open(case.join(ADAPTER_WEIGHTS)).unwrap();
    assert_eq!(
        ours.names().collect::<Vec<_>>(),
        theirs.names().collect::<Vec<_>>()
    );
    for k in theirs.names() {
        assert_eq!(ours.shape(k), theirs.shape(k), "{k}");
        assert_eq!(
            ours.to_f32_vec(k).unwrap(),
            theirs.to_f32_vec(k).unwrap(),
            "{k}"
        );
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(written["peft_type"], "LORA");
    assert_eq!(written["r"], 4);
    assert_eq!(written["lora_alpha"], 8.0);
    // PEFT's list semantics, over every module of the model (PEFT matches them all, not only
    // linears), select exactly the adapted ones
    let targets: Targets = serde_json::from_value(written["target_modules"].clone()).unwrap();
    let matcher = automodel_peft::target::Matcher::new(&targets).unwrap();
    let selected: std::collections::BTreeSet<String> = automodel_peft::inject::module_paths(&m, "")
        .into_iter()
        .filter(|l| matcher.matches(l))
        .collect();
    assert_eq!(selected, plan.adapted);
    let fresh = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        &case,
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    let (back, _, _, _) = load_adapter(fresh, dir.path()).unwrap();
    assert_eq!(text_logits(&back), adapted);
    // merged: the same function, no adapter left, and a plain checkpoint that reloads
    let merged = merge(back, &cfg);
    assert!(
        tree::param_infos(&merged, "")
            .iter()
            .all(|p| !p.key.contains("lora_"))
    );
    assert!(max_diff(&text_logits(&merged), &adapted) < 1e-4);
    let out = tempfile::tempdir().unwrap();
    merged.save_pretrained(out.path(), None).unwrap();
    let plain = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        out.path(),
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    assert_eq!(text_logits(&plain), text_logits(&merged));
}

#[test]
fn adapter_files_for_missing_modules_warn_or_fail() {
    let case = reference("golden-peft/lora_text");
    let theirs = SafeTensorsFiles::open(case.join(ADAPTER_WEIGHTS)).unwrap();
    let write = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut map = TensorMap::new();
        for k in theirs.names() {
            map.insert_data(k, theirs.float_data(k).unwrap());
        }
        map.insert_data(
            format!("{PEFT_PREFIX}{extra}.lora_A.weight"),
            burn::tensor::TensorData::new(vec![0f32; 4 * 64], [4, 64]),
        );
        map.insert_data(
            format!("{PEFT_PREFIX}{extra}.lora_B.weight"),
            burn::tensor::TensorData::new(vec![0f32; 64 * 4], [64, 4]),
        );
        map.save_file(&dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        std::fs::copy(case.join(ADAPTER_CONFIG), dir.path().join(ADAPTER_CONFIG)).unwrap();
        dir
    };
    let full = || {
        Gemma3nForConditionalGeneration::<B>::from_pretrained(
            &case,
            &Default::default(),
            DType::F32,
        )
        .unwrap()
    };
    // layer 4 reuses layer 2's K/V: an adapter for its k_proj has nothing to act on
    let kv = write("model.language_model.layers.4.self_attn.k_proj");
    let (_, _, plan, _) = load_adapter(full(), kv.path()).unwrap();
    assert_eq!(plan.adapted.len(), 38);
    let bogus = write("model.language_model.layers.0.self_attn.x_proj");
    let err = load_adapter(full(), bogus.path()).unwrap_err().to_string();
    assert!(
        err.contains("x_proj") && err.contains("not a linear layer"),
        "{err}"
    );
}

#[test]
fn gemma3_takes_all_linear_adapters_and_freezing_reports_what_trains() {
    let cfg = Gemma3TextConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 16,
        sliding_window: 4,
        ..Default::default()
    };
    let m = Gemma3ForCausalLM::<B>::init(&cfg, &Default::default(), DType::F32).unwrap();
    let all = LoraConfig {
        target_modules: Some(Targets::Pattern("all-linear".into())),
        ..Default::default()
    };
    let (m, report) = apply_lora(m, &all).unwrap();
    assert_eq!(
        report.adapted(),
        2 * 7,
        "q/k/v/o and gate/up/down of both layers"
    );
    let (t, prefix) = m.tree();
    assert!(
        tree::param_infos(t, prefix)
            .iter()
            .any(|p| p.key == "model.layers.1.mlp.down_proj.lora_A.weight" && p.shape == [8, 48])
    );

    let full = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        reference("golden/multimodal"),
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    let freeze = FreezeConfig {
        freeze_vision_tower: true,
        freeze_audio_tower: true,
        ..Default::default()
    };
    let (_, report) = apply_freeze(full, &freeze);
    assert_eq!(report.rows[&Component::Vision].trainable, 0);
    assert_eq!(report.rows[&Component::Audio].trainable, 0);
    assert_eq!(
        report.rows[&Component::Text].trainable,
        report.rows[&Component::Text].total
    );
}

#[test]
fn matformer_slicing_slices_the_adapters_too() {
    let case = reference("golden-peft/lora_text");
    let (m, cfg, _, _) = load_adapter(
        Gemma3nForCausalLM::<B>::from_pretrained(&case, None, &Default::default(), DType::F32)
            .unwrap(),
        &case,
    )
    .unwrap();
    let spec = MatformerSpec {
        ffn_widths: vec![64, 80, 128, 48, 96],
        skip_layers: vec![1],
    };
    let slice = |m: Gemma3nForCausalLM<B>| -> Result<Gemma3nForCausalLM<B>, TextError> {
        Ok(Gemma3nForCausalLM {
            model: slice_model(m.model, &spec)?,
            prefix: m.prefix,
        })
    };
    // slicing then merging equals merging then slicing
    let a = merge(slice(m.clone()).unwrap(), &cfg);
    let b = slice(merge(m, &cfg)).unwrap();
    assert!(max_diff(&logits(&a), &logits(&b)) < 1e-5);
}

#[test]
fn modules_to_save_train_in_full_and_travel_with_the_adapter() {
    let case = reference("golden/multimodal");
    let load = || {
        Gemma3nForConditionalGeneration::<B>::from_pretrained(
            &case,
            &Default::default(),
            DType::F32,
        )
        .unwrap()
    };
    let cfg = LoraConfig {
        modules_to_save: vec!["embed_audio".into()],
        ..lora(&["q_proj"])
    };
    let (m, report) = apply_lora(load(), &cfg).unwrap();
    let embedder: usize = tree::param_infos(&m.model.embed_audio, "")
        .iter()
        .map(|p| p.numel())
        .sum();
    assert_eq!(report.rows[&Component::Embedders].trainable, embedder);
    // change the saved module so the round trip has something to carry
    let mut m = m;
    let w = m.model.embed_audio.embedding_projection.weight.val();
    m.model.embed_audio.embedding_projection.weight =
        burn::module::Param::from_tensor(w.clone() * 2.0);
    let (t, prefix) = m.tree();
    let plan = automodel_peft::inject::plan(
        &cfg,
        &tree::linear_paths(t, prefix),
        &automodel_peft::inject::module_paths(t, prefix),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m, &cfg, &plan, dir.path(), "golden/multimodal").unwrap();
    let file = SafeTensorsFiles::open(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
    assert!(file.contains("base_model.model.model.embed_audio.embedding_projection.weight"));
    let (back, _, _, _) = load_adapter(load(), dir.path()).unwrap();
    assert_eq!(
        back.model
            .embed_audio
            .embedding_projection
            .weight
            .val()
            .into_data(),
        (w * 2.0).into_data()
    );
}

#[test]
fn a_float32_adapter_runs_on_a_bf16_base() {
    let base = Gemma3nForCausalLM::<B>::from_pretrained(
        reference("golden/text"),
        None,
        &Default::default(),
        DType::BF16,
    )
    .unwrap();
    let (m, _) = apply_lora(base, &lora(&["o_proj"])).unwrap();
    let q = &m.model.layers[0].self_attn.o_proj;
    assert_eq!(q.lora_A.val().unwrap().dtype(), DType::F32);
    assert_eq!(q.weight.val().dtype(), DType::BF16);
    let out = m
        .forward(
            ids_tensor::<B>(&ids(), &Default::default()),
            None,
            None,
            ForwardOptions::default(),
        )
        .unwrap();
    assert_eq!(out.logits.dtype(), DType::BF16);
}
