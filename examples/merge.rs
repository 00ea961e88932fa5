//! Merge a LoRA adapter into its base and save a plain Hugging Face folder (weights, config and
//! the tokenizer files) that transformers and this project load without PEFT.
//!
//!     cargo run --release -p automodel --example merge -- MODEL ADAPTER_DIR OUT_DIR
//!
//! `automodel::merge_lora` is the whole job; `merge_adapter` merges a loaded `AutoModel` in
//! memory (to generate from it, or save it elsewhere).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, adapter, out] = args.as_slice() else {
        return Err("usage: merge MODEL ADAPTER_DIR OUT_DIR".into());
    };
    let written =
        automodel::merge_lora(model.as_ref(), adapter.as_ref(), out.as_ref(), None, false)?;
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}
