//! Writing GGUF files (version 3): metadata and F32/F16 tensors.
//!
//! Enough to make small, exact files for tests and tools — including deliberately broken ones:
//! [`GgufWriter::tensor_raw`] takes any type, dimensions, bytes and (optionally) offset, and
//! [`GgufWriter::tensor_count`] can declare a count that disagrees with the table.

use std::path::Path;

use crate::reader::{GgmlType, GgufValue};

/// One tensor entry: dimensions in PyTorch order, the type, its bytes, and an explicit offset
/// (relative to the data section) when the default (packed, aligned) one is not wanted.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    ty: u32,
    bytes: Vec<u8>,
    offset: Option<u64>,
}

/// A GGUF file under construction. Metadata keeps insertion order; setting a key again
/// replaces its value in place.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<Entry>,
    tensor_count: Option<u64>,
}

impl GgmlType {
    /// ggml's id of this type.
    pub fn id(&self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
            GgmlType::Other(id) => *id,
        }
    }
}

impl GgufValue {
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.push(*v as u8),
            GgufValue::U16(v) => out.extend(v.to_le_bytes()),
            GgufValue::I16(v) => out.extend(v.to_le_bytes()),
            GgufValue::U32(v) => out.extend(v.to_le_bytes()),
            GgufValue::I32(v) => out.extend(v.to_le_bytes()),
            GgufValue::F32(v) => out.extend(v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(u8::from(*v)),
            GgufValue::String(s) => write_str(out, s),
            GgufValue::Array(a) => {
                // the element type of an empty array does not matter; say u32
                out.extend(a.first().map_or(4, |v| v.type_id()).to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for v in a {
                    v.write(out);
                }
            }
            GgufValue::U64(v) => out.extend(v.to_le_bytes()),
            GgufValue::I64(v) => out.extend(v.to_le_bytes()),
            GgufValue::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set metadata `key` (replacing an earlier value in place).
    pub fn set(&mut self, key: &str, value: GgufValue) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Remove metadata `key`, if present.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    /// The value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Add an F32 tensor of `shape` (PyTorch order, row-major `data`).
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> &mut Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor `{name}`: shape and data disagree"
        );
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor_raw(name, shape, GgmlType::F32.id(), bytes, None)
    }

    /// Add a tensor as given: its type id, bytes, and an explicit data offset (`None`: the next
    /// aligned position). Nothing is checked, so broken files can be made on purpose.
    pub fn tensor_raw(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: u32,
        bytes: Vec<u8>,
        offset: Option<u64>,
    ) -> &mut Self {
        self.tensors.retain(|e| e.name != name);
        self.tensors.push(Entry {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            bytes,
            offset,
        });
        self
    }

    /// Remove tensor `name`, if present.
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|e| e.name != name);
        self
    }

    /// Declare this tensor count in the header instead of the real one.
    pub fn tensor_count(&mut self, n: u64) -> &mut Self {
        self.tensor_count = Some(n);
        self
    }

    /// Names of the tensors, in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.iter().map(|e| e.name.clone()).collect()
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(32) as usize;
        // packed, aligned data offsets
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut next = 0u64;
        for e in &self.tensors {
            let at = e.offset.unwrap_or(next);
            offsets.push(at);
            let end = at + e.bytes.len() as u64;
            next = next.max(end.div_ceil(alignment as u64) * alignment as u64);
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        let count = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        out.extend(count.to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        for (e, at) in self.tensors.iter().zip(&offsets) {
            write_str(&mut out, &e.name);
            out.extend((e.shape.len() as u32).to_le_bytes());
            for d in e.shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(e.ty.to_le_bytes());
            out.extend(at.to_le_bytes());
        }
        let data_start = out.len().div_ceil(alignment) * alignment;
        out.resize(data_start, 0);
        for (e, at) in self.tensors.iter().zip(&offsets) {
            let start = data_start + *at as usize;
            if out.len() < start + e.bytes.len() {
                out.resize(start + e.bytes.len(), 0);
            }
            out[start..start + e.bytes.len()].copy_from_slice(&e.bytes);
        }
        let end = out.len().div_ceil(alignment) * alignment;
        out.resize(end, 0);
        out
    }

    /// Write the file.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    #[test]
    fn written_files_read_back() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", GgufValue::String("gemma3".into()))
            .set("n", GgufValue::U32(7))
            .set(
                "list",
                GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-1.0)]),
            )
            .set("n", GgufValue::U64(8))
            .tensor_f32("a", &[2, 3], &[1., 2., 3., 4., 5., 6.])
            .tensor_f32("b", &[5], &[7.; 5]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        w.write(&p).unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.get("n"), Some(&GgufValue::U64(8)));
        assert_eq!(f.metadata.len(), 3);
        assert_eq!(
            f.get("list").and_then(|v| v.as_array()).map(|a| a.len()),
            Some(2)
        );
        assert_eq!(f.tensors["a"].shape(), vec![2, 3]);
        assert_eq!(f.tensors["a"].start % 32, 0);
        assert_eq!(f.tensors["b"].start % 32, 0);
        assert_eq!(f.dequantize("a").unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(f.dequantize("b").unwrap(), vec![7.; 5]);
    }
}
