//! Reading: memory-mapped safetensors files (one, or the shards of an index) seen as one
//! name → tensor map, and [`TensorSource`], what a loader reads from.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{INDEX_FILE, SINGLE_FILE};
use crate::error::{KeyProblem, WeightError};

struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One or more memory-mapped safetensors files seen as a single name → tensor map.
pub struct SafeTensorsFiles {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for SafeTensorsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFiles")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// A raw view of one stored tensor.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// Which tensor of a safetensors header is wrong, when the `safetensors` crate does not say
/// (its "invalid shape, data type, or offset for tensor" names none): the first tensor whose
/// shape and dtype do not fill its `data_offsets` exactly.
fn explain_header(map: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?);
    let header = map.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype")?.as_str()?;
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        let shape: Vec<u64> = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let offsets: Vec<u64> = t
            .get("data_offsets")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let [start, end] = offsets[..] else {
            return Some(format!(
                "tensor `{name}`: data_offsets must be [start, end]"
            ));
        };
        let data = (map.len() as u64).saturating_sub(8 + n);
        if end > data {
            return Some(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] reach past the end of the data ({data} bytes; is the file cut short?)"
            ));
        }
        let need = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
        if start > end || need != Some(end - start) {
            let need = need.map_or("more than 2^64".into(), |b| b.to_string());
            return Some(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {need} bytes, its data_offsets are [{start}, {end}]"
            ));
        }
    }
    None
}

impl SafeTensorsFiles {
    /// Open a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a folder
    /// holding either (the index wins when both exist).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return Self::open_files(&[single]);
            }
            return Err(WeightError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if !path.exists() {
            return Err(WeightError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()])
    }

    /// Open a sharded checkpoint from its index file. Every shard the index names is opened, and
    /// every tensor must live in the shard the index says.
    pub fn open_index(index: &Path) -> Result<Self, WeightError> {
        let text = std::fs::read_to_string(index).map_err(|source| WeightError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| WeightError::Index {
                path: index.to_path_buf(),
                message: format!("invalid JSON: {e}"),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| WeightError::Index {
                path: index.to_path_buf(),
                message: "field `weight_map` (an object of tensor name → shard file) is missing"
                    .into(),
            })?;
        let dir = index.parent().unwrap_or_else(|| Path::new("."));
        let mut files: Vec<String> = Vec::new();
        let mut expected: HashMap<String, String> = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| WeightError::Index {
                path: index.to_path_buf(),
                message: format!("`weight_map.{name}` must be a file name string"),
            })?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(WeightError::Index {
                    path: index.to_path_buf(),
                    message: format!(
                        "`weight_map.{name}` names `{file}`, which is outside the checkpoint folder"
                    ),
                });
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            expected.insert(name.clone(), file.to_string());
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let this = Self::open_files(&paths)?;
        for (name, file) in &expected {
            match this.entries.get(name) {
                Some(e) if this.shards[e.shard].path == dir.join(file) => {}
                Some(e) => {
                    return Err(WeightError::Index {
                        path: index.to_path_buf(),
                        message: format!(
                            "`{name}` is listed in {file} but stored in {}",
                            this.shards[e.shard].path.display()
                        ),
                    });
                }
                None => {
                    return Err(WeightError::Index {
                        path: index.to_path_buf(),
                        message: format!(
                            "`{name}` is listed in {file} but that file does not contain it"
                        ),
                    });
                }
            }
        }
        Ok(this)
    }

    /// Open one or more safetensors files. A tensor name stored twice is an error.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, WeightError> {
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; checkpoints are not expected to change while open.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| WeightError::Format {
                path: path.clone(),
                message: explain_header(&map).unwrap_or_else(|| e.to_string()),
            })?;
            let data_start = 8 + n;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                if data_start + end > map.len() || start > end {
                    return Err(WeightError::Format {
                        path: path.clone(),
                        message: format!("tensor `{name}` points outside the file"),
                    });
                }
                let entry = Entry {
                    shard: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start,
                    end,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(WeightError::Format {
                        path: path.clone(),
                        message: format!("tensor `{name}` is stored in more than one file"),
                    });
                }
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                data_start,
            });
        }
        Ok(Self { shards, entries })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Shape of a stored tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The files behind this checkpoint.
    pub fn paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Raw bytes, dtype and shape of a stored tensor.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>, WeightError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| WeightError::NoSuchTensor {
                key: name.to_string(),
            })?;
        let s = &self.shards[e.shard];
        Ok(RawTensor {
            dtype: e.dtype,
            shape: &e.shape,
            bytes: &s.map[s.data_start + e.start..s.data_start + e.end],
        })
    }

    /// A stored float tensor as [`TensorData`] in its stored dtype (F32, F16, BF16 or F64).
    pub fn float_data(&self, name: &str) -> Result<TensorData, WeightError> {
        let raw = self.raw(name)?;
        let dtype = match raw.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(WeightError::Mismatch {
                    problems: vec![KeyProblem::Dtype {
                        key: name.to_string(),
                        found: format!("{other:?}"),
                    }],
                });
            }
        };
        Ok(TensorData::from_bytes_vec(
            raw.bytes.to_vec(),
            raw.shape.to_vec(),
            dtype,
        ))
    }

    /// A stored float tensor converted to `f32` values (row-major).
    pub fn to_f32_vec(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        let data = self.float_data(name)?.convert_dtype(DType::F32);
        Ok(data.to_vec::<f32>().expect("converted to f32"))
    }

    /// A stored integer or bool tensor as `i64` values.
    pub fn to_i64_vec(&self, name: &str) -> Result<Vec<i64>, WeightError> {
        let raw = self.raw(name)?;
        let b = raw.bytes;
        let v = match raw.dtype {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => b.iter().map(|&x| x as i64).collect(),
            Dtype::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            other => {
                return Err(WeightError::Mismatch {
                    problems: vec![KeyProblem::Dtype {
                        key: name.to_string(),
                        found: format!("{other:?}"),
                    }],
                });
            }
        };
        Ok(v)
    }
}

/// Anything that holds named float tensors: safetensors files, a GGUF file, an in-memory map.
pub trait TensorSource {
    /// Every tensor name.
    fn tensor_names(&self) -> Vec<String>;
    /// Shape of `name`, if present.
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of `name` as float [`TensorData`] (any float dtype).
    fn tensor_data(&self, name: &str) -> Result<TensorData, WeightError>;
    /// The file or folder the tensors come from, for errors.
    fn origin(&self) -> Option<PathBuf> {
        None
    }
}

impl TensorSource for SafeTensorsFiles {
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(String::from).collect()
    }

    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shape(name).map(|s| s.to_vec())
    }

    fn tensor_data(&self, name: &str) -> Result<TensorData, WeightError> {
        self.float_data(name)
    }

    fn origin(&self) -> Option<PathBuf> {
        match self.paths().as_slice() {
            [one] => Some(one.to_path_buf()),
            [first, ..] => first.parent().map(Path::to_path_buf),
            [] => None,
        }
    }
}
/// Open a checkpoint (folder, file or index) and name the `config.json` beside it.
pub fn open_checkpoint(path: &Path) -> Result<(PathBuf, SafeTensorsFiles), WeightError> {
    let files = SafeTensorsFiles::open(path)?;
    Ok((checkpoint_dir(path).join("config.json"), files))
}

/// The folder a checkpoint path belongs to (the path itself, or a file's parent), where
/// `config.json` lives.
pub fn checkpoint_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
}
