//! `cargo xtask gpu-check`: build here, into `target/gpu-check/`, everything a run on the GPU
//! machine needs (it has no Rust toolchain, no crates and no network), small enough for the
//! device tool to carry (64 MiB): the release `xtask` binary with the CUDA backend, stripped,
//! and the pure-Python `peft`/`accelerate` wheels for the PyTorch baseline, unpacked. The
//! script that runs there is `xtask/gpu-check.sh` (tracked, so it travels with the checkout): it
//! finds NVRTC, runs every golden parity case on CUDA (float32 and bfloat16), the LoRA cases and
//! a float16 forward, then the CUDA benchmarks beside PyTorch, into one report.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::bench::root;

/// The device tool's limit on carried (ignored) files.
const CARRY_LIMIT: u64 = 64 << 20;

pub fn gpu_check(args: &[String]) -> anyhow::Result<bool> {
    let mut build = true;
    for a in args {
        match a.as_str() {
            "--no-build" => build = false,
            other => bail!("unknown option `{other}`\n{}", crate::USAGE),
        }
    }
    let root = root();
    let out = root.join("target/gpu-check");
    std::fs::create_dir_all(&out)?;
    // a target folder of its own: the CUDA build does not evict the CPU one
    let target = root.join("target/cuda");
    let bin = target.join("release/xtask");
    if build {
        eprintln!(
            "building xtask (release, --features cuda) into {}",
            target.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "xtask",
                "--features",
                "cuda",
            ])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("the CUDA build failed");
        }
    }
    if !bin.is_file() {
        bail!("{} is missing: run without --no-build", bin.display());
    }
    let dest = out.join("xtask");
    std::fs::copy(&bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
    match Command::new("strip").arg(&dest).status() {
        Ok(s) if s.success() => {}
        _ => eprintln!("warning: `strip` failed; the binary keeps its symbols"),
    }
    wheels(&out.join("py"))?;
    let size = dir_size(&out)?;
    eprintln!(
        "{}: {:.1} MiB (the device tool carries at most {} MiB)",
        out.display(),
        size as f64 / (1 << 20) as f64,
        CARRY_LIMIT >> 20
    );
    if size > CARRY_LIMIT {
        bail!("{} is too large to carry", out.display());
    }
    println!(
        "on the GPU machine (device tool): command `bash xtask/gpu-check.sh`, carry [\"target/gpu-check\"]; the report is $OUT/report.md"
    );
    Ok(true)
}

/// `peft`, `accelerate` and `timm` (pure Python; timm builds Gemma 3n's vision tower in
/// transformers) unpacked into `dir`, for a GPU image that has torch, torchvision, Pillow and
/// transformers but not these; the check needs them, so failing to fetch them is an error.
fn wheels(dir: &Path) -> anyhow::Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let tmp = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&tmp);
    let ok = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&tmp)
        .args(["peft", "accelerate", "timm"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "pip could not download peft, accelerate and timm ({python} -m pip download): the GPU check's PyTorch baseline needs them"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let wheels: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for w in wheels
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
    {
        let ok = Command::new(&python)
            .args(["-m", "zipfile", "-e"])
            .arg(w)
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("cannot unpack {}", w.display());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}
