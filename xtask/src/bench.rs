//! `cargo xtask bench`: training-step and generation benchmarks, side by side with PyTorch.
//!
//! Each workload runs in a child process of its own (`xtask bench-one SPEC`), so that its peak
//! memory is its own; the PyTorch baseline (`xtask/bench/baseline.py`) runs the same spec in a
//! Python child. A training step is the trainer's own [`automodel_train::train_step`]: forward
//! with the chunked loss, backward, global-norm clipping, AdamW. Times are the median (with
//! min and max) of `--steps` steps after `--warmup` steps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::device::{DeviceSpec, OnDevice, run_on};
use automodel_gemma3n::{Gemma3nConfig, Gemma3nForConditionalGeneration};
use automodel_peft::{FreezeConfig, LoraConfig};
use automodel_text::generate::TextPrompt;
use automodel_text::{Generate, GenerationConfig, LayerType, TrainBatch};
use automodel_train::{Optimizer, OptimizerConfig, TrainModel, train_step};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

/// One benchmark: a model, what is done with it, and the shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// e.g. `gemma3-270m-lora-s256`.
    pub name: String,
    /// `gemma-3-270m` (the GGUF, dequantised), `gemma3n-tiny` (`recipes/models/gemma3n-tiny`,
    /// random weights), `gemma3n-E2B` or `gemma3n-E4B` (released shapes, random weights).
    pub model: String,
    /// `lora` (r 8, alpha 16, the seven projections), `full` (every parameter trains) or
    /// `generate` (greedy decoding with the KV cache).
    pub mode: String,
    /// `text` or `image+text` (one image per row, its soft tokens at the start).
    pub media: String,
    pub batch: usize,
    /// Tokens per row (training), or the prompt length (generation).
    pub seq_len: usize,
    /// New tokens (generation).
    pub new_tokens: usize,
    /// `float32` or `bfloat16`.
    pub dtype: String,
    /// `cpu` or `cuda`.
    pub device: String,
}

/// What one side measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Seconds per step (training) or per `generate` call (prompt + new tokens).
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Training: tokens of the batch per second of the median step. Generation: new tokens per
    /// second of the median call.
    pub tokens_per_s: f64,
    /// The process's peak resident memory over the measured steps (MiB); on CUDA, the device's.
    pub peak_mem_mib: Option<f64>,
    /// The last step's loss (both sides see the same token ids; weights differ when random).
    pub loss: Option<f64>,
    pub threads: usize,
    /// Model FLOP utilisation (CUDA only).
    pub mfu: Option<f64>,
    /// What produced it (`automodel-rs`, or `torch 2.x, transformers 5.x, peft 0.x`).
    pub stack: String,
}

/// One row of the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub workload: Workload,
    pub date: String,
    pub device_name: String,
    pub ours: Measure,
    pub pytorch: Option<Measure>,
    /// Our tokens/s over PyTorch's (> 1: we are faster): the median of the rounds' ratios.
    pub speedup: Option<f64>,
    /// Each round's ratio (`--rounds`; the two sides alternate which runs first).
    #[serde(default)]
    pub ratios: Vec<f64>,
    /// Model FLOPs of one token of the workload (analytic; see [`flops_per_token`]).
    pub flops_per_token: Option<f64>,
}

fn w(
    model: &str,
    mode: &str,
    media: &str,
    batch: usize,
    seq_len: usize,
    new_tokens: usize,
    device: &str,
) -> Workload {
    // float32 on the CPU, bfloat16 on CUDA (what training there uses)
    let dtype = if device == "cuda" {
        "bfloat16"
    } else {
        "float32"
    };
    let short = model.replace("gemma-3-", "gemma3-");
    let media_tag = if media == "text" { "" } else { "-image" };
    let name = if mode == "generate" {
        format!("{short}-generate-p{seq_len}-n{new_tokens}")
    } else {
        format!("{short}-{mode}{media_tag}-b{batch}-s{seq_len}")
    };
    Workload {
        name,
        model: model.into(),
        mode: mode.into(),
        media: media.into(),
        batch,
        seq_len,
        new_tokens,
        dtype: dtype.into(),
        device: device.into(),
    }
}

/// A workload in bfloat16, named so (`…-lora-bf16-…`).
fn bf16(mut wl: Workload) -> Workload {
    wl.name = wl
        .name
        .replacen(&format!("-{}", wl.mode), &format!("-{}-bf16", wl.mode), 1);
    wl.dtype = "bfloat16".into();
    wl
}

/// The workloads of a device: CPU (the 270M and the tiny Gemma 3n) or CUDA (E2B and E4B);
/// wgpu runs the CPU's list on its device. `quick` shrinks them to a smoke run (CI).
pub fn workloads(device: &str, quick: bool) -> Vec<Workload> {
    if device.starts_with("wgpu") {
        let mut list = workloads("cpu", quick);
        // no bfloat16 matmul on wgpu (`check_dtype`)
        list.retain(|wl| wl.dtype == "float32");
        for wl in &mut list {
            wl.device = device.to_string();
            wl.name = format!("{}-{}", wl.name, device.replace(':', ""));
        }
        return list;
    }
    if device == "cpu" {
        if quick {
            return vec![
                w("gemma-3-270m", "lora", "text", 1, 32, 0, "cpu"),
                w("gemma3n-tiny", "full", "image+text", 1, 32, 0, "cpu"),
                w("gemma-3-270m", "generate", "text", 1, 8, 8, "cpu"),
            ];
        }
        return vec![
            w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu"),
            w("gemma-3-270m", "full", "text", 1, 256, 0, "cpu"),
            w("gemma3n-tiny", "full", "text", 1, 256, 0, "cpu"),
            w("gemma3n-tiny", "full", "image+text", 1, 256, 0, "cpu"),
            w("gemma-3-270m", "generate", "text", 1, 32, 64, "cpu"),
            // bfloat16 weights and activations on both sides (PyTorch's CPU kernels for it go
            // through oneDNN: AVX-512-bf16 or AMX where the CPU has them)
            bf16(w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu")),
            kernel("matmul", 256, 640, 262_144, "cpu"),
            kernel("exp", 64, 262_144, 1, "cpu"),
        ];
    }
    if quick {
        return vec![
            w("gemma3n-E2B", "lora", "text", 1, 512, 0, "cuda"),
            w("gemma3n-E4B", "lora", "text", 1, 1024, 0, "cuda"),
        ];
    }
    let mut v = Vec::new();
    for model in ["gemma3n-E2B", "gemma3n-E4B"] {
        for mode in ["lora", "full"] {
            for s in [512, 1024, 2048] {
                v.push(w(model, mode, "text", 1, s, 0, "cuda"));
            }
            v.push(w(model, mode, "image+text", 1, 1024, 0, "cuda"));
        }
    }
    v.push(w("gemma-3-270m", "generate", "text", 1, 32, 128, "cuda"));
    v.push(kernel("matmul", 4096, 2048, 16_384, "cuda"));
    v
}

/// A kernel microbenchmark (no model): `matmul` of `[m, k] × [k, n]` or element-wise `exp` over
/// `[m, k]`, in the workload's dtype, one call per step; Burn's kernel against PyTorch's on the
/// same shapes. Encoded in a [`Workload`] as `model` `kernel`, `mode` the op, `batch` = m,
/// `seq_len` = k, `new_tokens` = n.
fn kernel(op: &str, m: usize, k: usize, n: usize, device: &str) -> Workload {
    let mut wl = w("kernel", op, "text", m, k, n, device);
    wl.name = if op == "matmul" {
        format!("kernel-matmul-{m}x{k}x{n}")
    } else {
        format!("kernel-{op}-{m}x{k}")
    };
    wl
}

/// FLOPs of one kernel call (reported per "token", one call being one token).
fn kernel_flops(wl: &Workload) -> Option<f64> {
    (wl.model == "kernel").then(|| {
        let (m, k, n) = (wl.batch as f64, wl.seq_len as f64, wl.new_tokens as f64);
        if wl.mode == "matmul" {
            2.0 * m * k * n
        } else {
            m * k
        }
    })
}

/// The workspace root: `$AUTOMODEL_ROOT`, else the current folder when it is a checkout (a
/// carried binary on another machine), else where this binary was built.
pub fn root() -> PathBuf {
    if let Ok(r) = std::env::var("AUTOMODEL_ROOT") {
        return PathBuf::from(r);
    }
    if let Ok(cwd) = std::env::current_dir()
        && cwd.join("xtask/bench/baseline.py").is_file()
    {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// The model's full config (Gemma 3n), as both sides build it.
fn gemma3n_config(model: &str) -> anyhow::Result<Gemma3nConfig> {
    Ok(match model {
        "gemma3n-tiny" => {
            Gemma3nConfig::from_file(root().join("recipes/models/gemma3n-tiny/config.json"))?
        }
        "gemma3n-E2B" => Gemma3nConfig::released("E2B")?,
        "gemma3n-E4B" => Gemma3nConfig::released("E4B")?,
        other => bail!("no Gemma 3n model `{other}`"),
    })
}

/// The image side of the model: pixels per side and soft tokens per image.
fn image_geometry(model: &str, cfg: &Gemma3nConfig) -> (usize, usize) {
    let side = if model == "gemma3n-tiny" { 128 } else { 768 };
    (side, cfg.vision_soft_tokens_per_image)
}

/// Deterministic token ids in `[3, 3 + span)` (a small LCG; both sides get these exact ids).
pub fn token_ids(batch: usize, len: usize, span: u64, salt: u64) -> Vec<Vec<i64>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ salt;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    3 + ((x >> 33) % span) as i64
                })
                .collect()
        })
        .collect()
}

/// The batch of a training workload: `input_ids`, `labels` (`-100` on image tokens), and the
/// image span (first position, length) when the workload has images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchSpec {
    pub input_ids: Vec<Vec<i64>>,
    pub labels: Vec<Vec<i64>>,
    pub image_side: Option<usize>,
}

pub fn batch_spec(wl: &Workload) -> anyhow::Result<BatchSpec> {
    let mut ids = token_ids(wl.batch, wl.seq_len, 20_000, 1);
    let mut labels = ids.clone();
    let mut image_side = None;
    if wl.media == "image+text" {
        let cfg = gemma3n_config(&wl.model)?;
        let (side, soft) = image_geometry(&wl.model, &cfg);
        if wl.seq_len < soft + 4 {
            bail!(
                "{}: seq_len {} leaves no room for {soft} image tokens",
                wl.name,
                wl.seq_len
            );
        }
        for (row, lab) in ids.iter_mut().zip(&mut labels) {
            row[0] = 2;
            row[1] = cfg.boi_token_id;
            for t in &mut row[2..2 + soft] {
                *t = cfg.image_token_id;
            }
            row[2 + soft] = cfg.eoi_token_id;
            for (l, t) in lab.iter_mut().zip(row.iter()).take(3 + soft) {
                *l = if *t == cfg.image_token_id { -100 } else { *t };
            }
        }
        image_side = Some(side);
    }
    Ok(BatchSpec {
        input_ids: ids,
        labels,
        image_side,
    })
}

fn int2<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn train_batch<B: Backend>(spec: &BatchSpec, device: &B::Device) -> TrainBatch<B> {
    let mut b = TrainBatch::text(int2(&spec.input_ids, device), int2(&spec.labels, device));
    if let Some(side) = spec.image_side {
        // a fixed pattern in [0, 1] (the values do not change the work)
        let n = spec.input_ids.len() * 3 * side * side;
        let px: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        b.pixel_values = Some(Tensor::from_data(
            TensorData::new(px, [spec.input_ids.len(), 3, side, side]),
            device,
        ));
    }
    b
}

/// The LoRA settings of the `lora` workloads (those of `recipes/default.yaml`), in PEFT's field
/// names: our side parses them, the PyTorch side passes them to `peft.LoraConfig`.
fn bench_lora_json() -> serde_json::Value {
    serde_json::json!({
        "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    })
}

/// [`bench_lora_json`] as our config.
pub fn bench_lora() -> LoraConfig {
    serde_json::from_value(bench_lora_json()).expect("a valid LoRA config")
}

/// Analytic model FLOPs per token of a training step (forward + backward = 3 × forward, for
/// LoRA too, as model-FLOP utilisation is usually counted) or of a forward pass (generation):
/// the matmuls of every linear layer (attention projections, MLP, AltUp, LAuReL, per-layer
/// inputs, the LM head) plus attention scores and values over the causal context (capped by
/// the sliding window). Norms, activations and embeddings lookups are not counted; nor are the
/// towers.
pub fn flops_per_token(wl: &Workload) -> anyhow::Result<f64> {
    let t = wl.seq_len;
    // the mean number of keys a query sees in a causal row of `t` under window `win`
    let ctx = |win: Option<usize>| -> f64 {
        (0..t)
            .map(|i| (i + 1).min(win.unwrap_or(usize::MAX)) as f64)
            .sum::<f64>()
            / t as f64
    };
    if let Some(f) = kernel_flops(wl) {
        return Ok(f);
    }
    // (linear layers' FLOPs, attention scores' FLOPs) of one token's forward pass
    let (lin, attn) = if wl.model == "gemma-3-270m" {
        // the config from the GGUF's metadata (no weights read)
        let gguf = automodel_parity::gemma3_270m_path();
        let file = automodel_gguf::GgufFile::open(&gguf)?;
        let hf = automodel_gguf::gemma3::Gemma3Gguf::new(file)?.hf_config()?;
        let c = automodel_text::gemma3::Gemma3TextConfig::from_value(&hf)?;
        let (h, q, kv, hd, f) = (
            c.hidden_size as f64,
            c.num_attention_heads as f64,
            c.num_key_value_heads as f64,
            c.head_dim as f64,
            c.intermediate_size as f64,
        );
        let (mut lin, mut attn) = (0.0, 0.0);
        for lt in c.layer_types() {
            let win = (lt == LayerType::Sliding).then_some(c.sliding_window);
            lin += 2.0 * (h * q * hd * 2.0 + h * kv * hd * 2.0 + 3.0 * h * f);
            attn += 4.0 * q * hd * ctx(win);
        }
        (lin + 2.0 * h * c.vocab_size as f64, attn)
    } else {
        let c = gemma3n_config(&wl.model)?.text;
        let (h, q, kv, hd) = (
            c.hidden_size as f64,
            c.num_attention_heads as f64,
            c.num_key_value_heads as f64,
            c.head_dim as f64,
        );
        let (n, p, r) = (
            c.altup_num_inputs as f64,
            c.hidden_size_per_layer_input as f64,
            c.laurel_rank as f64,
        );
        let layers = c.layer_types();
        let first_shared = c.first_kv_shared_layer();
        let (mut total, mut attn) = (0.0, 0.0);
        for (i, (lt, f)) in layers.iter().zip(c.intermediate_sizes()).enumerate() {
            let win = (*lt == LayerType::Sliding).then_some(c.sliding_window);
            let kv_proj = if i >= first_shared {
                0.0
            } else {
                2.0 * h * kv * hd
            };
            let mut l = 2.0 * (2.0 * h * q * hd + kv_proj + 3.0 * h * f as f64);
            attn += 4.0 * q * hd * ctx(win);
            // AltUp: the router (h → n) twice, predict (n → n²) and correct (n → n) coefs
            l += 2.0 * (2.0 * h * n + n * n * n + n * n) + 2.0 * n * n * h * 2.0;
            // LAuReL (h → r → h) and the per-layer input gate (h → p → h)
            l += 2.0 * (2.0 * h * r) + 2.0 * (2.0 * h * p);
            total += l;
        }
        let nl = layers.len() as f64;
        // per-layer input projection (h → L·p), AltUp in/out projections, the LM head
        total += 2.0 * h * nl * p + 2.0 * 2.0 * (n - 1.0) * h * h + 2.0 * h * c.vocab_size as f64;
        (total, attn)
    };
    // backward: the attention scores' two products need both operands' gradients (2× forward);
    // a linear layer needs its input's gradient (1× forward) and, when trained, its weight's
    // (1× more). LoRA trains no base weight (its adapters' FLOPs are negligible), so a LoRA
    // step does 2× the linear layers' forward, a full step 3×: only FLOPs actually done count.
    Ok(match wl.mode.as_str() {
        "generate" => lin + attn,
        "lora" => 2.0 * lin + 3.0 * attn,
        _ => 3.0 * (lin + attn),
    })
}

/// The peak FLOP/s the MFU is taken against: dense bf16 of an H100/H200 (989 TFLOP/s), or
/// `AUTOMODEL_PEAK_TFLOPS`.
fn peak_flops(dtype: &str) -> f64 {
    if let Some(v) = std::env::var("AUTOMODEL_PEAK_TFLOPS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        return v * 1e12;
    }
    if dtype == "float32" { 494.5e12 } else { 989e12 }
}

fn stats(times: &[f64]) -> (f64, f64, f64) {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// Options of a measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunOpts {
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
}

struct Job {
    wl: Workload,
    opts: RunOpts,
}

impl OnDevice for Job {
    type Output = anyhow::Result<Measure>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<Measure> {
        let wl = &self.wl;
        let dtype = match wl.dtype.as_str() {
            "float32" => DType::F32,
            "bfloat16" => DType::BF16,
            other => bail!("dtype `{other}`: expected float32 or bfloat16"),
        };
        automodel_core::seed::<B>(&device, 0);
        if wl.model == "kernel" {
            return kernel_run::<B::InnerBackend>(wl, self.opts, &device, dtype);
        }
        if wl.model == "gemma-3-270m" {
            let gguf = automodel_parity::gemma3_270m_path();
            if !gguf.is_file() {
                bail!(
                    "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
                    gguf.display()
                );
            }
            let (m, _) = automodel_models::convert::load_gguf::<B>(&gguf, &device, dtype)?;
            if wl.mode == "generate" {
                return generate(m.valid(), wl, self.opts);
            }
            return train(m, wl, self.opts, &device);
        }
        let cfg = gemma3n_config(&wl.model)?;
        let m = Gemma3nForConditionalGeneration::<B>::from_config(&cfg, &device, dtype)?;
        if wl.mode == "generate" {
            bail!("{}: generation is benchmarked on the 270M only", wl.name);
        }
        train(m, wl, self.opts, &device)
    }
}

fn train<B: AutodiffBackend, M: TrainModel<B>>(
    model: M,
    wl: &Workload,
    opts: RunOpts,
    device: &B::Device,
) -> anyhow::Result<Measure> {
    let mut model = match wl.mode.as_str() {
        "lora" => automodel_peft::apply_lora(model, &bench_lora())?.0,
        "full" => automodel_peft::apply_freeze(model, &FreezeConfig::default()).0,
        other => bail!("mode `{other}`: expected lora, full or generate"),
    };
    let spec = batch_spec(wl)?;
    let n_labels = spec.labels.iter().flatten().filter(|&&l| l != -100).count();
    // PyTorch's AdamW defaults, a learning rate small enough to stay finite on random weights
    let cfg = OptimizerConfig {
        lr: 1e-5,
        ..OptimizerConfig::default()
    };
    let mut optim = Optimizer::<B>::new(cfg, "")?;
    let mut times = Vec::new();
    let mut loss = None;
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup {
            automodel_core::memory::reset_peak_resident();
        }
        let t0 = Instant::now();
        let batch = train_batch::<B>(&spec, device);
        let (m, out) = train_step(model, &mut optim, [batch], n_labels, 1e-5, Some(1.0))?;
        model = m;
        B::sync(device)?;
        if i >= opts.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        tracing::debug!(
            "{} step {i}: {:.2} s, resident {} MiB, peak {} MiB",
            wl.name,
            t0.elapsed().as_secs_f64(),
            automodel_core::memory::resident_bytes().unwrap_or(0) >> 20,
            automodel_core::memory::peak_resident_bytes().unwrap_or(0) >> 20
        );
        loss = Some(out.loss);
    }
    measure(wl, opts, &times, loss, (wl.batch * wl.seq_len) as f64)
}

fn generate<B: Backend, M: Generate<B, Prompt = TextPrompt>>(
    model: M,
    wl: &Workload,
    opts: RunOpts,
) -> anyhow::Result<Measure>
where
    M::Error: std::error::Error + Send + Sync + 'static,
{
    let prompt = TextPrompt::new(token_ids(wl.batch, wl.seq_len, 20_000, 2));
    // no stop ids: exactly `new_tokens` each call
    let cfg = GenerationConfig::greedy(wl.new_tokens, Vec::new());
    let mut times = Vec::new();
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup {
            automodel_core::memory::reset_peak_resident();
        }
        let t0 = Instant::now();
        let out = model.generate(&prompt, &cfg, |_| {})?;
        if out.generated[0].len() != wl.new_tokens {
            bail!(
                "{}: {} tokens generated, expected {}",
                wl.name,
                out.generated[0].len(),
                wl.new_tokens
            );
        }
        if i >= opts.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    measure(wl, opts, &times, None, (wl.batch * wl.new_tokens) as f64)
}

fn kernel_run<B: Backend>(
    wl: &Workload,
    opts: RunOpts,
    device: &B::Device,
    dtype: DType,
) -> anyhow::Result<Measure> {
    let (m, k, n) = (wl.batch, wl.seq_len, wl.new_tokens);
    let fill = |r: usize, c: usize| {
        let v: Vec<f32> = (0..r * c)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        Tensor::<B, 2>::from_data(TensorData::new(v, [r, c]), device).cast(dtype)
    };
    let a = fill(m, k);
    let b = (wl.mode == "matmul").then(|| fill(k, n));
    let mut times = Vec::new();
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup {
            automodel_core::memory::reset_peak_resident();
        }
        let t0 = Instant::now();
        let out = match (&b, wl.mode.as_str()) {
            (Some(b), "matmul") => a.clone().matmul(b.clone()),
            (None, "exp") => a.clone().exp(),
            _ => bail!("kernel `{}`: expected matmul or exp", wl.mode),
        };
        B::sync(device)?;
        if i >= opts.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        drop(out);
    }
    measure(wl, opts, &times, None, 1.0)
}

fn measure(
    wl: &Workload,
    opts: RunOpts,
    times: &[f64],
    loss: Option<f64>,
    tokens: f64,
) -> anyhow::Result<Measure> {
    let (median_s, min_s, max_s) = stats(times);
    let tokens_per_s = tokens / median_s;
    let mfu = (wl.device == "cuda")
        .then(|| flops_per_token(wl).ok())
        .flatten()
        .map(|f| f * tokens_per_s / peak_flops(&wl.dtype));
    Ok(Measure {
        median_s,
        min_s,
        max_s,
        tokens_per_s,
        peak_mem_mib: if wl.device == "cpu" {
            automodel_core::memory::peak_resident_bytes().map(|b| b as f64 / (1u64 << 20) as f64)
        } else {
            None
        },
        loss,
        threads: opts.threads,
        mfu,
        stack: format!("automodel-rs {} (burn 0.21)", env!("CARGO_PKG_VERSION")),
    })
}

/// `xtask bench-one SPEC-JSON OPTS-JSON`: run one workload here and print its measure as one
/// JSON line after `BENCH_RESULT `.
pub fn bench_one(args: &[String]) -> anyhow::Result<bool> {
    let [spec, opts] = args else {
        bail!("usage: xtask bench-one <workload json> <options json>");
    };
    let wl: Workload = serde_json::from_str(spec).context("the workload")?;
    let opts: RunOpts = serde_json::from_str(opts).context("the options")?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build_global()
        .context("the thread pool")?;
    let device: DeviceSpec = wl.device.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = run_on(device, Job { wl, opts })??;
    println!("BENCH_RESULT {}", serde_json::to_string(&m)?);
    Ok(true)
}

fn parse_result(stdout: &[u8]) -> Option<Measure> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
}

/// The Python that has torch + transformers (+ peft), if any: `$PYTHON`, else `python3`.
fn python_with_torch() -> Option<(String, String)> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&py)
        .args([
            "-c",
            "import torch, transformers, peft; print(f'torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| (py, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// The folder the PyTorch side loads the 270M from: our own conversion of the GGUF
/// (dequantised to float32, Hugging Face layout), made once into `target/bench/`.
fn hf_270m() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/bench/gemma-3-270m-hf");
    if !dir.join("config.json").is_file() {
        eprintln!(
            "converting the 270M GGUF for the PyTorch side into {}",
            dir.display()
        );
        automodel_models::convert::gguf_to_hf(
            &automodel_parity::gemma3_270m_path(),
            &dir,
            None,
            true,
        )?;
    }
    Ok(dir)
}

/// `cargo xtask bench [--device cpu|cuda|wgpu[:N|:cpu]] [--quick] [--baseline] [--rounds R] [--steps N]
/// [--warmup N] [--threads N] [--only SUBSTRING] [--json FILE] [--record]`.
pub fn bench(args: &[String]) -> anyhow::Result<bool> {
    let mut device = "cpu".to_string();
    let (mut quick, mut baseline, mut record) = (false, false, false);
    let mut opts = RunOpts {
        steps: 3,
        warmup: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut only: Vec<String> = Vec::new();
    let mut json_out: Option<PathBuf> = None;
    let mut rounds = 3usize;
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> anyhow::Result<usize> {
        v.with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().context("--device needs cpu or cuda")?.clone(),
            "--quick" => quick = true,
            "--baseline" => baseline = true,
            "--record" => record = true,
            "--steps" => opts.steps = num(it.next(), "--steps")?.max(1),
            "--warmup" => opts.warmup = num(it.next(), "--warmup")?,
            "--threads" => opts.threads = num(it.next(), "--threads")?.max(1),
            "--rounds" => rounds = num(it.next(), "--rounds")?.max(1),
            "--only" => only.push(it.next().context("--only needs a name")?.clone()),
            "--json" => json_out = Some(it.next().context("--json needs a file")?.into()),
            other => bail!("unknown option `{other}`\n{}", crate::USAGE),
        }
    }
    if cfg!(debug_assertions) && !quick {
        // our crates at opt-level 1 are no measure of anything: run the release build
        eprintln!("(re-running in a release build: cargo run --release -p xtask -- bench ...)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut features = Vec::new();
        if cfg!(feature = "cuda") {
            features = vec!["--features", "cuda"];
        } else if cfg!(feature = "wgpu") {
            features = vec!["--features", "wgpu"];
        }
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["run", "--quiet", "--release", "-p", "xtask"])
            .args(features)
            .args(["--", "bench"])
            .args(args)
            .status()
            .context("running cargo")?;
        return Ok(status.success());
    }
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build (smoke run): the times are not representative");
    }
    if device != "cpu" && device != "cuda" && !device.starts_with("wgpu") {
        bail!("--device {device}: expected cpu, cuda or wgpu[:N|:cpu]");
    }
    if device == "cuda" && !cfg!(feature = "cuda") {
        bail!("--device cuda needs a build with `--features cuda`");
    }
    if device.starts_with("wgpu") {
        device
            .parse::<DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    }
    if only.iter().any(|o| o == "dp") {
        if device != "cpu" {
            bail!("--only dp measures workers on the CPU");
        }
        return crate::bench_dp::bench_dp(rounds, opts.steps, opts.warmup);
    }
    let list: Vec<Workload> = workloads(&device, quick)
        .into_iter()
        .filter(|w| only.is_empty() || only.iter().any(|o| w.name.contains(o.as_str())))
        .collect();
    if list.is_empty() {
        bail!(
            "no workload matches {only:?}; workloads: {}",
            workloads(&device, quick)
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let python = if baseline {
        match python_with_torch() {
            Some(p) => {
                eprintln!("baseline: {}", p.1);
                Some(p)
            }
            None => bail!(
                "--baseline: no Python with torch, transformers and peft (set PYTHON=..., or `pip install torch transformers peft`)"
            ),
        }
    } else {
        None
    };
    let exe = std::env::current_exe()?;
    let date = chrono_date();
    let device_name = device_name(&device);
    let mut rows = Vec::new();
    for wl in &list {
        eprintln!(
            "== {} ({} steps after {} warm-up, {} threads)",
            wl.name, opts.steps, opts.warmup, opts.threads
        );
        let spec = serde_json::to_string(wl)?;
        let o = serde_json::to_string(&opts)?;
        let run_ours = || -> anyhow::Result<Measure> {
            let out = Command::new(&exe)
                .args(["bench-one", &spec, &o])
                .env("RAYON_NUM_THREADS", opts.threads.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("running a benchmark child")?;
            parse_result(&out.stdout)
                .with_context(|| format!("{}: the benchmark failed ({})", wl.name, out.status))
        };
        // Without a baseline one round says all; with one, the sides alternate which runs
        // first over `rounds` rounds, so that a machine slowing down or speeding up during
        // the run shifts both, and each round's ratio is taken within the round.
        let n_rounds = if python.is_some() { rounds } else { 1 };
        let (mut ours_all, mut torch_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..n_rounds {
            if n_rounds > 1 {
                eprintln!("-- round {}/{n_rounds}", round + 1);
            }
            let (o, p) = match &python {
                Some((py, _)) if round % 2 == 1 => {
                    let p = run_baseline(py, wl, opts)?;
                    (run_ours()?, p)
                }
                Some((py, _)) => {
                    let o = run_ours()?;
                    (o, run_baseline(py, wl, opts)?)
                }
                None => (run_ours()?, None),
            };
            if let Some(p) = &p {
                ratios.push(o.tokens_per_s / p.tokens_per_s);
                torch_all.push(p.clone());
            }
            ours_all.push(o);
        }
        let ours = median_measure(ours_all);
        let pytorch = (!torch_all.is_empty()).then(|| median_measure(torch_all));
        let speedup = (!ratios.is_empty()).then(|| stats(&ratios).0);
        let row = Row {
            workload: wl.clone(),
            date: date.clone(),
            device_name: device_name.clone(),
            flops_per_token: flops_per_token(wl).ok(),
            ours,
            pytorch,
            speedup,
            ratios,
        };
        eprintln!("{}", row_line(&row));
        rows.push(row);
    }
    println!("{}", markdown_table(&rows));
    if let Some(p) = &json_out {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if record {
        record_rows(&rows)?;
    }
    Ok(true)
}

/// The round whose median step time is the median of the rounds'.
fn median_measure(mut all: Vec<Measure>) -> Measure {
    all.sort_by(|a, b| a.median_s.total_cmp(&b.median_s));
    all.swap_remove(all.len() / 2)
}

fn run_baseline(py: &str, wl: &Workload, opts: RunOpts) -> anyhow::Result<Option<Measure>> {
    if wl.model == "kernel" {
        return run_python(
            py,
            wl,
            opts,
            serde_json::json!({ "workload": wl, "opts": opts }),
        );
    }
    let spec = batch_spec(wl)?;
    let mut job = serde_json::json!({
        "workload": wl, "opts": opts, "batch": spec,
        "lora": bench_lora_json(),
        "prompt": token_ids(wl.batch, wl.seq_len, 20_000, 2),
    });
    if wl.model == "gemma-3-270m" {
        job["model_dir"] = hf_270m()?.display().to_string().into();
    } else {
        job["config"] = gemma3n_config(&wl.model)?.raw;
    }
    run_python(py, wl, opts, job)
}

fn run_python(
    py: &str,
    wl: &Workload,
    opts: RunOpts,
    job: serde_json::Value,
) -> anyhow::Result<Option<Measure>> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let job_file = dir.join(format!("{}.job.json", wl.name));
    std::fs::write(&job_file, serde_json::to_string(&job)?)?;
    let out = Command::new(py)
        .arg(root().join("xtask/bench/baseline.py"))
        .arg(&job_file)
        .env("OMP_NUM_THREADS", opts.threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the PyTorch baseline")?;
    match parse_result(&out.stdout) {
        Some(m) => Ok(Some(m)),
        None => bail!("{}: the PyTorch baseline failed ({})", wl.name, out.status),
    }
}

fn chrono_date() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

pub fn device_name(device: &str) -> String {
    if device == "cuda" {
        let out = Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output();
        if let Ok(o) = out
            && o.status.success()
        {
            return String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("cuda")
                .trim()
                .to_string();
        }
        return "cuda".into();
    }
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({n} cores)")
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

fn row_line(r: &Row) -> String {
    format!(
        "{}: ours {:.3} s/step [{:.3}–{:.3}], {:.1} tok/s, {} MiB | PyTorch {} | ×{}",
        r.workload.name,
        r.ours.median_s,
        r.ours.min_s,
        r.ours.max_s,
        r.ours.tokens_per_s,
        fmt_opt(r.ours.peak_mem_mib, |m| format!("{m:.0}")),
        r.pytorch.as_ref().map_or("–".into(), |p| format!(
            "{:.3} s/step, {:.1} tok/s, {} MiB",
            p.median_s,
            p.tokens_per_s,
            fmt_opt(p.peak_mem_mib, |m| format!("{m:.0}"))
        )),
        ratio_cell(r),
    )
}

/// The speed ratio's median, with the rounds' spread when there were several.
fn ratio_cell(r: &Row) -> String {
    match (r.speedup, r.ratios.len()) {
        (None, _) => "–".into(),
        (Some(x), n) if n > 1 => {
            let (_, lo, hi) = stats(&r.ratios);
            format!("{x:.2}× ({lo:.2}–{hi:.2}, {n} rounds)")
        }
        (Some(x), _) => format!("{x:.2}×"),
    }
}

/// The results as a Markdown table (the one `--record` writes into `docs/benchmarks.md`).
pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | device | threads | ours s/step (min–max) | ours tok/s | ours GFLOP/s | ours peak MiB | PyTorch s/step (min–max) | PyTorch tok/s | PyTorch peak MiB | speed ratio | MFU | date |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = |x: &Measure| {
            (
                format!("{:.3} ({:.3}–{:.3})", x.median_s, x.min_s, x.max_s),
                format!("{:.1}", x.tokens_per_s),
                fmt_opt(x.peak_mem_mib, |m| format!("{m:.0}")),
            )
        };
        let o = m(&r.ours);
        let p = r
            .pytorch
            .as_ref()
            .map(m)
            .unwrap_or(("–".into(), "–".into(), "–".into()));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.workload.name,
            r.device_name,
            r.ours.threads,
            o.0,
            o.1,
            fmt_opt(r.flops_per_token, |f| format!(
                "{:.1}",
                f * r.ours.tokens_per_s / 1e9
            )),
            o.2,
            p.0,
            p.1,
            p.2,
            ratio_cell(r),
            fmt_opt(r.ours.mfu, |x| format!("{:.1} %", 100.0 * x)),
            r.date
        ));
    }
    s
}

const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench --record`) -->";
const END: &str = "<!-- bench:end -->";

/// Merge `rows` into `docs/benchmarks.json` (by workload name and device) and rewrite the
/// table between the markers of `docs/benchmarks.md`.
fn record_rows(rows: &[Row]) -> anyhow::Result<()> {
    let json = root().join("docs/benchmarks.json");
    let mut all: Vec<Row> = match std::fs::read_to_string(&json) {
        Ok(s) => serde_json::from_str(&s).with_context(|| format!("{}", json.display()))?,
        Err(_) => Vec::new(),
    };
    for r in rows {
        all.retain(|x| {
            !(x.workload.name == r.workload.name && x.workload.device == r.workload.device)
        });
        all.push(r.clone());
    }
    all.sort_by(|a, b| {
        (&a.workload.device, &a.workload.name).cmp(&(&b.workload.device, &b.workload.name))
    });
    std::fs::write(&json, serde_json::to_string_pretty(&all)? + "\n")?;
    let md = root().join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&md).with_context(|| format!("{}", md.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        bail!(
            "{}: the markers {BEGIN} and {END} are missing",
            md.display()
        );
    };
    let new = format!(
        "{}{BEGIN}\n{}{}",
        &text[..a],
        markdown_table(&all),
        &text[b..]
    );
    std::fs::write(&md, new)?;
    eprintln!("recorded into {} and {}", json.display(), md.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn image_batches_put_soft_tokens_after_boi_without_labels() {
        let wl = w("gemma3n-tiny", "full", "image+text", 2, 32, 0, "cpu");
        let b = batch_spec(&wl).unwrap();
        let cfg = gemma3n_config("gemma3n-tiny").unwrap();
        for (ids, labels) in b.input_ids.iter().zip(&b.labels) {
            assert_eq!(ids.len(), 32);
            assert_eq!(ids[1], cfg.boi_token_id);
            let n = ids.iter().filter(|&&t| t == cfg.image_token_id).count();
            assert_eq!(n, cfg.vision_soft_tokens_per_image);
            assert_eq!(ids[2 + n], cfg.eoi_token_id);
            assert_eq!(labels.iter().filter(|&&l| l == -100).count(), n);
        }
        assert_eq!(b.image_side, Some(128));
        let short = w("gemma3n-tiny", "full", "image+text", 1, 8, 0, "cpu");
        assert!(batch_spec(&short).is_err());
    }

    #[test]
    fn e4b_full_costs_about_26_gflop_per_token_and_lora_two_thirds() {
        // E4B computes with about 4.4 B parameters: a full step 6 × 4.4 ≈ 26 GFLOP per token
        let wl = w("gemma3n-E4B", "full", "text", 1, 1024, 0, "cuda");
        let f = flops_per_token(&wl).unwrap();
        assert!((20e9..32e9).contains(&f), "{f} FLOP per token");
        let mut g = wl.clone();
        g.mode = "generate".into();
        let fwd = flops_per_token(&g).unwrap();
        assert!((fwd * 3.0 - f).abs() < 1.0);
        // LoRA computes no base-weight gradient: between 2× and 3× the forward pass, nearer 2×
        g.mode = "lora".into();
        let lora = flops_per_token(&g).unwrap();
        assert!(
            lora > 2.0 * fwd && lora < 2.2 * fwd,
            "{lora} vs forward {fwd}"
        );
    }

    #[test]
    fn kernels_count_their_own_flops() {
        let mm = kernel("matmul", 2, 3, 5, "cpu");
        assert_eq!(mm.name, "kernel-matmul-2x3x5");
        assert_eq!(flops_per_token(&mm).unwrap(), 60.0);
        let e = kernel("exp", 4, 8, 1, "cpu");
        assert_eq!(e.name, "kernel-exp-4x8");
        assert_eq!(flops_per_token(&e).unwrap(), 32.0);
        // every CPU workload has a distinct name (the key of docs/benchmarks.json)
        let names: std::collections::BTreeSet<String> = workloads("cpu", false)
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names.len(), workloads("cpu", false).len());
    }

    #[test]
    fn the_cpu_list_has_a_bf16_step_that_wgpu_leaves_out() {
        let cpu = workloads("cpu", false);
        let b = cpu.iter().find(|w| w.dtype == "bfloat16").unwrap();
        assert_eq!(b.name, "gemma3-270m-lora-bf16-b1-s256");
        assert_eq!(b.mode, "lora");
        let gpu = workloads("wgpu", false);
        assert_eq!(gpu.len(), cpu.len() - 1);
        assert!(
            gpu.iter()
                .all(|w| w.dtype == "float32" && w.name.ends_with("-wgpu"))
        );
    }

    #[test]
    fn markdown_rows_show_the_ratio() {
        let m = Measure {
            median_s: 2.0,
            min_s: 1.5,
            max_s: 2.5,
            tokens_per_s: 128.0,
            peak_mem_mib: Some(900.0),
            loss: Some(1.0),
            threads: 2,
            mfu: None,
            stack: "x".into(),
        };
        let mut p = m.clone();
        p.tokens_per_s = 64.0;
        let row = Row {
            workload: w("gemma-3-270m", "lora", "text", 1, 256, 0, "cpu"),
            date: "2026-12-01".into(),
            device_name: "cpu".into(),
            ours: m,
            pytorch: Some(p),
            speedup: Some(2.0),
            ratios: vec![2.0],
            flops_per_token: None,
        };
        let t = markdown_table(std::slice::from_ref(&row));
        assert!(t.contains("| gemma3-270m-lora-b1-s256 |"), "{t}");
        assert!(t.contains("2.00×"), "{t}");
        // several rounds: the median and the spread
        let rounds = Row {
            ratios: vec![1.8, 2.0, 2.3],
            ..row
        };
        let t = markdown_table(&[rounds]);
        assert!(t.contains("2.00× (1.80–2.30, 3 rounds)"), "{t}");
    }
}
