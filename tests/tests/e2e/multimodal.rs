//! Gemma3nForConditionalGeneration: parity, merging errors, generation, real sizes, checkpoints.

use crate::common;

use std::collections::BTreeSet;

use automodel_core::CpuBackend as B;
use automodel_core::tree;
use automodel_core::weights::{SafeTensorsFiles, TensorMap};
use automodel_gemma3n::{Gemma3nConfig, Gemma3nForConditionalGeneration, MultimodalInput};
use automodel_text::matformer::{MatformerSpec, extract_checkpoint};
use automodel_text::{ForwardOptions, Generate, GenerationConfig};
use automodel_vision::config::{BlockArgs, decode_block, mobilenetv5_300m_arch};
use burn::tensor::{DType, TensorData};
use common::{case, max_diff, rows};

fn passes(name: &str) -> Vec<String> {
    common::passing_checks(name)
        .into_iter()
        .map(|c| c.name)
        .collect()
}

#[test]
fn multimodal_case_and_all_301_gradients() {
    let names = passes("multimodal");
    assert_eq!(names.iter().filter(|n| n.starts_with("grad.")).count(), 301);
    for must in [
        "logits",
        "loss",
        "image_features",
        "audio_features",
        "inputs_embeds",
        "per_layer_inputs",
        "vision_tower_output",
        "audio_tower_output",
    ] {
        assert!(names.iter().any(|n| n == must), "{must}");
    }
}

#[test]
fn multimodal_greedy_generation() {
    assert_eq!(
        passes("generate_multimodal"),
        [
            "generated_ids",
            "sequences",
            "step_logits",
            "nocache_logits"
        ]
    );
}

fn model() -> Gemma3nForConditionalGeneration<B> {
    Gemma3nForConditionalGeneration::from_pretrained(
        case("multimodal"),
        &Default::default(),
        DType::F32,
    )
    .unwrap()
}

fn text_prompt() -> MultimodalInput<B> {
    MultimodalInput::text(vec![vec![
        2, 105, 130, 131, 107, 140, 141, 142, 106, 107, 105, 200, 107,
    ]])
}

#[test]
fn placeholder_count_mismatch_is_an_error() {
    let m = model();
    let inputs = SafeTensorsFiles::open(case("multimodal").join("inputs.safetensors")).unwrap();
    let pv = inputs.to_f32_vec("pixel_values").unwrap();
    let mut input = text_prompt();
    input.pixel_values = Some(burn::tensor::Tensor::from_data(
        TensorData::new(pv, [1, 3, 128, 128]),
        &Default::default(),
    ));
    let err = m
        .forward(&input, ForwardOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0 image placeholder tokens") && err.contains("16 soft tokens"),
        "{err}"
    );
    let mut bad = text_prompt();
    bad.input_ids[0][3] = 9999;
    assert!(
        m.forward(&bad, ForwardOptions::default())
            .unwrap_err()
            .to_string()
            .contains("9999")
    );
}

#[test]
fn sampling_is_seeded_streams_and_stops() {
    let m = model();
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        do_sample: true,
        temperature: 0.8,
        top_k: 20,
        top_p: 0.9,
        seed: 11,
        stop_ids: vec![],
        pad_token_id: 0,
    };
    let mut streamed = Vec::new();
    let a = m
        .generate(&text_prompt(), &cfg, |ids| streamed.push(ids[0]))
        .unwrap();
    let b = m.generate(&text_prompt(), &cfg, |_| {}).unwrap();
    assert_eq!(a.generated, b.generated, "same seed, same tokens");
    assert_eq!(streamed, a.generated[0], "the callback sees every token");
    assert_eq!(a.generated[0].len(), 6);
    // stop at the first sampled token
    let stop = GenerationConfig {
        stop_ids: vec![a.generated[0][0]],
        ..cfg.clone()
    };
    let c = m.generate(&text_prompt(), &stop, |_| {}).unwrap();
    assert_eq!(c.generated[0], vec![a.generated[0][0]]);
    // greedy equals the argmax of a full forward
    let greedy = m
        .generate(
            &text_prompt(),
            &GenerationConfig {
                max_new_tokens: 3,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
    let out = m
        .forward(
            &MultimodalInput::text(vec![greedy.sequences[0][..15].to_vec()]),
            ForwardOptions::default(),
        )
        .unwrap();
    let best = out
        .logits
        .narrow(1, 12, 3)
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    assert_eq!(best, greedy.generated[0]);
}

#[test]
fn bf16_checkpoints_load_into_f32_and_generation_config_is_read() {
    let m = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        case("text_bf16"),
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    assert_eq!(m.model.language_model.dtype(), DType::F32);
    let g = GenerationConfig::from_file(case("text_bf16").join("generation_config.json")).unwrap();
    assert_eq!(g.stop_ids, vec![1]);
}

/// Released sizes (`docs/gemma3n-architecture.md` §9.2): the checkpoints hold 5,439,438,272 (E2B) and 7,849,978,192 (E4B)
/// tensors' worth of parameters, including the zero K/V of KV-reusing layers, which the model
/// does not build (2,097,408 per such layer).
#[test]
fn released_e2b_and_e4b_sizes() {
    for (name, total, reusing) in [
        ("E2B", 5_439_438_272usize, 10usize),
        ("E4B", 7_849_978_192, 15),
    ] {
        let cfg = Gemma3nConfig::released(name).unwrap();
        let m = Gemma3nForConditionalGeneration::<B>::shapes(&cfg, &Default::default()).unwrap();
        let zero_kv = reusing * (2 * 2048 * 512 + 256);
        assert_eq!(m.num_params() + zero_kv, total, "{name}");
    }
}

/// A shrunk configuration with the released structure (E2B layers and KV sharing, the 84-block
/// vision tower, 12 conformer blocks).
fn shrunk_e2b() -> Gemma3nConfig {
    let stages: Vec<Vec<serde_json::Value>> = mobilenetv5_300m_arch()
        .iter()
        .map(|st| {
            st.iter()
                .map(|s| match decode_block(s).unwrap() {
                    BlockArgs::EdgeResidual(a) => serde_json::json!({"block_type": "er", "exp_kernel_size": 3, "exp_ratio": 2.0, "stride": a.stride, "out_chs": a.out_chs / 32}),
                    BlockArgs::Uir(a) => serde_json::json!({
                        "block_type": "uir", "dw_kernel_size_start": a.dw_kernel_size_start, "dw_kernel_size_mid": a.dw_kernel_size_mid,
                        "exp_ratio": a.exp_ratio, "stride": a.stride, "out_chs": a.out_chs / 32}),
                    BlockArgs::Mqa(a) => serde_json::json!({
                        "block_type": "mqa", "num_heads": 2, "key_dim": 4, "value_dim": 4, "kv_stride": a.kv_stride, "out_chs": a.out_chs / 32}),
                })
                .collect()
        })
        .collect();
    let sparsity: Vec<f64> = (0..30).map(|i| if i < 10 { 0.95 } else { 0.0 }).collect();
    Gemma3nConfig::from_value(serde_json::json!({
        "model_type": "gemma3n", "image_token_id": 321, "audio_token_id": 353, "eoi_token_id": 320, "eoa_token_id": 352,
        "vision_soft_tokens_per_image": 16, "audio_soft_tokens_per_image": 4,
        "text_config": {"vocab_size": 384, "vocab_size_per_layer_input": 320, "hidden_size": 16, "hidden_size_per_layer_input": 4,
                        "num_hidden_layers": 30, "intermediate_size": vec![32; 30], "num_attention_heads": 2, "num_key_value_heads": 1,
                        "head_dim": 8, "num_kv_shared_layers": 10, "laurel_rank": 4, "activation_sparsity_pattern": sparsity},
        "vision_config": {"hidden_size": 2048, "vocab_size": 32, "vocab_offset": 320, "model_args": {"block_args": stages, "stem_size": 8, "msfa_output_resolution": 4}},
        "audio_config": {"hidden_size": 16, "vocab_size": 32, "vocab_offset": 352, "conf_num_attention_heads": 2, "sscp_conv_channel_size": [4, 4]}
    }))
    .unwrap()
}

#[test]
fn synthetic_sharded_checkpoint_with_the_real_key_set_loads_cleanly() {
    let cfg = shrunk_e2b();
    let dev = Default::default();
    let m = Gemma3nForConditionalGeneration::<B>::from_config(&cfg, &dev, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // what the released checkpoint adds: zero K/V for the 10 KV-reusing layers (20..29)
    let mut map = tree::hf_tensors(&m, "");
    for l in 20..30 {
        let p = format!("model.language_model.layers.{l}.self_attn.");
        map.insert_data(
            format!("{p}k_proj.weight"),
            TensorData::new(vec![0f32; 8 * 16], [8, 16]),
        );
        map.insert_data(
            format!("{p}v_proj.weight"),
            TensorData::new(vec![0f32; 8 * 16], [8, 16]),
        );
        map.insert_data(
            format!("{p}k_norm.weight"),
            TensorData::new(vec![0f32; 8], [8]),
        );
    }
    map.save(dir.path(), Some(256 * 1024)).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&cfg.raw).unwrap(),
    )
    .unwrap();
    let files = SafeTensorsFiles::open(dir.path()).unwrap();
    assert!(files.paths().len() > 2, "sharded");

    // Same key names as the released E2B checkpoint.
    let real = Gemma3nForConditionalGeneration::<B>::shapes(
        &Gemma3nConfig::released("E2B").unwrap(),
        &dev,
    )
    .unwrap();
    let mut want: BTreeSet<String> = tree::param_infos(&real, "")
        .into_iter()
        .map(|p| p.key)
        .collect();
    for l in 20..30 {
        for k in ["k_proj.weight", "v_proj.weight", "k_norm.weight"] {
            want.insert(format!("model.language_model.layers.{l}.self_attn.{k}"));
        }
    }
    let got: BTreeSet<String> = files.names().map(String::from).collect();
    assert_eq!(got, want);

    let loaded =
        Gemma3nForConditionalGeneration::<B>::from_pretrained(dir.path(), &dev, DType::F32)
            .unwrap();
    let ids = [vec![2i64, 105, 130, 131, 107, 320, 352, 106]];
    assert_eq!(
        common::text_logits(&m, &ids),
        common::text_logits(&loaded, &ids)
    );

    // A missing and an unexpected key are both reported.
    let mut map = TensorMap::new();
    for k in files
        .names()
        .filter(|k| !k.ends_with("embed_audio.embedding.weight"))
    {
        map.insert_data(k, files.float_data(k).unwrap());
    }
    map.insert_data("model.surprise", TensorData::new(vec![0f32], [1]));
    let bad = tempfile::tempdir().unwrap();
    map.save(bad.path(), None).unwrap();
    std::fs::write(
        bad.path().join("config.json"),
        serde_json::to_string(&cfg.raw).unwrap(),
    )
    .unwrap();
    let err = Gemma3nForConditionalGeneration::<B>::from_pretrained(bad.path(), &dev, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing `model.embed_audio.embedding.weight`")
            && err.contains("unexpected `model.surprise`"),
        "{err}"
    );
}

/// MatFormer from the top: slicing the loaded model equals loading an extracted checkpoint.
#[test]
fn matformer_slice_of_the_full_model() {
    let spec = MatformerSpec {
        ffn_widths: vec![64, 80, 128, 48, 96],
        skip_layers: vec![1],
    };
    let sliced = model().with_matformer(&spec).unwrap();
    assert_eq!(sliced.config.text.num_hidden_layers, 5);
    let dst = tempfile::tempdir().unwrap();
    extract_checkpoint(&case("multimodal"), dst.path(), &spec, None).unwrap();
    let extracted = Gemma3nForConditionalGeneration::<B>::from_pretrained(
        dst.path(),
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    let inputs = SafeTensorsFiles::open(case("multimodal").join("inputs.safetensors")).unwrap();
    let ids = rows(&inputs, "input_ids");
    let text: Vec<Vec<i64>> = vec![ids[0].iter().copied().filter(|&i| i < 256).collect()];
    let (a, b) = (
        common::text_logits(&sliced, &text),
        common::text_logits(&extracted, &text),
    );
    assert!(max_diff(&a, &b) <= 1e-5, "{}", max_diff(&a, &b));
}
