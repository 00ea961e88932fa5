//! A config a user can write never makes a model constructor panic: every bad value is an error
//! that names the field.

use automodel_audio::{AudioEncoder, Gemma3nAudioConfig};
use automodel_core::CpuBackend as B;
use automodel_core::pretrained::Pretrained;
use automodel_gemma3n::{Gemma3nConfig, Gemma3nForConditionalGeneration};
use automodel_text::gemma3::{Gemma3ForCausalLM, Gemma3TextConfig};
use automodel_text::{Gemma3nForCausalLM, Gemma3nTextConfig, LayerType};
use automodel_vision::{Gemma3nVisionConfig, MobileNetV5Encoder};
use burn::tensor::DType;

/// A config edit and the field its error must name.
type Case<C> = (Box<dyn Fn(&mut C)>, &'static str);

fn names(err: impl std::fmt::Display, field: &str) {
    let text = err.to_string();
    assert!(text.contains(field), "{field} not named in: {text}");
}

#[test]
fn gemma3n_text_constructors_refuse_bad_configs() {
    let dev = Default::default();
    let cases: Vec<Case<Gemma3nTextConfig>> = vec![
        (
            Box::new(|c| c.num_kv_shared_layers = 6),
            "num_kv_shared_layers",
        ),
        (Box::new(|c| c.sliding_window = 0), "sliding_window"),
        (Box::new(|c| c.altup_num_inputs = 0), "altup_num_inputs"),
        (Box::new(|c| c.head_dim = 31), "head_dim"),
        (Box::new(|c| c.rms_norm_eps = -1.0), "rms_norm_eps"),
        (
            Box::new(|c| c.layer_types = Some(vec![LayerType::Full; 2])),
            "layer_types",
        ),
    ];
    for (edit, field) in cases {
        let mut cfg = Gemma3nTextConfig::tiny();
        edit(&mut cfg);
        names(
            Gemma3nForCausalLM::<B>::init(&cfg, &dev, DType::F32).unwrap_err(),
            field,
        );
    }
}

#[test]
fn gemma3_constructor_refuses_bad_configs() {
    let dev = Default::default();
    let tiny = || Gemma3TextConfig {
        vocab_size: 32,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        sliding_window: 4,
        ..Default::default()
    };
    Gemma3ForCausalLM::<B>::init(&tiny(), &dev, DType::F32).unwrap();
    let cases: Vec<Case<Gemma3TextConfig>> = vec![
        (Box::new(|c| c.sliding_window = 0), "sliding_window"),
        (Box::new(|c| c.rms_norm_eps = -1e-6), "rms_norm_eps"),
        (
            Box::new(|c| c.num_key_value_heads = 3),
            "num_key_value_heads",
        ),
        (Box::new(|c| c.head_dim = 5), "head_dim"),
        (
            Box::new(|c| c.query_pre_attn_scalar = 0.0),
            "query_pre_attn_scalar",
        ),
        (Box::new(|c| c.layer_types = Some(vec![])), "layer_types"),
    ];
    for (edit, field) in cases {
        let mut cfg = tiny();
        edit(&mut cfg);
        names(
            Gemma3ForCausalLM::<B>::init(&cfg, &dev, DType::F32).unwrap_err(),
            field,
        );
    }
}

#[test]
fn tower_constructors_refuse_bad_configs() {
    let dev = Default::default();
    let audio = Gemma3nAudioConfig {
        sscp_conv_channel_size: vec![4, 4, 4],
        ..Default::default()
    };
    names(
        AudioEncoder::<B>::init(&audio, &dev, DType::F32).unwrap_err(),
        "sscp_conv_channel_size",
    );
    let vision = Gemma3nVisionConfig {
        model_args: Some(serde_json::json!({"msfa_indices": [7]})),
        ..Default::default()
    };
    names(
        MobileNetV5Encoder::<B>::init(&vision, &dev, DType::F32).unwrap_err(),
        "msfa_indices",
    );
}

#[test]
fn the_full_model_refuses_bad_configs() {
    let mut raw = Gemma3nConfig::released("E2B").unwrap().raw;
    raw["vision_soft_tokens_per_image"] = 1_000_000_000.into();
    names(
        Gemma3nConfig::from_value(raw.clone()).unwrap_err(),
        "vision_soft_tokens_per_image",
    );
    raw["vision_soft_tokens_per_image"] = 256.into();
    raw["text_config"]["num_kv_shared_layers"] = 99.into();
    let err = Gemma3nConfig::from_value(raw).unwrap_err();
    assert_eq!(
        err.field_name(),
        Some("text_config.num_kv_shared_layers"),
        "{err}"
    );
    // a valid config builds (shapes only)
    let cfg = Gemma3nConfig::released("E2B").unwrap();
    Gemma3nForConditionalGeneration::<B>::shapes(&cfg, &Default::default()).unwrap();
}
