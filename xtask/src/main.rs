//! `cargo xtask <task>`: project tasks that are not part of the library API.
//!
//! * `parity <golden-dir> [--case NAME]...` — run every supported case of a folder written by
//!   `shared/reference/make_golden.py` (or one case folder), print each compared tensor with its
//!   error and tolerance, end with `N passed, M failed`; exit status 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use automodel_core::CpuAutodiff;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("parity") => parity(&args[1..]),
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

const USAGE: &str = "usage: cargo xtask parity <golden-dir | case-dir> [--case NAME]...\n       cargo xtask parity <golden-gemma3-270m-dir> --model <gguf file>";

fn parity(args: &[String]) -> anyhow::Result<bool> {
    let mut dir: Option<PathBuf> = None;
    let mut only = Vec::new();
    let mut model: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--case" => only.push(it.next().context("--case needs a case name")?.clone()),
            "--model" => {
                model = Some(PathBuf::from(
                    it.next().context("--model needs a GGUF file")?,
                ))
            }
            s if s.starts_with("--") => bail!("unknown option `{s}`\n{USAGE}"),
            s => {
                if dir.replace(PathBuf::from(s)).is_some() {
                    bail!("only one folder may be given\n{USAGE}");
                }
            }
        }
    }
    let dir = dir.context(USAGE)?;
    let device = Default::default();
    let only = (!only.is_empty()).then_some(only.as_slice());
    if let Some(gguf) = model {
        let checks = automodel_parity::gemma3::run::<CpuAutodiff>(&dir, &gguf, &device)
            .with_context(|| {
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
    let reports = automodel_parity::run::<CpuAutodiff>(&dir, &device, only)
        .with_context(|| format!("parity run over {}", dir.display()))?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for r in &reports {
        match &r.skipped {
            Some(why) => println!("== {} ({}): skipped — {why}", r.case, r.dir.display()),
            None => {
                println!("== {} ({})", r.case, r.dir.display());
                for c in &r.checks {
                    println!("{c}");
                    if c.passed { passed += 1 } else { failed += 1 }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
