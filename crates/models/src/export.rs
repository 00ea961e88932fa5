//! Export to GGUF for llama.cpp, Ollama and LM Studio: [`export_gguf`] writes a loaded model
//! (an adapter merged first by the caller) with the names, layouts and metadata llama.cpp's
//! `convert_hf_to_gguf.py` writes for the same checkpoint, the tokenizer llama.cpp reads, and
//! each tensor in the type the converter (F32/F16/BF16/Q8_0) or `llama-quantize` (Q4_K_M) would
//! give it, quantized bit for bit as ggml does.

use std::path::{Path, PathBuf};

use automodel_core::Backend;
use automodel_core::tree::hf_tensors;
use automodel_gguf::export::{ExportError, FileType, TensorSpec, tensor_types, write_gguf};
use automodel_gguf::gemma3::{Gemma3Hparams, gguf_name};
use automodel_gguf::{GgmlType, GgufFile, GgufValue};
use automodel_text::LayerType;
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_tokenizer::GemmaTokenizer;

use crate::{AutoModel, ModelError, ModelSource};

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub file_type: FileType,
    /// `general.name`.
    pub name: String,
    /// The chat template (Jinja) to store when the source has none of its own.
    pub chat_template: Option<String>,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub path: PathBuf,
    /// Every tensor's llama.cpp name and type, in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// The file's size.
    pub bytes: u64,
}

/// The tokenizer keys in the order llama.cpp's converter writes them.
const TOKENIZER_KEYS: [&str; 14] = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
];

/// Refuse a destination that exists (unless `overwrite`) or is not a file path.
pub fn check_destination(out: &Path, overwrite: bool) -> Result<(), ModelError> {
    if out.is_dir() {
        return Err(ModelError::Input(format!(
            "{} is a folder; --out names the .gguf file to write",
            out.display()
        )));
    }
    if out.exists() && !overwrite {
        return Err(ModelError::Input(format!(
            "{} already exists; pass --overwrite to replace it",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(ModelError::Input(format!(
            "{}: no such folder for {}",
            parent.display(),
            out.display()
        )));
    }
    Ok(())
}

/// Refuse, before anything is loaded, a model whose class cannot be exported yet (a folder is
/// told by `config.json`'s `model_type`; a GGUF file is Gemma 3).
pub fn check_exportable(source: &ModelSource) -> Result<(), ModelError> {
    if let ModelSource::Folder(dir) = source {
        let (model_type, _) = crate::auto::model_type(&dir.join("config.json"))?;
        if model_type != "gemma3_text" {
            return Err(ExportError::Unsupported(format!(
                "{}: exporting `{model_type}` models to GGUF is not supported yet (Gemma 3, `gemma3_text`, is); see docs/export.md",
                dir.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Write `model` (loaded from `source`) as a GGUF file at `out`, whole or not at all.
/// Architectures llama.cpp cannot run as we would are refused before anything is written.
pub fn export_gguf<B: Backend>(
    model: &AutoModel<B>,
    source: &ModelSource,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ModelError> {
    check_destination(out, opts.overwrite)?;
    match model {
        AutoModel::Gemma3(m, tok) => gemma3(m, tok, source, out, opts),
        AutoModel::Gemma3nText(..) => Err(ExportError::Unsupported(
            "exporting the Gemma 3n text model to GGUF is not supported yet (Gemma 3 is); see docs/export.md"
                .into(),
        )
        .into()),
        AutoModel::Gemma3n(_) => Err(ExportError::Unsupported(
            "exporting the full Gemma 3n (text, vision, audio) to GGUF is not supported yet; see docs/export.md"
                .into(),
        )
        .into()),
    }
}

/// The tokenizer metadata: a GGUF source's own `tokenizer.*` keys, verbatim; otherwise the
/// vocabulary of `tok` as llama.cpp's `llama` tokenizer stores it. The chat template is the
/// source's, else `chat_template`.
fn tokenizer_metadata(
    tok: &GemmaTokenizer,
    source: &ModelSource,
    chat_template: Option<&str>,
) -> Result<Vec<(String, GgufValue)>, ModelError> {
    let mut md: Vec<(String, GgufValue)> = Vec::new();
    if let ModelSource::Gguf(path) = source {
        let f = GgufFile::open(path)?;
        for k in TOKENIZER_KEYS {
            if let Some(v) = f.get(k) {
                md.push((k.to_string(), v.clone()));
            }
        }
        for (k, v) in &f.metadata {
            if k.starts_with("tokenizer.") && !TOKENIZER_KEYS.contains(&k.as_str()) {
                md.push((k.clone(), v.clone()));
            }
        }
    } else {
        let v = tok.llama_vocab();
        let id = |t: &str| {
            tok.inner
                .token_to_id(t)
                .map(GgufValue::U32)
                .ok_or_else(|| ModelError::Input(format!("the vocabulary has no `{t}` token")))
        };
        md.extend([
            (
                "tokenizer.ggml.model".into(),
                GgufValue::String("llama".into()),
            ),
            (
                "tokenizer.ggml.pre".into(),
                GgufValue::String("default".into()),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                GgufValue::Array(v.tokens.into_iter().map(GgufValue::String).collect()),
            ),
            (
                "tokenizer.ggml.scores".into(),
                GgufValue::Array(v.scores.into_iter().map(GgufValue::F32).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::Array(v.types.into_iter().map(GgufValue::I32).collect()),
            ),
            (
                "tokenizer.ggml.bos_token_id".into(),
                GgufValue::U32(tok.bos_id),
            ),
            (
                "tokenizer.ggml.eos_token_id".into(),
                GgufValue::U32(tok.eos_id),
            ),
            ("tokenizer.ggml.unknown_token_id".into(), id("<unk>")?),
            (
                "tokenizer.ggml.padding_token_id".into(),
                GgufValue::U32(tok.pad_id),
            ),
            ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true)),
            (
                "tokenizer.ggml.add_sep_token".into(),
                GgufValue::Bool(false),
            ),
            (
                "tokenizer.ggml.add_eos_token".into(),
                GgufValue::Bool(false),
            ),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                GgufValue::Bool(false),
            ),
        ]);
    }
    if !md.iter().any(|(k, _)| k == "tokenizer.chat_template")
        && let Some(t) = chat_template
    {
        md.push((
            "tokenizer.chat_template".into(),
            GgufValue::String(t.to_string()),
        ));
    }
    Ok(md)
}

fn gemma3<B: Backend>(
    m: &Gemma3ForCausalLM<B>,
    tok: &GemmaTokenizer,
    source: &ModelSource,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ModelError> {
    let c = &m.config;
    let unsupported = |e: String| ModelError::from(ExportError::Unsupported(e));
    if c.hidden_activation != "gelu_pytorch_tanh" {
        return Err(unsupported(format!(
            "hidden_activation is `{}`; llama.cpp's gemma3 computes gelu_pytorch_tanh",
            c.hidden_activation
        )));
    }
    let (local, global) = c.rope_thetas();
    let hp = Gemma3Hparams {
        context_length: c.max_position_embeddings,
        embedding_length: c.hidden_size,
        block_count: c.num_hidden_layers,
        feed_forward_length: c.intermediate_size,
        head_count: c.num_attention_heads,
        head_count_kv: c.num_key_value_heads,
        head_dim: c.head_dim,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: global,
        rope_local_theta: local,
        sliding_window: c.sliding_window,
        sliding: c
            .layer_types()
            .iter()
            .map(|t| *t == LayerType::Sliding)
            .collect(),
        final_logit_softcapping: c.final_logit_softcapping,
        attn_logit_softcapping: c.attn_logit_softcapping,
        query_pre_attn_scalar: c.query_pre_attn_scalar,
    };
    let arch_md = hp.metadata().map_err(|e| {
        unsupported(format!(
            "this Gemma 3 cannot run in llama.cpp as it is: {e}"
        ))
    })?;
    let tok_md = tokenizer_metadata(tok, source, opts.chat_template.as_deref())?;
    let n_tokens = tok_md
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map_or(0, |a| a.len());

    // the weights, HF-named, in module order (layers ascending, as llama-quantize counts them)
    let weights = hf_tensors(m, "");
    let mut specs = Vec::new();
    let mut plan = Vec::new();
    for key in weights.keys() {
        let (name, norm) = gguf_name(key).ok_or_else(|| {
            unsupported(format!(
                "tensor `{key}` has no llama.cpp name (merge adapters before exporting)"
            ))
        })?;
        let data = weights.get(key).expect("listed");
        let mut shape = data.shape.to_vec();
        // as the converter: the embedding keeps the rows the vocabulary names
        let rows = (name == "token_embd.weight" && n_tokens > 0 && shape[0] > n_tokens)
            .then_some(n_tokens);
        if let Some(r) = rows {
            shape[0] = r;
        }
        specs.push(TensorSpec { name, shape });
        plan.push((key.to_string(), norm, rows));
    }
    let types = tensor_types(opts.file_type, &specs, c.num_hidden_layers);

    let mut md: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String("gemma3".into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(opts.name.clone())),
    ];
    md.extend(arch_md);
    md.extend(tok_md);
    md.push(("general.quantization_version".into(), GgufValue::U32(2)));
    md.push((
        "general.file_type".into(),
        GgufValue::U32(opts.file_type.llama_ftype()),
    ));

    write_gguf(out, &md, &specs, &types, |i| {
        let (key, norm, rows) = &plan[i];
        let data = weights.get(key).expect("listed");
        let mut v = data
            .to_vec::<f32>()
            .or_else(|_| data.clone().convert::<f32>().to_vec::<f32>())
            .map_err(|e| format!("cannot read as f32: {e:?}"))?;
        if let Some(r) = rows {
            v.truncate(r * data.shape[1]);
        }
        if *norm {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        Ok(v)
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(ExportSummary {
        path: out.to_path_buf(),
        tensors: specs.into_iter().map(|s| s.name).zip(types).collect(),
        bytes,
    })
}
