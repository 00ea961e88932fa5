//! `cargo xtask parity` outcomes that need no computation: a run that checks nothing fails.

use std::process::Command;

fn xtask(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("xtask runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_folder_whose_every_case_is_skipped_fails() {
    let peft = concat!(env!("CARGO_MANIFEST_DIR"), "/../reference/golden-peft");
    // the 270M case without `--model` is skipped, and it is the only case asked for
    let (ok, out) = xtask(&["parity", peft, "--case", "lora_gemma3_270m"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("skipped") && out.contains("nothing was checked"),
        "{out}"
    );
}

#[test]
fn a_missing_folder_fails_naming_it() {
    let (ok, out) = xtask(&["parity", "/nonexistent/golden"]);
    assert!(!ok, "{out}");
    assert!(out.contains("/nonexistent/golden"), "{out}");
}
