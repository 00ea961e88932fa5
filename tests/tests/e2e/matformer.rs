//! MatFormer Mix-n-Match extraction on the golden tiny model.

use crate::common;

use automodel_core::CpuBackend as B;
use automodel_core::weights::SafeTensorsFiles;
use automodel_text::generate::ids_tensor;
use automodel_text::matformer::{MatformerSpec, extract_checkpoint, plan, slice_model};
use automodel_text::{ForwardOptions, Gemma3nForCausalLM, Gemma3nTextConfig, KvSharing, LayerType};
use burn::tensor::DType;
use common::{case, max_diff, rows};

fn logits(model: &Gemma3nForCausalLM<B>) -> Vec<f32> {
    let inputs = SafeTensorsFiles::open(case("text").join("inputs.safetensors")).unwrap();
    let ids = rows(&inputs, "input_ids");
    let mask = rows(&inputs, "attention_mask");
    let out = model
        .forward(
            ids_tensor::<B>(&ids, &Default::default()),
            Some(ids_tensor::<B>(&mask, &Default::default())),
            None,
            ForwardOptions::default(),
        )
        .unwrap();
    out.logits.into_data().to_vec::<f32>().unwrap()
}

fn original() -> Gemma3nForCausalLM<B> {
    Gemma3nForCausalLM::from_pretrained(case("text"), None, &Default::default(), DType::F32)
        .unwrap()
}

#[test]
fn extracted_checkpoint_equals_in_memory_slicing() {
    let spec = MatformerSpec {
        ffn_widths: vec![64, 80, 128, 48, 96],
        skip_layers: vec![1],
    };
    let dst = tempfile::tempdir().unwrap();
    let plan = extract_checkpoint(&case("text"), dst.path(), &spec, None).unwrap();
    assert_eq!(plan.kept, vec![0, 2, 3, 4, 5]);

    // The new config: 5 layers, per-layer widths, types rebuilt from the kept layers.
    let cfg = Gemma3nTextConfig::from_file(dst.path().join("config.json")).unwrap();
    assert_eq!(cfg.num_hidden_layers, 5);
    assert_eq!(cfg.intermediate_sizes(), vec![64, 80, 128, 48, 96]);
    assert_eq!(cfg.num_kv_shared_layers, 2);
    use LayerType::*;
    assert_eq!(
        cfg.layer_types(),
        vec![Sliding, Sliding, Full, Sliding, Full]
    );
    assert_eq!(cfg.activation_sparsity(), vec![0.95, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        cfg.kv_sharing().unwrap(),
        vec![
            KvSharing::None,
            KvSharing::Store,
            KvSharing::Store,
            KvSharing::Reuse { source: 1 },
            KvSharing::Reuse { source: 2 }
        ]
    );

    // The sliced tensors, and everything outside the decoder copied unchanged.
    let files = SafeTensorsFiles::open(dst.path()).unwrap();
    assert_eq!(
        files
            .shape("model.language_model.layers.0.mlp.gate_proj.weight")
            .unwrap(),
        &[64, 64]
    );
    assert_eq!(
        files
            .shape("model.language_model.layers.4.mlp.down_proj.weight")
            .unwrap(),
        &[64, 96]
    );
    assert_eq!(
        files
            .shape("model.language_model.embed_tokens_per_layer.weight")
            .unwrap(),
        &[256, 80]
    );
    assert_eq!(
        files
            .shape("model.language_model.per_layer_model_projection.weight")
            .unwrap(),
        &[80, 64]
    );
    assert!(!files.contains("model.language_model.layers.5.mlp.gate_proj.weight"));
    let src = SafeTensorsFiles::open(case("text")).unwrap();
    let key = "model.vision_tower.timm_model.conv_stem.conv.weight";
    assert_eq!(files.raw(key).unwrap().bytes, src.raw(key).unwrap().bytes);
    // new layer 1 is old layer 2: its first 80 FFN units, row for row
    let old = src
        .to_f32_vec("model.language_model.layers.2.mlp.gate_proj.weight")
        .unwrap();
    let new = files
        .to_f32_vec("model.language_model.layers.1.mlp.gate_proj.weight")
        .unwrap();
    assert_eq!(&old[..80 * 64], &new[..]);

    // The extracted checkpoint loads, and computes what the in-memory slice computes.
    let extracted =
        Gemma3nForCausalLM::<B>::from_pretrained(dst.path(), None, &Default::default(), DType::F32)
            .unwrap();
    let full = original();
    let full_logits = logits(&full);
    let prefix = full.prefix.clone();
    let sliced = Gemma3nForCausalLM {
        model: slice_model(full.model, &spec).unwrap(),
        prefix,
    };
    let (a, b) = (logits(&extracted), logits(&sliced));
    assert!(
        max_diff(&a, &b) <= 1e-5,
        "extracted vs in-memory: {}",
        max_diff(&a, &b)
    );
    assert!(
        max_diff(&a, &full_logits) > 1e-2,
        "slicing must change the model"
    );
}

#[test]
fn skipping_kv_consumers_shrinks_the_shared_count() {
    let cfg = original().model.config.clone();
    let p = plan(
        &cfg,
        &MatformerSpec {
            ffn_widths: vec![],
            skip_layers: vec![4],
        },
    )
    .unwrap();
    assert_eq!(p.kept, vec![0, 1, 2, 3, 5]);
    assert_eq!(p.config.num_kv_shared_layers, 1);
    assert_eq!(
        p.config.kv_sharing().unwrap()[4],
        KvSharing::Reuse { source: 3 }
    );
    assert_eq!(p.widths, vec![128, 96, 160, 128, 192]);
}

#[test]
fn bad_specs_are_refused() {
    let cfg = original().model.config.clone();
    let err = |spec: MatformerSpec| plan(&cfg, &spec).unwrap_err().to_string();
    assert!(
        err(MatformerSpec {
            ffn_widths: vec![],
            skip_layers: vec![2]
        })
        .contains("lends its K/V")
    );
    assert!(
        err(MatformerSpec {
            ffn_widths: vec![],
            skip_layers: vec![9]
        })
        .contains("has 6 layers")
    );
    assert!(
        err(MatformerSpec {
            ffn_widths: vec![1, 2],
            skip_layers: vec![]
        })
        .contains("one width per kept layer")
    );
    assert!(
        err(MatformerSpec {
            ffn_widths: vec![129, 96, 160, 128, 96, 192],
            skip_layers: vec![]
        })
        .contains("1..=128")
    );
}
