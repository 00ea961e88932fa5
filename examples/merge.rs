//! Merge a LoRA adapter into its base and save a plain Hugging Face folder (weights, config and
//! the tokenizer files) that transformers and this project load without PEFT.
//!
//!     cargo run --release -p automodel --example merge -- MODEL ADAPTER_DIR OUT_DIR

use automodel::core::weights::copy_side_files;
use automodel::models::convert::write_tokenizer_files;
use automodel::{AutoModel, ModelSource, load_adapter, merge};
use burn::backend::Flex;
use burn::tensor::DType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, adapter, out] = args.as_slice() else {
        return Err("usage: merge MODEL ADAPTER_DIR OUT_DIR".into());
    };
    let (adapter, out) = (adapter.as_ref(), std::path::Path::new(out));
    let merged = match AutoModel::<Flex>::from_pretrained(model, &Default::default(), DType::F32)? {
        AutoModel::Gemma3(m, tok) => {
            let (m, cfg, _, _) = load_adapter(m, adapter)?;
            AutoModel::Gemma3(merge(m, &cfg), tok)
        }
        AutoModel::Gemma3nText(m, tok) => {
            let (m, cfg, _, _) = load_adapter(m, adapter)?;
            AutoModel::Gemma3nText(merge(m, &cfg), tok)
        }
        AutoModel::Gemma3n(m) => {
            let (m, cfg, _, _) = load_adapter(m, adapter)?;
            AutoModel::Gemma3n(merge(m, &cfg))
        }
    };
    std::fs::create_dir_all(out)?;
    let mut written = merged.save_pretrained(out, None)?;
    // the tokenizer files: the base folder's, or a GGUF file's vocabulary written as HF files
    match (ModelSource::detect(model.as_ref())?, &merged) {
        (ModelSource::Gguf(_), AutoModel::Gemma3(m, tok)) => written.extend(write_tokenizer_files(
            tok,
            m.config.max_position_embeddings,
            out,
        )?),
        (source, _) => written.extend(copy_side_files(source.path(), out)?),
    }
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}
