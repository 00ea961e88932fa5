//! The four recipes written for the released Gemma 3n sizes (E2B speech recognition, E4B visual
//! question answering; LoRA and full fine-tuning) end to end without their checkpoints or
//! datasets: `model.config: E2B|E4B` builds the released configuration with counter-formula
//! weights, cut to two decoder layers (every width kept: the 262 400-token vocabulary, the
//! per-layer embedding table, the 300M vision tower at 768×768, the released conformer), and
//! built-in data at the released input shapes (pictures resized to 768×768, 16 kHz clips). Each
//! run loads, encodes, trains, validates, checkpoints and resumes, and logs the gradient norm of
//! each component.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `finetune --config recipe` reduced: released weights cut to two layers, built-in data,
/// `steps` steps of one row, a checkpoint every step, validation on one sample at the end.
fn reduced(recipe: &str, released: &str, data: &str, out: &Path, steps: usize) -> Vec<String> {
    let mut a: Vec<String> = vec!["finetune".into(), "--config".into(), recipe.into()];
    for s in [
        "model.pretrained_model_name_or_path=null".to_string(),
        format!("model.config={released}"),
        "model.tokenizer=gemma-3-270m".into(),
        "model.num_hidden_layers=2".into(),
        // float32: the recipes' bfloat16 is several times slower on a CPU without bf16 kernels
        // (docs/benchmarks.md); the bf16 path at these widths is `reference/golden-released`'s
        "model.torch_dtype=float32".into(),
        format!("dataset={{builtin: {data}, split: train}}"),
        format!(
            "validation_dataset={{builtin: {data}, split: validation, num_samples: 1, shuffle: false}}"
        ),
        "step_scheduler.global_batch_size=1".into(),
        "step_scheduler.local_batch_size=1".into(),
        format!("step_scheduler.max_steps={steps}"),
        "step_scheduler.ckpt_every_steps=1".into(),
        "step_scheduler.val_every_steps=100".into(),
        "lr_scheduler.lr_warmup_steps=0".into(),
        "evaluation.before_training=false".into(),
        "evaluation.num_samples=1".into(),
        "evaluation.max_new_tokens=2".into(),
    ] {
        a.extend(["--set".into(), s]);
    }
    a.extend(["--output-dir".into(), out.display().to_string()]);
    a
}

fn run_ok(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}\n{err}");
    err
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Run `recipe` reduced for `steps` steps (resumed for the last when `resume`), and check what
/// the run wrote: `want` components have a gradient, `frozen` ones none.
fn recipe_runs(
    recipe: &str,
    released: &str,
    data: &str,
    resume: bool,
    want: &[&str],
    frozen: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let steps = if resume { 2 } else { 1 };
    if resume {
        run_ok(&reduced(recipe, released, data, &run, 1));
        assert!(run.join("epoch_0_step_1").is_dir(), "{recipe}: checkpoint");
        let first = lines(&run.join("training.jsonl"));
        let mut again = reduced(recipe, released, data, &run, 2);
        again.push("--resume".into());
        run_ok(&again);
        // step 1 was not run again: its line is the first run's
        assert_eq!(lines(&run.join("training.jsonl"))[0], first[0], "{recipe}");
    } else {
        run_ok(&reduced(recipe, released, data, &run, 1));
    }
    let records = lines(&run.join("training.jsonl"));
    assert_eq!(records.len(), steps, "{recipe}: {records:?}");
    for s in &records {
        let loss = s["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{recipe}: {s}");
        let parts = s["grad_norm_by_component"]
            .as_object()
            .unwrap_or_else(|| panic!("{recipe}: no per-component norms in {s}"));
        for w in want {
            let x = parts.get(*w).and_then(|x| x.as_f64());
            assert!(x.is_some_and(|x| x > 0.0), "{recipe}: {w} in {s}");
        }
        for f in frozen {
            assert!(!parts.contains_key(*f), "{recipe}: {f} is frozen: {s}");
        }
        // the global norm is the root of the sum of the components' squares
        let total: f64 = parts.values().map(|x| x.as_f64().unwrap().powi(2)).sum();
        let g = s["grad_norm"].as_f64().unwrap();
        assert!(
            (total.sqrt() - g).abs() <= 1e-6 * g.max(1.0),
            "{recipe}: {s}"
        );
    }
    let val = lines(&run.join("validation.jsonl"));
    assert!(
        val.iter()
            .any(|v| v["val_loss"].as_f64().is_some_and(f64::is_finite)),
        "{recipe}: {val:?}"
    );
    assert!(run.join("grad_norm.svg").is_file(), "{recipe}");
    let model = run.join(format!("epoch_0_step_{steps}/model"));
    if model.join("adapter_config.json").is_file() {
        // LoRA: PEFT's files
        assert!(
            model.join("adapter_model.safetensors").is_file(),
            "{recipe}"
        );
    } else {
        // full fine-tuning: the model folder, whose config reads back as the released one cut
        // to two layers (every width kept)
        use automodel::gemma3n::Gemma3nConfig;
        let cfg = Gemma3nConfig::from_file(model.join("config.json")).unwrap();
        let want = Gemma3nConfig::released_with_layers(released, Some(2)).unwrap();
        assert_eq!(cfg.text, want.text, "{recipe}");
        assert_eq!((cfg.text.hidden_size, cfg.text.vocab_size), (2048, 262_400));
        assert_eq!((&cfg.vision, &cfg.audio), (&want.vision, &want.audio));
    }
}

/// One test, the recipes one after another: each process holds a released-width model (several
/// GB at two layers), two at once would not fit beside the other tests.
#[test]
fn released_recipes_run_reduced() {
    let lora_frozen = [
        "text_decoder",
        "vision_tower",
        "audio_tower",
        "embed_tokens",
    ];
    let lora_trains = ["lora.text_decoder", "lora.altup_laurel"];
    let full_trains = ["text_decoder", "altup_laurel"];
    let towers = ["vision_tower", "audio_tower", "embed_tokens"];
    recipe_runs(
        "recipes/gemma3n-e2b-asr-lora.yaml",
        "E2B",
        "tones",
        true,
        &lora_trains,
        &lora_frozen,
    );
    recipe_runs(
        "recipes/gemma3n-e2b-asr-sft.yaml",
        "E2B",
        "tones",
        false,
        &full_trains,
        &towers,
    );
    recipe_runs(
        "recipes/gemma3n-e4b-vqa-lora.yaml",
        "E4B",
        "shapes",
        false,
        &lora_trains,
        &lora_frozen,
    );
    recipe_runs(
        "recipes/gemma3n-e4b-vqa-sft.yaml",
        "E4B",
        "shapes",
        false,
        &full_trains,
        &towers,
    );
}
