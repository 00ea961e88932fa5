//! `cargo xtask bench`: training-step and generation benchmarks, side by side with PyTorch.
//!
//! Each workload runs in a child process of its own (`xtask bench-one SPEC`), so that its peak
//! memory is its own; the PyTorch baseline (`xtask/bench/baseline.py`) runs the same spec in a
//! Python child. A training step is the trainer's own [`automodel_train::train_step`]: forward
//! with the chunked loss, backward, global-norm clipping, AdamW. Times are the median (with
//! min and max) of `--steps` steps after `--warmup` steps.
//!
//! | file | what |
//! |---|---|
//! | `workload` | the workloads (models, modes, shapes), their batches and analytic FLOPs |
//! | `measure` | our side: one workload run in a child process, timed |
//! | `baseline` | the PyTorch side: the same workload in a Python child |
//! | `report` | the results: the table, the console line, `--record` |

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use automodel_core::device::DeviceSpec;

mod baseline;
pub(crate) mod dp;
mod measure;
pub(crate) mod report;
mod workload;

use baseline::{baseline_packages, python_with, run_baseline};
pub use measure::bench_one;
use measure::{Measure, RunOpts, parse_result, stats};
pub use report::device_name;
use report::{Row, chrono_date, markdown_table, record_rows, row_line};
use workload::{Workload, flops_per_token, workloads};

/// The workspace root: `$AUTOMODEL_ROOT`, else the current folder when it is a checkout (a
/// carried binary on another machine), else where this binary was built.
pub fn root() -> PathBuf {
    if let Ok(r) = std::env::var("AUTOMODEL_ROOT") {
        return PathBuf::from(r);
    }
    if let Ok(cwd) = std::env::current_dir()
        && cwd.join("xtask/bench/baseline.py").is_file()
    {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// `cargo xtask bench [--device cpu|cuda|wgpu[:N|:cpu]] [--quick] [--baseline] [--rounds R] [--steps N]
/// [--warmup N] [--threads N] [--only SUBSTRING] [--json FILE] [--record]`.
pub fn bench(args: &[String]) -> anyhow::Result<bool> {
    let mut device = "cpu".to_string();
    let (mut quick, mut baseline, mut record) = (false, false, false);
    let mut opts = RunOpts {
        steps: 3,
        warmup: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut only: Vec<String> = Vec::new();
    let mut json_out: Option<PathBuf> = None;
    let mut rounds = 3usize;
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> anyhow::Result<usize> {
        v.with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().context("--device needs cpu or cuda")?.clone(),
            "--quick" => quick = true,
            "--baseline" => baseline = true,
            "--record" => record = true,
            "--steps" => opts.steps = num(it.next(), "--steps")?.max(1),
            "--warmup" => opts.warmup = num(it.next(), "--warmup")?,
            "--threads" => opts.threads = num(it.next(), "--threads")?.max(1),
            "--rounds" => rounds = num(it.next(), "--rounds")?.max(1),
            "--only" => only.push(it.next().context("--only needs a name")?.clone()),
            "--json" => json_out = Some(it.next().context("--json needs a file")?.into()),
            other => bail!("unknown option `{other}`\n{}", crate::USAGE),
        }
    }
    if cfg!(debug_assertions) && !quick {
        // our crates at opt-level 1 are no measure of anything: run the release build
        eprintln!("(re-running in a release build: cargo run --release -p xtask -- bench ...)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut features = Vec::new();
        if cfg!(feature = "cuda") {
            features = vec!["--features", "cuda"];
        } else if cfg!(feature = "wgpu") {
            features = vec!["--features", "wgpu"];
        }
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["run", "--quiet", "--release", "-p", "xtask"])
            .args(features)
            .args(["--", "bench"])
            .args(args)
            .status()
            .context("running cargo")?;
        return Ok(status.success());
    }
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build (smoke run): the times are not representative");
    }
    if device != "cpu" && device != "cuda" && !device.starts_with("wgpu") {
        bail!("--device {device}: expected cpu, cuda or wgpu[:N|:cpu]");
    }
    if device == "cuda" && !cfg!(feature = "cuda") {
        bail!("--device cuda needs a build with `--features cuda`");
    }
    if device.starts_with("wgpu") {
        device
            .parse::<DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    }
    if only.iter().any(|o| o == "dp") {
        if device != "cpu" {
            bail!("--only dp measures workers on the CPU");
        }
        return dp::bench_dp(rounds, opts.steps, opts.warmup, record);
    }
    let named = |w: &Workload| only.iter().any(|o| w.name.contains(o.as_str()));
    // the released sizes on the CPU take minutes per step: only when `--only` names them
    let released = if device == "cpu" && !quick {
        workload::released_cpu()
    } else {
        Vec::new()
    };
    let list: Vec<Workload> = workloads(&device, quick)
        .into_iter()
        .filter(|w| only.is_empty() || named(w))
        .chain(released.into_iter().filter(|w| named(w)))
        .collect();
    if list.is_empty() {
        bail!(
            "no workload matches {only:?}; workloads: {}",
            workloads(&device, quick)
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let python = if baseline {
        let packages = baseline_packages(&list);
        match python_with(&packages) {
            Some(p) => {
                eprintln!("baseline: {}", p.1);
                Some(p)
            }
            None => {
                let pip: Vec<&str> = packages
                    .iter()
                    .map(|p| if *p == "PIL" { "pillow" } else { p })
                    .collect();
                bail!(
                    "--baseline: {} does not import {} (set PYTHON=..., or `pip install {}`)",
                    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()),
                    packages.join(", "),
                    pip.join(" ")
                )
            }
        }
    } else {
        None
    };
    let exe = std::env::current_exe()?;
    let date = chrono_date();
    let device_name = device_name(&device);
    let mut rows = Vec::new();
    for wl in &list {
        eprintln!(
            "== {} ({} steps after {} warm-up, {} threads)",
            wl.name, opts.steps, opts.warmup, opts.threads
        );
        let spec = serde_json::to_string(wl)?;
        let o = serde_json::to_string(&opts)?;
        // what to give a profiler to look at our side alone
        eprintln!(
            "   our side: RAYON_NUM_THREADS={} {} bench-one '{spec}' '{o}'",
            opts.threads,
            exe.display()
        );
        let run_ours = || -> anyhow::Result<Measure> {
            let out = Command::new(&exe)
                .args(["bench-one", &spec, &o])
                .env("RAYON_NUM_THREADS", opts.threads.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("running a benchmark child")?;
            parse_result(&out.stdout)
                .with_context(|| format!("{}: the benchmark failed ({})", wl.name, out.status))
        };
        // Without a baseline one round says all; with one, the sides alternate which runs
        // first over `rounds` rounds, so that a machine slowing down or speeding up during
        // the run shifts both, and each round's ratio is taken within the round.
        let n_rounds = if python.is_some() { rounds } else { 1 };
        let (mut ours_all, mut torch_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..n_rounds {
            if n_rounds > 1 {
                eprintln!("-- round {}/{n_rounds}", round + 1);
            }
            let (o, p) = match &python {
                Some((py, _)) if round % 2 == 1 => {
                    let p = run_baseline(py, wl, opts)?;
                    (run_ours()?, p)
                }
                Some((py, _)) => {
                    let o = run_ours()?;
                    (o, run_baseline(py, wl, opts)?)
                }
                None => (run_ours()?, None),
            };
            if let Some(p) = &p {
                ratios.push(o.tokens_per_s / p.tokens_per_s);
                torch_all.push(p.clone());
            }
            ours_all.push(o);
        }
        let ours = median_measure(ours_all);
        let pytorch = (!torch_all.is_empty()).then(|| median_measure(torch_all));
        let speedup = (!ratios.is_empty()).then(|| stats(&ratios).0);
        let row = Row {
            workload: wl.clone(),
            date: date.clone(),
            device_name: device_name.clone(),
            flops_per_token: flops_per_token(wl).ok(),
            ours,
            pytorch,
            speedup,
            ratios,
        };
        eprintln!("{}", row_line(&row));
        // each workload is kept as it finishes: a later failure loses nothing measured
        if record {
            record_rows(std::slice::from_ref(&row))?;
        }
        rows.push(row);
    }
    println!("{}", markdown_table(&rows));
    if let Some(p) = &json_out {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(true)
}

/// The round whose median step time is the median of the rounds'.
fn median_measure(mut all: Vec<Measure>) -> Measure {
    all.sort_by(|a, b| a.median_s.total_cmp(&b.median_s));
    all.swap_remove(all.len() / 2)
}

#[cfg(test)]
mod tests;
