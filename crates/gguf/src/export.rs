//! Writing a model as llama.cpp's tools do: which ggml type each tensor gets (the converter's
//! rules for F32/F16/BF16/Q8_0 files, `llama-quantize`'s mix for Q4_K_M), and a GGUF file
//! streamed tensor by tensor to a temporary sibling and renamed into place, so the file is
//! written whole or not at all.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::quant::quantize;
use crate::reader::{GgmlType, GgufValue};

/// Errors exporting a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model or a setting cannot be exported (said before anything is written).
    #[error("{0}")]
    Unsupported(String),
    /// Writing the file failed; nothing was left at the destination.
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    /// A tensor could not be produced or quantized.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
}

/// The file types `export-gguf --type` offers, as llama.cpp names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4KM,
}

impl FileType {
    /// Every type, with its command-line name.
    pub const ALL: [(FileType, &'static str); 5] = [
        (FileType::F32, "f32"),
        (FileType::F16, "f16"),
        (FileType::Bf16, "bf16"),
        (FileType::Q8_0, "q8_0"),
        (FileType::Q4KM, "q4_k_m"),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(t, _)| *t == self).unwrap().1
    }

    /// llama.cpp's `llama_ftype` (`general.file_type`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q8_0 => 7,
            FileType::Q4KM => 15,
            FileType::Bf16 => 32,
        }
    }
}

impl std::str::FromStr for FileType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(t, _)| *t)
            .ok_or_else(|| {
                format!(
                    "unknown GGUF type `{s}` (expected one of {})",
                    Self::ALL.map(|(_, n)| n).join(", ")
                )
            })
    }
}

/// One tensor of the file: its llama.cpp name and shape in PyTorch order (last dimension
/// contiguous, ggml's `ne[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Tensors the converter always keeps in F32 for the architectures exported here (besides 1-D
/// tensors and norms): Gemma 3n's AltUp coefficients.
fn converter_keeps_f32(name: &str) -> bool {
    name.ends_with("altup_correct_coef.weight") || name.ends_with("altup_predict_coef.weight")
}

/// The type `convert_hf_to_gguf.py --outtype` gives a tensor (no `llama-quantize` step).
fn converter_type(ft: FileType, t: &TensorSpec) -> GgmlType {
    let n_dims = t.shape.len();
    if n_dims <= 1 || t.name.ends_with("_norm.weight") || converter_keeps_f32(&t.name) {
        return GgmlType::F32;
    }
    let row = *t.shape.last().unwrap_or(&0);
    match ft {
        FileType::F32 => GgmlType::F32,
        FileType::F16 => GgmlType::F16,
        FileType::Bf16 => GgmlType::Bf16,
        // gguf's Q8_0 needs whole blocks per row; the converter falls back to F16
        FileType::Q8_0 if row.is_multiple_of(32) => GgmlType::Q8_0,
        FileType::Q8_0 => GgmlType::F16,
        FileType::Q4KM => GgmlType::F16,
    }
}

/// Whether `llama-quantize` quantizes this tensor at all (`tensor_allows_quantization`, the
/// rules that concern Gemma 3 and 3n).
fn quantize_allows(t: &TensorSpec) -> bool {
    let n = &t.name;
    t.shape.len() >= 2
        && n.ends_with("weight")
        && !n.contains("_norm.weight")
        && !n.contains("altup")
        && !n.contains("laurel")
        && !n.contains("per_layer_model_proj")
}

/// `llama-quantize`'s counters for Q4_K_M, in file order.
#[derive(Default)]
struct MixState {
    i_attention_wv: usize,
    n_attention_wv: usize,
    i_ffn_down: usize,
    n_layer: usize,
    tied: bool,
}

/// `use_more_bits` of `llama-quant.cpp`: the first and last eighth of the layers and every
/// third one between get more bits.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The fallback `llama-quantize` takes when a row is not a whole number of blocks.
fn fallback(t: &TensorSpec, ty: GgmlType) -> GgmlType {
    let row = *t.shape.last().unwrap_or(&0);
    let per = ty.block().map_or(1, |b| b.0);
    if row.is_multiple_of(per) {
        return ty;
    }
    let back = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if row.is_multiple_of(back.block().map_or(1, |b| b.0)) {
        back
    } else {
        GgmlType::F16
    }
}

impl MixState {
    /// `llama_tensor_get_type` for `LLAMA_FTYPE_MOSTLY_Q4_K_M` without an importance matrix,
    /// for a tensor that the converter stored as `stored`.
    fn q4_k_m(&mut self, t: &TensorSpec, stored: GgmlType) -> GgmlType {
        if !quantize_allows(t) {
            return stored;
        }
        let n = t.name.as_str();
        let row = *t.shape.last().unwrap_or(&0);
        let token_embd = n == "token_embd.weight" || n == "per_layer_token_embd.weight";
        let mut ty = GgmlType::Q4K;
        if n == "output.weight" || (self.tied && token_embd) {
            ty = if !row.is_multiple_of(256) {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6K
            };
        } else if token_embd {
            // the default type
        } else if n.contains("attn_v.weight") {
            if use_more_bits(self.i_attention_wv, self.n_attention_wv) {
                ty = GgmlType::Q6K;
            }
            self.i_attention_wv += 1;
        } else if n.contains("ffn_down") {
            if use_more_bits(self.i_ffn_down, self.n_layer) {
                ty = GgmlType::Q6K;
            }
            self.i_ffn_down += 1;
        }
        fallback(t, ty)
    }
}

/// The ggml type of each tensor in a file of type `ft` for a model of `n_layer` layers, as
/// llama.cpp's converter (F32/F16/BF16/Q8_0) or the converter's F16 file then `llama-quantize`
/// (Q4_K_M) would give it.
pub fn tensor_types(ft: FileType, tensors: &[TensorSpec], n_layer: usize) -> Vec<GgmlType> {
    let mut mix = MixState {
        n_attention_wv: tensors
            .iter()
            .filter(|t| t.name.contains("attn_v.weight"))
            .count(),
        n_layer,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
        ..Default::default()
    };
    tensors
        .iter()
        .map(|t| {
            let stored = converter_type(ft, t);
            match ft {
                FileType::Q4KM => mix.q4_k_m(t, stored),
                _ => stored,
            }
        })
        .collect()
}

/// The size in bytes of `shape` stored as `ty`, or why it cannot be.
fn byte_len(t: &TensorSpec, ty: GgmlType) -> Result<usize, ExportError> {
    let (per, size) = ty.block().ok_or_else(|| ExportError::Tensor {
        name: t.name.clone(),
        message: format!("type {ty:?} cannot be written"),
    })?;
    let n: usize = t.shape.iter().product();
    if !n.is_multiple_of(per) || t.shape.last().is_some_and(|r| !r.is_multiple_of(per)) {
        return Err(ExportError::Tensor {
            name: t.name.clone(),
            message: format!("rows of {:?} are not whole {ty:?} blocks", t.shape),
        });
    }
    Ok(n / per * size)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Write a GGUF (version 3) file at `path`: `metadata` in order, then `tensors` stored as
/// `types`, their f32 values produced one at a time by `data(i)` (row-major, PyTorch order) and
/// quantized as they are written. The file goes to a temporary sibling that is renamed over
/// `path` once complete, so a failure (a full disk, a tensor that cannot be produced) leaves
/// nothing at `path`. Alignment 32.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[TensorSpec],
    types: &[GgmlType],
    mut data: impl FnMut(usize) -> Result<Vec<f32>, String>,
) -> Result<(), ExportError> {
    const ALIGN: usize = 32;
    assert_eq!(tensors.len(), types.len(), "one type per tensor");
    let mut sizes = Vec::with_capacity(tensors.len());
    for (t, ty) in tensors.iter().zip(types) {
        sizes.push(byte_len(t, *ty)?);
    }
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_str(&mut head, k);
        head.extend(v.type_id().to_le_bytes());
        v.write(&mut head);
    }
    let mut offset = 0u64;
    for ((t, ty), size) in tensors.iter().zip(types).zip(&sizes) {
        write_str(&mut head, &t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(ty.id().to_le_bytes());
        head.extend(offset.to_le_bytes());
        offset = (offset + *size as u64).div_ceil(ALIGN as u64) * ALIGN as u64;
    }
    head.resize(head.len().div_ceil(ALIGN) * ALIGN, 0);

    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let werr = |e: std::io::Error| ExportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let result = (|| -> Result<(), ExportError> {
        let file = std::fs::File::create(&tmp).map_err(werr)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&head).map_err(werr)?;
        for (i, ((t, ty), size)) in tensors.iter().zip(types).zip(&sizes).enumerate() {
            let terr = |message: String| ExportError::Tensor {
                name: t.name.clone(),
                message,
            };
            let values = data(i).map_err(terr)?;
            if values.len() != t.shape.iter().product::<usize>() {
                return Err(terr(format!(
                    "{} values for shape {:?}",
                    values.len(),
                    t.shape
                )));
            }
            let bytes = quantize(*ty, &values).map_err(terr)?;
            debug_assert_eq!(bytes.len(), *size);
            out.write_all(&bytes).map_err(werr)?;
            let pad = size.div_ceil(ALIGN) * ALIGN - size;
            out.write_all(&[0u8; ALIGN][..pad]).map_err(werr)?;
        }
        let file = out.into_inner().map_err(|e| werr(e.into_error()))?;
        file.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// The Gemma 3 270M's tensors (18 layers, hidden 640, 4 heads of 256, 1 KV head, MLP 2048).
    fn gemma3_270m() -> Vec<TensorSpec> {
        let mut t = vec![
            spec("token_embd.weight", &[262144, 640]),
            spec("output_norm.weight", &[640]),
        ];
        for i in 0..18 {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            t.push(spec(&b("attn_q"), &[1024, 640]));
            t.push(spec(&b("attn_k"), &[256, 640]));
            t.push(spec(&b("attn_v"), &[256, 640]));
            t.push(spec(&b("attn_output"), &[640, 1024]));
            t.push(spec(&b("attn_q_norm"), &[256]));
            t.push(spec(&b("attn_norm"), &[640]));
            t.push(spec(&b("ffn_gate"), &[2048, 640]));
            t.push(spec(&b("ffn_up"), &[2048, 640]));
            t.push(spec(&b("ffn_down"), &[640, 2048]));
        }
        t
    }

    #[test]
    fn q4_k_m_mix_matches_llama_quantize_on_the_270m() {
        // what `llama-quantize Q4_K_M` wrote into the published gemma-3-270m Q4_K_M file
        let t = gemma3_270m();
        let types = tensor_types(FileType::Q4KM, &t, 18);
        let of = |n: &str| types[t.iter().position(|s| s.name == n).unwrap()];
        assert_eq!(of("token_embd.weight"), GgmlType::Q8_0); // Q6_K, 640 % 256 ≠ 0
        assert_eq!(of("output_norm.weight"), GgmlType::F32);
        assert_eq!(of("blk.0.attn_q.weight"), GgmlType::Q5_0); // Q4_K falls back
        assert_eq!(of("blk.0.attn_output.weight"), GgmlType::Q4K);
        assert_eq!(of("blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(of("blk.0.ffn_down.weight"), GgmlType::Q6K);
        // the published file: layers 0, 1 (< 18/8), 4, 7, 10, 13 (every third after), 15..17
        // (≥ 7·18/8) get more bits, in attn_v and ffn_down alike
        let more = [0, 1, 4, 7, 10, 13, 15, 16, 17];
        for i in 0..18 {
            let (v, d) = if more.contains(&i) {
                (GgmlType::Q8_0, GgmlType::Q6K)
            } else {
                (GgmlType::Q5_0, GgmlType::Q4K)
            };
            assert_eq!(of(&format!("blk.{i}.attn_v.weight")), v, "layer {i}");
            assert_eq!(of(&format!("blk.{i}.ffn_down.weight")), d, "layer {i}");
        }
        let q6k = types.iter().filter(|t| **t == GgmlType::Q6K).count();
        assert_eq!(q6k, 9, "the published file has 9 Q6_K tensors");
    }

    #[test]
    fn converter_types_keep_norms_and_vectors_f32() {
        let t = vec![
            spec("blk.0.attn_norm.weight", &[640]),
            spec("blk.0.attn_q.weight", &[1024, 640]),
            spec("blk.0.odd.weight", &[4, 48]),
            spec("blk.0.altup_predict_coef.weight", &[16, 4]),
        ];
        let f = |ft| tensor_types(ft, &t, 1);
        use GgmlType::*;
        assert_eq!(f(FileType::F16), vec![F32, F16, F16, F32]);
        assert_eq!(f(FileType::Bf16), vec![F32, Bf16, Bf16, F32]);
        assert_eq!(f(FileType::Q8_0), vec![F32, Q8_0, F16, F32]);
        assert_eq!(f(FileType::F32), vec![F32; 4]);
        assert_eq!("Q4_K_M".parse::<FileType>(), Ok(FileType::Q4KM));
        assert!("q3".parse::<FileType>().unwrap_err().contains("q4_k_m"));
    }

    #[test]
    fn streamed_file_reads_back_and_failures_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let t = vec![spec("a.weight", &[2, 64]), spec("b_norm.weight", &[3])];
        let md = vec![(
            "general.architecture".to_string(),
            GgufValue::String("x".into()),
        )];
        let vals = |i: usize| -> Result<Vec<f32>, String> {
            Ok(match i {
                0 => (0..128).map(|v| v as f32 / 64.0 - 1.0).collect(),
                _ => vec![1.0, 2.0, 3.0],
            })
        };
        let types = [GgmlType::Q8_0, GgmlType::F32];
        write_gguf(&path, &md, &t, &types, vals).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensors["a.weight"].shape(), vec![2, 64]);
        assert_eq!(f.dequantize("b_norm.weight").unwrap(), vec![1.0, 2.0, 3.0]);
        let a = f.dequantize("a.weight").unwrap();
        assert!((a[5] - (5.0 / 64.0 - 1.0)).abs() < 0.01);
        // a tensor that fails: the earlier file stays, no temporary is left
        let before = std::fs::read(&path).unwrap();
        let err = write_gguf(&path, &md, &t, &types, |i| match i {
            0 => Err("gone".into()),
            _ => vals(i),
        })
        .unwrap_err();
        assert!(err.to_string().contains("a.weight"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // a type that cannot hold the rows is refused before writing
        let err = write_gguf(&path, &md, &t, &[GgmlType::Q4K, GgmlType::F32], vals).unwrap_err();
        assert!(err.to_string().contains("whole"), "{err}");
    }
}

/// The hyper-parameters Gemma 3 and Gemma 3n write under the same GGUF keys (with their own
/// architecture prefix): sizes, attention, RoPE bases, the sliding-window layers, soft-capping.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderHparams {
    pub context_length: usize,
    pub embedding_length: usize,
    pub block_count: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of the global (full-attention) layers.
    pub rope_theta: f64,
    /// RoPE base of the sliding-window layers.
    pub rope_local_theta: f64,
    pub sliding_window: usize,
    /// Per layer: sliding-window attention.
    pub sliding: Vec<bool>,
    pub final_logit_softcapping: Option<f64>,
}

impl DecoderHparams {
    /// The keys under `arch.` in the order llama.cpp's converter writes them: the shared ones
    /// with `feed_forward_length` as the architecture gives it, then the architecture's `extra`
    /// keys, then the local RoPE base when it is not llama.cpp's 10,000. Refuses a `sliding`
    /// list of another length than `block_count`.
    pub fn metadata(
        &self,
        arch: &str,
        feed_forward_length: GgufValue,
        extra: Vec<(&str, GgufValue)>,
    ) -> Result<Vec<(String, GgufValue)>, String> {
        if self.sliding.len() != self.block_count {
            return Err(format!(
                "layer_types has {} entries for {} layers",
                self.sliding.len(),
                self.block_count
            ));
        }
        let u = |v: usize| GgufValue::U32(v as u32);
        let f = |v: f64| GgufValue::F32(v as f32);
        let mut md = vec![
            ("context_length", u(self.context_length)),
            ("embedding_length", u(self.embedding_length)),
            ("block_count", u(self.block_count)),
            ("feed_forward_length", feed_forward_length),
            ("attention.head_count", u(self.head_count)),
            ("attention.layer_norm_rms_epsilon", f(self.rms_norm_eps)),
            ("attention.key_length", u(self.head_dim)),
            ("attention.value_length", u(self.head_dim)),
            ("rope.freq_base", f(self.rope_theta)),
        ];
        if let Some(c) = self.final_logit_softcapping {
            md.push(("final_logit_softcapping", f(c)));
        }
        md.push(("attention.sliding_window", u(self.sliding_window)));
        md.push(("attention.head_count_kv", u(self.head_count_kv)));
        md.extend(extra);
        if self.rope_local_theta != 10_000.0 {
            md.push(("rope.freq_base_swa", f(self.rope_local_theta)));
        }
        Ok(md
            .into_iter()
            .map(|(k, v)| (format!("{arch}.{k}"), v))
            .collect())
    }
}
