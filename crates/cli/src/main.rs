//! `automodel-cli`: run Gemma models from the command line.
//!
//! `generate --model <file.gguf | HF folder> --prompt TEXT [--image F]... [--audio F]...
//! [--chat [--system TEXT]] [--adapter DIR] [--device cpu|cuda[:N]|wgpu[:N|:cpu]]` streams a continuation (with
//! `--chat`, the answer to the prompt as a user turn of the model's chat template). GGUF files hold Gemma 3
//! (model and tokenizer); a Hugging Face folder holds `config.json`, safetensors and
//! `tokenizer.json` of Gemma 3, the Gemma 3n text model or the full Gemma 3n (images and audio
//! need the full Gemma 3n). `--adapter` runs with a PEFT LoRA adapter, unmerged.
//! `convert --model <file.gguf> --out DIR` writes such a folder from a GGUF file;
//! `merge-lora --model M --adapter A --out DIR` writes the base with the adapter merged in.
//! `data --config RECIPE [--show N] [--validation]` shows a recipe's dataset as the model sees it.
//! `finetune [--config RECIPE] [--set key.path=value]... [--output-dir DIR] [--resume]
//! [--device D]` fine-tunes from a recipe (default: `recipes/default.yaml`).
//! `launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] --
//! finetune ...` runs a data-parallel fine-tune, one worker process per device.

// jemalloc, tuned for training's large short-lived tensors (see `automodel::core::jemalloc!`)
automodel::core::jemalloc!();

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use automodel::core::AutodiffBackend;
use automodel::core::Backend;
use automodel::core::device::{DeviceSpec, OnDevice, run_on};
use automodel::gemma3n::Gemma3nForConditionalGeneration;
use automodel::gemma3n::processor::{AUDIO_TOKEN, Gemma3nProcessor, IMAGE_TOKEN, Padding, Prompt};
use automodel::models::{AutoModel, ModelSource};
use automodel::peft::PeftModel;
use automodel::text::generate::TextPrompt;
use automodel::text::{Generate, GenerationConfig};
use automodel::tokenizer::GemmaTokenizer;
use burn::tensor::DType;
use clap::{Parser, Subcommand};

mod data;
mod finetune;
mod launch;

#[derive(Parser)]
#[command(name = "automodel-cli", version, about = "Gemma 3 / Gemma 3n in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt.
    Generate(GenerateArgs),
    /// Turn a Gemma 3 GGUF file into a Hugging Face folder (config, float32 safetensors,
    /// tokenizer) that transformers and `generate --model DIR` load.
    Convert(ConvertArgs),
    /// Merge a LoRA adapter (PEFT's format) into its base and write a plain Hugging Face folder
    /// (weights, config, and the base's tokenizer files).
    MergeLora(MergeArgs),
    /// Show a recipe's dataset as the model sees it: rendered samples with the labelled spans
    /// marked ⟦…⟧, and statistics (tokens, label tokens, lengths, what was truncated, dropped or
    /// skipped and why).
    Data(data::DataArgs),
    /// Fine-tune (LoRA or full) from a YAML recipe; without --config, the built-in default
    /// (LoRA on Gemma 3 270M with the built-in instruction task, CPU, a few minutes).
    Finetune(finetune::FinetuneArgs),
    /// Write a model (with a LoRA adapter merged) as a GGUF file for llama.cpp, Ollama and LM
    /// Studio: llama.cpp's names, metadata and tokenizer, each tensor typed and quantized as
    /// llama.cpp's converter and llama-quantize do.
    ExportGguf(ExportArgs),
    /// Start a data-parallel fine-tune as torchrun does: `launch --nproc-per-node N [--nnodes M
    /// --node-rank R --master-addr A --master-port P] -- finetune ...` runs N workers here
    /// (rank 0 writes the logs and checkpoints) and stops them all if one fails.
    Launch(launch::LaunchArgs),
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The base: a GGUF file (Gemma 3) or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    adapter: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The base: a GGUF file (Gemma 3) or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter folder (PEFT's format) to merge first.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The .gguf file to write.
    #[arg(long)]
    out: PathBuf,
    /// f32, f16, bf16, q8_0 or q4_k_m.
    #[arg(long = "type", default_value = "f16")]
    file_type: automodel::gguf::export::FileType,
    /// `general.name` (default: the adapter's or the model's file name).
    #[arg(long)]
    name: Option<String>,
    /// Replace the file if it exists.
    #[arg(long)]
    overwrite: bool,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The GGUF file (Gemma 3).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

/// Where and how a command writes a model folder.
#[derive(clap::Args)]
struct OutputArgs {
    /// The folder to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Split the weights into shards of at most this many MB (as HF's `max_shard_size`).
    #[arg(long)]
    max_shard_mb: Option<usize>,
    /// Replace model files that already exist in the folder.
    #[arg(long)]
    overwrite: bool,
}

impl OutputArgs {
    fn shard_bytes(&self) -> Option<usize> {
        self.max_shard_mb.map(|mb| mb * 1_000_000)
    }
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A GGUF file (Gemma 3) or a Hugging Face folder (Gemma 3 or Gemma 3n).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Images for Gemma 3n (PNG, JPEG, WebP), placed after the prompt.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Audio clips for Gemma 3n (WAV, FLAC, MP3, OGG), placed after the images.
    #[arg(long)]
    audio: Vec<PathBuf>,
    /// How many tokens to generate at most (a whole number ≥ 0; prompt + new tokens must fit
    /// the model's context).
    #[arg(long, default_value_t = 64, value_parser = whole, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    sample: bool,
    /// Sampling temperature (a positive number).
    #[arg(long, default_value_t = 1.0, value_parser = positive, allow_negative_numbers = true)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 64)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p, in (0, 1].
    #[arg(long, default_value_t = 0.95, value_parser = probability, allow_negative_numbers = true)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Render the prompt as a user turn through the model's chat template (the folder's
    /// `chat_template.jinja` / `tokenizer_config.json`, else the built-in Gemma template), with
    /// the images and clips first and the model's turn opened; only the answer is printed.
    #[arg(long)]
    chat: bool,
    /// A system turn for `--chat`.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// A LoRA adapter folder (PEFT's format) to run with, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Where to run: `cpu`, `cuda[:N]` or `wgpu[:N|:cpu]` (builds with `--features cuda` / `wgpu`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// A positive, finite number.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// A whole number ≥ 0.
fn whole(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| format!("`{s}` is not a whole number ≥ 0"))
}

/// A number in (0, 1].
fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("`{s}` is not in (0, 1]")),
    }
}

fn main() -> std::process::ExitCode {
    jemalloc_setup();
    automodel::core::init_stderr_logs!();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if interrupted(&e) => {
            eprintln!("{e:#}");
            std::process::ExitCode::from(automodel::train::interrupt::EXIT_STATUS)
        }
        Err(e) => {
            // one message: the error and its causes, no backtrace unless RUST_BACKTRACE asks
            eprintln!("error: {e:#}");
            if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("{}", e.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A run stopped on Ctrl-C or SIGTERM after saving (exit status 130, as a shell reports it).
fn interrupted(e: &anyhow::Error) -> bool {
    use automodel::distributed::LaunchError;
    use automodel::train::TrainError;
    matches!(e.downcast_ref(), Some(TrainError::Interrupted { .. }))
        || matches!(e.downcast_ref(), Some(LaunchError::Interrupted))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => run_on(a.device, a)?,
        Command::Convert(a) => convert(a),
        Command::MergeLora(a) => merge_lora(a),
        Command::ExportGguf(a) => export_gguf(a),
        Command::Data(a) => data::data(a),
        Command::Finetune(a) => finetune::finetune(a),
        Command::Launch(a) => launch::launch(a),
    }
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    if let ModelSource::Folder(d) = ModelSource::detect(&a.model)? {
        bail!(
            "{}: a folder; convert takes a GGUF file (a Hugging Face folder is loaded as it is by generate, merge-lora and finetune)",
            d.display()
        );
    }
    let o = &a.output;
    let files =
        automodel::models::convert::gguf_to_hf(&a.model, &o.out, o.shard_bytes(), o.overwrite)
            .with_context(|| format!("converting {}", a.model.display()))?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// Prints the decoded text as it grows.
struct Streamer<'a> {
    tok: &'a GemmaTokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> Streamer<'a> {
    fn new(tok: &'a GemmaTokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            printed: 0,
        }
    }

    fn push(&mut self, id: i64) {
        self.ids.push(id as u32);
        if let Ok(text) = self.tok.decode(&self.ids, true)
            && text.len() > self.printed
            && text.is_char_boundary(self.printed)
            && !text.ends_with('\u{FFFD}')
        {
            print!("{}", &text[self.printed..]);
            let _ = std::io::stdout().flush();
            self.printed = text.len();
        }
    }
}

impl GenerateArgs {
    fn generation_config(&self, tok: &GemmaTokenizer) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            do_sample: self.sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids: tok.stop_ids().into_iter().map(i64::from).collect(),
            pad_token_id: i64::from(tok.pad_id),
        }
    }

    fn has_media(&self) -> bool {
        !self.image.is_empty() || !self.audio.is_empty()
    }

    /// The text to tokenize and whether to echo it: the prompt itself, or with `--chat` the
    /// rendered conversation (placeholders included for the media).
    fn prompt_text(&self) -> anyhow::Result<(String, bool)> {
        use automodel::data::{ChatTemplate, Conversation, Media, Message, Part, Role};
        if !self.chat {
            return Ok((
                format!(
                    "{}{}{}",
                    self.prompt,
                    IMAGE_TOKEN.repeat(self.image.len()),
                    AUDIO_TOKEN.repeat(self.audio.len())
                ),
                true,
            ));
        }
        let template = if self.model.is_dir() {
            ChatTemplate::from_dir(&self.model)?
        } else {
            ChatTemplate::gemma()
        };
        let mut content: Vec<Part> = Vec::new();
        content.extend(
            self.image
                .iter()
                .map(|p| Part::Image(Media::Path(p.clone()))),
        );
        content.extend(
            self.audio
                .iter()
                .map(|p| Part::Audio(Media::Path(p.clone()))),
        );
        content.push(Part::Text(self.prompt.clone()));
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(Message::text(Role::System, s.clone()));
        }
        messages.push(Message {
            role: Role::User,
            content,
        });
        let text = template
            .render(&Conversation { messages }, true)
            .with_context(|| format!("rendering the chat template ({})", template.source))?;
        Ok((text, false))
    }
}

impl OnDevice for GenerateArgs {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        generate::<B::InnerBackend>(&self, &device)
    }
}

/// `model` with the adapter in `dir` (when given), unmerged.
fn with_adapter<B: Backend, M: PeftModel<B>>(model: M, dir: Option<&Path>) -> anyhow::Result<M> {
    match dir {
        None => Ok(model),
        Some(d) => {
            let (m, _, _, report) = automodel::peft::load_adapter(model, d)
                .with_context(|| format!("loading the adapter {}", d.display()))?;
            eprintln!(
                "adapter {}: {} linear layers",
                d.display(),
                report.adapted()
            );
            Ok(m)
        }
    }
}

fn export_gguf(a: ExportArgs) -> anyhow::Result<()> {
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = a
        .name
        .clone()
        .or_else(|| a.adapter.as_deref().and_then(stem));
    let options = automodel::models::export::ExportOptions {
        file_type: a.file_type,
        name: name
            .or_else(|| stem(&a.model))
            .unwrap_or_else(|| "model".into()),
        chat_template: None,
        overwrite: a.overwrite,
    };
    let s = automodel::export_gguf(&a.model, a.adapter.as_deref(), &a.out, &options)?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (_, t) in &s.tensors {
        *counts.entry(format!("{t:?}")).or_default() += 1;
    }
    println!(
        "wrote {} ({:.1} MB, {}, {} tensors: {counts:?})",
        s.path.display(),
        s.bytes as f64 / 1e6,
        a.file_type.name(),
        s.tensors.len()
    );
    Ok(())
}

fn merge_lora(a: MergeArgs) -> anyhow::Result<()> {
    let o = &a.output;
    let written =
        automodel::merge_lora(&a.model, &a.adapter, &o.out, o.shard_bytes(), o.overwrite)?;
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn generate<B: Backend>(a: &GenerateArgs, device: &B::Device) -> anyhow::Result<()> {
    let media = "images and audio need a Gemma 3n model (a Hugging Face folder of the full model)";
    let source = ModelSource::detect(&a.model)?;
    if a.has_media() && matches!(source, ModelSource::Gguf(_)) {
        bail!(media);
    }
    let loaded = AutoModel::<B>::from_pretrained(source.path(), device, DType::F32)?;
    if a.has_media() && !matches!(loaded, AutoModel::Gemma3n(_)) {
        bail!(media);
    }
    let adapter = a.adapter.as_deref();
    match loaded {
        AutoModel::Gemma3(m, tok) => run_text(&with_adapter(m, adapter)?, &tok, a),
        AutoModel::Gemma3nText(m, tok) => run_text(&with_adapter(m, adapter)?, &tok, a),
        AutoModel::Gemma3n(m) => run_gemma3n(with_adapter(m, adapter)?, source.path(), a, device),
    }
}

fn run_text<B: Backend, M>(model: &M, tok: &GemmaTokenizer, a: &GenerateArgs) -> anyhow::Result<()>
where
    M: Generate<B, Prompt = TextPrompt, Error = automodel::text::TextError>,
{
    let (text, echo) = a.prompt_text()?;
    let bos = tok.inner.id_to_token(tok.bos_id).unwrap_or_default();
    let ids: Vec<i64> = tok
        .encode(&text, bos.is_empty() || !text.starts_with(&bos))?
        .into_iter()
        .map(i64::from)
        .collect();
    let mut s = Streamer::new(tok);
    if echo {
        print!("{}", a.prompt);
    }
    model.generate(&TextPrompt::single(ids), &a.generation_config(tok), |new| {
        s.push(new[0])
    })?;
    println!();
    Ok(())
}

fn run_gemma3n<B: Backend>(
    model: Gemma3nForConditionalGeneration<B>,
    dir: &Path,
    a: &GenerateArgs,
    device: &B::Device,
) -> anyhow::Result<()> {
    let processor = Gemma3nProcessor::from_pretrained(dir, &model.config)?;
    let (text, echo) = a.prompt_text()?;
    let prompt = Prompt {
        text,
        images: a
            .image
            .iter()
            .map(automodel::vision::processor::load_image)
            .collect::<Result<_, _>>()?,
        audio: a
            .audio
            .iter()
            .map(|p| automodel::audio::decode::load_audio(p, 16_000).map(|w| w.samples))
            .collect::<Result<_, _>>()?,
    };
    let input = processor.process::<B>(std::slice::from_ref(&prompt), Padding::Left, device)?;
    let tok = &processor.tokenizer;
    let mut s = Streamer::new(tok);
    if echo {
        print!("{}", a.prompt);
    }
    model.generate(&input, &a.generation_config(tok), |new| s.push(new[0]))?;
    println!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> GenerateArgs {
        let mut argv = vec![
            "automodel-cli",
            "generate",
            "--model",
            "m.gguf",
            "--prompt",
            "What?",
        ];
        argv.extend(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Generate(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn chat_prompts_render_through_the_template_with_media_first() {
        let (text, echo) = args(&[]).prompt_text().unwrap();
        assert_eq!((text.as_str(), echo), ("What?", true));
        let (text, echo) = args(&["--chat", "--image", "a.png", "--audio", "b.wav"])
            .prompt_text()
            .unwrap();
        assert!(!echo);
        assert_eq!(
            text,
            "<bos><start_of_turn>user\n<image_soft_token><audio_soft_token>What?<end_of_turn>\n<start_of_turn>model\n"
        );
        let (text, _) = args(&["--chat", "--system", "Be brief."])
            .prompt_text()
            .unwrap();
        assert!(
            text.starts_with("<bos><start_of_turn>user\nBe brief.\n\nWhat?"),
            "{text}"
        );
        assert!(
            Cli::try_parse_from([
                "automodel-cli",
                "generate",
                "--model",
                "m",
                "--prompt",
                "x",
                "--system",
                "s"
            ])
            .is_err(),
            "--system needs --chat"
        );
    }
}
