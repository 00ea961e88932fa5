//! Generation metrics of validation: exact match (QA) and word error rate (ASR).

use serde::{Deserialize, Serialize};

/// Which metric validation computes by generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The answer equals the reference after trimming, case and trailing punctuation
    /// (`automodel_data::builtin::exact_match`).
    #[default]
    ExactMatch,
    /// Word error rate: word-level edit distance over the reference's word count.
    Wer,
    /// No generation (validation loss only).
    None,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "exact_match",
            Metric::Wer => "wer",
            Metric::None => "none",
        }
    }
}

/// Recipe `evaluation`: the generation part of validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    pub metric: Metric,
    /// Validation samples answered by greedy decoding (the first N of `validation_dataset`).
    pub num_samples: usize,
    pub max_new_tokens: usize,
    /// Also measure before the first step (the "before" of the before/after report).
    pub before_training: bool,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            metric: Metric::ExactMatch,
            num_samples: 32,
            max_new_tokens: 16,
            before_training: true,
        }
    }
}

/// Lower-cased words without surrounding punctuation.
fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word-level edit distance (substitutions, insertions, deletions) and the reference's length.
pub fn word_errors(prediction: &str, reference: &str) -> (usize, usize) {
    let (h, r) = (words(prediction), words(reference));
    (strsim::generic_levenshtein(&h, &r), r.len())
}

/// Corpus WER: total word errors over total reference words.
pub fn wer<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let (mut e, mut n) = (0, 0);
    for (p, r) in pairs {
        let (de, dn) = word_errors(p, r);
        e += de;
        n += dn;
    }
    if n == 0 { 0.0 } else { e as f64 / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate() {
        assert_eq!(word_errors("one two three", "one two three"), (0, 3));
        assert_eq!(word_errors("One, two.", "one two three"), (1, 3));
        assert_eq!(word_errors("one too three four", "one two three"), (2, 3));
        assert_eq!(word_errors("", "a b"), (2, 2));
        let w = wer([("a b", "a b"), ("x", "a b")]);
        assert!((w - 0.5).abs() < 1e-12);
    }
}
