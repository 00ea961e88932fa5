//! `automodel-cli`: run Gemma models from the command line.
//!
//! `generate --model <file.gguf | HF folder> --prompt TEXT [--image F]... [--audio F]...` streams a
//! continuation. GGUF files hold Gemma 3 (model and tokenizer); a Hugging Face folder holds
//! `config.json`, safetensors and `tokenizer.json` of Gemma 3 or Gemma 3n (images and audio need
//! Gemma 3n). `convert --model <file.gguf> --out DIR` writes such a folder from a GGUF file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use automodel::{AudioInput, Gemma3nForConditionalGeneration, GenerationConfig, MultimodalInput};
use automodel_core::CpuBackend as B;
use automodel_text::gemma3::Gemma3ForCausalLM;
use automodel_tokenizer::GemmaTokenizer;
use burn::tensor::{DType, Tensor, TensorData};
use clap::{Parser, Subcommand};

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
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The GGUF file (Gemma 3).
    #[arg(long)]
    model: PathBuf,
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

#[derive(clap::Args)]
struct GenerateArgs {
    /// A GGUF file (Gemma 3) or a Hugging Face folder (Gemma 3 or Gemma 3n).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Images for Gemma 3n (PNG, JPEG, WebP).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Audio clips for Gemma 3n (WAV, FLAC, MP3, OGG).
    #[arg(long)]
    audio: Vec<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    sample: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 64)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(a) => generate(a),
        Command::Convert(a) => convert(a),
    }
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    if !a.model.is_file() {
        bail!("{}: no such GGUF file", a.model.display());
    }
    let files = automodel::convert::gguf_to_hf(
        &a.model,
        &a.out,
        a.max_shard_mb.map(|mb| mb * 1_000_000),
        a.overwrite,
    )
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

impl Streamer<'_> {
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

fn generation_config(a: &GenerateArgs, stop: Vec<i64>) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        do_sample: a.sample,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: stop,
        pad_token_id: 0,
    }
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let device = Default::default();
    if !a.model.exists() {
        bail!(
            "{}: no such file or folder (expected a GGUF file or a Hugging Face folder)",
            a.model.display()
        );
    }
    if a.model.is_file() && a.model.extension().is_some_and(|e| e == "gguf") {
        if !a.image.is_empty() || !a.audio.is_empty() {
            bail!("images and audio need a Gemma 3n model (a Hugging Face folder)");
        }
        let (model, tok) = automodel::convert::load_gguf::<B>(&a.model, &device, DType::F32)?;
        return run_gemma3(&model, &tok, &a);
    }
    let dir = &a.model;
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let tok = GemmaTokenizer::from_file(dir.join("tokenizer.json"))
        .context("a Hugging Face folder needs tokenizer.json")?;
    match cfg.get("model_type").and_then(|v| v.as_str()) {
        Some("gemma3n") => run_gemma3n(dir, &tok, &a),
        Some("gemma3_text") => {
            if !a.image.is_empty() || !a.audio.is_empty() {
                bail!("images and audio need a Gemma 3n model");
            }
            let model = Gemma3ForCausalLM::<B>::from_pretrained(dir, &device, DType::F32)?;
            run_gemma3(&model, &tok, &a)
        }
        other => bail!(
            "{}: model_type {other:?} is not supported (gemma3n, gemma3_text)",
            cfg_path.display()
        ),
    }
}

fn run_gemma3(
    model: &Gemma3ForCausalLM<B>,
    tok: &GemmaTokenizer,
    a: &GenerateArgs,
) -> anyhow::Result<()> {
    let ids: Vec<i64> = tok
        .encode(&a.prompt, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    let stop = tok.stop_ids().into_iter().map(i64::from).collect();
    let cfg = generation_config(a, stop);
    let mut rng = automodel::generate::SplitMix64::new(cfg.seed);
    let mut s = Streamer {
        tok,
        ids: Vec::new(),
        printed: 0,
    };
    print!("{}", a.prompt);
    model.generate_with(
        &ids,
        cfg.max_new_tokens,
        &cfg.stop_ids,
        |row| automodel::generate::pick(row, &cfg, &mut rng),
        &mut |id| s.push(id),
    )?;
    println!();
    Ok(())
}

fn run_gemma3n(dir: &Path, tok: &GemmaTokenizer, a: &GenerateArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let model = Gemma3nForConditionalGeneration::<B>::from_pretrained(dir, &device, DType::F32)?;
    let c = &model.config;
    let nl: Vec<i64> = tok
        .encode("\n\n", false)?
        .into_iter()
        .map(i64::from)
        .collect();
    let mut ids: Vec<i64> = tok
        .encode(&a.prompt, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    let mut pixel_values = None;
    if !a.image.is_empty() {
        let pp = dir.join("preprocessor_config.json");
        let proc_cfg = if pp.is_file() {
            automodel_vision::processor::ImageProcessorConfig::from_file(&pp)?
        } else {
            Default::default()
        };
        let images = a
            .image
            .iter()
            .map(automodel_vision::processor::load_image)
            .collect::<Result<Vec<_>, _>>()?;
        pixel_values = Some(proc_cfg.preprocess::<B>(&images, &device)?);
        for _ in &a.image {
            ids.extend(&nl);
            ids.push(c.boi_token_id);
            ids.extend(std::iter::repeat_n(
                c.image_token_id,
                c.vision_soft_tokens_per_image,
            ));
            ids.push(c.eoi_token_id);
            ids.extend(&nl);
        }
    }
    let mut audio = None;
    if !a.audio.is_empty() {
        let fe = automodel_audio::features::FeatureExtractor::new(Default::default())?;
        let clips = a
            .audio
            .iter()
            .map(|p| automodel_audio::decode::load_audio(p, 16_000).map(|w| w.samples))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[f32]> = clips.iter().map(|c| c.as_slice()).collect();
        let f = fe.extract(&refs)?;
        let (b, t, m) = (f.features.len(), f.frames(), fe.config.feature_size);
        let flat: Vec<f32> = f.features.iter().flatten().flatten().copied().collect();
        audio = Some(AudioInput {
            features: Tensor::from_data(TensorData::new(flat, [b, t, m]), &device),
            valid: f.mask,
        });
        for _ in &a.audio {
            ids.extend(&nl);
            ids.push(c.boa_token_id);
            ids.extend(std::iter::repeat_n(
                c.audio_token_id,
                c.audio_soft_tokens_per_image,
            ));
            ids.push(c.eoa_token_id);
            ids.extend(&nl);
        }
    }
    let gen_cfg = generation_config(a, tok.stop_ids().into_iter().map(i64::from).collect());
    let prompt = MultimodalInput {
        input_ids: vec![ids],
        attention_mask: None,
        pixel_values,
        audio,
        labels: None,
    };
    let mut s = Streamer {
        tok,
        ids: Vec::new(),
        printed: 0,
    };
    print!("{}", a.prompt);
    model.generate(&prompt, &gen_cfg, |new| s.push(new[0]))?;
    println!();
    Ok(())
}
