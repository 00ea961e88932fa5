//! `cargo xtask parity` outcomes that need no computation: a run that checks nothing fails.

mod common;

fn xtask(args: &[&str]) -> (bool, String) {
    common::xtask(args, &[])
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
