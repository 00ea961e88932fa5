//! Data-parallel training across processes and machines, on Burn's `burn-collective`.
//!
//! - [`World`]: which worker this process is, read from torchrun's environment variables
//!   (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`).
//! - [`Collective`]: this worker's membership of the collective: the rendezvous, a summing
//!   all-reduce of a float tensor, each bounded by the world's timeout, so that a worker that
//!   died or never came ends the run with an error instead of a hang.
//! - [`launch`]: torchrun's job: start the rendezvous (burn-collective's orchestrator) and one
//!   worker process per device, stop them all when one fails, and say which.
//!
//! Every worker process is one node of burn-collective's global level with one device; the
//! nodes meet at the orchestrator and exchange tensors peer to peer over websockets. The
//! trainer (`automodel-train`) sums the gradients of all workers with [`Collective`] before the
//! clip and the optimizer step. See docs/distributed.md.

mod collective;
mod error;
pub mod launch;
mod world;

pub use collective::{BUCKET_ELEMENTS, Collective};
pub use error::DistError;
pub use launch::{LaunchError, LaunchOptions, free_port, launch, on_stop_signals};
pub use world::World;
