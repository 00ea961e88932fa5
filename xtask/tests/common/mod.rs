//! What the xtask binary's tests share.

use std::ffi::OsStr;
use std::process::Command;

/// Runs `xtask ARGS` with `env` set: (success, stdout followed by stderr).
pub fn xtask(args: &[&str], env: &[(&str, &OsStr)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("xtask runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
