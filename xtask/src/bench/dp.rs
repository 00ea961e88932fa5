//! `cargo xtask bench --only dp`: the scaling of data-parallel training on the CPU. The 270M
//! LoRA step of the default recipe (global batch 8 in micro-batches of 4, sequences of up to
//! 128 tokens) run three ways, alternating their order over the rounds:
//!
//! * one process on one thread;
//! * two workers (`automodel-cli launch`'s code) on one thread each;
//! * one process on every core: what a user without the launcher gets on this machine.
//!
//! Tokens per second come from rank 0's `training.jsonl`; every run's losses and gradient norms
//! are compared step by step (the workers must reproduce the one-process run), and the figures
//! are refused when they part. `--record` keeps the result in `docs/benchmarks-dp.json` and
//! rewrites its block in docs/benchmarks.md.

use std::ffi::OsString;

use anyhow::{Context, bail};
use automodel_core::device::DeviceSpec;
use automodel_train::{Recipe, RunOptions};
use serde::{Deserialize, Serialize};

/// The recipe overrides of every run (the step count is added).
const OVERRIDES: &[&str] = &[
    "validation_dataset=null",
    "checkpoint.enabled=false",
    "step_scheduler.global_batch_size=8",
    "step_scheduler.local_batch_size=4",
    "step_scheduler.ckpt_every_steps=null",
    "step_scheduler.val_every_steps=null",
];

/// How far the runs' losses and gradient norms may part (relative): the thread count changes
/// the order of some float32 sums, nothing else.
pub const AGREEMENT: f64 = 1e-4;

/// `cargo xtask dp-worker RUN_DIR [KEY=VALUE]...`: one worker of the benchmark (started by
/// [`bench_dp`] through the launcher): the default recipe with the overrides, on the CPU.
pub fn dp_worker(args: &[String]) -> anyhow::Result<bool> {
    let (run_dir, overrides) = args
        .split_first()
        .context("usage: cargo xtask dp-worker RUN_DIR [KEY=VALUE]...")?;
    let recipe = Recipe::default_recipe(super::root().join("recipes/default.yaml"), overrides)?;
    let options = RunOptions::for_recipe(&recipe, Some(run_dir.into()), false)?;
    automodel_train::run_on(&recipe, &options, DeviceSpec::Cpu)?;
    Ok(true)
}

/// One way of running the step: processes and threads per process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub workers: usize,
    pub threads_per_worker: usize,
}

impl Setup {
    fn label(&self) -> String {
        let t = |n: usize| {
            if n == 1 {
                "1 thread".into()
            } else {
                format!("{n} threads")
            }
        };
        if self.workers == 1 {
            format!("1 process, {}", t(self.threads_per_worker))
        } else {
            format!(
                "{} workers, {} each",
                self.workers,
                t(self.threads_per_worker)
            )
        }
    }
}

/// What one run printed: tokens/s after the warm-up and every step's (loss, grad norm).
struct Run {
    tps: f64,
    steps: Vec<(f64, f64)>,
}

fn one_run(setup: Setup, steps: usize, warmup: usize, port: u16) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut args: Vec<OsString> = vec!["dp-worker".into(), dir.path().as_os_str().to_owned()];
    args.extend(OVERRIDES.iter().map(OsString::from));
    args.push(format!("step_scheduler.max_steps={}", steps + warmup).into());
    let opts = automodel_distributed::LaunchOptions {
        nproc_per_node: setup.workers,
        master_port: port,
        threads_per_worker: Some(setup.threads_per_worker),
        ..Default::default()
    };
    automodel_distributed::launch(&opts, &std::env::current_exe()?, &args)?;
    let log = std::fs::read_to_string(dir.path().join("training.jsonl"))
        .context("the run wrote no training.jsonl")?;
    let mut tps = Vec::new();
    let mut per_step = Vec::new();
    for (i, line) in log.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let num = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("training.jsonl line {}: no `{k}`", i + 1))
        };
        per_step.push((num("loss")?, num("grad_norm")?));
        if i >= warmup {
            tps.push(num("tps")?);
        }
    }
    if tps.is_empty() {
        bail!("no step after the warm-up");
    }
    tps.sort_by(f64::total_cmp);
    Ok(Run {
        tps: tps[tps.len() / 2],
        steps: per_step,
    })
}

/// One setup's tokens/s over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpRow {
    pub setup: Setup,
    pub tps_median: f64,
    pub tps_min: f64,
    pub tps_max: f64,
}

/// One `bench --only dp` run: what `--record` keeps in `docs/benchmarks-dp.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpRecord {
    pub date: String,
    pub cpu: String,
    pub rounds: usize,
    pub steps: usize,
    pub warmup: usize,
    pub rows: Vec<DpRow>,
    /// The largest relative difference of any step's loss between any two runs.
    pub loss_rel_diff: f64,
    /// The same for the pre-clip gradient norm.
    pub grad_norm_rel_diff: f64,
}

/// The record as the Markdown block of docs/benchmarks.md.
pub fn dp_markdown(r: &DpRecord) -> String {
    let base = |w: usize, t: usize| {
        r.rows
            .iter()
            .find(|x| x.setup.workers == w && x.setup.threads_per_worker == t)
            .map(|x| x.tps_median)
    };
    let one_thread = base(1, 1);
    let all_cores = r
        .rows
        .iter()
        .filter(|x| x.setup.workers == 1)
        .max_by_key(|x| x.setup.threads_per_worker)
        .filter(|x| x.setup.threads_per_worker > 1);
    let mut s = format!(
        "On {} ({}; {} rounds of {} steps after {} warm-up, the setups alternating):\n\n\
         | setup | tokens/s (median, min–max) | against 1 process, 1 thread | against 1 process, all cores |\n|---|---|---|---|\n",
        r.cpu, r.date, r.rounds, r.steps, r.warmup
    );
    for row in &r.rows {
        let vs = |b: Option<f64>, same: bool| match b {
            Some(_) if same => "—".to_string(),
            Some(b) => format!("{:.2}×", row.tps_median / b),
            None => "–".to_string(),
        };
        let is_one = row.setup.workers == 1 && row.setup.threads_per_worker == 1;
        let is_all = all_cores.is_some_and(|a| a.setup == row.setup);
        s.push_str(&format!(
            "| {} | {:.1} ({:.1}–{:.1}) | {} | {} |\n",
            row.setup.label(),
            row.tps_median,
            row.tps_min,
            row.tps_max,
            vs(one_thread, is_one),
            vs(all_cores.map(|a| a.tps_median), is_all),
        ));
    }
    s.push_str(&format!(
        "\nEvery run's loss and gradient norm agreed at every step: largest relative difference \
         {:.1e} (loss) and {:.1e} (gradient norm); the bench refuses its figures beyond {AGREEMENT:.0e}.\n",
        r.loss_rel_diff, r.grad_norm_rel_diff
    ));
    s
}

/// The larger difference; a NaN (a non-finite loss on one side) sticks.
fn worse(so_far: f64, d: f64) -> f64 {
    if so_far.is_nan() || d.is_nan() {
        f64::NAN
    } else {
        so_far.max(d)
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

/// Run the setups over `rounds` rounds (rotating which goes first) and print tokens/s and the
/// step-by-step agreement; `record` keeps the result (docs/benchmarks-dp.json, its block).
pub fn bench_dp(rounds: usize, steps: usize, warmup: usize, record: bool) -> anyhow::Result<bool> {
    if !automodel_parity::gemma3_270m_path().is_file() {
        bail!("the 270M is missing: cargo xtask fetch-model gemma-3-270m");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut setups = vec![
        Setup {
            workers: 1,
            threads_per_worker: 1,
        },
        Setup {
            workers: 2,
            threads_per_worker: 1,
        },
    ];
    if cores > 1 {
        setups.push(Setup {
            workers: 1,
            threads_per_worker: cores,
        });
    }
    let mut tps: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut reference: Option<Vec<(f64, f64)>> = None;
    let (mut loss_diff, mut norm_diff) = (0f64, 0f64);
    for round in 0..rounds {
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            let port = automodel_distributed::free_port(2).context("no free port")?;
            let run = one_run(setups[i], steps, warmup, port)?;
            eprintln!(
                "round {}: {}: {:.1} tokens/s; (loss, grad norm) per step: {:?}",
                round + 1,
                setups[i].label(),
                run.tps,
                run.steps
            );
            match &reference {
                None => reference = Some(run.steps.clone()),
                Some(want) => {
                    if want.len() != run.steps.len() {
                        bail!(
                            "{} logged {} steps, the first run {}",
                            setups[i].label(),
                            run.steps.len(),
                            want.len()
                        );
                    }
                    for (a, b) in want.iter().zip(&run.steps) {
                        loss_diff = worse(loss_diff, rel(a.0, b.0));
                        norm_diff = worse(norm_diff, rel(a.1, b.1));
                    }
                }
            }
            tps[i].push(run.tps);
        }
    }
    if loss_diff.is_nan() || norm_diff.is_nan() || loss_diff > AGREEMENT || norm_diff > AGREEMENT {
        bail!(
            "the runs parted: loss {loss_diff:.2e}, gradient norm {norm_diff:.2e} (relative) against {AGREEMENT:e}; no figure is reported"
        );
    }
    let rows = setups
        .iter()
        .zip(&mut tps)
        .map(|(s, v)| {
            v.sort_by(f64::total_cmp);
            DpRow {
                setup: *s,
                tps_median: v[v.len() / 2],
                tps_min: v[0],
                tps_max: v[v.len() - 1],
            }
        })
        .collect();
    let rec = DpRecord {
        date: super::report::chrono_date(),
        cpu: super::device_name("cpu"),
        rounds,
        steps,
        warmup,
        rows,
        loss_rel_diff: loss_diff,
        grad_norm_rel_diff: norm_diff,
    };
    println!(
        "data-parallel scaling, 270M LoRA step (default recipe, global batch 8, micro-batches of 4)"
    );
    println!("{}", dp_markdown(&rec));
    if record {
        crate::docs::append_record(crate::docs::DP_RECORDS, rec)?;
    }
    Ok(true)
}
