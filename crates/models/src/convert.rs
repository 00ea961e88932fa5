//! Gemma 3 GGUF files: [`load_gguf`] runs one directly; [`gguf_to_hf`] turns one into a Hugging
//! Face folder that `transformers` (`AutoModelForCausalLM.from_pretrained(dir)`,
//! `AutoTokenizer.from_pretrained(dir)`) and [`Gemma3ForCausalLM::from_pretrained`] load: `config.json`, `model.safetensors` (float32,
//! dequantized, HF key names and norm convention), `tokenizer.json`, `tokenizer_config.json`
//! and `generation_config.json`.

use std::path::{Path, PathBuf};

use automodel_core::Backend;
use automodel_core::CpuBackend;
use automodel_core::weights::{write_atomic, write_folder};
use automodel_gguf::GgufFile;
use automodel_gguf::gemma3::Gemma3Gguf;
use automodel_text::gemma3::{Gemma3ForCausalLM, Gemma3TextConfig};
use automodel_tokenizer::GemmaTokenizer;
use burn::tensor::DType;

use automodel_gemma3n::ModelError;

/// Files a converted folder is made of; [`gguf_to_hf`] refuses to overwrite any of them unless
/// asked to.
pub const HF_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// Load a Gemma 3 GGUF file: the model (weights dequantized to `dtype`, config from the GGUF
/// metadata) and the tokenizer built from its vocabulary.
pub fn load_gguf<B: Backend>(
    gguf: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<(Gemma3ForCausalLM<B>, GemmaTokenizer), ModelError> {
    let file = GgufFile::open(gguf)?;
    let tok = GemmaTokenizer::from_gguf(&file)?;
    let src = Gemma3Gguf::new(file)?;
    let cfg = Gemma3TextConfig::from_value(&src.hf_config()?).map_err(|e| src.metadata_error(e))?;
    let model = Gemma3ForCausalLM::from_source(&src, &cfg, device, dtype)?;
    Ok((model, tok))
}

/// Refuse to write model files into `out` when some already exist, unless `overwrite`.
pub fn check_overwrite(out: &Path, overwrite: bool) -> Result<(), ModelError> {
    if !overwrite && let Some(existing) = HF_FILES.iter().map(|f| out.join(f)).find(|p| p.exists())
    {
        return Err(ModelError::Input(format!(
            "{} already exists; choose an empty folder or allow overwriting",
            existing.display()
        )));
    }
    Ok(())
}

/// Write the tokenizer files of a Gemma 3 model into `out` (`tokenizer.json`,
/// `tokenizer_config.json` with the context length, `generation_config.json` with the stop
/// ids), atomically. Returns the files written.
pub fn write_tokenizer_files(
    tok: &GemmaTokenizer,
    max_position_embeddings: usize,
    out: &Path,
) -> Result<Vec<PathBuf>, ModelError> {
    let tok_path = out.join("tokenizer.json");
    tok.save(&tok_path)?;
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("serialisable");
    let tc = out.join("tokenizer_config.json");
    let mut tok_cfg = tok.hf_tokenizer_config();
    tok_cfg["model_max_length"] = max_position_embeddings.into();
    write_atomic(&tc, json(&tok_cfg).as_bytes())?;
    let gc = out.join("generation_config.json");
    let gen_cfg = serde_json::json!({
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.stop_ids(),
        "pad_token_id": tok.pad_id,
    });
    write_atomic(&gc, json(&gen_cfg).as_bytes())?;
    Ok(vec![tok_path, tc, gc])
}

/// Convert `gguf` into a Hugging Face folder `out` (created if needed); shards the weights when
/// `max_shard_bytes` is given. Existing model files in `out` are an error unless `overwrite`;
/// every file is written atomically. Returns the files written.
pub fn gguf_to_hf(
    gguf: &Path,
    out: &Path,
    max_shard_bytes: Option<usize>,
    overwrite: bool,
) -> Result<Vec<PathBuf>, ModelError> {
    check_overwrite(out, overwrite)?;
    let (model, tok) = load_gguf::<CpuBackend>(gguf, &Default::default(), DType::F32)?;
    write_folder(out, |dir| -> Result<Vec<PathBuf>, ModelError> {
        let mut written = model.save_pretrained(dir, max_shard_bytes)?;
        let n_pos = model.config.max_position_embeddings;
        written.extend(write_tokenizer_files(&tok, n_pos, dir)?);
        Ok(written)
    })
}
