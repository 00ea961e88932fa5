//! `cargo xtask quickstart [--record]`: README's Quick start as a new user meets it, timed. A
//! fresh clone of this checkout's HEAD in a temporary folder (its own `target/`; Cargo's crate
//! downloads are shared), `cargo build --release -p automodel-cli` there, then
//! `automodel-cli finetune` (the default recipe) with an empty model cache, so the 270M is
//! fetched as the first run fetches it. Prints the build and run times, the run's peak resident
//! memory and the exact match before and after; `--record` keeps them in
//! `docs/quickstart.json` and rewrites README's block (`cargo xtask docs`).

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One timed quick start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickstartRecord {
    pub date: String,
    pub cpu: String,
    /// The commit that was cloned.
    pub commit: String,
    pub build_s: f64,
    pub run_s: f64,
    /// The run's peak resident memory (the child's `ru_maxrss`), MiB.
    pub run_peak_mib: f64,
    pub metric: String,
    pub before: f64,
    pub after: f64,
}

/// The record as README's block.
pub fn quickstart_markdown(r: &QuickstartRecord) -> String {
    format!(
        "On {} ({}, commit `{}`): `cargo build --release -p automodel-cli` in a fresh clone took \
         {}, then `automodel-cli finetune` {} (the 270M fetched into an empty cache, 40 LoRA steps, \
         validation before and after; peak resident memory {:.0} MiB), and it printed `{} \
         {:.3} before → {:.3} after`.\n",
        r.cpu,
        r.date,
        r.commit,
        min_s(r.build_s),
        min_s(r.run_s),
        r.run_peak_mib,
        r.metric,
        r.before,
        r.after
    )
}

fn min_s(s: f64) -> String {
    let s = s.round() as u64;
    format!("{} min {} s", s / 60, s % 60)
}

/// `metric  0.000 before → 0.906 after` from `finetune`'s summary.
pub fn parse_metric(stdout: &str) -> Option<(String, f64, f64)> {
    stdout.lines().find_map(|l| {
        let (name, rest) = l.split_once(' ')?;
        let rest = rest.trim_start();
        let (before, rest) = rest.split_once(" before → ")?;
        let after = rest.strip_suffix(" after")?;
        Some((name.to_string(), before.parse().ok()?, after.parse().ok()?))
    })
}

/// Runs `cmd` with its stdout captured: (seconds, stdout, its own peak resident memory in MiB,
/// from `wait4`'s resource usage of that one child).
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<(f64, String, f64)> {
    use std::io::Read;
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("the child's stdout")?
        .read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with structs it fills
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("waiting for {what}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (wait status {status})");
    }
    Ok((
        t.elapsed().as_secs_f64(),
        stdout,
        usage.ru_maxrss as f64 / 1024.0,
    ))
}

pub fn quickstart(args: &[String]) -> anyhow::Result<bool> {
    let record = match args {
        [] => false,
        [a] if a == "--record" => true,
        _ => bail!("usage: cargo xtask quickstart [--record]"),
    };
    let root = crate::bench::root();
    let work = tempfile::tempdir()?;
    let clone = work.path().join("automodel-rs");
    run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(&root)
            .arg(&clone),
        "git clone",
    )?;
    let (_, commit, _) = run(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&clone),
        "git rev-parse",
    )?;
    eprintln!(
        "== cargo build --release -p automodel-cli (fresh clone of {})",
        commit.trim()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (build_s, _, _) = run(
        Command::new(&cargo)
            .args(["build", "--release", "-p", "automodel-cli"])
            .current_dir(&clone)
            // the clone's own target folder, whatever the caller's environment says
            .env_remove("CARGO_TARGET_DIR"),
        "the release build",
    )?;
    eprintln!("== automodel-cli finetune (an empty model cache)");
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache)?;
    let cli = clone.join("target/release/automodel-cli");
    let (run_s, stdout, run_peak_mib) = run(
        Command::new(&cli)
            .arg("finetune")
            .current_dir(&clone)
            .env("AUTOMODEL_CACHE", &cache),
        "automodel-cli finetune",
    )?;
    print!("{stdout}");
    let (metric, before, after) =
        parse_metric(&stdout).context("finetune printed no `METRIC x before → y after` line")?;
    let rec = QuickstartRecord {
        date: crate::bench::report::chrono_date(),
        cpu: crate::bench::device_name("cpu"),
        commit: commit.trim().to_string(),
        build_s,
        run_s,
        run_peak_mib,
        metric,
        before,
        after,
    };
    print!("{}", quickstart_markdown(&rec));
    if record {
        crate::docs::append_record(crate::docs::QUICKSTART_RECORDS, rec)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::{QuickstartRecord, parse_metric, quickstart_markdown};

    #[test]
    fn the_summary_line_is_read_and_the_record_written_out() {
        let out = "run directory   runs/x\nloss            16.9 → 0.01 over 40 steps\nexact_match     0.000 before → 0.906 after\n";
        assert_eq!(
            parse_metric(out),
            Some(("exact_match".to_string(), 0.0, 0.906))
        );
        assert_eq!(parse_metric("loss 1 → 2\n"), None);
        let r = QuickstartRecord {
            date: "2026-12-07".into(),
            cpu: "CPU (2 cores)".into(),
            commit: "abc1234".into(),
            build_s: 460.4,
            run_s: 123.0,
            run_peak_mib: 1900.0,
            metric: "exact_match".into(),
            before: 0.0,
            after: 0.906,
        };
        let t = quickstart_markdown(&r);
        assert!(
            t.contains("took 7 min 40 s, then `automodel-cli finetune` 2 min 3 s"),
            "{t}"
        );
        assert!(
            t.contains("`exact_match 0.000 before → 0.906 after`"),
            "{t}"
        );
    }
}
