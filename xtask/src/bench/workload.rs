//! The workloads: which model, what is done with it, the shapes; their batches (the same ids on
//! both sides) and analytic FLOPs.

use anyhow::bail;
use automodel_gemma3n::Gemma3nConfig;
use automodel_peft::LoraConfig;
use automodel_text::LayerType;
use serde::{Deserialize, Serialize};

use super::root;

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

pub(super) fn w(
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

/// The full-size Gemma 3n E2B LoRA step in bfloat16 on the CPU (text 1×512, and a 768×768
/// picture + text), counter-formula weights on both sides. Run only when `--only` names them
/// (`--only gemma3n-E2B`): minutes per step, ~11 GB of weights per side.
pub fn released_cpu() -> Vec<Workload> {
    vec![
        bf16(w("gemma3n-E2B", "lora", "text", 1, 512, 0, "cpu")),
        bf16(w("gemma3n-E2B", "lora", "image+text", 1, 512, 0, "cpu")),
    ]
}

/// A kernel microbenchmark (no model): `matmul` of `[m, k] × [k, n]` or element-wise `exp` over
/// `[m, k]`, in the workload's dtype, one call per step; Burn's kernel against PyTorch's on the
/// same shapes. Encoded in a [`Workload`] as `model` `kernel`, `mode` the op, `batch` = m,
/// `seq_len` = k, `new_tokens` = n.
pub(super) fn kernel(op: &str, m: usize, k: usize, n: usize, device: &str) -> Workload {
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

/// The model's full config (Gemma 3n), as both sides build it.
pub(super) fn gemma3n_config(model: &str) -> anyhow::Result<Gemma3nConfig> {
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

impl BatchSpec {
    /// The tokens the loss is taken over, as Hugging Face counts them: labels are shifted by
    /// one inside the loss (position `t` predicts token `t + 1`), so a row's first label is
    /// never predicted, and `-100` is no label. A `1 × 256` text batch has 255. The trainer's
    /// data path counts the same way (`automodel_data::batch`: each sample's first label is
    /// `-100`).
    pub fn label_tokens(&self) -> usize {
        self.labels
            .iter()
            .map(|row| row.iter().skip(1).filter(|&&l| l != -100).count())
            .sum()
    }
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

/// The LoRA settings of the `lora` workloads (those of `recipes/default.yaml`), in PEFT's field
/// names: our side parses them, the PyTorch side passes them to `peft.LoraConfig`.
pub(super) fn bench_lora_json() -> serde_json::Value {
    serde_json::json!({
        "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    })
}

/// [`bench_lora_json`] as our config.
pub fn bench_lora() -> LoraConfig {
    serde_json::from_value(bench_lora_json()).expect("a valid LoRA config")
}

/// Analytic model FLOPs per token of one workload: the one count behind the GFLOP/s column and
/// the MFU. What is counted: the matmuls of every linear layer (attention projections, MLP,
/// AltUp, LAuReL, per-layer inputs, the LM head), attention scores and values over the causal
/// context (capped by the sliding window) and, for LoRA, the adapters' two small matmuls on each
/// targeted projection. Norms, activations and embedding lookups are not counted; nor are the
/// towers (so an image workload's figure is a lower bound).
///
/// Only FLOPs actually done count, per mode (`lin`, `attn`, `lora` = one token's forward
/// FLOPs of the linear layers, the attention products and the adapters):
/// * `generate`: the forward pass, `lin + attn`;
/// * `full`: forward + backward = `3 × (lin + attn)` (backward: the input's and the weight's
///   gradient of every linear, both operands' gradients of the attention products);
/// * `lora`: `2 × lin + 3 × attn + 3 × lora`: backward computes the frozen base's input
///   gradients (1× its forward) but no base-weight gradient, while the adapters, the attention
///   products and their gradients cost 3× their forward, as a full step's do.
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
    let lora_cfg = bench_lora();
    let targets = match &lora_cfg.target_modules {
        Some(automodel_peft::Targets::List(names)) => names.clone(),
        other => bail!("the bench's LoRA targets are a list of names, not {other:?}"),
    };
    // the forward FLOPs of a LoRA adapter (rank r) on a targeted `in → out` projection
    let adapter = |name: &str, fan_in: f64, fan_out: f64| -> f64 {
        if targets.iter().any(|t| t == name) {
            2.0 * lora_cfg.r as f64 * (fan_in + fan_out)
        } else {
            0.0
        }
    };
    // one decoder layer's seven projections: (name, in, out); k/v only where the layer has them
    let projections = |h: f64, q: f64, kv: f64, hd: f64, f: f64, has_kv: bool| {
        let mut v = vec![("q_proj", h, q * hd), ("o_proj", q * hd, h)];
        if has_kv {
            v.extend([("k_proj", h, kv * hd), ("v_proj", h, kv * hd)]);
        }
        v.extend([("gate_proj", h, f), ("up_proj", h, f), ("down_proj", f, h)]);
        v
    };
    // (linear layers, attention products, LoRA adapters): one token's forward FLOPs
    let (mut lin, mut attn, mut lora) = (0.0, 0.0, 0.0);
    if wl.model == "gemma-3-270m" {
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
        for lt in c.layer_types() {
            let win = (lt == LayerType::Sliding).then_some(c.sliding_window);
            for (name, i, o) in projections(h, q, kv, hd, f, true) {
                lin += 2.0 * i * o;
                lora += adapter(name, i, o);
            }
            attn += 4.0 * q * hd * ctx(win);
        }
        lin += 2.0 * h * c.vocab_size as f64;
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
        for (i, (lt, f)) in layers.iter().zip(c.intermediate_sizes()).enumerate() {
            let win = (*lt == LayerType::Sliding).then_some(c.sliding_window);
            // KV-shared layers compute no K/V projections
            for (name, fi, fo) in projections(h, q, kv, hd, f as f64, i < first_shared) {
                lin += 2.0 * fi * fo;
                lora += adapter(name, fi, fo);
            }
            attn += 4.0 * q * hd * ctx(win);
            // AltUp: the router (h → n) twice, predict (n → n²) and correct (n → n) coefs
            lin += 2.0 * (2.0 * h * n + n * n * n + n * n) + 2.0 * n * n * h * 2.0;
            // LAuReL (h → r → h) and the per-layer input gate (h → p → h)
            lin += 2.0 * (2.0 * h * r) + 2.0 * (2.0 * h * p);
        }
        let nl = layers.len() as f64;
        // per-layer input projection (h → L·p), AltUp in/out projections, the LM head
        lin += 2.0 * h * nl * p + 2.0 * 2.0 * (n - 1.0) * h * h + 2.0 * h * c.vocab_size as f64;
    }
    Ok(match wl.mode.as_str() {
        "generate" => lin + attn,
        "lora" => 2.0 * lin + 3.0 * attn + 3.0 * lora,
        "full" => 3.0 * (lin + attn),
        other => bail!("mode `{other}`: expected lora, full or generate"),
    })
}

/// The peak FLOP/s the MFU is taken against: dense bf16 of an H100/H200 (989 TFLOP/s), or
/// `AUTOMODEL_PEAK_TFLOPS`.
pub(super) fn peak_flops(dtype: &str) -> f64 {
    if let Some(v) = std::env::var("AUTOMODEL_PEAK_TFLOPS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        return v * 1e12;
    }
    if dtype == "float32" { 494.5e12 } else { 989e12 }
}
