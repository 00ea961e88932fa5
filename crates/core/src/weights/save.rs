//! Writing: [`TensorMap`], tensors saved as one safetensors file or as Hugging Face's shards
//! with an index.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use safetensors::Dtype;

use super::{INDEX_FILE, SINGLE_FILE, replace_atomically, write_atomic};
use crate::Backend;
use crate::error::WeightError;

/// Tensors to write, by key, in insertion order.
#[derive(Debug, Default)]
pub struct TensorMap {
    entries: Vec<(String, TensorData)>,
}

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tensor under `key`.
    pub fn insert<B: Backend, const D: usize>(
        &mut self,
        key: impl Into<String>,
        tensor: Tensor<B, D>,
    ) {
        self.entries.push((key.into(), tensor.into_data()));
    }

    /// Add already materialised data.
    pub fn insert_data(&mut self, key: impl Into<String>, data: TensorData) {
        self.entries.push((key.into(), data));
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Look a tensor up.
    pub fn get(&self, key: &str) -> Option<&TensorData> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Write the tensors as a checkpoint in `dir`: one `model.safetensors`, or — when
    /// `max_shard_bytes` is given and the tensors exceed it — `model-0000i-of-0000n.safetensors`
    /// shards plus `model.safetensors.index.json`, as Hugging Face writes them. Every file is
    /// written to a temporary name and renamed into place, so an interrupted save never leaves a
    /// truncated checkpoint behind. Returns the files written.
    pub fn save(
        &self,
        dir: &Path,
        max_shard_bytes: Option<usize>,
    ) -> Result<Vec<PathBuf>, WeightError> {
        std::fs::create_dir_all(dir).map_err(|e| WeightError::Write {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        let mut size = 0usize;
        for (i, (_, data)) in self.entries.iter().enumerate() {
            let n = data.bytes.len();
            if let Some(max) = max_shard_bytes
                && size > 0
                && size + n > max
            {
                groups.push(Vec::new());
                size = 0;
            }
            groups.last_mut().unwrap().push(i);
            size += n;
        }
        let total: usize = self.entries.iter().map(|(_, d)| d.bytes.len()).sum();
        let mut written = Vec::new();
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        if groups.len() == 1 {
            let path = dir.join(SINGLE_FILE);
            self.write_group(&path, &groups[0], &metadata)?;
            written.push(path);
            // a stale index would shadow the new single file
            remove_stale_weights(dir, &written)?;
            return Ok(written);
        }
        let n = groups.len();
        let mut weight_map = BTreeMap::new();
        for (g, idx) in groups.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", g + 1, n);
            let path = dir.join(&name);
            self.write_group(&path, idx, &metadata)?;
            for &i in idx {
                weight_map.insert(self.entries[i].0.clone(), name.clone());
            }
            written.push(path);
        }
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join(INDEX_FILE);
        write_atomic(
            &path,
            serde_json::to_string_pretty(&index).unwrap().as_bytes(),
        )?;
        written.push(path);
        remove_stale_weights(dir, &written)?;
        Ok(written)
    }

    /// Write every tensor into one safetensors file at `path`, atomically.
    pub fn save_file(&self, path: &Path) -> Result<(), WeightError> {
        let all: Vec<usize> = (0..self.entries.len()).collect();
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        self.write_group(path, &all, &metadata)
    }

    fn write_group(
        &self,
        path: &Path,
        idx: &[usize],
        metadata: &HashMap<String, String>,
    ) -> Result<(), WeightError> {
        let mut views = Vec::with_capacity(idx.len());
        for &i in idx {
            let (key, data) = &self.entries[i];
            let dtype = match data.dtype {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::F64 => Dtype::F64,
                DType::I64 => Dtype::I64,
                DType::I32 => Dtype::I32,
                DType::U8 => Dtype::U8,
                DType::Bool(_) => Dtype::BOOL,
                other => {
                    return Err(WeightError::Write {
                        path: path.to_path_buf(),
                        message: format!(
                            "tensor `{key}` has dtype {other:?}, which safetensors cannot store"
                        ),
                    });
                }
            };
            let view =
                safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), &data.bytes)
                    .map_err(|e| WeightError::Write {
                        path: path.to_path_buf(),
                        message: format!("`{key}`: {e}"),
                    })?;
            views.push((key.as_str(), view));
        }
        // streamed to the temporary file, not collected in memory first
        replace_atomically(path, |tmp| {
            safetensors::serialize_to_file(views, Some(metadata.clone()), tmp)
                .map_err(std::io::Error::other)
        })
    }
}

/// Remove the weight files of an earlier save in `dir` that the new one (`written`) does not
/// use: `model.safetensors`, `model-*-of-*.safetensors` shards and the index.
fn remove_stale_weights(dir: &Path, written: &[PathBuf]) -> Result<(), WeightError> {
    let entries = std::fs::read_dir(dir).map_err(|e| WeightError::Write {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let shard =
            name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-");
        let ours = name == SINGLE_FILE || name == INDEX_FILE || shard;
        if ours
            && !written
                .iter()
                .any(|w| w.file_name() == Some(entry.file_name().as_os_str()))
        {
            std::fs::remove_file(entry.path()).map_err(|e| WeightError::Write {
                path: entry.path(),
                message: format!("cannot remove a stale weight file: {e}"),
            })?;
        }
    }
    Ok(())
}
