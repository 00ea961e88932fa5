//! Checkpoints laid out as NeMo Automodel lays them out:
//!
//! ```text
//! RUN/epoch_{e}_step_{s}/
//!     model/            the adapter (PEFT format) or the full model (HF safetensors), config, tokenizer
//!     optim/            optimizer.safetensors (state by parameter name) + optimizer.json (steps)
//!     train_state.json  step, epoch, data position, RNG seed, scheduler, losses so far
//!     config.yaml       the resolved recipe
//! RUN/LATEST, RUN/LOWEST_VAL   symbolic links to checkpoint folders
//! ```
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed
//! at any moment leaves every earlier checkpoint loadable and never a half-written one under a
//! checkpoint's name; leftovers of an interrupted write are removed on the next save.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use automodel_data::Position;

use crate::error::TrainError;

/// Recipe `checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    pub enabled: bool,
    /// The run folder (relative to the recipe); `--output-dir` takes precedence.
    pub checkpoint_dir: Option<PathBuf>,
    /// Keep only the newest K checkpoints (the `LOWEST_VAL` one is kept too); `None` keeps all.
    pub max_recent_checkpoints: Option<usize>,
    /// Also save at the end of the run.
    pub save_final: bool,
    /// Shard full-model weights at this many MB.
    pub max_shard_mb: Option<usize>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            checkpoint_dir: None,
            max_recent_checkpoints: Some(3),
            save_final: true,
            max_shard_mb: None,
        }
    }
}

/// What a checkpoint records besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// The next batch of the data order.
    pub data: Position,
    /// The seed every micro-batch's RNG is derived from (`seed + step + (j << 32)` for
    /// micro-batch `j` of a step).
    pub seed: u64,
    /// Losses of the steps so far (for the loss curve).
    pub losses: Vec<f64>,
    /// Lowest validation loss so far and its checkpoint folder name.
    pub best_val: Option<(f64, String)>,
    /// Non-finite steps in a row when saved.
    pub bad_in_a_row: usize,
    /// The batch sizes the steps were made of (absent in checkpoints of older versions):
    /// resuming with others is refused.
    #[serde(default)]
    pub global_batch_size: Option<usize>,
    #[serde(default)]
    pub local_batch_size: Option<usize>,
    /// Workers of the data-parallel run (1: one process); may change on resume.
    #[serde(default)]
    pub world_size: Option<usize>,
}

pub const LATEST: &str = "LATEST";
pub const LOWEST_VAL: &str = "LOWEST_VAL";
const TMP_PREFIX: &str = ".tmp-";

/// The folder name of a checkpoint.
pub fn name(epoch: usize, step: usize) -> String {
    format!("epoch_{epoch}_step_{step}")
}

/// `(epoch, step)` of a checkpoint folder name.
pub fn parse_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("epoch_")?;
    let (e, s) = rest.split_once("_step_")?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

fn io(path: &Path, what: &str, e: std::io::Error) -> TrainError {
    TrainError::file(path, format!("{what}: {e}"))
}

/// Write a checkpoint: `fill` writes the files into a temporary folder, which is then renamed to
/// `run/epoch_{e}_step_{s}`; `LATEST` then points at it. An existing checkpoint of that name is
/// replaced only after the new one is complete.
pub fn save(
    run: &Path,
    epoch: usize,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let final_name = name(epoch, step);
    let dst = run.join(&final_name);
    let tmp = run.join(format!("{TMP_PREFIX}{final_name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "cannot remove a leftover", e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
    fill(&tmp)?;
    if dst.exists() {
        let old = run.join(format!("{TMP_PREFIX}old-{final_name}"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dst, &old).map_err(|e| io(&dst, "cannot move aside", e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, "cannot rename into place", e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, "cannot rename into place", e))?;
    }
    sync_dir(run);
    point(run, LATEST, &final_name)?;
    Ok(dst)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Make `run/pointer` a symbolic link to `target` (replaced atomically).
pub fn point(run: &Path, pointer: &str, target: &str) -> Result<(), TrainError> {
    let link = run.join(pointer);
    let tmp = run.join(format!("{TMP_PREFIX}{pointer}"));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| io(&tmp, "cannot create a link", e))?;
    #[cfg(not(unix))]
    std::fs::write(&tmp, target).map_err(|e| io(&tmp, "cannot write", e))?;
    std::fs::rename(&tmp, &link).map_err(|e| io(&link, "cannot update", e))?;
    Ok(())
}

/// Where `run/pointer` leads, if it names a complete checkpoint.
pub fn follow(run: &Path, pointer: &str) -> Option<PathBuf> {
    let link = run.join(pointer);
    let target = std::fs::read_link(&link).ok().or_else(|| {
        std::fs::read_to_string(&link)
            .ok()
            .map(|s| PathBuf::from(s.trim()))
    })?;
    let dir = run.join(target);
    is_complete(&dir).then_some(dir)
}

/// A checkpoint folder holds its state file (written last).
pub fn is_complete(dir: &Path) -> bool {
    dir.join("train_state.json").is_file()
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_name)
            .is_some()
}

/// Complete checkpoints of `run`, oldest first (by step).
pub fn list(run: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(run) else {
        return Vec::new();
    };
    let mut v: Vec<(usize, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_complete(p))
        .filter_map(|p| {
            let (_, s) = parse_name(p.file_name()?.to_str()?)?;
            Some((s, p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// The checkpoint to resume from: what `LATEST` names, else the newest complete one.
pub fn latest(run: &Path) -> Option<PathBuf> {
    follow(run, LATEST).or_else(|| list(run).pop())
}

/// Remove all but the newest `keep` checkpoints, never the one `LOWEST_VAL` names.
pub fn prune(run: &Path, keep: usize) -> Result<(), TrainError> {
    let best = follow(run, LOWEST_VAL);
    let all = list(run);
    let n = all.len();
    for dir in all.into_iter().take(n.saturating_sub(keep.max(1))) {
        if Some(&dir) == best.as_ref() {
            continue;
        }
        std::fs::remove_dir_all(&dir)
            .map_err(|e| io(&dir, "cannot remove an old checkpoint", e))?;
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join("train_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::file(&path, e))
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(v).expect("serialisable");
    automodel_core::weights::write_atomic(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            epoch: 0,
            data: Position::default(),
            seed: 1,
            losses: vec![],
            best_val: None,
            bad_in_a_row: 0,
            global_batch_size: None,
            local_batch_size: None,
            world_size: None,
        }
    }

    fn write(run: &Path, step: usize) -> PathBuf {
        save(run, 0, step, |d| {
            write_json(&d.join("train_state.json"), &state(step))
        })
        .unwrap()
    }

    #[test]
    fn atomic_saves_pointers_and_pruning() {
        let run = tempfile::tempdir().unwrap();
        let run = run.path();
        assert!(latest(run).is_none());
        write(run, 2);
        let d4 = write(run, 4);
        assert_eq!(latest(run).unwrap(), d4);
        assert_eq!(read_state(&d4).unwrap().step, 4);
        // a save that fails half-way leaves the previous checkpoint the latest
        let err = save(run, 0, 6, |d| {
            std::fs::write(d.join("half"), b"x").unwrap();
            Err(TrainError::Config("killed".into()))
        });
        assert!(err.is_err());
        assert_eq!(latest(run).unwrap(), d4);
        // a folder under a checkpoint's name without its state file is not a checkpoint
        std::fs::create_dir_all(run.join("epoch_0_step_8/model")).unwrap();
        assert_eq!(latest(run).unwrap(), d4);
        point(run, LATEST, "epoch_0_step_8").unwrap();
        assert_eq!(
            latest(run).unwrap(),
            d4,
            "LATEST at an incomplete folder is ignored"
        );
        point(run, LOWEST_VAL, "epoch_0_step_2").unwrap();
        write(run, 10);
        write(run, 12);
        prune(run, 2).unwrap();
        let names: Vec<String> = list(run)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["epoch_0_step_2", "epoch_0_step_10", "epoch_0_step_12"]
        );
        assert_eq!(parse_name("epoch_3_step_40"), Some((3, 40)));
        assert_eq!(parse_name("epoch_x_step_40"), None);
    }
}
