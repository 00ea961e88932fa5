//! Parity against Hugging Face: runs the cases `make_golden.py` writes and compares every tensor
//! with the tolerances of `reference/README.md`.
//!
//! A case folder holds `config.json`, `model.safetensors`, `inputs.safetensors`,
//! `outputs.safetensors` and `meta.json`; `meta.json`'s `case` field says what was computed. Every
//! comparison becomes a [`Check`]; nothing about the tiny model is hard-coded, so folders written
//! with other seeds, layer counts, windows or KV-sharing settings work the same way.

mod audio;
mod compare;
pub mod fixtures;
pub mod gemma3;
mod multimodal;
pub mod peft;
mod released;
mod tensors;
pub mod text;
mod vision;

use std::path::{Path, PathBuf};

use automodel_core::AutodiffBackend;
use automodel_core::weights::SafeTensorsFiles;

pub use compare::{Check, Tolerance, compare, max_abs_diff};

/// Errors that stop a case from running (a failed comparison is a [`Check`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("{path}: {message}")]
    Case { path: PathBuf, message: String },
    #[error(transparent)]
    Weights(#[from] automodel_core::WeightError),
    /// Any error of the models (the facade's error wraps every crate's).
    #[error(transparent)]
    Model(#[from] automodel_gemma3n::ModelError),
    #[error(transparent)]
    Peft(#[from] automodel_peft::PeftError),
}

/// Errors of the component crates arrive through [`automodel_gemma3n::ModelError`].
macro_rules! via_model_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ParityError {
            fn from(e: $t) -> Self {
                ParityError::Model(e.into())
            }
        }
    )*};
}
via_model_error!(
    automodel_core::ConfigError,
    automodel_text::TextError,
    automodel_core::MediaError
);

/// Outcome of one case folder.
#[derive(Debug)]
pub struct CaseReport {
    pub case: String,
    pub dir: PathBuf,
    /// `None` when the case type is not supported yet (with the reason in `skipped`).
    pub checks: Vec<Check>,
    pub skipped: Option<String>,
}

/// Case types this build can check.
pub const SUPPORTED_CASES: &[&str] = &[
    "text",
    "generate",
    "text_bf16",
    "image_processor",
    "audio_feature_extractor",
    "image",
    "audio",
    "multimodal",
    "generate_multimodal",
    "lora_text",
    "lora_multimodal",
    "lora_gemma3_270m",
    "released",
];

/// Run one case folder, or every case folder directly inside `dir`.
/// `gguf` is the real Gemma 3 270M, for the cases built on it (skipped without it).
pub fn run<B: AutodiffBackend>(
    dir: &Path,
    device: &B::Device,
    only: Option<&[String]>,
    gguf: Option<&Path>,
) -> Result<Vec<CaseReport>, ParityError> {
    let mut reports = Vec::new();
    for f in case_folders(dir)? {
        let case = case_name(&f)?;
        if let Some(only) = only
            && !only.iter().any(|c| c == &case)
        {
            continue;
        }
        let (checks, skipped) = match case.as_str() {
            "text" => (text::forward_backward::<B>(&f, device)?, None),
            "generate" => (text::generate::<B::InnerBackend>(&f, device)?, None),
            "text_bf16" => {
                match automodel_core::device::check_dtype::<B>(device, burn::tensor::DType::BF16) {
                    Ok(()) => (text::bf16::<B::InnerBackend>(&f, device)?, None),
                    Err(e) => (Vec::new(), Some(format!("bfloat16 unsupported: {e}"))),
                }
            }
            "image_processor" => (vision::processor(&f)?, None),
            "audio_feature_extractor" => (audio::feature_extractor(&f)?, None),
            "image" | "audio" | "multimodal" => {
                (multimodal::forward_backward::<B>(&f, device)?, None)
            }
            "generate_multimodal" => (multimodal::generate::<B::InnerBackend>(&f, device)?, None),
            "released" => (released::run::<B>(&f, device)?, None),
            "lora_text" | "lora_multimodal" => (peft::tiny::<B>(&f, device)?, None),
            "lora_gemma3_270m" => match gguf {
                Some(g) => (peft::gemma3_270m::<B>(&f, g, device)?, None),
                None => (
                    Vec::new(),
                    Some("needs the Gemma 3 270M GGUF (`--model <gguf>`)".into()),
                ),
            },
            other => (
                Vec::new(),
                Some(format!("case type `{other}` is not supported yet")),
            ),
        };
        reports.push(CaseReport {
            case,
            dir: f,
            checks,
            skipped,
        });
    }
    Ok(reports)
}

/// `dir` itself when it is a case folder, else every case folder directly inside it.
fn case_folders(dir: &Path) -> Result<Vec<PathBuf>, ParityError> {
    if dir.join("meta.json").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ParityError::Case {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(ParityError::Case {
            path: dir.to_path_buf(),
            message: "no case folder (a folder with meta.json) found".into(),
        });
    }
    Ok(folders)
}

/// The case types of every case folder in `dir` (or of `dir` itself).
pub fn case_names(dir: &Path) -> Result<Vec<String>, ParityError> {
    case_folders(dir)?.iter().map(|f| case_name(f)).collect()
}

fn case_name(dir: &Path) -> Result<String, ParityError> {
    let meta = read_meta(dir)?;
    meta.get("case")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| ParityError::Case {
            path: dir.join("meta.json"),
            message: "field `case` (string) is missing".into(),
        })
}

pub(crate) fn read_meta(dir: &Path) -> Result<serde_json::Value, ParityError> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ParityError::Case {
        path: path.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ParityError::Case {
        path,
        message: format!("invalid JSON: {e}"),
    })
}

pub(crate) fn open(dir: &Path, file: &str) -> Result<SafeTensorsFiles, ParityError> {
    Ok(SafeTensorsFiles::open(dir.join(file))?)
}

/// The golden folder: `$AUTOMODEL_GOLDEN_DIR`, else the copy vendored in this repository
/// (`reference/golden`, see `reference/README.md`).
pub fn golden_dir() -> PathBuf {
    if let Ok(d) = std::env::var("AUTOMODEL_GOLDEN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference/golden")
}

/// The vendored PEFT golden cases (`reference/golden-peft`), for unit tests.
#[cfg(test)]
pub(crate) fn golden_peft_dir_for_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference/golden-peft")
}

/// Where `cargo xtask fetch-model gemma-3-270m` keeps the Gemma 3 270M GGUF:
/// `$AUTOMODEL_CACHE`, else `~/.cache/automodel`, file `gemma-3-270m-q4_k_m.gguf`; fetched
/// first when it is missing (a failed fetch is printed, and the caller finds no file).
pub fn gemma3_270m_path() -> PathBuf {
    let p = automodel_core::cache::known_model("gemma-3-270m").expect("a known model");
    if !p.is_file()
        && let Err(e) = automodel_models::fetch::fetch("gemma-3-270m", |m| eprintln!("{m}"))
    {
        eprintln!("{e}");
    }
    p
}
