//! Safetensors checkpoints: reading (single file or sharded), matching against a model, writing.
//!
//! Reading memory-maps every shard and parses each header once. [`WeightLoader`] hands tensors to
//! model constructors by Hugging Face key, converts any stored float dtype into the requested
//! one, and records every problem (missing key, wrong shape, unreadable dtype, and — in
//! [`WeightLoader::finish`] — keys nobody asked for) so that one error lists them all.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::Backend;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
pub use safetensors::Dtype;
use safetensors::SafeTensors;

use crate::error::{KeyProblem, WeightError};

/// Name of the index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

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

/// Hands checkpoint tensors to model constructors and collects every mismatch.
///
/// Keys are given relative to a prefix (e.g. `model.language_model.`). Constructors ask for
/// tensors with their expected shape; a problem is recorded and a zero tensor returned so that
/// construction can continue and [`WeightLoader::finish`] can report everything at once.
pub struct WeightLoader<'a, B: Backend> {
    files: &'a dyn TensorSource,
    prefix: String,
    device: B::Device,
    dtype: DType,
    used: RefCell<BTreeSet<String>>,
    problems: RefCell<Vec<KeyProblem>>,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    /// A loader that reads keys `{prefix}{name}` and creates tensors of `dtype` on `device`.
    pub fn new(
        files: &'a dyn TensorSource,
        prefix: impl Into<String>,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        Self {
            files,
            prefix: prefix.into(),
            device: device.clone(),
            dtype,
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The dtype tensors are created with.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `{prefix}{name}` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.files
            .tensor_shape(&format!("{}{name}", self.prefix))
            .is_some()
    }

    /// Mark `{prefix}{name}` as known (used or deliberately ignored).
    pub fn mark_used(&self, name: &str) {
        self.used
            .borrow_mut()
            .insert(format!("{}{name}", self.prefix));
    }

    /// Read `{prefix}{name}` with the expected shape, converted to the loader's dtype. On a
    /// problem (recorded for [`Self::finish`]) the result is a broadcast zero that costs no
    /// memory, so a config that declares sizes the checkpoint does not have never allocates them.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.try_tensor(name, shape).unwrap_or_else(|| {
            Tensor::<B, D>::zeros([1; D], (&self.device, self.dtype)).expand(shape)
        })
    }

    /// Like [`Self::tensor`] but returns `None` (after recording the problem) on failure.
    pub(crate) fn try_tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Option<Tensor<B, D>> {
        let key = format!("{}{name}", self.prefix);
        self.used.borrow_mut().insert(key.clone());
        let Some(found) = self.files.tensor_shape(&key) else {
            self.problems.borrow_mut().push(KeyProblem::Missing {
                key,
                expected: shape.to_vec(),
            });
            return None;
        };
        if found != shape {
            self.problems.borrow_mut().push(KeyProblem::Shape {
                key,
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
            return None;
        }
        let bytes = (shape.iter().product::<usize>() * self.dtype.size()) as u64;
        if let Some(max) = B::max_tensor_bytes(&self.device)
            && bytes > max
        {
            self.problems
                .borrow_mut()
                .push(KeyProblem::TooLarge { key, bytes, max });
            return None;
        }
        match self.files.tensor_data(&key) {
            Ok(data) => Some(Tensor::from_data(
                data.convert_dtype(self.dtype),
                (&self.device, self.dtype),
            )),
            Err(WeightError::Mismatch { problems }) => {
                self.problems.borrow_mut().extend(problems);
                None
            }
            Err(e) => {
                self.problems.borrow_mut().push(KeyProblem::Unreadable {
                    key,
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// Record a problem found by a constructor itself.
    pub fn report(&self, problem: KeyProblem) {
        self.problems.borrow_mut().push(problem);
    }

    /// Finish loading: every key under the prefix that nobody used (and that `ignore` does not
    /// accept) is reported as unexpected; any problem makes this an error listing all of them.
    pub fn finish(self, ignore: impl Fn(&str) -> bool) -> Result<(), WeightError> {
        let used = self.used.into_inner();
        let mut problems = self.problems.into_inner();
        for name in self.files.tensor_names() {
            let name = name.as_str();
            if let Some(rel) = name.strip_prefix(&self.prefix)
                && !used.contains(name)
                && !ignore(rel)
            {
                problems.push(KeyProblem::Unexpected {
                    key: name.to_string(),
                });
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let e = WeightError::Mismatch { problems };
        Err(match self.files.origin() {
            Some(path) => WeightError::In {
                path,
                error: Box::new(e),
            },
            None => e,
        })
    }
}

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
fn copy_recursively(from: &Path, to: &Path) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend as B;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"old").unwrap();
        let err = replace_atomically(&path, |tmp| {
            std::fs::write(tmp, b"half a fi")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("disk full"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn sample() -> TensorMap {
        let dev = Default::default();
        let mut m = TensorMap::new();
        m.insert(
            "a.weight",
            Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev),
        );
        m.insert(
            "b.weight",
            Tensor::<B, 1>::from_floats([5.0, 6.0, 7.0], &dev).cast(DType::BF16),
        );
        m.insert("c", Tensor::<B, 1>::from_floats([8.0], &dev));
        m
    }

    #[test]
    fn single_file_round_trip_and_dtype_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample().save(dir.path(), None).unwrap();
        assert_eq!(files, vec![dir.path().join(SINGLE_FILE)]);
        let st = SafeTensorsFiles::open(dir.path()).unwrap();
        assert_eq!(
            st.names().collect::<Vec<_>>(),
            vec!["a.weight", "b.weight", "c"]
        );
        let loader = WeightLoader::<B>::new(&st, "", &Default::default(), DType::F32);
        let b = loader.tensor("b.weight", [3]);
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(b.into_data().to_vec::<f32>().unwrap(), vec![5.0, 6.0, 7.0]);
        let a = loader.tensor("a.weight", [2, 2]);
        assert_eq!(
            a.into_data().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        // `c` was never asked for.
        let err = loader.finish(|_| false).unwrap_err().to_string();
        assert!(err.contains("unexpected `c`"), "{err}");
    }

    #[test]
    fn sharded_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample().save(dir.path(), Some(16)).unwrap();
        assert!(files.iter().any(|p| p.ends_with(INDEX_FILE)));
        assert!(files.len() >= 3, "{files:?}");
        let st = SafeTensorsFiles::open(dir.path()).unwrap();
        assert_eq!(st.paths().len(), files.len() - 1);
        assert_eq!(st.to_f32_vec("c").unwrap(), vec![8.0]);
        assert_eq!(st.to_f32_vec("a.weight").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_new_save_removes_the_weight_files_of_the_old_layout() {
        let dir = tempfile::tempdir().unwrap();
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        sample().save(dir.path(), None).unwrap();
        let many = sample().save(dir.path(), Some(1)).unwrap();
        assert!(!dir.path().join(SINGLE_FILE).exists(), "stale single file");
        let fewer = sample().save(dir.path(), Some(16)).unwrap();
        assert!(fewer.len() < many.len());
        let mut want: Vec<String> = fewer
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .chain(["notes.txt".to_string()])
            .collect();
        want.sort();
        assert_eq!(names(dir.path()), want, "no stale shards");
        sample().save(dir.path(), None).unwrap();
        assert_eq!(names(dir.path()), vec!["model.safetensors", "notes.txt"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        sample().save(dir.path(), None).unwrap();
        let st = SafeTensorsFiles::open(dir.path()).unwrap();
        let loader = WeightLoader::<B>::new(&st, "", &Default::default(), DType::F32);
        let _ = loader.tensor("a.weight", [2, 3]);
        let _ = loader.tensor("missing.weight", [4]);
        let err = loader.finish(|k| k == "b.weight").unwrap_err();
        // the error names the checkpoint it is about
        let WeightError::In { path, error } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.path().join(SINGLE_FILE));
        // one message: the inner error is not also a cause (it would print twice)
        assert!(std::error::Error::source(&err).is_none());
        let WeightError::Mismatch { problems } = error.as_ref() else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`a.weight` has shape [2, 2], expected [2, 3]"),
            "{text}"
        );
        assert!(text.contains("missing `missing.weight`"), "{text}");
        assert!(text.contains("unexpected `c`"), "{text}");
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = SafeTensorsFiles::open(dir.path()).unwrap_err();
        assert!(matches!(err, WeightError::NotFound { .. }), "{err}");
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"not a safetensors file").unwrap();
        let err = SafeTensorsFiles::open(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
        let idx = dir.path().join(INDEX_FILE);
        std::fs::write(&idx, r#"{"weight_map": {"x": "../evil.safetensors"}}"#).unwrap();
        let err = SafeTensorsFiles::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("outside the checkpoint folder"), "{err}");
    }
}
