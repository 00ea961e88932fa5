//! GGUF container parsing.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Errors reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// As an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                GgufValue::I32(v) => Some(v as f64),
                GgufValue::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Bf16,
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block), for the types with a known layout.
    pub fn block(&self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order: `dims[0]` varies fastest (the reverse of PyTorch's shape).
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// Shape in PyTorch order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: impl Into<String>) -> GgufError {
        GgufError::Format {
            path: self.path.to_path_buf(),
            message: format!("{} (at byte {})", message.into(), self.pos),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("the file is truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len(&mut self, what: &str) -> Result<usize, GgufError> {
        let n = self.u64()?;
        // No single element may be longer than the file itself.
        if n > self.buf.len() as u64 {
            return Err(self.err(format!("{what} length {n} is larger than the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len("string")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("a string is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(self.take(1)?[0]),
            1 => GgufValue::I8(self.take(1)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            3 => GgufValue::I16(i16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(self.u32()? as i32),
            6 => GgufValue::F32(f32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            7 => GgufValue::Bool(self.take(1)?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(self.err("arrays are nested too deeply"));
                }
                let inner = self.u32()?;
                let n = self.len("array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => GgufValue::F64(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            other => return Err(self.err(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file (versions 2 and 3).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| GgufError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| GgufError::Io {
            path: path.clone(),
            source,
        })?;
        let (version, metadata, tensors) = {
            let mut c = Cursor {
                buf: &map,
                pos: 0,
                path: &path,
            };
            let magic = c.take(4).map_err(|_| GgufError::Format {
                path: path.clone(),
                message: "too short for a GGUF file".into(),
            })?;
            if magic != b"GGUF" {
                return Err(GgufError::Format {
                    path: path.clone(),
                    message: format!("bad magic {magic:?}; not a GGUF file"),
                });
            }
            let version = c.u32()?;
            if !(2..=3).contains(&version) {
                return Err(c.err(format!("GGUF version {version} is not supported (2 or 3)")));
            }
            let n_tensors = c.len("tensor count")?;
            let n_kv = c.len("metadata count")?;
            let mut metadata = BTreeMap::new();
            for _ in 0..n_kv {
                let k = c.string()?;
                let ty = c.u32()?;
                let v = c.value(ty, 0)?;
                metadata.insert(k, v);
            }
            let alignment = metadata
                .get("general.alignment")
                .and_then(|v| v.as_u64())
                .unwrap_or(32) as usize;
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(c.err(format!(
                    "general.alignment {alignment} is not a power of two"
                )));
            }
            let mut raw = Vec::with_capacity(n_tensors.min(1 << 16));
            for i in 0..n_tensors {
                // a tensor count larger than the table reads past its end: say so
                let count_hint = || {
                    format!(
                        "tensor table entry {} of the {n_tensors} the header declares",
                        i + 1
                    )
                };
                let name = c.string().map_err(|e| match e {
                    GgufError::Format { path, message } => GgufError::Format {
                        path,
                        message: format!(
                            "{}: {message} (is the tensor count right?)",
                            count_hint()
                        ),
                    },
                    e => e,
                })?;
                let nd = c.u32()? as usize;
                if nd == 0 || nd > 4 {
                    return Err(c.err(format!(
                        "{} (`{}`) has {nd} dimensions, expected 1 to 4 (is the tensor count right?)",
                        count_hint(),
                        name.chars().take(64).collect::<String>()
                    )));
                }
                let mut dims = Vec::with_capacity(nd);
                for _ in 0..nd {
                    dims.push(c.len("dimension")?);
                }
                let ty = GgmlType::from_id(c.u32()?);
                let offset = c.u64()?;
                if !offset.is_multiple_of(alignment as u64) {
                    return Err(c.err(format!(
                        "tensor `{name}` starts at data offset {offset}, which is not a multiple of the alignment {alignment}"
                    )));
                }
                raw.push((name, dims, ty, offset));
            }
            let data_start = c.pos.div_ceil(alignment) * alignment;
            let mut tensors = BTreeMap::new();
            for (name, dims, ty, offset) in raw {
                let numel = dims
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| c.err(format!("tensor `{name}` is too large")))?;
                let bytes = match ty.block() {
                    Some((per, size)) => {
                        if !numel.is_multiple_of(per) {
                            return Err(c.err(format!("tensor `{name}` has {numel} elements, not a multiple of the {ty:?} block")));
                        }
                        numel / per * size
                    }
                    None => 0,
                };
                let start = data_start
                    .checked_add(offset as usize)
                    .ok_or_else(|| c.err("tensor offset overflows"))?;
                let end = start
                    .checked_add(bytes)
                    .filter(|&e| e <= map.len())
                    .ok_or_else(|| GgufError::Format {
                        path: path.clone(),
                        message: format!(
                            "tensor `{name}` points past the end of the file (truncated?)"
                        ),
                    })?;
                if tensors
                    .insert(
                        name.clone(),
                        TensorInfo {
                            dims,
                            ggml_type: ty,
                            start,
                            end,
                        },
                    )
                    .is_some()
                {
                    return Err(c.err(format!("tensor `{name}` appears twice")));
                }
            }
            (version, metadata, tensors)
        };
        Ok(Self {
            path,
            map,
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.start..info.end]
    }

    /// Dequantize tensor `name` to f32 values in PyTorch (row-major) order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensors.get(name).ok_or_else(|| GgufError::Format {
            path: self.path.clone(),
            message: format!("no tensor `{name}`"),
        })?;
        crate::dequant::dequantize(info.ggml_type, self.bytes(info), info.numel()).map_err(|m| {
            GgufError::Format {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {m}"),
            }
        })
    }
}
