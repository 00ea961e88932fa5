//! This worker's membership of the collective: the one module that names burn-collective.

use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use burn_communication::Address;

use crate::error::DistError;
use crate::world::World;

/// The largest tensor one all-reduce sends, in elements (64 MiB of float32): a websocket
/// frame above 512 MiB is refused, and PyTorch's DDP buckets its gradients likewise.
pub const BUCKET_ELEMENTS: usize = 16 << 20;

/// One worker of a data-parallel job, registered with burn-collective on backend `B` (with
/// an autodiff backend, its inner backend: gradients live there). Dropping it leaves the
/// collective.
pub struct Collective<B: Backend> {
    world: World,
    _backend: PhantomData<B>,
}

impl<B: Backend> std::fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective")
            .field("world", &self.world)
            .finish()
    }
}

impl<B: Backend> Collective<B> {
    /// Meet the other workers at the rendezvous (`MASTER_ADDR:MASTER_PORT`): returns when all
    /// `world_size` workers are there, or an error after the world's timeout.
    pub fn join(world: World, device: &B::Device) -> Result<Self, DistError> {
        let address = |host: &str, port: u16| {
            Address::from_str(&format!("ws://{host}:{port}")).expect("any string is an address")
        };
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(world.world_size as u32)
            .with_global_address(address(&world.master_addr, world.master_port))
            .with_node_address(address(&world.node_addr, world.data_port))
            .with_data_service_port(world.data_port)
            // the root sums and sends the result down: every worker gets the same bits, and a
            // tensor of any length works (the ring needs one at least as long as the world)
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
        let peer = PeerId::from(world.rank);
        let device = device.clone();
        let what = format!(
            "the rendezvous of {} workers at {}:{}",
            world.world_size, world.master_addr, world.master_port
        );
        bounded(&world, what, move || {
            burn_collective::register::<B>(peer, device, config)
        })?;
        tracing::info!(
            "rank {} of {} joined the collective",
            world.rank,
            world.world_size
        );
        Ok(Self {
            world,
            _backend: PhantomData,
        })
    }

    /// The world this worker belongs to.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The element-wise sum of `tensor` (float32, any length) over every worker, in buckets of
    /// [`BUCKET_ELEMENTS`]; every worker gets the same result. `what` names the operation in
    /// errors.
    pub fn all_reduce_sum(
        &self,
        tensor: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, DistError> {
        let n = tensor.dims()[0];
        let mut parts = Vec::with_capacity(n.div_ceil(BUCKET_ELEMENTS).max(1));
        for start in (0..n.max(1)).step_by(BUCKET_ELEMENTS) {
            let len = BUCKET_ELEMENTS.min(n - start);
            let part = if len == n {
                tensor.clone()
            } else {
                tensor.clone().narrow(0, start, len)
            };
            parts.push(self.all_reduce_one(part, what)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(parts, 0)
        })
    }

    fn all_reduce_one(&self, tensor: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>, DistError> {
        let peer = PeerId::from(self.world.rank);
        let primitive = tensor.into_primitive().tensor();
        let out = bounded(
            &self.world,
            format!("the all-reduce of {what}"),
            move || burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum),
        )?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// Wait until every worker has come here (an all-reduce of one number).
    pub fn barrier(&self, what: &str, device: &B::Device) -> Result<(), DistError> {
        self.all_reduce_sum(Tensor::zeros([1], device), what)
            .map(|_| ())
    }
}

impl<B: Backend> Drop for Collective<B> {
    fn drop(&mut self) {
        // leave the collective; the orchestrator may be gone already (a failed run), so do not
        // wait for it long
        let peer = PeerId::from(self.world.rank);
        let mut quick = self.world.clone();
        quick.timeout = quick.timeout.min(Duration::from_secs(5));
        if let Err(e) = bounded(&quick, "leaving the collective".into(), move || {
            burn_collective::finish_collective::<B>(peer)
        }) {
            tracing::debug!("{e}");
        }
    }
}

/// Run `op` (a blocking collective call) on a thread of its own and wait for it at most the
/// world's timeout. On a timeout the call is left blocked: the caller returns the error and
/// the process ends with it.
fn bounded<T: Send + 'static>(
    world: &World,
    what: String,
    op: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
) -> Result<T, DistError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("collective".into())
        .spawn(move || {
            // a panic inside the collective (its tasks `expect` their sockets) drops `tx`
            let _ = tx.send(op());
        })
        .map_err(|e| DistError::Collective {
            rank: world.rank,
            what: what.clone(),
            message: format!("cannot start a thread: {e}"),
        })?;
    match rx.recv_timeout(world.timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DistError::Collective {
            rank: world.rank,
            what,
            message: format!("{e:?}"),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(DistError::Collective {
            rank: world.rank,
            what,
            message: "the collective stopped (a connection to another worker was lost)".into(),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(DistError::Timeout {
            rank: world.rank,
            what,
            timeout: world.timeout,
        }),
    }
}
