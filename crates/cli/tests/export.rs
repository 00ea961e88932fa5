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
        // a NaN is kept (f32::max would drop it) and fails the bound below
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m });
        let n_same = want_top.iter().zip(&top).filter(|(a, b)| a == b).count();
        let same = n_same as f64 / top.len() as f64;
        println!(
            "{ty}: file {} bytes, max |Δlogit| {diff:.4}, top-1 agreement {n_same}/{}",
            std::fs::metadata(&out).unwrap().len(),
            top.len()
        );
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
    // a model class without a llama.cpp architecture is refused by name before loading
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let n = dir.path().join("n.gguf");
    fails(
        cli(&[
            "export-gguf",
            "--model",
            other.to_str().unwrap(),
            "--out",
            n.to_str().unwrap(),
        ]),
        "model_type `llama` is not supported",
    );
    std::fs::remove_dir_all(&other).unwrap();
    // a full Gemma 3n folder without its tokenizer: named
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference/golden/text");
    fails(
        cli(&[
            "export-gguf",
            "--model",
            full.to_str().unwrap(),
            "--out",
            n.to_str().unwrap(),
        ]),
        "tokenizer.json",
    );
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

/// A random Gemma 3n text model at tiny shapes with the real Gemma 3n vocabulary, saved as a
/// Hugging Face folder, goes out as llama.cpp's converter writes it: the AltUp projections
/// stacked, the embeddings padded to the 262,400-token vocabulary, norms unshifted, the
/// `gemma3n.*` metadata; every tensor's values are the folder's.
#[test]
fn gemma3n_text_goes_out_as_the_converter_writes_it() {
    use automodel::Gemma3nForCausalLM;
    use automodel::text::Gemma3nTextConfig;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    let tok =
        automodel::GemmaTokenizer::gemma3n_from_gguf(&GgufFile::open(model()).unwrap()).unwrap();
    let mut cfg = Gemma3nTextConfig::tiny();
    cfg.vocab_size = 262_400;
    cfg.vocab_size_per_layer_input = 262_144;
    let m = Gemma3nForCausalLM::<B>::init(&cfg, &Default::default(), DType::F32).unwrap();
    m.save_pretrained(&folder, None).unwrap();
    tok.save(folder.join("tokenizer.json")).unwrap();
    let out = dir.path().join("n.gguf");
    let o = cli(&[
        "export-gguf",
        "--model",
        folder.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = GgufFile::open(&out).unwrap();
    let u = |k: &str| f.get(k).and_then(|v| v.as_u64());
    assert_eq!(
        f.get("general.architecture").and_then(|v| v.as_str()),
        Some("gemma3n")
    );
    assert_eq!(u("gemma3n.block_count"), Some(6));
    assert_eq!(u("gemma3n.attention.shared_kv_layers"), Some(2));
    assert_eq!(u("gemma3n.altup.num_inputs"), Some(4));
    assert_eq!(u("gemma3n.embedding_length_per_layer_input"), Some(16));
    let arr = |k: &str| {
        f.get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.to_vec())
            .unwrap()
    };
    let pattern: Vec<bool> = cfg
        .layer_types()
        .iter()
        .map(|t| *t == automodel::text::LayerType::Sliding)
        .collect();
    assert_eq!(
        arr("gemma3n.attention.sliding_window_pattern"),
        pattern
            .iter()
            .map(|b| automodel::gguf::GgufValue::Bool(*b))
            .collect::<Vec<_>>()
    );
    let scales: Vec<f64> = arr("gemma3n.activation_sparsity_scale")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (s, p) in scales.iter().zip(cfg.activation_sparsity()) {
        let want = if p == 0.0 {
            f64::NEG_INFINITY
        } else {
            automodel::core::nn::normal_icdf(p)
        };
        assert!(
            *s == want || (s - want).abs() < 1e-6,
            "{s} vs {want} for {p}"
        );
    }
    assert_eq!(arr("tokenizer.ggml.tokens").len(), 262_400);
    // the values, tensor by tensor, against the folder
    let hf = automodel::core::weights::SafeTensorsFiles::open(&folder).unwrap();
    use automodel::core::weights::TensorSource;
    let get = |k: &str| -> Vec<f32> { hf.tensor_data(k).unwrap().to_vec::<f32>().unwrap() };
    let p = "model.language_model.";
    let embd = f.dequantize("token_embd.weight").unwrap();
    assert_eq!(embd, get(&format!("{p}embed_tokens.weight")));
    let ple = f.dequantize("per_layer_token_embd.weight").unwrap();
    let src = get(&format!("{p}embed_tokens_per_layer.weight"));
    assert_eq!(
        f.tensors["per_layer_token_embd.weight"].shape(),
        vec![262_400, 96]
    );
    assert_eq!(&ple[..src.len()], &src[..]);
    assert!(
        ple[src.len()..].iter().all(|x| *x == 0.0),
        "padding rows are zeros"
    );
    let stacked = f.dequantize("altup_proj.weight").unwrap();
    assert_eq!(f.tensors["altup_proj.weight"].shape(), vec![3, 64, 64]);
    let parts: Vec<f32> = (0..3)
        .flat_map(|i| get(&format!("{p}altup_projections.{i}.weight")))
        .collect();
    assert_eq!(stacked, parts);
    assert_eq!(
        f.dequantize("blk.1.attn_norm.weight").unwrap(),
        get(&format!("{p}layers.1.input_layernorm.weight")),
        "no 1 + w"
    );
    assert_eq!(
        f.dequantize("blk.2.altup_correct_scale.weight").unwrap(),
        get(&format!("{p}layers.2.altup.correct_output_scale"))
    );
    assert_eq!(
        f.dequantize("blk.0.laurel_r.weight").unwrap(),
        get(&format!("{p}layers.0.laurel.linear_right.weight"))
    );
    // the layers that reuse another layer's K/V: zero K/V projections and K norms, as released
    // checkpoints hold them (llama.cpp refuses a file without them)
    for i in 4..6 {
        for (t, len) in [
            ("attn_k", 64 * 64),
            ("attn_v", 64 * 64),
            ("attn_k_norm", 32),
        ] {
            let name = format!("blk.{i}.{t}.weight");
            let v = f.dequantize(&name).unwrap();
            assert_eq!(v.len(), len, "{name}");
            assert!(v.iter().all(|x| *x == 0.0), "{name}");
        }
    }
    assert!(f.tensors.contains_key("blk.3.attn_k.weight"));
    // every HF tensor is in the file (altup parts as their stacks), and those placeholders
    let n_hf = hf.tensor_names().len();
    assert_eq!(
        f.tensors.len(),
        n_hf - 4 + 2 * 3,
        "6 altup parts become 2 stacks"
    );
    // Q4_K_M: altup, laurel and the per-layer projection stay as the converter stored them
    let q = dir.path().join("q.gguf");
    let o = cli(&[
        "export-gguf",
        "--model",
        folder.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--type",
        "q4_k_m",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = GgufFile::open(&q).unwrap();
    use automodel::gguf::GgmlType;
    assert_eq!(g.tensors["altup_proj.weight"].ggml_type, GgmlType::F16);
    assert_eq!(g.tensors["blk.0.laurel_l.weight"].ggml_type, GgmlType::F16);
    assert_eq!(
        g.tensors["per_layer_model_proj.weight"].ggml_type,
        GgmlType::F16
    );
    assert_eq!(
        g.tensors["blk.0.altup_predict_coef.weight"].ggml_type,
        GgmlType::F32
    );
    assert_eq!(
        g.tensors["blk.0.altup_correct_scale.weight"].ggml_type,
        GgmlType::F32
    );
}
