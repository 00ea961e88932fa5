//! What happens when a fine-tune is interrupted: Ctrl-C and SIGTERM (one process, and a
//! launcher of two workers) finish the step, save a checkpoint, exit with status 130 saying how
//! to resume, and `--resume` repeats the uninterrupted run; `kill -9` at random moments; a disk
//! that fills up during a checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default recipe, short: 6 steps of 4 rows in micro-batches of 2, no validation, a
/// checkpoint only at the end (or when stopped).
fn finetune(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "finetune".into(),
        "--config".into(),
        "recipes/default.yaml".into(),
    ];
    for s in [
        "step_scheduler.max_steps=6",
        "step_scheduler.ckpt_every_steps=null",
        "step_scheduler.global_batch_size=4",
        "step_scheduler.local_batch_size=2",
        "peft.dropout=0.1",
        "validation_dataset=null",
    ] {
        a.extend(["--set".into(), s.into()]);
    }
    a.extend(["--output-dir".into(), out.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn steps(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("training.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait until the run has logged `n` steps, then send `sig` to `child`; return its stderr and
/// exit code.
fn interrupt_after(mut child: Child, run: &Path, n: usize, sig: i32) -> (String, Option<i32>) {
    let t = Instant::now();
    while steps(run).len() < n {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(t.elapsed() < Duration::from_secs(600), "no step {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our child
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(120),
        "took {:?} to stop",
        sent.elapsed()
    );
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

fn same_steps(got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["step"], w["step"]);
        for f in ["loss", "grad_norm", "lr"] {
            let (a, b) = (g[f].as_f64().unwrap(), w[f].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "step {}: {f} {a} vs {b}",
                w["step"]
            );
        }
    }
}

#[test]
fn an_interrupted_run_saves_its_step_and_resumes_exactly() {
    assert!(
        automodel_parity::gemma3_270m_path().is_file(),
        "fetch the 270M first"
    );
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    run_ok(finetune(&full, &[]));
    let want = steps(&full);
    assert_eq!(want.len(), 6);

    // one process, Ctrl-C after step 2 has been logged
    let run = dir.path().join("one");
    let stopped = interrupt_after(spawn(&finetune(&run, &[])), &run, 2, libc::SIGINT);
    resumes_exactly(
        &run,
        stopped,
        &["interrupted: stopped after step", "--resume --output-dir"],
        &want,
    );

    // two workers: SIGTERM to the launcher reaches each worker once; all stop after the same
    // step, rank 0 saves it; one process resumes it
    let run = dir.path().join("two");
    let port = automodel::distributed::free_port(3).expect("a free port");
    let mut args: Vec<String> = ["launch", "--nproc-per-node", "2", "--master-port"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([port.to_string(), "--".into()]);
    args.extend(finetune(&run, &[]));
    let stopped = interrupt_after(spawn(&args), &run, 2, libc::SIGTERM);
    resumes_exactly(&run, stopped, &["launch: interrupted"], &want);
}

/// Run the CLI to its end; it must succeed.
fn run_ok(args: Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_automodel-cli"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run stopped by a signal exited with 130 and `messages`, saved the step it stopped after,
/// and `--resume` then gives the uninterrupted run's steps.
fn resumes_exactly(
    run: &Path,
    (err, code): (String, Option<i32>),
    messages: &[&str],
    want: &[serde_json::Value],
) {
    assert_eq!(code, Some(130), "{err}");
    for m in messages {
        assert!(err.contains(m), "`{m}` in: {err}");
    }
    let done = steps(run).len();
    assert!((2..6).contains(&done), "{done} steps");
    let ckpt = run.join(format!("epoch_0_step_{done}/train_state.json"));
    assert!(ckpt.is_file(), "{}", ckpt.display());
    run_ok(finetune(run, &["--resume"]));
    same_steps(&steps(run), want);
}

/// `kill -9` at seeded random moments (a checkpoint after every step, so some land during a
/// write): relaunching the same command with `--resume` until it succeeds, as a pre-emptible
/// job does, always works and repeats the uninterrupted run.
#[test]
fn a_run_killed_at_random_moments_resumes_to_the_uninterrupted_run() {
    assert!(
        automodel_parity::gemma3_270m_path().is_file(),
        "fetch the 270M first"
    );
    let dir = tempfile::tempdir().unwrap();
    let every = ["--set", "step_scheduler.ckpt_every_steps=1"];
    let full = dir.path().join("full");
    let t = Instant::now();
    run_ok(finetune(&full, &every));
    let span = t.elapsed().as_secs_f64();
    let want = steps(&full);
    // a seeded linear congruential generator: the same moments on every run of the test
    let mut state: u64 = 0x5eed;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    // kills that landed while the run was between checkpoints (one was written, the run had
    // not finished): what the test is about, so at least one must happen
    let mut mid_run = 0;
    for round in 0..3 {
        let run = dir.path().join(format!("killed-{round}"));
        let mut kills = 0;
        loop {
            let mut args = finetune(&run, &every);
            args.push("--resume".into());
            let mut child = spawn(&args);
            // the first attempt runs the whole job: its moment falls well inside it, so the
            // kill happens even when this run is faster than the measured one
            let frac = if kills == 0 {
                0.15 + 0.6 * uniform()
            } else {
                0.2 + 0.8 * uniform()
            };
            let at = Duration::from_secs_f64(span * frac);
            let t = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break Some(s);
                }
                if t.elapsed() >= at && kills < 2 {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                    if run.join("LATEST").exists() {
                        mid_run += 1;
                    }
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if let Some(s) = status {
                let out = child.wait_with_output().unwrap();
                assert!(s.success(), "{}", String::from_utf8_lossy(&out.stderr));
                break;
            }
        }
        assert!(
            kills >= 1,
            "round {round}: the run ended before its kill moment: nothing was killed"
        );
        let got = steps(&run);
        same_steps(&got, &want);
        let name = |r: &Path| r.join("epoch_0_step_6/model/adapter_model.safetensors");
        assert_eq!(
            std::fs::read(name(&run)).unwrap(),
            std::fs::read(name(&full)).unwrap(),
            "round {round}: the final adapter"
        );
        eprintln!("round {round}: killed {kills} time(s), resumed to the same run");
    }
    assert!(
        mid_run >= 1,
        "no kill landed after the first checkpoint: resuming from one was never tested"
    );
}

/// The disk fills up during a later checkpoint (modelled by a file-size limit, RLIMIT_FSIZE,
/// on the resumed process): the run stops with an error naming the file it could not write;
/// the earlier checkpoint and `LATEST` stay intact, and resuming once there is room again
/// repeats the uninterrupted run.
#[test]
fn a_full_disk_during_a_checkpoint_stops_the_run_and_keeps_the_earlier_ones() {
    use std::os::unix::process::CommandExt;
    assert!(
        automodel_parity::gemma3_270m_path().is_file(),
        "fetch the 270M first"
    );
    let dir = tempfile::tempdir().unwrap();
    let every2 = ["--set", "step_scheduler.ckpt_every_steps=2"];
    let full = dir.path().join("full");
    let run_limited = |args: Vec<String>, limit: Option<u64>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_automodel-cli"));
        c.args(args).current_dir(root());
        if let Some(bytes) = limit {
            // SAFETY: only async-signal-safe calls between fork and exec
            unsafe {
                c.pre_exec(move || {
                    // a write past the limit fails with EFBIG instead of killing the process
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        c.output().unwrap()
    };
    run_ok(finetune(&full, &every2));
    let want = steps(&full);

    // steps 1–2 and their checkpoint with room to spare, then stop (as a run killed there)
    let run = dir.path().join("run");
    let mut first = finetune(&run, &every2);
    first.extend(["--set".into(), "step_scheduler.max_steps=2".into()]);
    run_ok(first);
    let before = std::fs::read(run.join("epoch_0_step_2/model/adapter_model.safetensors")).unwrap();

    // resumed with no room for a checkpoint's files: steps 3–4 run, their checkpoint fails
    let mut resumed = finetune(&run, &every2);
    resumed.push("--resume".into());
    let out = run_limited(resumed.clone(), Some(1 << 20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("epoch_0_step_4") && err.contains("File too large"),
        "the error names the file: {err}"
    );
    assert!(
        !run.join("epoch_0_step_4").exists(),
        "no half-written checkpoint under its name"
    );
    assert_eq!(
        std::fs::read_link(run.join("LATEST")).unwrap(),
        PathBuf::from("epoch_0_step_2")
    );
    assert_eq!(
        std::fs::read(run.join("epoch_0_step_2/model/adapter_model.safetensors")).unwrap(),
        before,
        "the earlier checkpoint is untouched"
    );

    // with room again, the same command continues from step 2 and ends as the full run
    run_ok(resumed);
    same_steps(&steps(&run), &want);
}
