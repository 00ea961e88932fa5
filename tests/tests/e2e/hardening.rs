//! What users' files and flags can get wrong, one class at a time, on files made here (the tiny
//! Gemma 3 GGUF of `automodel_parity::fixtures`, configs, WAV, JPEG and PNG bytes): each gives a
//! clear error naming the file and the field, never a panic, an allocation beyond the data, a
//! silent wrong success or a half-written folder.

use std::path::{Path, PathBuf};

use automodel_core::CpuBackend as B;
use automodel_gemma3n::ModelError;
use automodel_gguf::{GgmlType, GgufValue, GgufWriter};
use automodel_models::convert::{gguf_to_hf, load_gguf};
use automodel_parity::fixtures::{TINY_CONTEXT, TINY_LAYERS, tiny_gemma3_gguf};
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_text::generate::{TextDecoder, TextPrompt, Tokens, ids_tensor};
use automodel_text::{Generate, GenerationConfig};
use burn::tensor::DType;

fn write(w: &GgufWriter, dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    w.write(&p).unwrap();
    p
}

/// Load the GGUF that `change` makes from the tiny one; the error text (the load must fail).
fn gguf_error(change: impl FnOnce(&mut GgufWriter)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut w = tiny_gemma3_gguf();
    change(&mut w);
    let p = write(&w, dir.path());
    match load_gguf::<B>(&p, &Default::default(), DType::F32) {
        Ok(_) => panic!("the broken GGUF loaded"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("tiny.gguf"), "the file is named: {text}");
            text
        }
    }
}

fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "expected `{p}` in: {text}");
    }
}

#[test]
fn gguf_metadata_out_of_range_is_an_error_naming_the_key() {
    let e = gguf_error(|w| {
        w.set("tokenizer.ggml.bos_token_id", GgufValue::U32(5000));
    });
    assert_has(
        &e,
        &[
            "tokenizer.ggml.bos_token_id",
            "5000",
            "outside the vocabulary",
        ],
    );
    let e = gguf_error(|w| {
        w.set("tokenizer.ggml.eos_token_id", GgufValue::U32(1_000_000));
    });
    assert_has(&e, &["tokenizer.ggml.eos_token_id", "1000000"]);
    let e = gguf_error(|w| {
        w.set("gemma3.attention.sliding_window", GgufValue::U32(0));
    });
    assert_has(&e, &["gemma3.attention.sliding_window", "sliding_window"]);
    let e = gguf_error(|w| {
        w.set(
            "gemma3.attention.layer_norm_rms_epsilon",
            GgufValue::F32(-1e-6),
        );
    });
    assert_has(&e, &["gemma3.attention.layer_norm_rms_epsilon", "positive"]);
    let e = gguf_error(|w| {
        w.set("gemma3.embedding_length", GgufValue::U64(1_000_000_000_000));
    });
    assert_has(
        &e,
        &["gemma3.embedding_length", "1000000000000", "larger than"],
    );
    let e = gguf_error(|w| {
        w.remove("gemma3.feed_forward_length");
    });
    assert_has(&e, &["gemma3.feed_forward_length", "missing"]);
}

#[test]
fn a_layer_count_beyond_the_tensors_is_a_short_error_without_allocating() {
    // 1000 declared layers of which the file has 6: reported at once, in a few lines
    let e = gguf_error(|w| {
        w.set("gemma3.block_count", GgufValue::U32(1000));
    });
    assert_has(
        &e,
        &[
            &format!("keys of layers {TINY_LAYERS}–999 are missing"),
            "and ",
            "more",
        ],
    );
    assert!(e.len() < 3000, "{} bytes of error", e.len());
    let e = gguf_error(|w| {
        w.set("gemma3.block_count", GgufValue::U32(1_000_000));
    });
    assert_has(&e, &["gemma3.block_count", "larger than"]);
    // a vocabulary that disagrees with the embedding: its shape, not a giant zero tensor
    let e = gguf_error(|w| {
        let GgufValue::Array(mut tokens) = w.get("tokenizer.ggml.tokens").unwrap().clone() else {
            unreachable!()
        };
        tokens.truncate(280);
        w.set("tokenizer.ggml.tokens", GgufValue::Array(tokens.clone()));
        w.set(
            "tokenizer.ggml.scores",
            GgufValue::Array(vec![GgufValue::F32(0.0); 280]),
        );
        w.set(
            "tokenizer.ggml.token_type",
            GgufValue::Array(vec![GgufValue::I32(1); 280]),
        );
    });
    assert_has(&e, &["model.embed_tokens.weight", "[280, 16]"]);
}

#[test]
fn gguf_layout_errors_are_caught() {
    // a tensor offset that breaks the alignment
    let e = gguf_error(|w| {
        let data: Vec<u8> = [1.0f32; 16].iter().flat_map(|x| x.to_le_bytes()).collect();
        w.tensor_raw(
            "output_norm.weight",
            &[16],
            GgmlType::F32.id(),
            data,
            Some(4),
        );
    });
    assert_has(
        &e,
        &["output_norm.weight", "not a multiple of the alignment"],
    );
    // a tensor count one too high
    let e = gguf_error(|w| {
        let n = w.tensor_names().len() as u64;
        w.tensor_count(n + 1);
    });
    assert_has(&e, &["is the tensor count right?"]);
    // a cut file
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny_gemma3_gguf().to_bytes();
    let p = dir.path().join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_gguf::<B>(&p, &Default::default(), DType::F32)
        .map(|_| ())
        .expect_err("a cut file fails")
        .to_string();
    assert_has(&e, &["cut.gguf", "truncated"]);
}

fn tiny_model() -> (Gemma3ForCausalLM<B>, automodel_tokenizer::GemmaTokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&tiny_gemma3_gguf(), dir.path());
    load_gguf::<B>(&p, &Default::default(), DType::F32).unwrap()
}

#[test]
fn prompts_beyond_the_context_are_refused_and_generation_stops_at_its_end() {
    let (m, _) = tiny_model();
    let greedy = GenerationConfig::greedy(20, vec![]);
    let long: Vec<i64> = (0..TINY_CONTEXT as i64 + 1).map(|i| 262 + i % 40).collect();
    let e = m
        .generate(&TextPrompt::single(long), &greedy, |_| {})
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            &format!("{} tokens", TINY_CONTEXT + 1),
            &format!("context is {TINY_CONTEXT}"),
        ],
    );
    let near: Vec<i64> = (0..TINY_CONTEXT as i64 - 5).map(|i| 262 + i % 40).collect();
    let out = m
        .generate(&TextPrompt::single(near), &greedy, |_| {})
        .unwrap();
    assert_eq!(out.generated[0].len(), 5, "stops at the context's end");
}

#[test]
fn prompts_run_in_chunks_give_the_logits_of_one_pass() {
    // six layers (five sliding with a window of 4, one global): chunks of 3 cross the window
    let (m, _) = tiny_model();
    let ids: Vec<i64> = (0..23).map(|i| 262 + (i * 7) % 40).collect();
    let dev = Default::default();
    let whole = {
        let mut cache = TextDecoder::new_cache(&m);
        let t = Tokens::ids(ids_tensor::<B>(std::slice::from_ref(&ids), &dev));
        m.decode(t, &mut cache).unwrap()
    };
    let chunked = {
        let mut cache = TextDecoder::new_cache(&m);
        let mut last = None;
        for c in ids.chunks(3) {
            let t = Tokens::ids(ids_tensor::<B>(&[c.to_vec()], &dev));
            last = Some(m.decode(t, &mut cache).unwrap());
        }
        last.unwrap()
    };
    let (a, b) = (
        whole.into_data().to_vec::<f32>().unwrap(),
        chunked.into_data().to_vec::<f32>().unwrap(),
    );
    let diff = crate::common::max_diff(&a, &b);
    assert!(diff < 1e-5, "chunked prefill differs by {diff}");
}

#[test]
fn generation_prefills_long_prompts_in_chunks_with_the_logits_of_one_pass() {
    // a context long enough for a prompt of more than one prefill chunk
    let dir = tempfile::tempdir().unwrap();
    let mut w = tiny_gemma3_gguf();
    w.set("gemma3.context_length", GgufValue::U32(2048));
    let p = write(&w, dir.path());
    let (m, _) = load_gguf::<B>(&p, &Default::default(), DType::F32).unwrap();
    let n = automodel_text::generate::PREFILL_CHUNK + 77;
    let ids: Vec<i64> = (0..n as i64).map(|i| 262 + (i * 11) % 40).collect();
    let out = m
        .generate(
            &TextPrompt::single(ids.clone()),
            &GenerationConfig::greedy(1, vec![]),
            |_| {},
        )
        .unwrap();
    let dev = Default::default();
    let mut cache = TextDecoder::new_cache(&m);
    let one_pass = m
        .decode(Tokens::ids(ids_tensor::<B>(&[ids], &dev)), &mut cache)
        .unwrap();
    let (a, b) = (
        out.step_logits[0]
            .clone()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        one_pass.into_data().to_vec::<f32>().unwrap(),
    );
    let diff = crate::common::max_diff(&a, &b);
    assert!(diff < 1e-5, "chunked prefill differs by {diff}");
}

/// Convert the tiny GGUF into `out`; the config of the folder, edited by `change`, must fail to
/// load with an error naming `config.json` (a bad field) or the weights file (a disagreement).
fn config_error(change: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let gguf = write(&tiny_gemma3_gguf(), dir.path());
    let out = dir.path().join("hf");
    gguf_to_hf(&gguf, &out, None, false).unwrap();
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    change(&mut cfg);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    match Gemma3ForCausalLM::<B>::from_pretrained(&out, &Default::default(), DType::F32) {
        Ok(_) => panic!("the broken config loaded"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("hf/config.json") || text.contains("hf/model.safetensors"),
                "the file is named: {text}"
            );
            text
        }
    }
}

#[test]
fn config_sizes_are_bounded_and_checked_against_the_weights() {
    for (field, value) in [
        ("vocab_size", 1_000_000_000u64),
        ("hidden_size", 1_000_000_000_000),
        ("intermediate_size", 1_000_000_000_000),
        ("max_position_embeddings", 1 << 40),
    ] {
        let e = config_error(|c| c[field] = value.into());
        assert_has(&e, &["config.json", field, "larger than"]);
    }
    let e = config_error(|c| c["eos_token_id"] = serde_json::json!([1, 999_999]));
    assert_has(&e, &["eos_token_id", "999999", "vocabulary"]);
    // 1000 layers against 6: a short error that says which layers are missing
    let e = config_error(|c| {
        c["num_hidden_layers"] = 1000.into();
        c.as_object_mut().unwrap().remove("layer_types");
    });
    assert_has(
        &e,
        &[&format!("keys of layers {TINY_LAYERS}–999 are missing")],
    );
    assert!(e.len() < 3000, "{} bytes of error", e.len());
    // a config without hidden_size takes HF's default: every shape is then named, briefly
    let e = config_error(|c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    assert_has(&e, &["model.embed_tokens.weight", "expected [", "more"]);
    assert!(e.len() < 3000, "{} bytes of error", e.len());
}

#[test]
fn folders_are_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = write(&tiny_gemma3_gguf(), dir.path());
    let out = dir.path().join("hf");
    gguf_to_hf(&gguf, &out, None, false).unwrap();
    std::fs::write(out.join("README.md"), "my notes").unwrap();
    assert!(out.join("model.safetensors").is_file());
    // again, refused without overwrite
    assert!(gguf_to_hf(&gguf, &out, None, false).is_err());
    // overwrite with shards: no stale single file beside the shards; the user's file stays
    let files = gguf_to_hf(&gguf, &out, Some(20_000), true).unwrap();
    assert!(files.iter().all(|f| f.starts_with(&out)), "{files:?}");
    assert!(!out.join("model.safetensors").exists(), "stale single file");
    assert!(out.join("model.safetensors.index.json").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "my notes"
    );
    let loaded = Gemma3ForCausalLM::<B>::from_pretrained(&out, &Default::default(), DType::F32);
    assert!(loaded.is_ok(), "{:?}", loaded.err());

    // a failure half-way leaves the old folder byte-identical and no partial sibling
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&out);
    let r =
        automodel_core::weights::write_folder(&out, |tmp| -> Result<Vec<PathBuf>, ModelError> {
            std::fs::write(tmp.join("model.safetensors"), b"half").unwrap();
            Err(ModelError::Input("disk full".into()))
        });
    assert!(r.is_err());
    assert_eq!(snapshot(&out), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A mono 16-bit PCM WAV header declaring `rate` Hz and `data_len` bytes, then `samples`.
fn wav(rate: u32, data_len: u32, samples: &[i16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"RIFF");
    b.extend((36 + data_len).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // PCM
    b.extend(1u16.to_le_bytes()); // mono
    b.extend(rate.to_le_bytes());
    b.extend((rate.wrapping_mul(2)).to_le_bytes());
    b.extend(2u16.to_le_bytes());
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend(data_len.to_le_bytes());
    for s in samples {
        b.extend(s.to_le_bytes());
    }
    b
}

#[test]
fn corrupt_or_extreme_audio_is_an_error() {
    use automodel_audio::decode::decode_audio;
    let tone: Vec<i16> = (0..16_000)
        .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
        .collect();
    let ok = decode_audio(wav(16_000, 32_000, &tone), Some("wav"), "ok.wav", 16_000).unwrap();
    assert_eq!(ok.samples.len(), 16_000);
    // the header declares twice the data the file holds
    let e = decode_audio(wav(16_000, 64_000, &tone), Some("wav"), "cut.wav", 16_000)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["cut.wav", "cut short"]);
    // a 4.29 GHz sample rate in a 32 KB file
    let e = decode_audio(
        wav(4_294_967_000, 32_000, &tone),
        Some("wav"),
        "fast.wav",
        16_000,
    )
    .unwrap_err()
    .to_string();
    assert_has(&e, &["fast.wav", "4294967000 Hz", "outside"]);
}

#[test]
fn corrupt_or_extreme_images_are_an_error() {
    use automodel_vision::processor::decode_image;
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 9]));
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    assert_eq!(decode_image(&jpeg, "ok.jpg").unwrap().width, 64);
    let e = decode_image(&jpeg[..jpeg.len() / 2], "half.jpg")
        .unwrap_err()
        .to_string();
    assert_has(&e, &["half.jpg", "cut short"]);
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let e = decode_image(&png[..png.len() / 2], "half.png")
        .unwrap_err()
        .to_string();
    assert_has(&e, &["half.png"]);
    // wider than the bound (a cheap 20000 × 1 image)
    let wide = image::GrayImage::new(20_000, 1);
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma8(wide)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let e = decode_image(&png, "wide.png").unwrap_err().to_string();
    assert_has(&e, &["wide.png", "too large"]);
}

/// A safetensors file: the header JSON, then `data`.
fn safetensors(header: serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

#[test]
fn safetensors_header_errors_name_the_tensor() {
    use automodel_core::weights::SafeTensorsFiles;
    let dir = tempfile::tempdir().unwrap();
    let open = |bytes: Vec<u8>| {
        let p = dir.path().join("model.safetensors");
        std::fs::write(&p, bytes).unwrap();
        SafeTensorsFiles::open(&p)
            .map(|_| ())
            .expect_err("must fail")
            .to_string()
    };
    // a shape that needs more bytes than its offsets hold
    let e = open(safetensors(
        serde_json::json!({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 16]}}),
        &[0; 16],
    ));
    assert_has(
        &e,
        &["model.safetensors", "`w`", "[1000000, 1000000]", "16"],
    );
    // offsets past the end of the file
    let e = open(safetensors(
        serde_json::json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
        &[0; 8],
    ));
    assert_has(&e, &["model.safetensors", "`w`", "past the end"]);
    // a header length beyond the file
    let mut b = (1u64 << 50).to_le_bytes().to_vec();
    b.extend(b"{}");
    let e = open(b);
    assert_has(&e, &["model.safetensors"]);
}

#[test]
fn config_errors_name_the_field() {
    let e = config_error(|c| c["hidden_size"] = "big".into());
    assert_has(&e, &["config.json", "`hidden_size`"]);
    let e = config_error(|c| c["layer_types"] = serde_json::json!(["sliding_attention"]));
    assert_has(
        &e,
        &["config.json", "`layer_types`", "1 entries for 6 layers"],
    );
    let e = config_error(|c| c["layer_types"][0] = "local".into());
    assert_has(&e, &["config.json", "`layer_types[0]`"]);
    let e = config_error(|c| c["rms_norm_eps"] = (-1.0).into());
    assert_has(&e, &["config.json", "`rms_norm_eps`"]);
}

#[test]
fn gemma3n_config_sizes_are_bounded() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::common::case("multimodal").join("config.json")).unwrap(),
    )
    .unwrap();
    for (path, value, want) in [
        (
            &["vision_soft_tokens_per_image"][..],
            1_000_000_000u64,
            "vision_soft_tokens_per_image",
        ),
        (
            &["text_config", "vocab_size"][..],
            1_000_000_000,
            "text_config.vocab_size",
        ),
        (
            &["text_config", "num_hidden_layers"][..],
            100_000,
            "text_config.num_hidden_layers",
        ),
        (
            &["text_config", "sliding_window"][..],
            0,
            "text_config.sliding_window",
        ),
    ] {
        let mut c = base.clone();
        let mut slot = &mut c;
        for k in path {
            slot = &mut slot[*k];
        }
        *slot = value.into();
        let e = automodel_gemma3n::Gemma3nConfig::from_value(c)
            .err()
            .unwrap_or_else(|| panic!("{want} = {value} accepted"))
            .to_string();
        assert_has(&e, &[want]);
    }
}
