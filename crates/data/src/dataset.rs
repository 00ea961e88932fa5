//! A dataset ready to batch: every record read, rendered and tokenized once, bad ones skipped
//! (counted, with their reasons) or refused, as the recipe's policy says.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::encode::{Encoded, Encoder};
use crate::error::{DataError, Origin};
use crate::format::{Record, Sample};

/// What to do with a sample that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadSamples {
    /// Leave it out, count it, and summarise at the end.
    #[default]
    Skip,
    /// Stop with an error naming the sample.
    Fail,
}

/// A usable sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub origin: Origin,
    pub sample: Sample,
    pub encoded: Encoded,
}

/// What loading (and later batching) met.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub read: usize,
    pub used: usize,
    pub truncated: usize,
    /// Skipped samples by reason, with where they came from and the message.
    pub skipped: BTreeMap<String, Vec<(String, String)>>,
}

impl Report {
    /// Record a skipped sample (once, however many epochs meet it).
    pub fn skip(&mut self, kind: &str, origin: &Origin, message: impl fmt::Display) {
        let list = self.skipped.entry(kind.to_string()).or_default();
        let origin = origin.to_string();
        if !list.iter().any(|(o, _)| *o == origin) {
            list.push((origin, message.to_string()));
        }
    }

    /// Number of skipped samples.
    pub fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} read, {} used, {} truncated, {} skipped",
            self.read,
            self.used,
            self.truncated,
            self.skipped_count()
        )?;
        for (kind, list) in &self.skipped {
            write!(f, "\n  {kind}: {}", list.len())?;
            for (origin, msg) in list.iter().take(3) {
                write!(f, "\n    {origin}: {msg}")?;
            }
            if list.len() > 3 {
                write!(f, "\n    … and {} more", list.len() - 3)?;
            }
        }
        Ok(())
    }
}

/// Encoded samples in file order, and the report.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub samples: Vec<Prepared>,
    pub report: Report,
}

impl Dataset {
    /// Encode every record; bad ones per `policy`. An empty result is an error.
    pub fn prepare(
        records: Vec<Record>,
        encoder: &Encoder,
        policy: BadSamples,
    ) -> Result<Self, DataError> {
        let mut report = Report {
            read: records.len(),
            ..Default::default()
        };
        let mut samples = Vec::with_capacity(records.len());
        for r in records {
            let result = r.sample.and_then(|s| encoder.encode(&s).map(|e| (s, e)));
            match result {
                Ok((sample, encoded)) => {
                    report.truncated += usize::from(encoded.truncated);
                    samples.push(Prepared {
                        origin: r.origin,
                        sample,
                        encoded,
                    });
                }
                Err(error) if policy == BadSamples::Fail => {
                    return Err(DataError::Sample {
                        origin: r.origin,
                        error,
                    });
                }
                Err(error) => report.skip(error.kind(), &r.origin, &error),
            }
        }
        report.used = samples.len();
        if samples.is_empty() {
            return Err(DataError::Invalid(format!("no usable sample ({report})")));
        }
        if report.skipped_count() > 0 {
            tracing::warn!("dataset: {report}");
        }
        Ok(Self { samples, report })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
