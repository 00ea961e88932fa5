//! The worker's place in the job, from the launcher's environment (torchrun's names).

use std::time::Duration;

use crate::error::DistError;

/// The default time a collective operation (and the rendezvous) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Which worker this process is and how it reaches the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// This worker's global rank, `0..world_size`; rank 0 writes logs and checkpoints.
    pub rank: usize,
    /// Workers in the job.
    pub world_size: usize,
    /// This worker's rank on its machine.
    pub local_rank: usize,
    /// Workers on this machine.
    pub local_world_size: usize,
    /// Where the rendezvous (burn-collective's orchestrator) listens.
    pub master_addr: String,
    pub master_port: u16,
    /// The address the other workers reach this one at, and the port its tensor service
    /// listens on.
    pub node_addr: String,
    pub data_port: u16,
    /// How long the rendezvous and each collective operation may take.
    pub timeout: Duration,
}

/// The environment variables [`World::from_env`] reads (torchrun's, then this project's).
pub mod vars {
    pub const RANK: &str = "RANK";
    pub const WORLD_SIZE: &str = "WORLD_SIZE";
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
    pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    pub const MASTER_PORT: &str = "MASTER_PORT";
    /// This worker's address as the others reach it (default: 127.0.0.1).
    pub const NODE_ADDR: &str = "AUTOMODEL_NODE_ADDR";
    /// This worker's tensor-service port (default: `MASTER_PORT + 1 + RANK`).
    pub const DATA_PORT: &str = "AUTOMODEL_DATA_PORT";
    /// Seconds a collective operation may take (default 120).
    pub const TIMEOUT: &str = "AUTOMODEL_DIST_TIMEOUT";
}

impl World {
    /// The world the launcher describes in this process's environment; `None` when
    /// `WORLD_SIZE` is unset or 1 (a single process: nothing to share).
    pub fn from_env() -> Result<Option<World>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any source of variables.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<World>, DistError> {
        let num = |name: &'static str, default: Option<usize>| -> Result<usize, DistError> {
            match get(name) {
                Some(v) => v.trim().parse::<usize>().map_err(|_| DistError::Env {
                    name,
                    message: format!("`{v}` is not a whole number"),
                }),
                None => default.ok_or_else(|| DistError::Env {
                    name,
                    message: "is not set (start the workers with `automodel-cli launch`)".into(),
                }),
            }
        };
        let world_size = num(vars::WORLD_SIZE, Some(1))?;
        if world_size <= 1 {
            return Ok(None);
        }
        let rank = num(vars::RANK, None)?;
        if rank >= world_size {
            return Err(DistError::Env {
                name: vars::RANK,
                message: format!("{rank} is not below WORLD_SIZE ({world_size})"),
            });
        }
        let local_rank = num(vars::LOCAL_RANK, Some(rank))?;
        let local_world_size = num(vars::LOCAL_WORLD_SIZE, Some(world_size))?;
        let port = |name: &'static str, v: usize| {
            u16::try_from(v).map_err(|_| DistError::Env {
                name,
                message: format!("{v} is not a port number"),
            })
        };
        let master_port = port(vars::MASTER_PORT, num(vars::MASTER_PORT, None)?)?;
        let data_port = match get(vars::DATA_PORT) {
            Some(_) => port(vars::DATA_PORT, num(vars::DATA_PORT, None)?)?,
            None => port(vars::DATA_PORT, master_port as usize + 1 + rank)?,
        };
        let timeout = match get(vars::TIMEOUT) {
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(DistError::Env {
                        name: vars::TIMEOUT,
                        message: format!("`{v}` is not a positive number of seconds"),
                    });
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(World {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr: get(vars::MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            node_addr: get(vars::NODE_ADDR).unwrap_or_else(|| "127.0.0.1".into()),
            data_port,
            timeout,
        }))
    }

    /// Whether this worker writes logs, checkpoints and the progress bar.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>, DistError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn one_process_is_no_world() {
        assert_eq!(world(&[]).unwrap(), None);
        assert_eq!(world(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_make_the_world() {
        let w = world(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("AUTOMODEL_DIST_TIMEOUT", "7.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (3, 4, 1));
        assert_eq!(w.data_port, 29504);
        assert_eq!(w.master_addr, "10.0.0.1");
        assert_eq!(w.timeout, Duration::from_secs_f64(7.5));
        assert!(!w.is_main());
    }

    #[test]
    fn bad_variables_are_named() {
        let e = world(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = world(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("not below WORLD_SIZE"), "{e}");
        let e = world(&[("WORLD_SIZE", "two")]).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE: `two`"), "{e}");
        let e = world(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")]).unwrap_err();
        assert!(e.to_string().contains("not a port"), "{e}");
        let e = world(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_PORT", "1"),
            ("AUTOMODEL_DIST_TIMEOUT", "0"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("AUTOMODEL_DIST_TIMEOUT"), "{e}");
    }
}
