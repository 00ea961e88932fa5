//! `cargo xtask soak-check RSS_LOG TRAINING_JSONL [--bound PERCENT]`: the verdict of
//! `xtask/soak.sh`. RSS_LOG holds one sample a line, `seconds steps_done resident_KiB`; after a
//! 100-step warm-up, the median of the first and of the last 12 samples are compared, and the
//! run fails when the end (or the highest sample) lies more than the bound (default 2 %) above
//! the start.

use anyhow::{Context, bail};

/// Steps before memory is expected to be flat.
const WARMUP_STEPS: u64 = 100;
/// Samples whose median stands for the start and for the end.
const WINDOW: usize = 12;
/// How far the resident memory may grow after the warm-up, in percent.
pub const DEFAULT_BOUND_PERCENT: f64 = 2.0;

/// What a soak measured.
#[derive(Debug, PartialEq)]
pub struct Soak {
    pub first_kib: f64,
    pub last_kib: f64,
    pub top_kib: f64,
}

impl Soak {
    pub fn growth_percent(&self) -> f64 {
        100.0 * (self.last_kib - self.first_kib) / self.first_kib
    }
    pub fn top_percent(&self) -> f64 {
        100.0 * (self.top_kib - self.first_kib) / self.first_kib
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The samples after the warm-up, summarised; an error when there are too few to judge.
pub fn analyse(rss_log: &str) -> anyhow::Result<Soak> {
    let mut warm = Vec::new();
    for (i, line) in rss_log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("line {}: expected `seconds steps resident_KiB`", i + 1))?;
        let [_, steps, kib] = f[..] else {
            bail!("line {}: expected three numbers, found {}", i + 1, f.len());
        };
        if steps >= WARMUP_STEPS {
            warm.push(kib as f64);
        }
    }
    if warm.len() < 2 * WINDOW {
        bail!(
            "{} samples after the {WARMUP_STEPS}-step warm-up; at least {} are needed to judge the growth",
            warm.len(),
            2 * WINDOW
        );
    }
    Ok(Soak {
        first_kib: median(warm[..WINDOW].to_vec()),
        last_kib: median(warm[warm.len() - WINDOW..].to_vec()),
        top_kib: warm.iter().copied().fold(f64::MIN, f64::max),
    })
}

pub fn soak_check(args: &[String]) -> anyhow::Result<bool> {
    let usage = "usage: cargo xtask soak-check RSS_LOG TRAINING_JSONL [--bound PERCENT]";
    let (rss, jsonl, bound) = match args {
        [r, j] => (r, j, DEFAULT_BOUND_PERCENT),
        [r, j, flag, b] if flag == "--bound" => (r, j, b.parse().context("--bound: a number")?),
        _ => bail!("{usage}"),
    };
    let s = analyse(&std::fs::read_to_string(rss).with_context(|| format!("reading {rss}"))?)?;
    let losses: Vec<f64> = std::fs::read_to_string(jsonl)
        .with_context(|| format!("reading {jsonl}"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    println!(
        "{} steps; resident memory after the warm-up {:.0} MiB, at the end {:.0} MiB ({:+.2} %), highest {:.0} MiB ({:+.2} %); loss {:.3} -> {:.3}",
        losses.len(),
        s.first_kib / 1024.0,
        s.last_kib / 1024.0,
        s.growth_percent(),
        s.top_kib / 1024.0,
        s.top_percent(),
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN),
    );
    if s.growth_percent() > bound || s.top_percent() > bound {
        eprintln!("FAILED: resident memory grew past the {bound} % bound");
        return Ok(false);
    }
    println!("within the {bound} % bound");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::analyse;

    /// A log of `n` samples, one step a sample, resident memory from `kib(step)`.
    fn log(n: u64, kib: impl Fn(u64) -> u64) -> String {
        (0..n)
            .map(|s| format!("{} {s} {}\n", 5 * s, kib(s)))
            .collect()
    }

    #[test]
    fn flat_memory_passes_and_growth_fails_the_bound() {
        let flat = analyse(&log(200, |_| 1_000_000)).unwrap();
        assert_eq!(flat.growth_percent(), 0.0);
        // about 4 % growth after the warm-up: past the 2 % bound
        let growing = analyse(&log(200, |s| 1_000_000 + s * 500)).unwrap();
        assert!(growing.growth_percent() > 2.0, "{growing:?}");
        // one spike after the warm-up shows in the highest sample, not in the medians
        let spike = analyse(&log(200, |s| if s == 150 { 1_100_000 } else { 1_000_000 })).unwrap();
        assert_eq!(spike.growth_percent(), 0.0);
        assert!((spike.top_percent() - 10.0).abs() < 1e-9);
        // the warm-up's growth does not count
        let warm = analyse(&log(200, |s| if s < 100 { 500_000 } else { 1_000_000 })).unwrap();
        assert_eq!(warm.growth_percent(), 0.0);
    }

    #[test]
    fn too_few_samples_or_bad_lines_are_errors() {
        assert!(
            analyse(&log(110, |_| 1))
                .unwrap_err()
                .to_string()
                .contains("10 samples")
        );
        assert!(analyse("1 2\n").unwrap_err().to_string().contains("line 1"));
        assert!(
            analyse("a b c\n")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }
}
