//! `cargo xtask bench --only dp`: the scaling of data-parallel training on the CPU. The 270M
//! LoRA step of the default recipe (global batch 8 in micro-batches of 4, sequences of up to
//! 128 tokens) run by one worker and by two, each worker on one thread, the two sides
//! alternating over the rounds; tokens per second from rank 0's `training.jsonl`.

use std::ffi::OsString;

use anyhow::{Context, bail};
use automodel_core::device::DeviceSpec;
use automodel_train::{Recipe, RunOptions};

/// The recipe overrides of every run (the step count is added).
const OVERRIDES: &[&str] = &[
    "validation_dataset=null",
    "checkpoint.enabled=false",
    "step_scheduler.global_batch_size=8",
    "step_scheduler.local_batch_size=4",
    "step_scheduler.ckpt_every_steps=null",
    "step_scheduler.val_every_steps=null",
];

/// `cargo xtask dp-worker RUN_DIR [KEY=VALUE]...`: one worker of the benchmark (started by
/// [`bench_dp`] through the launcher): the default recipe with the overrides, on the CPU.
pub fn dp_worker(args: &[String]) -> anyhow::Result<bool> {
    let (run_dir, overrides) = args
        .split_first()
        .context("usage: cargo xtask dp-worker RUN_DIR [KEY=VALUE]...")?;
    let recipe =
        Recipe::default_recipe(crate::bench::root().join("recipes/default.yaml"), overrides)?;
    let options = RunOptions::for_recipe(&recipe, Some(run_dir.into()), false)?;
    automodel_train::run_on(&recipe, &options, DeviceSpec::Cpu)?;
    Ok(true)
}

/// Tokens per second of one run of `workers` workers: the median over the steps after the
/// warm-up.
fn one_run(workers: usize, steps: usize, warmup: usize, port: u16) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut args: Vec<OsString> = vec!["dp-worker".into(), dir.path().as_os_str().to_owned()];
    args.extend(OVERRIDES.iter().map(OsString::from));
    args.push(format!("step_scheduler.max_steps={}", steps + warmup).into());
    let opts = automodel_distributed::LaunchOptions {
        nproc_per_node: workers,
        master_port: port,
        threads_per_worker: Some(1),
        ..Default::default()
    };
    automodel_distributed::launch(&opts, &std::env::current_exe()?, &args)?;
    let log = std::fs::read_to_string(dir.path().join("training.jsonl"))
        .context("the run wrote no training.jsonl")?;
    let mut tps: Vec<f64> = log
        .lines()
        .skip(warmup)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["tps"].as_f64().unwrap_or(f64::NAN))
        })
        .collect::<anyhow::Result<_>>()?;
    if tps.is_empty() {
        bail!("no step after the warm-up");
    }
    tps.sort_by(f64::total_cmp);
    Ok(tps[tps.len() / 2])
}

/// Run 1 and 2 workers over `rounds` rounds (alternating which goes first) and print tokens/s
/// (median, min–max) and the scaling efficiency `tps(2) / (2 · tps(1))`.
pub fn bench_dp(rounds: usize, steps: usize, warmup: usize) -> anyhow::Result<bool> {
    if !automodel_parity::gemma3_270m_path().is_file() {
        bail!("the 270M is missing: cargo xtask fetch-model gemma-3-270m");
    }
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        for w in order {
            let tps = one_run(
                w,
                steps,
                warmup,
                automodel_distributed::free_port(2).context("no free port")?,
            )?;
            eprintln!("round {}: {w} worker(s): {tps:.1} tokens/s", round + 1);
            runs[w - 1].push(tps);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (one, two) = (med(&mut runs[0]), med(&mut runs[1]));
    let cpu = crate::bench::device_name("cpu");
    println!(
        "data-parallel scaling, 270M LoRA step (default recipe, global batch 8, micro-batches of 4), one thread per worker, {rounds} rounds of {steps} steps after {warmup} warm-up, on {cpu}:"
    );
    println!("| workers | tokens/s (median, min–max) | scaling efficiency |");
    println!("|---|---|---|");
    println!("| 1 | {:.1} ({:.1}–{:.1}) | — |", one.0, one.1, one.2);
    println!(
        "| 2 | {:.1} ({:.1}–{:.1}) | {:.2} |",
        two.0,
        two.1,
        two.2,
        two.0 / (2.0 * one.0)
    );
    Ok(true)
}
