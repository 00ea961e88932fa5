//! `automodel-cli launch`: data-parallel fine-tuning of the real Gemma 3 270M on the CPU.
//! Two workers give what one process accumulating the same micro-batches gives; a run of two
//! workers resumes in one; a killed worker ends the job with its rank named.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn automodel(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_automodel-cli"));
    c.args(args).current_dir(root());
    c
}

/// `finetune` of the default recipe, short: 4 steps of 4 rows in micro-batches of 2, LoRA
/// dropout on (each micro-batch's random numbers must follow it to its worker), no validation.
fn finetune(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["finetune", "--config", "recipes/default.yaml"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in [
        "step_scheduler.max_steps=4",
        "step_scheduler.ckpt_every_steps=2",
        "step_scheduler.global_batch_size=4",
        "step_scheduler.local_batch_size=2",
        "peft.dropout=0.1",
        "validation_dataset=null",
        "checkpoint.max_recent_checkpoints=null",
    ] {
        a.extend(["--set".into(), s.into()]);
    }
    a.extend(["--output-dir".into(), out.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn launch(n: usize, port: u16, rest: Vec<String>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "launch".into(),
        "--nproc-per-node".into(),
        n.to_string(),
        "--master-port".into(),
        port.to_string(),
        "--".into(),
    ];
    a.extend(rest);
    a
}

fn run_ok(args: &[String]) -> String {
    let out = automodel(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}\n{err}");
    err
}

fn steps(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("training.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every step's loss and gradient norm agree within 1e-5 (relative above 1).
fn same_steps(a: &[serde_json::Value], b: &[serde_json::Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["num_label_tokens"], y["num_label_tokens"]);
        for f in ["loss", "grad_norm", "lr"] {
            let (p, q) = (x[f].as_f64().unwrap(), y[f].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                "step {}: {f} {p} vs {q}",
                x["step"]
            );
        }
    }
}

fn adapter(run: &Path, step: usize) -> automodel::core::weights::SafeTensorsFiles {
    automodel::core::weights::SafeTensorsFiles::open(run.join(format!(
        "epoch_0_step_{step}/model/adapter_model.safetensors"
    )))
    .unwrap()
}

#[test]
fn two_workers_equal_one_process_accumulating_and_resume_in_one() {
    assert!(
        automodel_parity::gemma3_270m_path().is_file(),
        "fetch the 270M first"
    );
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_ok(&finetune(&one, &[]));
    let err = run_ok(&launch(
        2,
        automodel::distributed::free_port(3).expect("a free port"),
        finetune(&two, &[]),
    ));
    assert!(err.contains("launch: rank 1 of 2 started"), "{err}");
    let (a, b) = (steps(&one), steps(&two));
    assert_eq!(b.len(), 4, "rank 0 alone writes the log");
    same_steps(&b, &a);
    // the same adapter at the end
    let (x, y) = (adapter(&one, 4), adapter(&two, 4));
    let names: Vec<String> = x.names().map(String::from).collect();
    assert!(!names.is_empty());
    for n in &names {
        let (p, q) = (x.to_f32_vec(n).unwrap(), y.to_f32_vec(n).unwrap());
        let d = p
            .iter()
            .zip(&q)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f32::max);
        assert!(d <= 1e-5, "{n}: {d}");
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(two.join("epoch_0_step_4/train_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2);

    // the 2-worker run's step-2 checkpoint resumed by one process continues as one would
    let three = dir.path().join("three");
    automodel::core::weights::copy_recursively(
        &two.join("epoch_0_step_2"),
        &three.join("epoch_0_step_2"),
    )
    .unwrap();
    std::os::unix::fs::symlink("epoch_0_step_2", three.join("LATEST")).unwrap();
    run_ok(&finetune(&three, &["--resume"]));
    same_steps(&steps(&three), &a[2..]);

    // but not with steps of another size
    let out = automodel(&finetune(
        &three,
        &["--resume", "--set", "step_scheduler.global_batch_size=8"],
    ))
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("trained with step_scheduler.global_batch_size 4"),
        "{err}"
    );

    // a recipe asking for two workers, run alone, says how to start them
    let out = automodel(&finetune(
        &dir.path().join("four"),
        &["--set", "distributed.dp_size=2"],
    ))
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("distributed.dp_size: 2") && err.contains("launch --nproc-per-node 2"),
        "{err}"
    );
}

#[test]
fn a_killed_worker_ends_the_job_with_its_rank_named() {
    assert!(
        automodel_parity::gemma3_270m_path().is_file(),
        "fetch the 270M first"
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut rest = finetune(&run, &[]);
    rest.extend(["--set".into(), "step_scheduler.max_steps=1000".into()]);
    let mut child = automodel(&launch(
        2,
        automodel::distributed::free_port(3).expect("a free port"),
        rest,
    ))
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let pid_of = |rank: usize| -> Option<i32> {
        let l = log.lock().unwrap();
        let key = format!("launch: rank {rank} of 2 started (pid ");
        let at = l.find(&key)? + key.len();
        l[at..].split(')').next()?.parse().ok()
    };
    // wait for the first step in the log: both workers are training
    let t = Instant::now();
    while !run.join("training.jsonl").is_file()
        || std::fs::read_to_string(run.join("training.jsonl"))
            .unwrap()
            .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no step: {}",
            log.lock().unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (p0, p1) = (pid_of(0).unwrap(), pid_of(1).unwrap());
    let killed = Instant::now();
    // SAFETY: kill(2) on the worker's pid
    assert_eq!(unsafe { libc::kill(p1, libc::SIGKILL) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the job still runs 60 s after a worker was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(!status.success());
    assert!(
        log.contains(&format!(
            "rank 1 (pid {p1}) was killed by signal 9 (SIGKILL)"
        )),
        "{log}"
    );
    // rank 0 is gone too
    // SAFETY: kill(2) with signal 0 only asks whether the process exists
    assert_ne!(unsafe { libc::kill(p0, 0) }, 0, "rank 0 still runs");
}
