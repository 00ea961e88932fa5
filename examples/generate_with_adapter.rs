//! Greedy generation with a LoRA adapter (PEFT's files), unmerged, on any text model the
//! registry loads (a GGUF file or a Hugging Face folder of Gemma 3 or the Gemma 3n text model);
//! without an adapter, the model alone.
//!
//!     cargo run --release -p automodel --example generate_with_adapter -- MODEL "prompt" [ADAPTER_DIR]

use automodel::text::TextError;
use automodel::text::generate::TextPrompt;
use automodel::{AutoModel, Backend, GemmaTokenizer, Generate, GenerationConfig, PeftModel};
use burn::backend::Flex;
use burn::tensor::DType;

fn run<B: Backend, M>(
    model: M,
    tok: &GemmaTokenizer,
    prompt: &str,
    adapter: Option<&String>,
) -> Result<String, Box<dyn std::error::Error>>
where
    M: PeftModel<B> + Generate<B, Prompt = TextPrompt, Error = TextError>,
{
    let model = match adapter {
        Some(dir) => automodel::load_adapter(model, dir.as_ref())?.0,
        None => model,
    };
    let ids = tok
        .encode(prompt, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    let stop = tok.stop_ids().into_iter().map(i64::from).collect();
    let out = model.generate(
        &TextPrompt::single(ids),
        &GenerationConfig::greedy(32, stop),
        |_| {},
    )?;
    let new: Vec<u32> = out.generated[0].iter().map(|&t| t as u32).collect();
    Ok(tok.decode(&new, true)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, prompt, adapter) = match args.as_slice() {
        [m, p] => (m, p, None),
        [m, p, a] => (m, p, Some(a)),
        _ => return Err("usage: generate_with_adapter MODEL PROMPT [ADAPTER_DIR]".into()),
    };
    let answer = match AutoModel::<Flex>::from_pretrained(model, &Default::default(), DType::F32)? {
        AutoModel::Gemma3(m, tok) => run(m, &tok, prompt, adapter)?,
        AutoModel::Gemma3nText(m, tok) => run(m, &tok, prompt, adapter)?,
        AutoModel::Gemma3n(_) => {
            return Err("the full Gemma 3n: use `automodel-cli generate`".into());
        }
    };
    println!("{answer}");
    Ok(())
}
