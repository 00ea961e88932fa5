//! torchrun's job: the rendezvous and one worker process per device; when one worker fails,
//! the others are stopped and the failure is named.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::world::{DEFAULT_TIMEOUT, vars};

/// How to start the workers of this machine (torchrun's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Workers on this machine (one per device; on the CPU they split the cores).
    pub nproc_per_node: usize,
    /// Machines in the job.
    pub nnodes: usize,
    /// This machine's index, `0..nnodes`; machine 0 hosts the rendezvous.
    pub node_rank: usize,
    /// Where machine 0 is reached.
    pub master_addr: String,
    /// The rendezvous's port on machine 0; the workers use the ports after it for their
    /// tensor services (`master_port + 1 + rank`: distinct even for machines sharing a host).
    pub master_port: u16,
    /// This machine's address as the others reach it (default: 127.0.0.1 on one machine, else
    /// the address this machine reaches `master_addr` from).
    pub node_addr: Option<String>,
    /// How long the rendezvous and each collective operation may take.
    pub timeout: Duration,
    /// Threads of each worker (`RAYON_NUM_THREADS`); `None`: the cores shared equally, unless
    /// `RAYON_NUM_THREADS` is set already.
    pub threads_per_worker: Option<usize>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            nproc_per_node: 1,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            node_addr: None,
            timeout: DEFAULT_TIMEOUT,
            threads_per_worker: None,
        }
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("launch: {0}")]
    Options(String),
    #[error("launch: port {port} on this machine is taken ({error}); choose another --master-port")]
    Port { port: u16, error: std::io::Error },
    #[error("launch: the rendezvous did not start on port {port}: {message}")]
    Rendezvous { port: u16, message: String },
    #[error("launch: cannot start rank {rank} ({program}): {error}")]
    Spawn {
        rank: usize,
        program: String,
        error: std::io::Error,
    },
    /// The workers stopped on a signal (Ctrl-C, SIGTERM): forwarded to each once, they finish
    /// their step and save a checkpoint.
    #[error(
        "launch: interrupted; the workers stopped after their step (rank 0 names the checkpoint)"
    )]
    Interrupted,
    #[error("launch: rank {rank} (pid {pid}) {status}; the other workers were stopped")]
    WorkerFailed {
        rank: usize,
        pid: u32,
        status: String,
    },
}

/// Start this machine's workers: `program args...` once per local rank, with torchrun's
/// environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
/// `MASTER_PORT`) and this project's (`AUTOMODEL_NODE_ADDR`, `AUTOMODEL_DATA_PORT`,
/// `AUTOMODEL_DIST_TIMEOUT`); on machine 0, first the rendezvous. Where `RAYON_NUM_THREADS`
/// is unset, each worker gets an equal share of the cores. Rank 0 writes to this process's
/// terminal; the others' lines are prefixed `[rank N]`. Returns when every worker has ended:
/// `Ok` if all succeeded, else the first failure (the others are stopped then). A SIGINT or
/// SIGTERM to the launcher is passed on to every worker once (they stop after their step and
/// save a checkpoint; a second one kills them), and the result is [`LaunchError::Interrupted`].
pub fn launch(opts: &LaunchOptions, program: &Path, args: &[OsString]) -> Result<(), LaunchError> {
    let n = opts.nproc_per_node;
    if n == 0 || opts.nnodes == 0 {
        return Err(LaunchError::Options(
            "--nproc-per-node and --nnodes must be at least 1".into(),
        ));
    }
    if opts.node_rank >= opts.nnodes {
        return Err(LaunchError::Options(format!(
            "--node-rank {} must be below --nnodes {}",
            opts.node_rank, opts.nnodes
        )));
    }
    let world_size = n * opts.nnodes;
    if opts.master_port as usize + world_size >= u16::MAX as usize {
        return Err(LaunchError::Options(format!(
            "--master-port {} leaves no room for {world_size} worker ports after it",
            opts.master_port
        )));
    }
    if opts.timeout.is_zero() {
        return Err(LaunchError::Options("--timeout must be positive".into()));
    }
    let node_addr = match &opts.node_addr {
        Some(a) => a.clone(),
        None if opts.nnodes == 1 => "127.0.0.1".into(),
        None => route_to(&opts.master_addr, opts.master_port)?,
    };
    // the ports this machine's processes will listen on, checked before anything starts
    let data_port = |local: usize| opts.master_port + 1 + (opts.node_rank * n + local) as u16;
    for local in 0..n {
        free(data_port(local))?;
    }
    signals::install();
    if opts.node_rank == 0 {
        free(opts.master_port)?;
        start_rendezvous(opts.master_port)?;
    }
    if opts.threads_per_worker == Some(0) {
        return Err(LaunchError::Options(
            "--threads-per-worker must be at least 1".into(),
        ));
    }
    let threads = opts.threads_per_worker.or_else(|| {
        std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            (cores / n).max(1)
        })
    });
    let mut workers: Vec<Worker> = Vec::with_capacity(n);
    for local in 0..n {
        let rank = opts.node_rank * n + local;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env(vars::RANK, rank.to_string())
            .env(vars::WORLD_SIZE, world_size.to_string())
            .env(vars::LOCAL_RANK, local.to_string())
            .env(vars::LOCAL_WORLD_SIZE, n.to_string())
            .env(vars::MASTER_ADDR, &opts.master_addr)
            .env(vars::MASTER_PORT, opts.master_port.to_string())
            .env(vars::NODE_ADDR, &node_addr)
            .env(vars::DATA_PORT, data_port(local).to_string())
            .env(vars::TIMEOUT, opts.timeout.as_secs_f64().to_string());
        if let Some(t) = threads {
            cmd.env("RAYON_NUM_THREADS", t.to_string());
        }
        if rank != 0 {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // a process group of its own: a Ctrl-C in the terminal reaches the launcher alone,
        // which passes one signal on to each worker
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(error) => {
                stop(&mut workers);
                return Err(LaunchError::Spawn {
                    rank,
                    program: program.display().to_string(),
                    error,
                });
            }
        };
        if rank != 0 {
            prefix(child.stdout.take(), rank);
            prefix(child.stderr.take(), rank);
        }
        eprintln!(
            "launch: rank {rank} of {world_size} started (pid {})",
            child.id()
        );
        workers.push(Worker { rank, child });
    }
    // wait for all; the first to fail stops the rest
    let mut running: Vec<bool> = vec![true; workers.len()];
    let mut forwarded = 0;
    let mut interrupted = false;
    while running.iter().any(|&r| r) {
        let signals = signals::received();
        if signals > forwarded {
            // the first signal asks each worker to stop after its step; a second kills them
            let sig = if signals == 1 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            for (i, w) in workers.iter().enumerate() {
                if running[i] {
                    // SAFETY: kill(2) on a child's pid that has not been waited for.
                    unsafe {
                        libc::kill(w.child.id() as libc::pid_t, sig);
                    }
                }
            }
            forwarded = signals;
            interrupted = true;
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if !running[i] {
                continue;
            }
            match w.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) if status.success() => running[i] = false,
                // stopped on a signal after saving (the trainer's interrupt status): the
                // others are stopping too, and must not be hurried
                Ok(Some(status)) if status.code() == Some(INTERRUPTED) => {
                    running[i] = false;
                    interrupted = true;
                }
                Ok(Some(status)) => {
                    let (rank, pid) = (w.rank, w.child.id());
                    let status = describe(status);
                    eprintln!("launch: rank {rank} (pid {pid}) {status}; stopping the others");
                    stop(&mut workers);
                    return Err(LaunchError::WorkerFailed { rank, pid, status });
                }
                Err(e) => {
                    let (rank, pid) = (w.rank, w.child.id());
                    stop(&mut workers);
                    return Err(LaunchError::WorkerFailed {
                        rank,
                        pid,
                        status: format!("cannot be waited for: {e}"),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if interrupted {
        return Err(LaunchError::Interrupted);
    }
    Ok(())
}

/// The exit status of a worker that stopped on a signal after saving (a shell's Ctrl-C
/// status; `automodel_train::interrupt`).
pub const INTERRUPTED: i32 = 130;

/// The launcher's own SIGINT and SIGTERM: counted, and passed on by the wait loop.
mod signals {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RECEIVED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_signal(_: libc::c_int) {
        RECEIVED.fetch_add(1, Ordering::SeqCst);
    }

    pub fn install() {
        super::on_stop_signals(on_signal);
    }

    pub fn received() -> usize {
        RECEIVED.load(Ordering::SeqCst)
    }
}

struct Worker {
    rank: usize,
    child: Child,
}

/// Ask every worker still running to stop (SIGTERM), and kill those that have not after 10 s.
fn stop(workers: &mut [Worker]) {
    for w in workers.iter_mut() {
        if matches!(w.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on a child's pid that has not been waited for.
            unsafe {
                libc::kill(w.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in workers.iter_mut() {
        loop {
            match w.child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    break;
                }
                _ => break,
            }
        }
    }
}

/// "exited with status 1", "was killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => {
            let name = match s {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("was killed by signal {s}{name}")
        }
        (None, None) => format!("ended: {status}"),
    }
}

/// Copy a worker's output to this process's stderr, each line prefixed with its rank.
fn prefix(stream: Option<impl std::io::Read + Send + 'static>, rank: usize) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "[rank {rank}] ");
            let _ = err.write_all(&line);
            line.clear();
        }
    });
}

/// A rendezvous port on this machine with the `ports_after` ports after it free (at the moment
/// of looking), from 20000 on. Each call of a process starts looking elsewhere, so that jobs
/// started side by side (tests) do not pick the same one.
pub fn free_port(ports_after: u16) -> Option<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::SeqCst) % 100;
    let base = 20000 + (std::process::id() as u16).wrapping_mul(31) % 20000 + call * 50;
    (0..400u16)
        .map(|i| base + i * 5)
        .find(|&p| (0..=ports_after).all(|k| TcpListener::bind(("0.0.0.0", p + k)).is_ok()))
}

/// Run `handler` on SIGINT and SIGTERM (restarting interrupted system calls). The handler must
/// be async-signal-safe: atomics, `write(2)`, `_exit(2)`.
pub fn on_stop_signals(handler: extern "C" fn(libc::c_int)) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a handler the caller promises is async-signal-safe
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Fail early, with the port named, when something already listens on `port`.
fn free(port: u16) -> Result<(), LaunchError> {
    TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .map_err(|error| LaunchError::Port { port, error })
}

/// Start burn-collective's orchestrator on `port` in a thread of this process, and wait until
/// it accepts connections.
fn start_rendezvous(port: u16) -> Result<(), LaunchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| LaunchError::Rendezvous {
            port,
            message: e.to_string(),
        })?;
    std::thread::Builder::new()
        .name("rendezvous".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .map_err(|e| LaunchError::Rendezvous {
            port,
            message: e.to_string(),
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(LaunchError::Rendezvous {
                port,
                message: "not listening after 10 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The address of this machine on the route to `host:port` (no packet is sent).
fn route_to(host: &str, port: u16) -> Result<String, LaunchError> {
    let err = |m: String| {
        LaunchError::Options(format!(
            "cannot tell this machine's address towards --master-addr {host}: {m}; pass --node-addr"
        ))
    };
    let target = (host, port)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))?;
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| err(e.to_string()))?;
    socket.connect(target).map_err(|e| err(e.to_string()))?;
    Ok(socket
        .local_addr()
        .map_err(|e| err(e.to_string()))?
        .ip()
        .to_string())
}
