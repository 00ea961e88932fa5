//! A recipe's `dataset` / `validation_dataset` section: where the records come from (files, a
//! folder of HF Parquet shards, or a built-in dataset), which split and slice, and how they are
//! encoded and batched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::BadSamples;
use crate::encode::{EncodeConfig, LabelMode, Overlong};
use crate::error::DataError;
use crate::format::{Columns, Record, read_json_file};
use crate::loader::{LoaderConfig, Packing};

/// One or more files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// The records' source.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `.jsonl`, `.json` and `.parquet` files, or folders of them (HF's `data/<split>-*.parquet`
    /// layout: the split picks the shards).
    Files(Vec<PathBuf>),
    /// A dataset generated in code ([`crate::builtin`]).
    Builtin(String),
}

/// A recipe's dataset section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Files or folders (relative to the recipe's folder).
    pub path: Option<Paths>,
    /// A built-in dataset: `instructions`, `shapes` or `tones`.
    pub builtin: Option<String>,
    /// `train`, `validation`, … with an optional HF-style slice: `train[:1000]`, `train[10:20]`.
    pub split: String,
    /// Samples of a built-in dataset (default 512 train / 64 validation).
    pub num_samples: Option<usize>,
    pub columns: Columns,
    /// A Jinja chat template file replacing the checkpoint's.
    pub chat_template: Option<PathBuf>,
    pub max_length: Option<usize>,
    /// What an over-long sample becomes: `truncate` or `drop`.
    pub overlong: Overlong,
    /// `answers` (assistant turns only) or `all`.
    pub labels: LabelMode,
    /// A sample that cannot be used: `skip` (counted) or `fail`.
    pub bad_samples: BadSamples,
    /// Text-only sequence packing.
    pub packing: Option<Packing>,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    /// Background threads that decode media and build batches.
    pub num_workers: usize,
    /// Batches built ahead of the step.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        let l = LoaderConfig::default();
        Self {
            path: None,
            builtin: None,
            split: "train".into(),
            num_samples: None,
            columns: Columns::default(),
            chat_template: None,
            max_length: None,
            overlong: Overlong::default(),
            labels: LabelMode::default(),
            bad_samples: BadSamples::default(),
            packing: None,
            shuffle: l.shuffle,
            seed: l.seed,
            drop_last: l.drop_last,
            num_workers: l.workers,
            prefetch: l.prefetch,
        }
    }
}

/// `train[10:20]` → (`train`, 10, Some(20)).
fn parse_split(s: &str) -> Result<(String, usize, Option<usize>), DataError> {
    let bad = || {
        DataError::Invalid(format!(
            "dataset.split `{s}`: expected a name with an optional slice, e.g. `train` or `train[:1000]`"
        ))
    };
    let Some((name, rest)) = s.split_once('[') else {
        return Ok((s.to_string(), 0, None));
    };
    let inner = rest.strip_suffix(']').ok_or_else(bad)?;
    let (a, b) = inner.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| -> Result<Option<usize>, DataError> {
        if x.trim().is_empty() {
            Ok(None)
        } else {
            x.trim().parse().map(Some).map_err(|_| bad())
        }
    };
    let (from, to) = (num(a)?.unwrap_or(0), num(b)?);
    if to.is_some_and(|t| t < from) {
        return Err(bad());
    }
    Ok((name.to_string(), from, to))
}

impl DataConfig {
    /// Where the records come from; relative paths against `base` (the recipe's folder).
    pub fn source(&self, base: &Path) -> Result<Source, DataError> {
        match (&self.path, &self.builtin) {
            (Some(_), Some(_)) => Err(DataError::Invalid(
                "dataset: give `path` or `builtin`, not both".into(),
            )),
            (None, None) => Err(DataError::Invalid(
                "dataset: give `path` (files or a folder) or `builtin` (instructions, shapes, tones)".into(),
            )),
            (None, Some(b)) => Ok(Source::Builtin(b.clone())),
            (Some(p), None) => {
                let list = match p {
                    Paths::One(p) => vec![p.clone()],
                    Paths::Many(v) => v.clone(),
                };
                Ok(Source::Files(list.into_iter().map(|p| base.join(p)).collect()))
            }
        }
    }

    /// Every record of the configured split and slice, in order.
    pub fn read(&self, base: &Path) -> Result<Vec<Record>, DataError> {
        let (split, from, to) = parse_split(&self.split)?;
        let mut records = match self.source(base)? {
            Source::Builtin(name) => crate::builtin::records(&name, &split, self.num_samples)?,
            Source::Files(paths) => {
                let mut out = Vec::new();
                for p in paths {
                    for f in files_of(&p, &split)? {
                        out.extend(read_file(&f, &self.columns)?);
                    }
                }
                out
            }
        };
        let to = to.unwrap_or(records.len()).min(records.len());
        if from > 0 || to < records.len() {
            records = records.drain(from.min(to)..to).collect();
        }
        Ok(records)
    }

    /// Encoding settings.
    pub fn encode_config(&self) -> EncodeConfig {
        EncodeConfig {
            max_length: self.max_length,
            overlong: self.overlong,
            labels: self.labels,
        }
    }

    /// Batching settings for `batch_size` rows per batch.
    pub fn loader_config(&self, batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: self.shuffle,
            seed: self.seed,
            drop_last: self.drop_last,
            packing: self.packing,
            workers: self.num_workers,
            prefetch: self.prefetch,
            bad_samples: self.bad_samples,
        }
    }

    /// Check what can be checked before reading. Every key acts or is refused: `num_samples`
    /// sizes a built-in dataset (files are sliced by `split`), `columns` names the fields of
    /// files (a built-in dataset makes its records itself).
    pub fn validate(&self) -> Result<(), DataError> {
        parse_split(&self.split)?;
        if self.path.is_some() && self.num_samples.is_some() {
            return Err(DataError::Invalid(
                "num_samples sizes a built-in dataset; to take part of files, slice the split (e.g. `split: train[:1000]`)".into(),
            ));
        }
        if self.builtin.is_some() && self.columns != Columns::default() {
            return Err(DataError::Invalid(
                "columns maps the field names of files; a built-in dataset's records have no columns to map (remove the key)".into(),
            ));
        }
        if let (Some(p), Some(m)) = (&self.packing, self.max_length)
            && m > p.max_tokens
        {
            return Err(DataError::Invalid(format!(
                "dataset.max_length {m} exceeds dataset.packing.max_tokens {}",
                p.max_tokens
            )));
        }
        if self.packing.is_some_and(|p| p.max_tokens == 0) {
            return Err(DataError::Invalid(
                "dataset.packing.max_tokens must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The data files of `path`: the file itself, or a folder's `.jsonl`/`.json`/`.parquet` files
/// (those whose name starts with `split` when any does, as in HF's `data/train-00000-….parquet`),
/// in name order.
fn files_of(path: &Path, split: &str) -> Result<Vec<PathBuf>, DataError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "no such file or folder".into(),
        });
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::File {
            path: d.clone(),
            message: e.to_string(),
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jsonl", "json", "parquet"].contains(&e))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let of_split: Vec<PathBuf> = files
        .iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(split))
        })
        .cloned()
        .collect();
    let chosen = if of_split.is_empty() { files } else { of_split };
    if chosen.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "no .jsonl, .json or .parquet file in this folder".into(),
        });
    }
    Ok(chosen)
}

/// Read one file by its extension.
pub fn read_file(path: &Path, cols: &Columns) -> Result<Vec<Record>, DataError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => crate::parquet::read_parquet_file(path, cols),
        Some("jsonl") | Some("json") => read_json_file(path, cols),
        _ => Err(DataError::File {
            path: path.to_path_buf(),
            message: "unknown format (expected .jsonl, .json or .parquet)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_slices_and_sources() {
        assert_eq!(parse_split("train").unwrap(), ("train".into(), 0, None));
        assert_eq!(
            parse_split("train[:100]").unwrap(),
            ("train".into(), 0, Some(100))
        );
        assert_eq!(
            parse_split("validation[5:9]").unwrap(),
            ("validation".into(), 5, Some(9))
        );
        assert!(parse_split("train[abc]").is_err());
        assert!(parse_split("train[9:3]").is_err());

        let cfg = DataConfig {
            builtin: Some("instructions".into()),
            split: "validation[2:5]".into(),
            ..Default::default()
        };
        let recs = cfg.read(Path::new(".")).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].origin.position, 2);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let line = r#"{"prompt": "a", "completion": "b"}"#;
        std::fs::write(
            dir.path().join("data/train-0.jsonl"),
            format!("{line}\n{line}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("data/validation-0.jsonl"),
            format!("{line}\n"),
        )
        .unwrap();
        let cfg = DataConfig {
            path: Some(Paths::One("data".into())),
            ..Default::default()
        };
        assert_eq!(cfg.read(dir.path()).unwrap().len(), 2);
        let cfg = DataConfig {
            split: "validation".into(),
            ..cfg
        };
        assert_eq!(cfg.read(dir.path()).unwrap().len(), 1);
        let missing = DataConfig {
            path: Some(Paths::One("nope.jsonl".into())),
            ..Default::default()
        };
        assert!(
            missing
                .read(dir.path())
                .unwrap_err()
                .to_string()
                .contains("nope.jsonl")
        );
        assert!(DataConfig::default().read(dir.path()).is_err());
    }
}
