//! What a run reports: `training.jsonl` and `validation.jsonl` with Automodel's field names, a
//! progress bar on a terminal (plain lines otherwise), and the loss curve as an SVG picture.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::error::TrainError;

/// One line of `training.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Token-mean cross-entropy of the step's global batch.
    pub loss: f64,
    /// Pre-clip global gradient norm.
    pub grad_norm: f64,
    /// Pre-clip gradient norm of each component (`text_decoder`, `per_layer_embeddings`,
    /// `altup_laurel`, `vision_tower`, `audio_tower`, `embedders`, `embed_tokens`, `lora.*`):
    /// the global norm is the root of the sum of their squares.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grad_norm_by_component: BTreeMap<String, f64>,
    pub lr: f64,
    /// Peak memory in GiB (the process's peak resident size on the CPU).
    pub mem: f64,
    /// Tokens per second over the whole step.
    pub tps: f64,
    pub num_tokens_per_step: usize,
    pub num_label_tokens: usize,
    /// The step was skipped (a non-finite loss or gradient).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// One line of `validation.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct ValRecord {
    pub step: usize,
    pub epoch: usize,
    pub timestamp: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub num_label_tokens: usize,
    pub mem: f64,
    /// The generation metric's name and value, when one was computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wer: Option<f64>,
}

impl ValRecord {
    /// A validation at `step`: the loss and its label-token count, and the value of `kind`.
    pub fn new(
        step: usize,
        epoch: usize,
        lr: f64,
        (val_loss, num_label_tokens): (f64, usize),
        kind: crate::metrics::Metric,
        metric: Option<f64>,
    ) -> Self {
        use crate::metrics::Metric;
        Self {
            step,
            epoch,
            timestamp: now(),
            val_loss,
            lr,
            num_label_tokens,
            mem: peak_mem_gib(),
            exact_match: metric.filter(|_| kind == Metric::ExactMatch),
            wer: metric.filter(|_| kind == Metric::Wer),
        }
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Peak resident memory of this process in GiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_mem_gib() -> f64 {
    automodel_core::memory::peak_resident_bytes().map_or(0.0, |b| b as f64 / (1u64 << 30) as f64)
}

/// Appends JSON lines to a file.
pub struct JsonLines {
    pub path: PathBuf,
    file: std::fs::File,
}

impl JsonLines {
    pub fn open(path: PathBuf) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::file(&path, format!("cannot open for appending: {e}")))?;
        Ok(Self { path, file })
    }

    pub fn write<T: Serialize>(&mut self, v: &T) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(v).expect("serialisable");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::file(&self.path, e))
    }
}

/// Drop the lines of a `.jsonl` whose `step` is above `step` (a resumed run rewrites them).
pub fn truncate_after(path: &Path, step: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    automodel_core::weights::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

/// Progress: a bar on a terminal, a plain line per logged step otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    hidden: bool,
}

impl Progress {
    pub fn new(total: usize, start: usize) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = tty.then(|| {
            let b = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            b.set_position(start as u64);
            b
        });
        Self { bar, hidden: false }
    }

    /// A progress display that shows nothing (the workers of a data-parallel run other than
    /// rank 0).
    pub fn hidden() -> Self {
        Self {
            bar: None,
            hidden: true,
        }
    }

    pub fn step(&self, r: &StepRecord) {
        if self.hidden {
            return;
        }
        let msg = format!(
            "loss {:.4} | grad_norm {:.3} | lr {:.2e} | tps {:.0}{}",
            r.loss,
            r.grad_norm,
            r.lr,
            r.tps,
            if r.skipped { " | skipped" } else { "" }
        );
        match &self.bar {
            Some(b) => {
                b.set_position(r.step as u64);
                b.set_message(msg);
            }
            None => eprintln!(
                "step {} | epoch {} | {msg} | mem {:.2} GiB | num_label_tokens {}",
                r.step, r.epoch, r.mem, r.num_label_tokens
            ),
        }
    }

    /// A line that stays (validation results, checkpoints).
    pub fn println(&self, line: &str) {
        if self.hidden {
            return;
        }
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Draw the training loss (and validation loss points) into an SVG file.
pub fn loss_curve(
    path: &Path,
    train: &[(usize, f64)],
    val: &[(usize, f64)],
) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let finite = |v: &&(usize, f64)| v.1.is_finite();
    let pts: Vec<(usize, f64)> = train.iter().filter(finite).copied().collect();
    let vpts: Vec<(usize, f64)> = val.iter().filter(finite).copied().collect();
    if pts.is_empty() {
        return Ok(());
    }
    let max_step = pts
        .iter()
        .chain(&vpts)
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1);
    let (lo, hi) = pts
        .iter()
        .chain(&vpts)
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw =
            |e: &dyn std::fmt::Display| TrainError::Config(format!("drawing the loss curve: {e}"));
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0..max_step + 1, (lo - pad)..(hi + pad))
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), &BLUE))
            .map_err(|e| draw(&e))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        if !vpts.is_empty() {
            chart
                .draw_series(LineSeries::new(vpts.iter().copied(), &RED))
                .map_err(|e| draw(&e))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    automodel_core::weights::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// The pre-clip gradient norm of each component, and the global one, over the steps of
/// `training_jsonl` (what the run wrote, so a resumed run draws its whole history), as an SVG
/// with a logarithmic axis: a spike shows which part of the model it comes from.
pub fn grad_norm_curve(path: &Path, training_jsonl: &Path) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let text =
        std::fs::read_to_string(training_jsonl).map_err(|e| TrainError::file(training_jsonl, e))?;
    let mut series: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_u64()) else {
            continue;
        };
        let mut add = |name: &str, x: Option<f64>| {
            if let Some(x) = x.filter(|x| x.is_finite() && *x > 0.0) {
                series
                    .entry(name.to_string())
                    .or_default()
                    .push((step as usize, x));
            }
        };
        add("global", v.get("grad_norm").and_then(|x| x.as_f64()));
        if let Some(parts) = v.get("grad_norm_by_component").and_then(|p| p.as_object()) {
            for (name, x) in parts {
                add(name, x.as_f64());
            }
        }
    }
    let all = || series.values().flatten();
    let Some(max_step) = all().map(|p| p.0).max() else {
        return Ok(());
    };
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| {
            TrainError::Config(format!("drawing the gradient norms: {e}"))
        };
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "gradient norm by component (before clipping)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0..max_step + 1, ((lo / 1.5)..(hi * 1.5)).log_scale())
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("L2 norm")
            .draw()
            .map_err(|e| draw(&e))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = if name == "global" {
                BLACK.to_rgba()
            } else {
                Palette99::pick(i).to_rgba()
            };
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour))
                .map_err(|e| draw(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    automodel_core::weights::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.svg");
        loss_curve(
            &p,
            &[(1, 3.0), (2, 2.0), (3, f64::NAN), (4, 1.0)],
            &[(2, 2.5)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
        let j = dir.path().join("t.jsonl");
        let mut w = JsonLines::open(j.clone()).unwrap();
        for step in 1..=4 {
            w.write(&serde_json::json!({ "step": step })).unwrap();
        }
        truncate_after(&j, 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&j).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
    }

    #[test]
    fn grad_norm_curve_draws_one_line_per_component() {
        let dir = tempfile::tempdir().unwrap();
        // the stroke colours of a picture drawn from `records`
        let colours = |name: &str, records: &[serde_json::Value]| {
            let j = dir.path().join(format!("{name}.jsonl"));
            let mut w = JsonLines::open(j.clone()).unwrap();
            for r in records {
                w.write(r).unwrap();
            }
            let p = dir.path().join(format!("{name}.svg"));
            grad_norm_curve(&p, &j).unwrap();
            let svg = std::fs::read_to_string(&p).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
            svg.split("stroke=\"")
                .skip(1)
                .filter_map(|x| x.split('"').next().map(str::to_string))
                .collect::<std::collections::BTreeSet<String>>()
        };
        let rec = |step: usize, parts: bool| {
            let mut r = serde_json::json!({"step": step, "grad_norm": 2.0 * step as f64});
            if parts {
                r["grad_norm_by_component"] =
                    serde_json::json!({"text_decoder": 1.5, "vision_tower": step as f64});
            }
            r
        };
        let global = colours("global", &[rec(1, false), rec(2, false), rec(3, false)]);
        let all = colours("all", &[rec(1, true), rec(2, true), rec(3, true)]);
        assert!(
            global.contains("#000000"),
            "the global norm in black: {global:?}"
        );
        assert_eq!(
            all.difference(&global).count(),
            2,
            "one colour per component: {all:?} vs {global:?}"
        );
        // a log with no gradient norm draws nothing and is no error
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "{\"step\":1}\n").unwrap();
        let q = dir.path().join("none.svg");
        grad_norm_curve(&q, &empty).unwrap();
        assert!(!q.exists());
    }
}
