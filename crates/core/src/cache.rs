//! Where fetched models are kept: `$AUTOMODEL_CACHE`, else `~/.cache/automodel`.

use std::path::PathBuf;

/// The models `cargo xtask fetch-model NAME` fetches, with their file in the cache.
pub const KNOWN_MODELS: [(&str, &str); 1] = [("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf")];

/// The cache folder.
pub fn cache_dir() -> PathBuf {
    std::env::var("AUTOMODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            PathBuf::from(home).join(".cache/automodel")
        })
}

/// The cached file of a known model name (whether or not it has been fetched yet).
pub fn known_model(name: &str) -> Option<PathBuf> {
    KNOWN_MODELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| cache_dir().join(f))
}
