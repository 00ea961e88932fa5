//! `export-gguf` on the real Gemma 3 270M with the golden LoRA adapter merged: every type reads
//! back through our GGUF reader with logits near the merged model's (exactly equal for F32),
//! llama.cpp's tokenizer metadata carried over, Q4_K_M typed tensor by tensor as llama-quantize
//! typed the published file; and the errors a user sees. (llama.cpp itself runs the files in
//! `cargo xtask check-gguf`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use automodel::gguf::GgufFile;
use automodel::{AutoModel, Gemma3ForCausalLM};
use burn::backend::Flex;
use burn::tensor::{DType, Int, Tensor};

type B = Flex;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .output()
        .expect("automodel-cli runs")
}

fn model() -> PathBuf {
    let p = automodel_parity::gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    p
}

fn adapter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference/golden-peft/lora_gemma3_270m")
}

fn gemma3(path: &Path) -> Gemma3ForCausalLM<B> {
    match AutoModel::<B>::from_pretrained(path, &Default::default(), DType::F32).unwrap() {
        AutoModel::Gemma3(m, _) => m,
        _ => panic!("not Gemma 3"),
    }
}

/// Logits `[T, V]` of a fixed prompt, flattened, and the top-1 token per position.
fn logits(m: &Gemma3ForCausalLM<B>) -> (Vec<f32>, Vec<i64>) {
    let ids: Vec<i64> = vec![2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 1346, 529];
    let t =
        Tensor::<B, 1, Int>::from_ints(ids.as_slice(), &Default::default()).reshape([1, ids.len()]);
    let out = m.forward(t, None, None, None, None).unwrap().logits;
    let top = out
        .clone()
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    (
        out.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
        top,
    )
}

#[test]
fn each_type_reads_back_near_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = model();
    let merged = {
        let m = gemma3(&base);
        let (m, cfg, _, _) = automodel::load_adapter(m, &adapter()).unwrap();
        automodel::merge(m, &cfg)
    };
    let (want, want_top) = logits(&merged);
    drop(merged);
    let source = GgufFile::open(&base).unwrap();
    // (type, largest |Δlogit| allowed, top-1 agreement required)
    for (ty, tol, agree) in [
        ("f32", 0.0, 1.0),
        ("f16", 0.05, 1.0),
        ("q8_0", 0.6, 0.9),
        ("q4_k_m", 3.0, 0.8),
    ] {
        let out = dir.path().join(format!("m-{ty}.gguf"));
        let o = cli(&[
            "export-gguf",
            "--model",
            base.to_str().unwrap(),
            "--adapter",
            adapter().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--type",
            ty,
        ]);
        assert!(
            o.status.success(),
            "{ty}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let f = GgufFile::open(&out).unwrap();
        // llama.cpp's tokenizer keys carried over verbatim, a chat template added
        for (k, v) in source
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
        {
            assert_eq!(f.get(k), Some(v), "{ty}: {k}");
        }
        let tmpl = f
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        assert!(
            tmpl.contains("<start_of_turn>"),
            "{ty}: chat template {tmpl:?}"
        );
        assert_eq!(
            f.get("general.architecture").and_then(|v| v.as_str()),
            Some("gemma3")
        );
        for k in [
            "gemma3.block_count",
            "gemma3.embedding_length",
            "gemma3.attention.sliding_window",
        ] {
            assert_eq!(
                f.get(k).and_then(|v| v.as_u64()),
                source.get(k).and_then(|v| v.as_u64()),
                "{k}"
            );
        }
        if ty == "q4_k_m" {
            // the published file is llama-quantize's Q4_K_M of the same model
            for (name, t) in &source.tensors {
                assert_eq!(f.tensors[name].ggml_type, t.ggml_type, "{name}");
            }
        }
        let (got, top) = logits(&gemma3(&out));
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let same =
            want_top.iter().zip(&top).filter(|(a, b)| a == b).count() as f64 / top.len() as f64;
        println!("{ty}: max |Δlogit| {diff:.4}, top-1 agreement {same:.2}");
        assert!(diff <= tol, "{ty}: max |Δlogit| {diff} > {tol}");
        assert!(same >= agree, "{ty}: top-1 agreement {same} < {agree}");
        if ty == "f32" {
            assert_eq!(want, got, "f32 is lossless");
        }
    }
}

#[test]
fn bad_destinations_and_models_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let base = model();
    let out = dir.path().join("m.gguf");
    std::fs::write(&out, b"mine").unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "export-gguf",
            "--model",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let fails = |o: Output, want: &str| {
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(e.contains(want), "expected `{want}` in {e}");
    };
    fails(run(&out, &[]), "--overwrite");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"mine",
        "the user's file is untouched"
    );
    fails(run(dir.path(), &[]), "is a folder");
    fails(
        run(&dir.path().join("no/such/m.gguf"), &[]),
        "no such folder",
    );
    fails(run(&out, &["--type", "q3_k", "--overwrite"]), "q4_k_m");
    // Gemma 3n is refused by name before its weights are read
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference/golden/text");
    let o = cli(&[
        "export-gguf",
        "--model",
        text.to_str().unwrap(),
        "--out",
        dir.path().join("n.gguf").to_str().unwrap(),
    ]);
    fails(o, "`gemma3n` models to GGUF is not supported yet");
    // nothing but the user's file is left
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("m.gguf")]);
    // --overwrite replaces it
    assert!(
        run(&out, &["--overwrite", "--type", "q8_0"])
            .status
            .success()
    );
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
}
