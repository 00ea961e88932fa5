//! Workers in processes of their own, started by the launcher: this test binary re-runs
//! itself with `--ignored --exact <worker test>`, and the worker tests (ignored in a normal
//! run) act as the workers. They report through files in a folder named after the job's
//! rendezvous port.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use automodel_distributed::{Collective, LaunchError, LaunchOptions, World, launch};
use burn::backend::Flex;
use burn::tensor::Tensor;

/// The folder a job's workers and its test share.
fn job_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("automodel-dist-test-{port}"))
}

fn worker_args(name: &str) -> Vec<OsString> {
    [
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads",
        "1",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

fn options(
    port: u16,
    nproc: usize,
    nnodes: usize,
    node_rank: usize,
    timeout: f64,
) -> LaunchOptions {
    LaunchOptions {
        nproc_per_node: nproc,
        nnodes,
        node_rank,
        master_port: port,
        timeout: Duration::from_secs_f64(timeout),
        ..LaunchOptions::default()
    }
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

/// The worker's world, and its report file.
fn worker() -> (World, PathBuf) {
    let w = World::from_env().unwrap().expect("started by the launcher");
    let dir = job_dir(w.master_port);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("pid-{}", w.rank)),
        std::process::id().to_string(),
    )
    .unwrap();
    let report = dir.join(format!("report-{}", w.rank));
    (w, report)
}

/// Worker: sums a tensor longer than one bucket (rank r sends r + 1 everywhere and its rank at
/// the first element).
#[test]
#[ignore = "a worker of the launcher tests"]
fn worker_sum() {
    let (w, report) = worker();
    let device = Default::default();
    let c = match Collective::<Flex>::join(w.clone(), &device) {
        Ok(c) => c,
        Err(e) => {
            std::fs::write(&report, format!("error: {e}")).unwrap();
            std::process::exit(3);
        }
    };
    let n = automodel_distributed::BUCKET_ELEMENTS + 5;
    let t = Tensor::<Flex, 1>::ones([n], &device) * (w.rank as f64 + 1.0);
    let out: Vec<f32> = c
        .all_reduce_sum(t, "a test tensor")
        .unwrap()
        .to_data()
        .to_vec()
        .unwrap();
    let world = w.world_size as f32;
    let want = world * (world + 1.0) / 2.0;
    let ok = out.len() == n && out.iter().all(|&x| x == want);
    std::fs::write(&report, format!("len {} ok {ok}", out.len())).unwrap();
    assert!(ok);
}

/// Worker: sums small tensors until it is stopped or its peers vanish.
#[test]
#[ignore = "a worker of the launcher tests"]
fn worker_forever() {
    let (w, report) = worker();
    let device = Default::default();
    let c = Collective::<Flex>::join(w.clone(), &device).unwrap();
    let mut i = 0u64;
    loop {
        let t = Tensor::<Flex, 1>::ones([1000], &device);
        if let Err(e) = c.all_reduce_sum(t, &format!("step {i}")) {
            std::fs::write(&report, format!("error: {e}")).unwrap();
            std::process::exit(4);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_workers_sum_their_tensors_in_buckets() {
    let port = automodel_distributed::free_port(3).expect("a free port");
    let dir = job_dir(port);
    let _ = std::fs::remove_dir_all(&dir);
    launch(
        &options(port, 2, 1, 0, 60.0),
        &exe(),
        &worker_args("worker_sum"),
    )
    .unwrap();
    for r in 0..2 {
        let rep = std::fs::read_to_string(dir.join(format!("report-{r}"))).unwrap();
        let n = automodel_distributed::BUCKET_ELEMENTS + 5;
        assert_eq!(rep, format!("len {n} ok true"), "rank {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_for(path: &PathBuf, within: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(t.elapsed() < within, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two machines (two launchers on this host): rank 1 is killed; its launcher names it, and
/// rank 0, whose peer vanished, stops with an error within the timeout instead of hanging.
#[test]
fn a_killed_worker_stops_the_other_with_an_error() {
    let port = automodel_distributed::free_port(3).expect("a free port");
    let dir = job_dir(port);
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let nodes: Vec<_> = (0..2)
        .map(|node| {
            std::thread::spawn(move || {
                launch(
                    &options(port, 1, 2, node, 10.0),
                    &exe(),
                    &worker_args("worker_forever"),
                )
            })
        })
        .collect();
    let pid1: i32 = wait_for(&dir.join("pid-1"), Duration::from_secs(60))
        .parse()
        .unwrap();
    wait_for(&dir.join("pid-0"), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    // SAFETY: kill(2) on the worker's pid
    assert_eq!(unsafe { libc::kill(pid1, libc::SIGKILL) }, 0);
    let mut results = nodes.into_iter().map(|h| h.join().unwrap());
    let (r0, r1) = (results.next().unwrap(), results.next().unwrap());
    match r1 {
        Err(LaunchError::WorkerFailed {
            rank: 1, status, ..
        }) => {
            assert!(status.contains("signal 9"), "{status}")
        }
        other => panic!("node 1: {other:?}"),
    }
    match r0 {
        Err(LaunchError::WorkerFailed {
            rank: 0, status, ..
        }) => {
            assert!(status.contains("status 4"), "{status}")
        }
        other => panic!("node 0: {other:?}"),
    }
    let report = std::fs::read_to_string(dir.join("report-0")).unwrap();
    assert!(
        report.contains("rank 0:") && report.contains("all-reduce"),
        "{report}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "rank 0 took {:?} to stop",
        killed.elapsed()
    );
    eprintln!(
        "stopped {:?} after the kill ({:?} in all)",
        killed.elapsed(),
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rendezvous that never completes (machine 1 never comes) ends within the timeout.
#[test]
fn a_rendezvous_that_never_completes_times_out() {
    let port = automodel_distributed::free_port(3).expect("a free port");
    let dir = job_dir(port);
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let r = launch(
        &options(port, 1, 2, 0, 3.0),
        &exe(),
        &worker_args("worker_sum"),
    );
    assert!(
        matches!(r, Err(LaunchError::WorkerFailed { rank: 0, ref status, .. }) if status.contains("status 3")),
        "{r:?}"
    );
    let report = std::fs::read_to_string(dir.join("report-0")).unwrap();
    assert!(
        report.contains("rendezvous of 2 workers") && report.contains("did not complete within 3s"),
        "{report}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_and_taken_ports_are_refused_before_anything_starts() {
    let e = launch(&options(29500, 0, 1, 0, 1.0), &exe(), &[]).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = launch(&options(29500, 1, 2, 2, 1.0), &exe(), &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("--node-rank 2 must be below --nnodes 2"),
        "{e}"
    );
    let port = automodel_distributed::free_port(3).expect("a free port");
    let _held = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    let e = launch(&options(port, 2, 1, 0, 1.0), &exe(), &[]).unwrap_err();
    assert!(e.to_string().contains(&format!("port {port}")), "{e}");
    let e = launch(
        &options(port + 10, 1, 1, 0, 1.0),
        &PathBuf::from("/no/such/program"),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot start rank 0"), "{e}");
}
