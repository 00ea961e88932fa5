//! `automodel-cli launch`: torchrun's job for this binary's commands (see
//! [`automodel::distributed::launch`]).

use std::ffi::OsString;
use std::time::Duration;

use automodel::distributed::{LaunchOptions, launch as start};

#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct LaunchArgs {
    /// Workers on this machine: one per device (on the CPU, the cores are split between them).
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Machines in the job (run this command on each, with its --node-rank).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's index, 0 to nnodes − 1; machine 0 hosts the rendezvous.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Machine 0's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// The rendezvous's port on machine 0; the workers use the ports after it.
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// This machine's address as the others reach it (default: found from the route to
    /// --master-addr; 127.0.0.1 on one machine).
    #[arg(long)]
    pub node_addr: Option<String>,
    /// Seconds the rendezvous and each exchange of gradients may take before the workers stop
    /// with an error (a worker died or hangs).
    #[arg(long, default_value_t = 120.0, value_parser = crate::positive)]
    pub timeout: f64,
    /// Threads of each worker (default: the cores shared equally, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads_per_worker: Option<usize>,
    /// The command each worker runs, after `--`: `finetune ...`.
    #[arg(required = true, allow_hyphen_values = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

pub fn launch(a: LaunchArgs) -> anyhow::Result<()> {
    if a.command.first().is_none_or(|c| c != "finetune") {
        anyhow::bail!(
            "launch runs `finetune` in each worker: `automodel-cli launch --nproc-per-node N -- finetune [--config RECIPE] ...`"
        );
    }
    let opts = LaunchOptions {
        nproc_per_node: a.nproc_per_node,
        nnodes: a.nnodes,
        node_rank: a.node_rank,
        master_addr: a.master_addr,
        master_port: a.master_port,
        node_addr: a.node_addr,
        timeout: Duration::from_secs_f64(a.timeout),
        threads_per_worker: a.threads_per_worker,
    };
    let exe = std::env::current_exe()?;
    start(&opts, &exe, &a.command)?;
    Ok(())
}
