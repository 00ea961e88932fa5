//! The fuzzer's own checks: one input running past the per-input limit is a crash.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn one_input_past_the_per_input_limit_is_reported_as_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // each input of this target takes 5 s; the limit is 1 s and the run would last 60 s
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz-child", "self-test-slow", "1", "60"])
        .arg(dir.path())
        .arg("1")
        .output()
        .expect("xtask runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("took over 1 s"), "{err}");
    // ended by the watchdog, not by the end of the run or of the input
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "{:?}",
        t.elapsed()
    );
    // the input is kept for the parent to copy
    assert!(dir.path().join("current").is_file());
}

#[test]
fn inputs_under_the_limit_run_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz-child", "self-test-slow", "1", "2"])
        .arg(dir.path())
        .arg("10")
        .output()
        .expect("xtask runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "runs 1");
}
