//! Export to GGUF for llama.cpp, Ollama and LM Studio: [`export_gguf`] writes a loaded model
//! (an adapter merged first by the caller) with the names, layouts and metadata llama.cpp's
//! `convert_hf_to_gguf.py` writes for the same checkpoint, the tokenizer llama.cpp reads, and
//! each tensor in the type the converter (F32/F16/BF16/Q8_0) or `llama-quantize` (Q4_K_M) would
//! give it, quantized bit for bit as ggml does.

use std::path::{Path, PathBuf};

use automodel_core::Backend;
use automodel_core::tree::hf_tensors;
use automodel_gguf::export::DecoderHparams;
use automodel_gguf::export::{ExportError, FileType, TensorSpec, tensor_types, write_gguf};
use automodel_gguf::gemma3::{Gemma3Hparams, gguf_name};
use automodel_gguf::gemma3n::{Gemma3nHparams, Placement, placement};
use automodel_gguf::{GgmlType, GgufFile, GgufValue};
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_text::gemma3n::{Gemma3nTextConfig, Gemma3nTextModel};
use automodel_text::{LayerType, OneOrMany};
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
        if !["gemma3_text", "gemma3n_text", "gemma3n"].contains(&model_type) {
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
        AutoModel::Gemma3nText(m, tok) => gemma3n(&m.model, &m.prefix, tok, out, opts),
        AutoModel::Gemma3n(m) => {
            // the text model, as llama.cpp's converter writes it; the towers would go to an
            // mmproj file, which is not written here
            let ModelSource::Folder(dir) = source else {
                return Err(ModelError::Input(
                    "a full Gemma 3n comes from a folder".into(),
                ));
            };
            let tok = GemmaTokenizer::from_file(dir.join("tokenizer.json"))?;
            tracing::warn!(
                "exporting the text model of the full Gemma 3n; its vision and audio towers are not exported"
            );
            let prefix = automodel_text::gemma3n::model::CONDITIONAL_PREFIX;
            gemma3n(&m.model.language_model, prefix, &tok, out, opts)
        }
    }
}

/// The tokenizer metadata: a GGUF source's own `tokenizer.*` keys, verbatim; otherwise the
/// vocabulary of `tok` as llama.cpp's `llama` tokenizer stores it. The chat template is the
/// source's, else `chat_template`.
fn tokenizer_metadata(
    tok: &GemmaTokenizer,
    gguf_source: Option<&Path>,
    chat_template: Option<&str>,
) -> Result<Vec<(String, GgufValue)>, ModelError> {
    let mut md: Vec<(String, GgufValue)> = Vec::new();
    if let Some(path) = gguf_source {
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

/// llama.cpp's Gemma architectures compute GELU with the tanh approximation only.
fn check_activation(activation: &str, arch: &str) -> Result<(), ModelError> {
    if activation == "gelu_pytorch_tanh" {
        return Ok(());
    }
    Err(ExportError::Unsupported(format!(
        "hidden_activation is `{activation}`; llama.cpp's {arch} computes gelu_pytorch_tanh"
    ))
    .into())
}

/// The hyper-parameters both text configs (Gemma 3's, Gemma 3n's) hold under the same names,
/// with their RoPE bases.
macro_rules! decoder_hparams {
    ($c:expr, $local:expr, $global:expr) => {
        DecoderHparams {
            context_length: $c.max_position_embeddings,
            embedding_length: $c.hidden_size,
            block_count: $c.num_hidden_layers,
            head_count: $c.num_attention_heads,
            head_count_kv: $c.num_key_value_heads,
            head_dim: $c.head_dim,
            rms_norm_eps: $c.rms_norm_eps,
            rope_theta: $global,
            rope_local_theta: $local,
            sliding_window: $c.sliding_window,
            sliding: $c
                .layer_types()
                .iter()
                .map(|t| *t == LayerType::Sliding)
                .collect(),
            final_logit_softcapping: $c.final_logit_softcapping,
        }
    };
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
    check_activation(&c.hidden_activation, "gemma3")?;
    let (local, global) = c.rope_thetas();
    let hp = Gemma3Hparams {
        decoder: decoder_hparams!(c, local, global),
        feed_forward_length: c.intermediate_size,
        attn_logit_softcapping: c.attn_logit_softcapping,
        query_pre_attn_scalar: c.query_pre_attn_scalar,
    };
    let arch_md = hp.metadata().map_err(|e| {
        unsupported(format!(
            "this Gemma 3 cannot run in llama.cpp as it is: {e}"
        ))
    })?;
    let gguf_source = match source {
        ModelSource::Gguf(p) => Some(p.as_path()),
        ModelSource::Folder(_) => None,
    };
    let tok_md = tokenizer_metadata(tok, gguf_source, opts.chat_template.as_deref())?;
    let n_tokens = tok_md
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map_or(0, |a| a.len());

    // the weights, HF-named, in module order (layers ascending, as llama-quantize counts them)
    let weights = hf_tensors(m, "");
    let mut items = Vec::new();
    for key in weights.keys() {
        let (name, shift) = gguf_name(key).ok_or_else(|| {
            unsupported(format!(
                "tensor `{key}` has no llama.cpp name (merge adapters before exporting)"
            ))
        })?;
        let mut shape = weights.get(key).expect("listed").shape.to_vec();
        // as the converter: the embedding keeps the rows the vocabulary names
        let rows = (name == "token_embd.weight" && n_tokens > 0 && shape[0] > n_tokens)
            .then_some(n_tokens);
        if let Some(r) = rows {
            shape[0] = r;
        }
        items.push(Item {
            spec: TensorSpec { name, shape },
            from: Origin::One {
                key: key.to_string(),
                shift,
                rows,
            },
        });
    }
    write_model(
        out,
        opts,
        "gemma3",
        arch_md,
        tok_md,
        c.num_hidden_layers,
        &weights,
        items,
    )
}

fn gemma3n<B: Backend>(
    text: &Gemma3nTextModel<B>,
    prefix: &str,
    tok: &GemmaTokenizer,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ModelError> {
    let c = &text.config;
    let unsupported = |e: String| ModelError::from(ExportError::Unsupported(e));
    check_activation(&c.hidden_activation, "gemma3n")?;
    let (local, global) = c.rope_thetas()?;
    let n_layer = c.num_hidden_layers;
    let hp = Gemma3nHparams {
        decoder: decoder_hparams!(c, local, global),
        feed_forward_length: c.intermediate_sizes(),
        feed_forward_is_list: matches!(c.intermediate_size, OneOrMany::Many(_)),
        altup_active_idx: c.altup_active_idx,
        altup_num_inputs: c.altup_num_inputs,
        embedding_length_per_layer_input: c.hidden_size_per_layer_input,
        shared_kv_layers: c.num_kv_shared_layers,
        // the converter: torch's Normal(0, 1).icdf(p) in float32 (−∞ at 0)
        activation_sparsity_scale: c
            .activation_sparsity()
            .iter()
            .map(|&p| match p {
                p if p <= 0.0 => f64::NEG_INFINITY,
                p if p >= 1.0 => f64::INFINITY,
                p => automodel_core::nn::normal_icdf(p),
            })
            .collect(),
    };
    let arch_md = hp.metadata().map_err(|e| {
        unsupported(format!(
            "this Gemma 3n cannot run in llama.cpp as it is: {e}"
        ))
    })?;
    // what llama.cpp's gemma3n fixes instead of reading (the E2B and E4B shapes)
    let fixed = [
        (
            "layers that own a KV cache",
            n_layer.checked_sub(c.num_kv_shared_layers),
            20,
        ),
        ("laurel_rank", Some(c.laurel_rank), 64),
        (
            "hidden_size_per_layer_input",
            Some(c.hidden_size_per_layer_input),
            256,
        ),
    ];
    for (what, ours, llama) in fixed.iter().filter(|(_, o, l)| *o != Some(*l)) {
        tracing::warn!(
            "llama.cpp's gemma3n takes {llama} {what} (the E2B and E4B shapes); this model has {}, so llama.cpp will not load or run it as we do",
            ours.map_or("fewer".into(), |o| o.to_string())
        );
    }
    let sparse = |i: usize| if i < 10 { 0.95 } else { 0.0 };
    if c.activation_sparsity()
        .iter()
        .enumerate()
        .any(|(i, p)| *p != sparse(i))
    {
        tracing::warn!(
            "llama.cpp's gemma3n applies activation sparsity 0.95 to the first 10 layers and none to the others (E2B, E4B) whatever the file says; this model's activation_sparsity_pattern differs, so llama.cpp will not run it as we do"
        );
    }
    // no GGUF source: a Gemma 3n vocabulary differs from Gemma 3's (ids 256,000 and ≥ 262,144)
    let tok_md = tokenizer_metadata(tok, None, opts.chat_template.as_deref())?;
    let n_tokens = tok.vocab_size();
    if n_tokens != c.vocab_size {
        return Err(unsupported(format!(
            "the tokenizer has {n_tokens} tokens and the model's vocab_size is {}; llama.cpp needs one embedding row per token",
            c.vocab_size
        )));
    }

    let weights = hf_tensors(text, prefix);
    let mut items = Vec::new();
    let mut stacks: std::collections::BTreeMap<String, Vec<(usize, String)>> = Default::default();
    let stacked = c.altup_num_inputs - 1;
    for key in weights.keys() {
        let tail = key.strip_prefix(prefix).unwrap_or(key);
        let place = placement(tail).ok_or_else(|| {
            unsupported(format!(
                "tensor `{key}` has no llama.cpp name (merge adapters before exporting)"
            ))
        })?;
        let shape = weights.get(key).expect("listed").shape.to_vec();
        match place {
            Placement::Tensor(name) => {
                // as the converter: the embeddings padded with zero rows to the whole vocabulary
                let embd = name == "token_embd.weight" || name == "per_layer_token_embd.weight";
                let rows = (embd && shape[0] < c.vocab_size).then_some(c.vocab_size);
                let mut shape = shape;
                if let Some(r) = rows {
                    shape[0] = r;
                }
                items.push(Item {
                    spec: TensorSpec { name, shape },
                    from: Origin::One {
                        key: key.to_string(),
                        shift: false,
                        rows,
                    },
                });
            }
            Placement::Stacked { name, index } => {
                let parts = stacks.entry(name.clone()).or_default();
                parts.push((index, key.to_string()));
                if parts.len() == stacked {
                    parts.sort();
                    if parts.iter().enumerate().any(|(i, (j, _))| i != *j) {
                        return Err(unsupported(format!("`{name}`: unexpected parts {parts:?}")));
                    }
                    let mut full = vec![stacked];
                    full.extend(shape);
                    items.push(Item {
                        spec: TensorSpec { name, shape: full },
                        from: Origin::Stack(parts.iter().map(|(_, k)| k.clone()).collect()),
                    });
                }
            }
        }
    }
    // a stack with a part missing would leave llama.cpp's tensor out of the file
    if let Some((name, parts)) = stacks.iter().find(|(_, p)| p.len() != stacked) {
        return Err(unsupported(format!(
            "`{name}` needs {stacked} AltUp projections, the model has {}",
            parts.len()
        )));
    }
    let items = with_shared_kv_placeholders(items, c);
    write_model(
        out, opts, "gemma3n", arch_md, tok_md, n_layer, &weights, items,
    )
}

/// `items` with zero K and V projections and K norms for the layers that reuse another layer's
/// K/V: released checkpoints keep such (zero) tensors, so the converter writes them and
/// llama.cpp's `gemma3n` requires them (it never reads them); our model does not hold them.
/// Each goes right after its layer's query projection or query norm.
fn with_shared_kv_placeholders(items: Vec<Item>, c: &Gemma3nTextConfig) -> Vec<Item> {
    let first_shared = c.num_hidden_layers - c.num_kv_shared_layers;
    let kv = c.num_key_value_heads * c.head_dim;
    let zeros = |name: String, shape: Vec<usize>| Item {
        spec: TensorSpec { name, shape },
        from: Origin::Zeros,
    };
    let mut out = Vec::with_capacity(items.len() + 3 * c.num_kv_shared_layers);
    for item in items {
        let layer = item
            .spec
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, tail)| Some((i.parse::<usize>().ok()?, tail.to_string())));
        out.push(item);
        match layer {
            Some((i, tail)) if i >= first_shared && tail == "attn_q.weight" => {
                out.push(zeros(
                    format!("blk.{i}.attn_k.weight"),
                    vec![kv, c.hidden_size],
                ));
                out.push(zeros(
                    format!("blk.{i}.attn_v.weight"),
                    vec![kv, c.hidden_size],
                ));
            }
            Some((i, tail)) if i >= first_shared && tail == "attn_q_norm.weight" => {
                out.push(zeros(
                    format!("blk.{i}.attn_k_norm.weight"),
                    vec![c.head_dim],
                ));
            }
            _ => {}
        }
    }
    out
}

/// Where a tensor of the file comes from.
enum Origin {
    /// Zeros (a tensor llama.cpp requires but never reads).
    Zeros,
    /// One HF tensor; `1 + w` when `shift`; its rows cut or zero-padded to `rows`.
    One {
        key: String,
        shift: bool,
        rows: Option<usize>,
    },
    /// HF tensors stacked along a new first dimension.
    Stack(Vec<String>),
}

struct Item {
    spec: TensorSpec,
    from: Origin,
}

fn f32_values(data: &burn::tensor::TensorData) -> Result<Vec<f32>, String> {
    data.to_vec::<f32>()
        .or_else(|_| data.clone().convert::<f32>().to_vec::<f32>())
        .map_err(|e| format!("cannot read as f32: {e:?}"))
}

/// The general metadata around `arch_md` and `tok_md`, the types of `items`, and the file.
#[allow(clippy::too_many_arguments)]
fn write_model(
    out: &Path,
    opts: &ExportOptions,
    arch: &str,
    arch_md: Vec<(String, GgufValue)>,
    tok_md: Vec<(String, GgufValue)>,
    n_layer: usize,
    weights: &automodel_core::weights::TensorMap,
    items: Vec<Item>,
) -> Result<ExportSummary, ModelError> {
    let specs: Vec<TensorSpec> = items.iter().map(|i| i.spec.clone()).collect();
    let types = tensor_types(opts.file_type, &specs, n_layer);
    let mut md: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
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
    write_gguf(out, &md, &specs, &types, |i| match &items[i].from {
        Origin::One { key, shift, rows } => {
            let data = weights.get(key).expect("listed");
            let mut v = f32_values(data)?;
            if let Some(r) = rows {
                let width: usize = data.shape[1..].iter().product();
                v.resize(r * width, 0.0);
            }
            if *shift {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            Ok(v)
        }
        Origin::Zeros => Ok(vec![0.0; items[i].spec.shape.iter().product()]),
        Origin::Stack(keys) => {
            let mut v = Vec::new();
            for k in keys {
                v.extend(f32_values(weights.get(k).expect("listed"))?);
            }
            Ok(v)
        }
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(ExportSummary {
        path: out.to_path_buf(),
        tensors: specs.into_iter().map(|s| s.name).zip(types).collect(),
        bytes,
    })
}
