//! The `automodel-cli` binary end to end on the real Gemma 3 270M (fetched by
//! `cargo xtask fetch-model gemma-3-270m`): generate from the GGUF file, convert it to a Hugging
//! Face folder, generate from that folder, and the errors a user sees.

use std::path::Path;
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .output()
        .expect("automodel-cli runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command failed and said `want` on stderr.
fn fails_with(out: &Output, want: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = text(&out.stderr);
    assert!(err.contains(want), "expected `{want}` in: {err}");
}

fn model() -> String {
    let p = automodel_parity::gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    p.display().to_string()
}

/// `generate --model MODEL --prompt PROMPT`, then `extra`.
fn generate_with(model: &str, prompt: &str, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", model, "--prompt", prompt];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `merge-lora --model MODEL --adapter ADAPTER --out OUT`.
fn merge_lora(model: &str, adapter: &str, out: &str) -> Output {
    cli(&[
        "merge-lora",
        "--model",
        model,
        "--adapter",
        adapter,
        "--out",
        out,
    ])
}

fn generate(model: &str) -> String {
    let out = generate_with(model, "Water boils at", &["--max-new-tokens", "6"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn generate_from_gguf_then_from_the_converted_folder() {
    let from_gguf = generate(&model());
    assert!(from_gguf.starts_with("Water boils at"), "{from_gguf:?}");
    // HF's greedy continuation of this prompt starts " 100 degrees Celsius"
    assert!(from_gguf.contains("100 degrees"), "{from_gguf:?}");

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("gemma-3-270m");
    let out_str = out_dir.display().to_string();
    let conv = cli(&["convert", "--model", &model(), "--out", &out_str]);
    assert!(conv.status.success(), "{}", text(&conv.stderr));
    assert!(text(&conv.stdout).contains("model.safetensors"));
    assert!(Path::new(&out_dir).join("tokenizer.json").is_file());
    assert_eq!(generate(&out_str), from_gguf);

    // converting again refuses to overwrite, unless told to
    let again = cli(&["convert", "--model", &model(), "--out", &out_str]);
    fails_with(&again, "already exists");
}

#[test]
fn bad_arguments_give_clear_errors() {
    let missing = generate_with("/nonexistent/model.gguf", "x", &[]);
    assert!(!missing.status.success());
    let err = text(&missing.stderr);
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("broken.gguf");
    std::fs::write(&not_gguf, b"not a gguf file").unwrap();
    let bad = generate_with(&not_gguf.display().to_string(), "x", &[]);
    fails_with(&bad, "broken.gguf");

    let empty = tempfile::tempdir().unwrap();
    let no_cfg = generate_with(&empty.path().display().to_string(), "x", &[]);
    fails_with(&no_cfg, "config.json");

    // flags are checked before anything is loaded
    for (flags, want) in [
        (vec!["--device", "tpu"], "unknown device"),
        (
            vec!["--sample", "--temperature", "0"],
            "not a positive number",
        ),
        (vec!["--temperature", "nan"], "not a positive number"),
        (vec!["--top-p", "1.5"], "not in (0, 1]"),
    ] {
        fails_with(&generate_with("m.gguf", "x", &flags), want);
    }
    if !cfg!(feature = "cuda") {
        let out = generate_with(&model(), "x", &["--device", "cuda:1"]);
        fails_with(&out, "--features cuda");
    }
    if !cfg!(feature = "wgpu") {
        let out = cli(&["finetune", "--check", "--device", "wgpu"]);
        fails_with(&out, "--features wgpu");
    }

    let image_on_gguf = generate_with(&model(), "x", &["--image", "cat.png"]);
    fails_with(&image_on_gguf, "Gemma 3n");
}

/// A PEFT adapter (written by Python PEFT for the 270M) runs unmerged with `--adapter`, and
/// `merge-lora` writes a plain folder that generates the same text.
#[test]
fn adapter_unmerged_and_merged_generate_alike() {
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../reference/golden-peft/lora_gemma3_270m")
        .display()
        .to_string();
    let run = |model: &str, extra: &[&str]| {
        let mut args = vec!["--max-new-tokens", "8"];
        args.extend_from_slice(extra);
        let out = generate_with(model, "Photosynthesis is", &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let unmerged = run(&model(), &["--adapter", &adapter]);
    assert!(unmerged.starts_with("Photosynthesis is"), "{unmerged:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged").display().to_string();
    let merge = merge_lora(&model(), &adapter, &out);
    assert!(merge.status.success(), "{}", text(&merge.stderr));
    assert!(Path::new(&out).join("tokenizer.json").is_file());
    assert_eq!(run(&out, &[]), unmerged);
    // a folder that is not an adapter is named in the error
    let elsewhere = dir.path().join("again").display().to_string();
    let bad = merge_lora(&model(), &out, &elsewhere);
    fails_with(&bad, "adapter_config.json");
    // and an existing model is not overwritten
    let again = merge_lora(&model(), &adapter, &out);
    fails_with(&again, "already exists");
}

fn recipe(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../recipes")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn data_shows_samples_with_labelled_spans_and_statistics() {
    model();
    let out = cli(&["data", "--config", &recipe("default.yaml"), "--show", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(
        s.matches("── builtin:instructions/train record").count(),
        2,
        "{s}"
    );
    assert!(s.contains("<start_of_turn>model\n⟦"), "{s}");
    assert!(s.contains("<end_of_turn>⟧"), "{s}");
    assert!(s.contains("samples       512"), "{s}");
    assert!(
        s.contains("512 read, 512 used, 0 truncated, 0 skipped"),
        "{s}"
    );

    // images and audio through Gemma 3n's processor over the real vocabulary
    let out = cli(&[
        "data",
        "--config",
        &recipe("shapes-data.yaml"),
        "--show",
        "1",
        "--validation",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("<start_of_audio><audio_soft_token>×188<end_of_audio>"),
        "{s}"
    );
    assert!(s.contains("media         0 images, 64 audio clips"), "{s}");

    // a recipe with a mistyped key, and one whose file has bad lines
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "model:\n  pretrained_model_name_or_path: gemma-3-270m\ndataset:\n  builtin: instructions\n  max_lenght: 12\n",
    )
    .unwrap();
    fails_with(
        &cli(&["data", "--config", bad.to_str().unwrap()]),
        "dataset.max_lenght",
    );
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    std::fs::write(
        &bad,
        "model:\n  pretrained_model_name_or_path: gemma-3-270m\ndataset:\n  path: d.jsonl\n",
    )
    .unwrap();
    let out = cli(&["data", "--config", bad.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("3 read, 1 used, 0 truncated, 2 skipped"), "{s}");
    assert!(s.contains("d.jsonl:2: invalid JSON"), "{s}");
    assert!(s.contains("no assistant turn: 1"), "{s}");
    std::fs::write(
        &bad,
        "model:\n  pretrained_model_name_or_path: gemma-3-270m\ndataset:\n  path: d.jsonl\n  bad_samples: fail\n",
    )
    .unwrap();
    fails_with(
        &cli(&["data", "--config", bad.to_str().unwrap()]),
        "d.jsonl:2",
    );
}

/// Hostile inputs end with one clear `error:` message and exit status 1: no panic, no colour
/// codes in a non-terminal stderr, no backtrace; flags are checked before anything loads.
#[test]
fn hostile_inputs_give_one_clear_error() {
    use automodel::gguf::GgufValue;
    use automodel_parity::fixtures::{TINY_CONTEXT, tiny_gemma3_gguf};
    let dir = tempfile::tempdir().unwrap();
    let clean = |out: &Output| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "exit status 1: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{err}"
        );
        assert!(!err.contains('\u{1b}'), "colour codes: {err:?}");
        err
    };

    let good = dir.path().join("tiny.gguf");
    tiny_gemma3_gguf().write(&good).unwrap();
    let good = good.display().to_string();
    let gen3 = |m: &str| generate_with(m, "the water", &["--max-new-tokens", "3"]);
    let ok = gen3(&good);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    let bad = dir.path().join("bos.gguf");
    tiny_gemma3_gguf()
        .set("tokenizer.ggml.bos_token_id", GgufValue::U32(70_000))
        .write(&bad)
        .unwrap();
    let bad = bad.display().to_string();
    for out in [
        generate_with(&bad, "x", &[]),
        cli(&[
            "convert",
            "--model",
            &bad,
            "--out",
            dir.path().to_str().unwrap(),
        ]),
    ] {
        let err = clean(&out);
        assert!(
            err.contains("tokenizer.ggml.bos_token_id") && err.contains("bos.gguf"),
            "{err}"
        );
    }

    // a header that names far more layers than the file holds: named, before any memory grows
    let tall = dir.path().join("tall.gguf");
    tiny_gemma3_gguf()
        .set("gemma3.block_count", GgufValue::U32(1000))
        .write(&tall)
        .unwrap();
    let err = clean(&generate_with(tall.to_str().unwrap(), "x", &[]));
    assert!(
        err.contains("layers") && err.contains("999") && err.contains("layer count"),
        "{err}"
    );
    assert_eq!(err.matches("layer count").count(), 1, "said once: {err}");

    // a prompt longer than the model's context
    let long = "the water boils ".repeat(TINY_CONTEXT);
    let err = clean(&generate_with(&good, &long, &[]));
    assert!(err.contains(&format!("context is {TINY_CONTEXT}")), "{err}");

    // the format is told by the bytes, not the name: a GGUF file without `.gguf`, and a file
    // of a Hugging Face folder standing for the folder
    let renamed = dir.path().join("model.bin");
    std::fs::copy(&good, &renamed).unwrap();
    let out = gen3(renamed.to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hf = dir.path().join("hf");
    let conv = cli(&["convert", "--model", &good, "--out", hf.to_str().unwrap()]);
    assert!(conv.status.success(), "{}", text(&conv.stderr));
    let out = gen3(hf.join("model.safetensors").to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = clean(&cli(&[
        "convert",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        "x",
    ]));
    assert!(err.contains("a folder; convert takes a GGUF file"), "{err}");
    // a config.json that is no mapping
    let null = dir.path().join("null");
    std::fs::create_dir(&null).unwrap();
    std::fs::write(null.join("config.json"), "null").unwrap();
    let err = clean(&gen3(null.to_str().unwrap()));
    assert!(
        err.contains("expected a JSON object with a `model_type`, found null"),
        "{err}"
    );
    fails_with(
        &generate_with(&good, "x", &["--max-new-tokens", "-1"]),
        "`-1` is not a whole number",
    );

    // sampling flags
    for (flags, want) in [
        (vec!["--top-p", "0"], "not in (0, 1]"),
        (vec!["--top-p", "nan"], "not in (0, 1]"),
        (vec!["--top-p", "-0.5"], "not in (0, 1]"),
        (vec!["--temperature", "-1"], "not a positive number"),
        (vec!["--temperature", "inf"], "not a positive number"),
    ] {
        let mut args = vec!["--sample"];
        args.extend(flags);
        fails_with(&generate_with(&good, "x", &args), want);
    }
}
