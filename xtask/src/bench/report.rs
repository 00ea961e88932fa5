//! The results: one row a workload, printed as a line and as the Markdown table that `--record`
//! keeps in `docs/benchmarks.md` (and `docs/benchmarks.json`).

use std::process::Command;

use serde::{Deserialize, Serialize};

use super::measure::{Measure, stats};
use super::workload::Workload;

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

pub(crate) fn chrono_date() -> String {
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

pub(super) fn row_line(r: &Row) -> String {
    format!(
        "{}: ours {:.3} s/step [{:.3}–{:.3}], {:.1} tok/s, {} MiB | PyTorch {} | {}",
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

/// The README's speed lines: for each headline workload and each CPU it was recorded on, the
/// latest record whose sides alternated over at least three rounds (a single pair can be off by
/// 20 % on a noisy machine, so none is quoted), with its date, CPU and the rounds' spread.
pub fn summary_lines(rows: &[Row]) -> String {
    const HEADLINES: &[(&str, &str)] = &[
        (
            "gemma3-270m-lora-b1-s256",
            "Gemma 3 270M LoRA step (1 × 256 tokens, float32)",
        ),
        (
            "gemma3-270m-full-b1-s256",
            "Gemma 3 270M full fine-tuning step (1 × 256, float32)",
        ),
        (
            "gemma3-270m-generate-p32-n64",
            "Gemma 3 270M greedy decoding (64 new tokens)",
        ),
        (
            "gemma3-270m-lora-bf16-b1-s256",
            "Gemma 3 270M LoRA step in bfloat16 (1 × 256)",
        ),
        (
            "gemma3n-tiny-full-b1-s256",
            "tiny Gemma 3n full step (text, 1 × 256)",
        ),
        (
            "gemma3n-tiny-full-image-b1-s256",
            "tiny Gemma 3n full step (image + text, 1 × 256)",
        ),
    ];
    let mut s = String::new();
    for (name, what) in HEADLINES {
        let mut recs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.workload.name == *name && r.pytorch.is_some() && r.ratios.len() >= 3)
            .collect();
        if recs.is_empty() {
            s.push_str(&format!(
                "  * {what}: no record with PyTorch over 3 or more rounds yet\n"
            ));
            continue;
        }
        recs.sort_by(|a, b| (&a.device_name, &a.date).cmp(&(&b.device_name, &b.date)));
        // the latest record of each CPU
        let mut latest: Vec<&Row> = Vec::new();
        for r in recs {
            match latest.last_mut() {
                Some(l) if l.device_name == r.device_name => *l = r,
                _ => latest.push(r),
            }
        }
        for r in latest {
            let p = r.pytorch.as_ref().expect("filtered on a baseline");
            let speed = if r.workload.mode == "generate" {
                format!(
                    "{:.1} vs {:.1} tokens/s",
                    r.ours.tokens_per_s, p.tokens_per_s
                )
            } else {
                format!("{:.2} vs {:.2} s/step", r.ours.median_s, p.median_s)
            };
            let mem = match (r.ours.peak_mem_mib, p.peak_mem_mib) {
                (Some(o), Some(t)) => format!(", peak memory {o:.0} vs {t:.0} MiB"),
                _ => String::new(),
            };
            s.push_str(&format!(
                "  * {what}: {} PyTorch's speed ({speed}{mem}); {}, {} thread(s) each side, {}\n",
                ratio_cell(r),
                r.device_name,
                r.ours.threads,
                r.date
            ));
        }
    }
    s
}

/// Merge `rows` into `docs/benchmarks.json` (one row per workload, device and CPU: another
/// CPU's rows are kept with their dates) and rewrite the blocks the records feed
/// (`cargo xtask docs`).
pub(super) fn record_rows(rows: &[Row]) -> anyhow::Result<()> {
    use crate::docs::{BENCH_RECORDS, read_records, write_records};
    let mut all: Vec<Row> = read_records(BENCH_RECORDS)?;
    for r in rows {
        all.retain(|x| {
            !(x.workload.name == r.workload.name
                && x.workload.device == r.workload.device
                && x.device_name == r.device_name)
        });
        all.push(r.clone());
    }
    let key = |r: &Row| {
        (
            r.workload.device.clone(),
            r.workload.name.clone(),
            r.date.clone(),
            r.device_name.clone(),
        )
    };
    all.sort_by_key(key);
    write_records(BENCH_RECORDS, &all)
}
