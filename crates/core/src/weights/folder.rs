//! Files and folders written whole or not at all, and the side files of a model folder.

use std::path::{Path, PathBuf};

use crate::error::WeightError;

/// Write `bytes` to `path` atomically (see [`replace_atomically`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightError> {
    replace_atomically(path, |tmp| std::fs::write(tmp, bytes))
}

/// Let `write` create a temporary sibling of `path`, flush it to disk and rename it over `path`:
/// a crash or a full disk leaves either the old file or the new one, never a truncated one.
pub fn replace_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), WeightError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let done = write(&tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        WeightError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Whether a file name belongs to a model folder's layout (config, weights, index, adapter,
/// tokenizer and other [`SIDE_FILES`]): on overwrite, such files of the old folder that the new
/// one does not write are removed; any other file (a README, notes) is kept.
pub fn is_model_file(name: &str) -> bool {
    name == "config.json"
        || name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || name == "adapter_config.json"
        || name == "automodel_peft_config.json"
        || SIDE_FILES.contains(&name)
}

/// Write a whole folder `out` or nothing: `fill` writes into a new temporary sibling, which then
/// replaces `out`. Files of an old `out` that are not [`is_model_file`]s and that `fill` did not
/// write are carried over; stale model files (an old single `model.safetensors` beside new
/// shards) are not. If `fill` fails, `out` is left byte-identical and the sibling is removed.
/// Returns the paths `fill` returned, moved under `out`.
pub fn write_folder<E: From<WeightError>>(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<Vec<PathBuf>, E>,
) -> Result<Vec<PathBuf>, E> {
    let werr = |path: &Path, e: std::io::Error| WeightError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("out")
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| werr(&parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| werr(&staging, e))?;
    let written = match fill(&staging) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let swap = || -> Result<(), WeightError> {
        if out.is_dir() {
            // the user's own files come along; old model files stay behind
            for entry in std::fs::read_dir(out).map_err(|e| werr(out, e))? {
                let entry = entry.map_err(|e| werr(out, e))?;
                let file = entry.file_name();
                let keep = file.to_str().is_none_or(|f| !is_model_file(f));
                if keep && !staging.join(&file).exists() {
                    copy_recursively(&entry.path(), &staging.join(&file))
                        .map_err(|e| werr(&entry.path(), e))?;
                }
            }
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(out, &old).map_err(|e| werr(out, e))?;
            if let Err(e) = std::fs::rename(&staging, out) {
                let _ = std::fs::rename(&old, out);
                return Err(werr(out, e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&staging, out).map_err(|e| werr(out, e))?;
        }
        if let Ok(f) = std::fs::File::open(&parent) {
            let _ = f.sync_all();
        }
        Ok(())
    };
    if let Err(e) = swap() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    Ok(written
        .into_iter()
        .map(|p| match p.strip_prefix(&staging) {
            Ok(rel) => out.join(rel),
            Err(_) => p,
        })
        .collect())
}

/// Copy a file or a folder tree.
pub fn copy_recursively(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursively(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// The small files of a Hugging Face model folder besides the config and the weights
/// (tokenizer, generation and processor settings, chat template).
pub const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
];

/// Copy the [`SIDE_FILES`] `src` has into `dst`, atomically. Returns the files written.
pub fn copy_side_files(src: &Path, dst: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let mut written = Vec::new();
    for f in SIDE_FILES {
        let from = src.join(f);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|source| WeightError::Io {
                path: from.clone(),
                source,
            })?;
            write_atomic(&dst.join(f), &bytes)?;
            written.push(dst.join(f));
        }
    }
    Ok(written)
}
