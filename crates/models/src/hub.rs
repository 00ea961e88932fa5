//! Models by Hugging Face Hub repo id: the local Hub cache first (no network, same layout as
//! Python's `huggingface_hub`), then — with the `hub` cargo feature and unless `HF_HUB_OFFLINE`
//! is set — a download through `hf-hub`. The token comes from `HF_TOKEN` (or
//! `HUGGING_FACE_HUB_TOKEN`) and is never logged or put in an error.

use std::path::{Path, PathBuf};

use automodel_gemma3n::ModelError;

/// The Hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|k| std::env::var(k).ok())
}

/// [`cache_dir`] with an explicit environment.
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = env("HF_HUB_CACHE").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(h) = env("HF_HOME").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(h).join("hub"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Check a repo id (`org/name`).
pub fn check_repo_id(repo: &str) -> Result<(), ModelError> {
    let ok = repo.split('/').count() == 2
        && repo.split('/').all(|p| {
            !p.is_empty()
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "`{repo}` is not a Hub repo id (expected `org/name`)"
        )))
    }
}

/// The snapshot folder of `repo` at `revision` (a branch, tag or commit) in `cache`, if it holds a
/// complete checkpoint (`config.json` plus every weight file).
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = match std::fs::read_to_string(base.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(), // a commit hash names the snapshot directly
    };
    let snap = base.join("snapshots").join(commit);
    complete(&snap).then_some(snap)
}

/// Whether `dir` has `config.json` and all weights (single file, or every shard of the index).
fn complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    let index = dir.join(automodel_core::weights::INDEX_FILE);
    if let Ok(text) = std::fs::read_to_string(&index) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
            return false;
        };
        return map
            .values()
            .filter_map(|f| f.as_str())
            .all(|f| dir.join(f).is_file());
    }
    dir.join(automodel_core::weights::SINGLE_FILE).is_file()
}

/// A local folder for `repo` at `revision` (default `main`): the cache, or a download.
pub fn resolve(repo: &str, revision: Option<&str>) -> Result<PathBuf, ModelError> {
    check_repo_id(repo)?;
    let revision = revision.unwrap_or("main");
    let cache = cache_dir();
    if let Some(snap) = cache
        .as_deref()
        .and_then(|c| cached_snapshot(c, repo, revision))
    {
        tracing::info!(repo, revision, path = %snap.display(), "using the local Hub cache");
        return Ok(snap);
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let where_ = cache.map_or("no cache folder".to_string(), |c| c.display().to_string());
    if offline {
        return Err(ModelError::Input(format!(
            "`{repo}` ({revision}) is not in the local Hub cache ({where_}) and HF_HUB_OFFLINE is set"
        )));
    }
    download(repo, revision).map_err(|e| match e {
        ModelError::Input(m) => ModelError::Input(format!(
            "`{repo}` ({revision}) is not in the local Hub cache ({where_}): {m}"
        )),
        other => other,
    })
}

#[cfg(feature = "hub")]
fn download(repo: &str, revision: &str) -> Result<PathBuf, ModelError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let token = std::env::var("HF_TOKEN")
        .or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
        .ok()
        .filter(|t| !t.is_empty());
    let mut builder = ApiBuilder::new().with_progress(false).with_token(token);
    if let Some(c) = cache_dir() {
        builder = builder.with_cache_dir(c);
    }
    // The error text of hf-hub never contains the token; keep only its message.
    let fail = |what: &str, e: hf_hub::api::sync::ApiError| {
        ModelError::Input(format!("download of {what} failed: {e}"))
    };
    let api = builder.build().map_err(|e| fail("(client)", e))?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    tracing::info!(repo, revision, "downloading from the Hugging Face Hub");
    let config = r.get("config.json").map_err(|e| fail("config.json", e))?;
    let _ = r.get("generation_config.json");
    match r.get(automodel_core::weights::INDEX_FILE) {
        Ok(index) => {
            let v = automodel_core::config::read_json(&index)?;
            let mut shards: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                r.get(&s).map_err(|e| fail(&s, e))?;
            }
        }
        Err(_) => {
            r.get(automodel_core::weights::SINGLE_FILE)
                .map_err(|e| fail("model.safetensors", e))?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(not(feature = "hub"))]
fn download(_repo: &str, _revision: &str) -> Result<PathBuf, ModelError> {
    Err(ModelError::Input(
        "downloading needs the `hub` cargo feature (or download the files and pass a local folder)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_folder_follows_the_huggingface_hub_rules() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_dir_from(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b")])),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HF_HOME", "/b"), ("HOME", "/h")])),
            Some(PathBuf::from("/b/hub"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/huggingface/hub"))
        );
        assert!(check_repo_id("google/gemma-3n-E2B-it").is_ok());
        for bad in ["gemma", "a/b/c", "../x", "a/..", "a b/c"] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshots_must_be_complete() {
        let cache = tempfile::tempdir().unwrap();
        let base = cache.path().join("models--org--tiny");
        let snap = base.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(base.join("refs")).unwrap();
        std::fs::write(base.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "org/tiny", "main"),
            None,
            "no weights yet"
        );
        std::fs::write(snap.join("model.safetensors.index.json"), r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#).unwrap();
        std::fs::write(snap.join("model-00001-of-00002.safetensors"), "x").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "org/tiny", "main"),
            None,
            "a shard is missing"
        );
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "x").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "org/tiny", "main"),
            Some(snap.clone())
        );
        assert_eq!(
            cached_snapshot(cache.path(), "org/tiny", "abc123"),
            Some(snap),
            "by commit"
        );
    }
}
