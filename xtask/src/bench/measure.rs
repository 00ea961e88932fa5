//! Our side: one workload measured in a child process of its own (`xtask bench-one`), on the
//! device it names.

use std::time::Instant;

use anyhow::{Context, bail};
use automodel_core::AutodiffBackend;
use automodel_core::Backend;
use automodel_core::device::{DeviceSpec, OnDevice, run_on};
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_peft::FreezeConfig;
use automodel_text::generate::TextPrompt;
use automodel_text::{Generate, GenerationConfig, TrainBatch};
use automodel_train::{Optimizer, OptimizerConfig, TrainModel, train_step};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use super::workload::{
    BatchSpec, Workload, batch_spec, bench_lora, flops_per_token, gemma3n_config, peak_flops,
    token_ids,
};

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

/// Options of a measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunOpts {
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
}

pub(super) fn stats(times: &[f64]) -> (f64, f64, f64) {
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
        // the counter formula's weights, which the PyTorch side builds too: both losses agree
        let m =
            Gemma3nForConditionalGeneration::<B>::from_counter_weights(&cfg, 0, &device, dtype)?;
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
    let n_labels = spec.label_tokens();
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
        // the batch is built before the clock starts, as the PyTorch side builds its tensors
        // once before its loop: both sides time the step alone
        let batch = train_batch::<B>(&spec, device);
        B::sync(device)?;
        let t0 = Instant::now();
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

pub(super) fn parse_result(stdout: &[u8]) -> Option<Measure> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
}
