//! The Xenstore benchmark's measurements: the embedded xenstored's round trip compared with
//! a plain unix-socket echo server that answers each frame with the frame itself (a
//! well-formed reply with the request's type and id), driven by the very same client code
//! in the same run, so the ratio isolates what the server adds; and transaction commit
//! throughput. `ptguard bench xenstore` prints it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use xenstore::server::{self, ServerConfig};
use xenstore::wire::{join_strings, HEADER_LEN};
use xenstore::{ErrorCode, Op, TxId, XsClient};

use crate::LabError;

type Result<T> = std::result::Result<T, LabError>;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub operation: String,
    pub iterations: u32,
    pub xenstored_mean_us: f64,
    pub xenstored_p99_us: f64,
    pub echo_mean_us: f64,
    pub echo_p99_us: f64,
    /// xenstored mean / echo mean: what the server adds over the bare socket round trip.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_second: f64,
    pub conflicts: u64,
    /// Wire requests per committed transaction (start, read, write, end = 4).
    pub requests_per_commit: f64,
}

#[derive(Debug, Serialize)]
pub struct XenstoreReport {
    pub latency: Vec<Latency>,
    pub commit_throughput: Vec<Throughput>,
    pub goal_ratio: f64,
}

/// A unix-socket server that sends every frame back unchanged, one thread per client.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    path: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(path: &Path) -> Result<EchoServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| {
            LabError::Unexpected(format!("binding echo server at {}: {e}", path.display()))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    std::thread::spawn(move || echo_frames(c));
                }
            }
        });
        Ok(EchoServer {
            stop,
            path: path.to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn echo_frames(mut c: UnixStream) {
    let mut buf = vec![0u8; HEADER_LEN + 4096];
    loop {
        if c.read_exact(&mut buf[..HEADER_LEN]).is_err() {
            return;
        }
        let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        if len > 4096
            || c.read_exact(&mut buf[HEADER_LEN..HEADER_LEN + len])
                .is_err()
        {
            return;
        }
        if c.write_all(&buf[..HEADER_LEN + len]).is_err() {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `n` round trips of one request; returns per-request microseconds.
fn time_requests(c: &mut XsClient, op: Op, payload: &[u8], n: u32) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        c.request(op, TxId::NONE, payload.to_vec(), "/bench/key")?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

fn latency(
    xs: &mut XsClient,
    echo: &mut XsClient,
    op: Op,
    payload: &[u8],
    iterations: u32,
) -> Result<Latency> {
    // Warm both, then alternate rounds so drift hits both sides alike.
    time_requests(xs, op, payload, 1000)?;
    time_requests(echo, op, payload, 1000)?;
    let rounds = 10;
    let per = (iterations / rounds).max(1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.extend(time_requests(xs, op, payload, per)?);
        b.extend(time_requests(echo, op, payload, per)?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&a), mean(&b));
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    Ok(Latency {
        operation: op.name().to_string(),
        iterations: per * rounds,
        xenstored_mean_us: ma,
        xenstored_p99_us: percentile(&a, 0.99),
        echo_mean_us: mb,
        echo_p99_us: percentile(&b, 0.99),
        ratio: ma / mb,
    })
}

fn commit_throughput(socket: &Path, clients: usize, seconds: f64) -> Result<Throughput> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut threads = Vec::new();
    for i in 0..clients {
        let mut c = XsClient::connect(socket)?;
        let key = format!("/bench/tx/{i}/counter");
        c.write(TxId::NONE, &key, b"0")?;
        threads.push(std::thread::spawn(move || -> Result<(u64, u64, u64)> {
            let mut commits = 0u64;
            while Instant::now() < deadline {
                c.transaction(
                    |c, tx| -> std::result::Result<(), xenstore::XenstoreError> {
                        let v = c.read_string(tx, &key)?;
                        let n: u64 = v.parse().unwrap_or(0);
                        c.write(tx, &key, (n + 1).to_string().as_bytes())
                    },
                )?;
                commits += 1;
            }
            let s = c.stats();
            Ok((commits, s.conflicts, s.requests))
        }));
    }
    let start = Instant::now();
    let (mut commits, mut conflicts, mut requests) = (0, 0, 0);
    for t in threads {
        let (a, b, r) = t
            .join()
            .map_err(|_| LabError::Unexpected("benchmark client thread panicked".into()))??;
        commits += a;
        conflicts += b;
        requests += r;
    }
    let elapsed = start.elapsed().as_secs_f64().max(seconds);
    Ok(Throughput {
        clients,
        seconds: elapsed,
        commits,
        commits_per_second: commits as f64 / elapsed,
        conflicts,
        requests_per_commit: if commits == 0 {
            0.0
        } else {
            // One write per client before the loop is not part of a transaction.
            (requests - clients as u64) as f64 / commits as f64
        },
    })
}

/// Pins the calling thread (and threads it spawns afterwards) to one CPU, returning the
/// previous set. Round trips between threads on different CPUs of a VM are dominated by
/// wake-up interrupts; on one CPU both servers are measured by the work they do.
pub fn pin_to_one_cpu() -> Result<nix::sched::CpuSet> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let sys = |what| move |source| LabError::System { what, source };
    let old = sched_getaffinity(Pid::from_raw(0)).map_err(sys("read the CPU affinity"))?;
    let cpu = (0..CpuSet::count())
        .find(|i| old.is_set(*i).unwrap_or(false))
        .unwrap_or(0);
    let mut one = CpuSet::new();
    one.set(cpu).map_err(sys("build a CPU set"))?;
    sched_setaffinity(Pid::from_raw(0), &one).map_err(sys("pin to one CPU"))?;
    Ok(old)
}

/// Restores what [`pin_to_one_cpu`] returned.
pub fn restore_affinity(set: &nix::sched::CpuSet) -> Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set).map_err(|source| {
        LabError::System {
            what: "restore the CPU affinity",
            source,
        }
    })
}

/// Measures `iterations` round trips per latency, `seconds` per commit-throughput run.
pub fn xenstore_bench(iterations: u32, seconds: f64) -> Result<XenstoreReport> {
    let dir = tempfile_dir()?;
    let old_affinity = pin_to_one_cpu()?;
    let server = server::start(ServerConfig::new(dir.join("xs")))?;
    let echo_server = EchoServer::start(&dir.join("echo.sock"))?;
    let mut xs = XsClient::connect(server.socket_path())?;
    let mut echo = XsClient::connect(dir.join("echo.sock"))?;
    xs.write(TxId::NONE, "/bench/key", b"value-of-sixteen")?;
    let read = join_strings(&["/bench/key"]);
    let mut write = read.clone();
    write.extend_from_slice(b"value-of-sixteen");
    let latency = vec![
        latency(&mut xs, &mut echo, Op::Read, &read, iterations)?,
        latency(&mut xs, &mut echo, Op::Write, &write, iterations)?,
    ];
    // The bench must not have left errors behind: a read of the key still answers.
    match xs.read(TxId::NONE, "/bench/key") {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::Enoent) => {
            return Err(LabError::Unexpected("benchmark key vanished".into()))
        }
        Err(e) => return Err(e.into()),
    }
    drop(echo_server);
    server.shutdown()?;
    restore_affinity(&old_affinity)?;
    // Throughput runs unpinned, on a fresh server, as a deployment would.
    let server = server::start(ServerConfig::new(dir.join("xs2")))?;
    let mut commit = Vec::new();
    for clients in [1, 4, 16] {
        commit.push(commit_throughput(server.socket_path(), clients, seconds)?);
    }
    server.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(XenstoreReport {
        latency,
        commit_throughput: commit,
        goal_ratio: 1.5,
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ptguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
