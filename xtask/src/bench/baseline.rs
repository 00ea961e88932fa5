//! The PyTorch side: the same workload run by `xtask/bench/baseline.py` in a Python child.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use super::measure::{Measure, RunOpts, parse_result};
use super::root;
use super::workload::{Workload, batch_spec, bench_lora_json, gemma3n_config, token_ids};

/// The Python packages the baseline imports for `list`: torch, transformers and peft always;
/// timm and Pillow when a Gemma 3n model is built (its vision tower is transformers'
/// `TimmWrapperModel`).
pub(super) fn baseline_packages(list: &[Workload]) -> Vec<&'static str> {
    let mut p = vec!["torch", "transformers", "peft"];
    if list.iter().any(|w| w.model.starts_with("gemma3n")) {
        p.extend(["timm", "PIL"]);
    }
    p
}

/// `$PYTHON` (else `python3`) and its versions line, when it imports every one of `packages`.
pub(super) fn python_with(packages: &[&str]) -> Option<(String, String)> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import {}; print(', '.join(f'{{m.__name__}} {{getattr(m, \"__version__\", \"?\")}}' for m in [{}]))",
        packages.join(", "),
        packages.join(", ")
    );
    let out = Command::new(&py).args(["-c", &script]).output().ok()?;
    out.status
        .success()
        .then(|| (py, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// The folder the PyTorch side loads the 270M from: our own conversion of the GGUF
/// (dequantised to float32, Hugging Face layout), made once into `target/bench/`.
fn hf_270m() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/bench/gemma-3-270m-hf");
    if !dir.join("config.json").is_file() {
        eprintln!(
            "converting the 270M GGUF for the PyTorch side into {}",
            dir.display()
        );
        automodel_models::convert::gguf_to_hf(
            &automodel_parity::gemma3_270m_path(),
            &dir,
            None,
            true,
        )?;
    }
    Ok(dir)
}

pub(super) fn run_baseline(
    py: &str,
    wl: &Workload,
    opts: RunOpts,
) -> anyhow::Result<Option<Measure>> {
    if wl.model == "kernel" {
        return run_python(
            py,
            wl,
            opts,
            serde_json::json!({ "workload": wl, "opts": opts }),
        );
    }
    let spec = batch_spec(wl)?;
    let mut job = serde_json::json!({
        "workload": wl, "opts": opts, "batch": spec,
        "lora": bench_lora_json(),
        "prompt": token_ids(wl.batch, wl.seq_len, 20_000, 2),
    });
    if wl.model == "gemma-3-270m" {
        job["model_dir"] = hf_270m()?.display().to_string().into();
    } else {
        job["config"] = gemma3n_config(&wl.model)?.raw;
    }
    run_python(py, wl, opts, job)
}

fn run_python(
    py: &str,
    wl: &Workload,
    opts: RunOpts,
    job: serde_json::Value,
) -> anyhow::Result<Option<Measure>> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let job_file = dir.join(format!("{}.job.json", wl.name));
    std::fs::write(&job_file, serde_json::to_string(&job)?)?;
    let out = Command::new(py)
        .arg(root().join("xtask/bench/baseline.py"))
        .arg(&job_file)
        .env("OMP_NUM_THREADS", opts.threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the PyTorch baseline")?;
    match parse_result(&out.stdout) {
        Some(m) => Ok(Some(m)),
        None => bail!("{}: the PyTorch baseline failed ({})", wl.name, out.status),
    }
}
