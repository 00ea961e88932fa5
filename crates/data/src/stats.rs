//! What `automodel-cli data` prints: samples as the model sees them with the labelled spans
//! marked, and statistics of a prepared dataset.

use std::fmt;

use automodel_core::loss::IGNORE_INDEX;

use crate::dataset::{Dataset, Prepared, Report};
use crate::encode::Encoder;

/// Opening and closing marks around labelled tokens in [`show`].
pub const MARKS: (&str, &str) = ("⟦", "⟧");

/// A sample's tokens decoded (special tokens shown), labelled spans inside [`MARKS`], runs of a
/// repeated token (media soft tokens) shortened to `<token>×N`.
pub fn show(encoder: &Encoder, s: &Prepared) -> String {
    let e = &s.encoded;
    let mut out = String::new();
    let mut i = 0;
    while i < e.ids.len() {
        let labelled = e.labels[i] != IGNORE_INDEX;
        let mut j = i;
        while j < e.ids.len() && (e.labels[j] != IGNORE_INDEX) == labelled {
            j += 1;
        }
        let text = decode_runs(encoder, &e.ids[i..j]);
        if labelled {
            out.push_str(MARKS.0);
            out.push_str(&text);
            out.push_str(MARKS.1);
        } else {
            out.push_str(&text);
        }
        i = j;
    }
    out
}

fn decode_runs(encoder: &Encoder, ids: &[i64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i + 1;
        while j < ids.len() && ids[j] == ids[i] {
            j += 1;
        }
        let piece = |xs: &[i64]| {
            let xs: Vec<u32> = xs.iter().map(|&x| x as u32).collect();
            encoder
                .tokenizer
                .decode(&xs, false)
                .unwrap_or_else(|_| format!("{xs:?}"))
        };
        if j - i >= 8 {
            out.push_str(&format!("{}×{}", piece(&ids[i..i + 1]), j - i));
            i = j;
        } else {
            // decode up to the next long run in one go (keeps multi-token characters whole)
            let mut k = i;
            while k < ids.len() {
                let mut r = k + 1;
                while r < ids.len() && ids[r] == ids[k] {
                    r += 1;
                }
                if r - k >= 8 {
                    break;
                }
                k = r;
            }
            out.push_str(&piece(&ids[i..k]));
            i = k;
        }
    }
    out
}

/// Statistics of a prepared dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub samples: usize,
    pub tokens: usize,
    pub label_tokens: usize,
    pub images: usize,
    pub clips: usize,
    pub min_len: usize,
    pub max_len: usize,
    /// `(upper bound, count)`: lengths in `(previous bound, bound]`, powers of two.
    pub histogram: Vec<(usize, usize)>,
    pub report: Report,
}

impl Stats {
    pub fn of(data: &Dataset) -> Self {
        let lens: Vec<usize> = data.samples.iter().map(|s| s.encoded.ids.len()).collect();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let mut histogram = Vec::new();
        // power-of-two buckets from the one holding the shortest sample
        let min_len = lens.iter().copied().min().unwrap_or(0);
        let mut bound = min_len.next_power_of_two().max(16);
        let mut lo = if bound > 16 { bound / 2 } else { 0 };
        loop {
            let n = lens.iter().filter(|&&l| l > lo && l <= bound).count();
            histogram.push((bound, n));
            if bound >= max_len {
                break;
            }
            lo = bound;
            bound *= 2;
        }
        Self {
            samples: data.len(),
            tokens: lens.iter().sum(),
            label_tokens: data.samples.iter().map(|s| s.encoded.label_tokens()).sum(),
            images: data.samples.iter().map(|s| s.encoded.images.len()).sum(),
            clips: data.samples.iter().map(|s| s.encoded.audio.len()).sum(),
            min_len,
            max_len,
            histogram,
            report: data.report.clone(),
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "samples       {}", self.samples)?;
        writeln!(
            f,
            "tokens        {} (length {}–{}, mean {:.1})",
            self.tokens,
            self.min_len,
            self.max_len,
            self.tokens as f64 / self.samples.max(1) as f64
        )?;
        writeln!(
            f,
            "label tokens  {} ({:.1}% of tokens)",
            self.label_tokens,
            100.0 * self.label_tokens as f64 / self.tokens.max(1) as f64
        )?;
        if self.images + self.clips > 0 {
            writeln!(
                f,
                "media         {} images, {} audio clips",
                self.images, self.clips
            )?;
        }
        writeln!(f, "lengths")?;
        let widest = self.histogram.iter().map(|h| h.1).max().unwrap_or(0).max(1);
        let mut lo = match self.histogram.first() {
            Some(&(b, _)) if b > 16 => b / 2,
            _ => 0,
        };
        for &(bound, n) in &self.histogram {
            let bar = "█".repeat((40 * n).div_ceil(widest));
            writeln!(f, "  {:>6}–{:<6} {:>7}  {bar}", lo + 1, bound, n)?;
            lo = bound;
        }
        write!(f, "records       {}", self.report)
    }
}
