//! The order of batches — seeded, per-epoch shuffling; packing; a position that can be saved and
//! resumed mid-epoch — and background workers that decode and preprocess media ahead of the
//! training step.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use automodel_text::generate::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::batch::{Decoded, HostBatch, Item, PackStrategy, pack};
use crate::dataset::{BadSamples, Dataset, Report};
use crate::encode::Encoder;
use crate::error::DataError;

/// Where a run is in its data: the next batch to yield.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    /// Index of the next batch within the epoch.
    pub batch: usize,
}

/// Text-only sequence packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packing {
    /// Tokens per packed row.
    pub max_tokens: usize,
    #[serde(default)]
    pub strategy: PackStrategy,
}

/// Batching settings (recipe `dataset`/`step_scheduler` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Rows per batch.
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Leave out a last, smaller batch.
    pub drop_last: bool,
    pub packing: Option<Packing>,
    /// Background threads that build batches (0 = on the caller's thread).
    pub workers: usize,
    /// Batches built ahead of the step.
    pub prefetch: usize,
    /// What to do with a sample whose media cannot be decoded.
    pub bad_samples: BadSamples,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            shuffle: true,
            seed: 42,
            drop_last: false,
            packing: None,
            workers: 1,
            prefetch: 2,
            bad_samples: BadSamples::Skip,
        }
    }
}

/// Batches of a [`Dataset`] in a deterministic order.
#[derive(Debug, Clone)]
pub struct Loader {
    pub encoder: Arc<Encoder>,
    pub data: Arc<Dataset>,
    pub config: LoaderConfig,
    /// Samples left out while batching (media that would not decode).
    pub report: Arc<Mutex<Report>>,
}

/// One epoch's batches: rows of dataset indices.
pub type Plan = Vec<Vec<Vec<usize>>>;

impl Loader {
    pub fn new(
        encoder: Arc<Encoder>,
        data: Arc<Dataset>,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Invalid("batch_size must be at least 1".into()));
        }
        if let Some(p) = &config.packing {
            if data
                .samples
                .iter()
                .any(|s| !s.encoded.images.is_empty() || !s.encoded.audio.is_empty())
            {
                return Err(DataError::Invalid(
                    "packing is for text-only data; this dataset has images or audio".into(),
                ));
            }
            if let Some(s) = data
                .samples
                .iter()
                .find(|s| s.encoded.ids.len() > p.max_tokens)
            {
                return Err(DataError::Invalid(format!(
                    "{}: {} tokens do not fit a packed row of {} (set max_length to at most max_tokens)",
                    s.origin,
                    s.encoded.ids.len(),
                    p.max_tokens
                )));
            }
        }
        let report = Arc::new(Mutex::new(data.report.clone()));
        let loader = Self {
            encoder,
            data,
            config,
            report,
        };
        if loader.batches_per_epoch() == 0 {
            return Err(DataError::Invalid(format!(
                "{} samples make no full batch of {} (drop_last is set)",
                loader.data.len(),
                loader.config.batch_size
            )));
        }
        Ok(loader)
    }

    /// The sample order of `epoch` (a seeded Fisher–Yates shuffle, or file order).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.data.len()).collect();
        if self.config.shuffle {
            let mut rng = SplitMix64::new(
                self.config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            for i in (1..idx.len()).rev() {
                let j = (rng.next_f64() * (i + 1) as f64) as usize;
                idx.swap(i, j.min(i));
            }
        }
        idx
    }

    /// The batches of `epoch`.
    pub fn plan(&self, epoch: usize) -> Plan {
        let order = self.order(epoch);
        let rows: Vec<Vec<usize>> = match &self.config.packing {
            None => order.into_iter().map(|i| vec![i]).collect(),
            Some(p) => {
                let lens: Vec<usize> = order
                    .iter()
                    .map(|&i| self.data.samples[i].encoded.ids.len())
                    .collect();
                pack(&lens, p.max_tokens, p.strategy)
                    .into_iter()
                    .map(|r| r.into_iter().map(|k| order[k]).collect())
                    .collect()
            }
        };
        let mut batches: Plan = rows
            .chunks(self.config.batch_size)
            .map(|c| c.to_vec())
            .collect();
        if self.config.drop_last
            && batches
                .last()
                .is_some_and(|b| b.len() < self.config.batch_size)
        {
            batches.pop();
        }
        batches
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan(0).len()
    }

    /// Build the batch of `rows`, decoding media; a sample whose media will not decode is left
    /// out (counted) or is an error, as the policy says. `None` when nothing is left.
    pub fn build(&self, rows: &[Vec<usize>]) -> Result<Option<HostBatch>, DataError> {
        let mut keep: Vec<Vec<Item<'_>>> = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for &i in row {
                let s = &self.data.samples[i];
                match Decoded::of(&s.encoded) {
                    Ok(media) => r.push((i, &s.encoded, media)),
                    Err(error) if self.config.bad_samples == BadSamples::Fail => {
                        return Err(DataError::Sample {
                            origin: s.origin.clone(),
                            error,
                        });
                    }
                    Err(error) => self.report.lock().expect("report lock").skip(
                        error.kind(),
                        &s.origin,
                        &error,
                    ),
                }
            }
            if !r.is_empty() {
                keep.push(r);
            }
        }
        if keep.is_empty() {
            return Ok(None);
        }
        let packed = self.config.packing.is_some();
        let rows = if packed {
            keep
        } else {
            keep.into_iter().flatten().map(|item| vec![item]).collect()
        };
        self.encoder
            .collate_rows(&rows, packed)
            .map(Some)
            .map_err(|error| DataError::Invalid(format!("batch: {error}")))
    }

    /// Batches from `from` on, across epochs without end (the caller stops): each item is the
    /// position *after* the batch (what to save to resume) and the batch.
    pub fn iter(&self, from: Position) -> Batches {
        Batches::new(self.clone(), from)
    }
}

type Job = (u64, Position, Vec<Vec<usize>>);
type Done = (u64, Position, Result<Option<HostBatch>, DataError>);

/// An iterator over batches, built by background workers in order.
pub struct Batches {
    loader: Loader,
    next: Position,
    plans: BTreeMap<usize, Arc<Plan>>,
    seq: u64,
    // workers
    jobs: Option<Sender<Job>>,
    done: Option<Receiver<Done>>,
    pending: BTreeMap<u64, (Position, Result<Option<HostBatch>, DataError>)>,
    issued: u64,
    /// Batches in a row that came out empty (every sample's media unreadable).
    empty: usize,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Batches {
    fn new(loader: Loader, from: Position) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut it = Self {
            loader,
            next: from,
            plans: BTreeMap::new(),
            seq: 0,
            jobs: None,
            done: None,
            pending: BTreeMap::new(),
            issued: 0,
            empty: 0,
            stop,
            handles: Vec::new(),
        };
        let workers = it.loader.config.workers;
        if workers > 0 {
            let (job_tx, job_rx) = channel::<Job>();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (done_tx, done_rx) = channel::<Done>();
            for _ in 0..workers {
                let (loader, rx, tx, stop) = (
                    it.loader.clone(),
                    job_rx.clone(),
                    done_tx.clone(),
                    it.stop.clone(),
                );
                it.handles.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let job = rx.lock().expect("job lock").recv();
                        let Ok((k, pos, rows)) = job else { break };
                        if tx.send((k, pos, loader.build(&rows))).is_err() {
                            break;
                        }
                    }
                }));
            }
            it.jobs = Some(job_tx);
            it.done = Some(done_rx);
        }
        it
    }

    fn plan(&mut self, epoch: usize) -> Arc<Plan> {
        while self.plans.len() > 2 {
            let first = *self.plans.keys().next().expect("non-empty");
            self.plans.remove(&first);
        }
        self.plans
            .entry(epoch)
            .or_insert_with(|| Arc::new(self.loader.plan(epoch)))
            .clone()
    }

    /// The next job: its position after, and its rows.
    fn take_job(&mut self) -> (Position, Vec<Vec<usize>>) {
        loop {
            let plan = self.plan(self.next.epoch);
            if self.next.batch < plan.len() {
                let rows = plan[self.next.batch].clone();
                self.next.batch += 1;
                let mut after = self.next;
                if after.batch == plan.len() {
                    after = Position {
                        epoch: after.epoch + 1,
                        batch: 0,
                    };
                }
                return (after, rows);
            }
            self.next = Position {
                epoch: self.next.epoch + 1,
                batch: 0,
            };
        }
    }
}

impl Iterator for Batches {
    type Item = Result<(Position, HostBatch), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let result = if self.jobs.is_none() {
                let (pos, rows) = self.take_job();
                (pos, self.loader.build(&rows))
            } else {
                // keep `prefetch` jobs in flight
                let ahead = self.loader.config.prefetch.max(1) as u64;
                while self.issued < self.seq + ahead {
                    let (pos, rows) = self.take_job();
                    let k = self.issued;
                    self.issued += 1;
                    if self.jobs.as_ref()?.send((k, pos, rows)).is_err() {
                        return Some(Err(DataError::Invalid("a data worker stopped".into())));
                    }
                }
                while !self.pending.contains_key(&self.seq) {
                    match self.done.as_ref()?.recv() {
                        Ok((k, pos, r)) => {
                            self.pending.insert(k, (pos, r));
                        }
                        Err(_) => {
                            return Some(Err(DataError::Invalid("a data worker stopped".into())));
                        }
                    }
                }
                let (pos, r) = self.pending.remove(&self.seq).expect("present");
                self.seq += 1;
                (pos, r)
            };
            match result {
                (pos, Ok(Some(b))) => {
                    self.empty = 0;
                    return Some(Ok((pos, b)));
                }
                (_, Ok(None)) => {
                    // a whole epoch of empty batches would loop for ever: no sample is usable
                    self.empty += 1;
                    if self.empty > self.plan(self.next.epoch).len() {
                        let report = self.loader.report.lock().expect("report lock").clone();
                        return Some(Err(DataError::Invalid(format!(
                            "no sample's media could be read ({report})"
                        ))));
                    }
                    continue;
                }
                (_, Err(e)) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None; // workers see the channel close
        self.done = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
