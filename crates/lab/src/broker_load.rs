//! The broker under attack, over the real socket: a real `ptguard watch` process on a
//! simulated host, one well-behaved device model binding and unbinding in a loop, and
//! thousands of hostile connections (silent, half-sent lines, oversized floods) at the
//! same time. Used by the test suite (small sizes) and `ptguard bench broker` (the figures
//! in docs/PERFORMANCE.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wire::{BindRequest, Reply, Request};

use crate::LabError;

type Result<T> = std::result::Result<T, LabError>;

/// How hard to push.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LoadSizes {
    /// Hostile connections opened in all (silent or half-sent lines).
    pub hostile_connections: usize,
    /// Of those, how many send an oversized line (1 MiB, no newline).
    pub oversized_lines: usize,
    /// The well-behaved device model's bind+unbind cycles under load.
    pub cycles: usize,
}

/// What happened.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub sizes: LoadSizes,
    /// Cycles the well-behaved device model completed, and how many replies were not ok.
    pub cycles_done: usize,
    pub good_failures: usize,
    pub first_failure: Option<String>,
    /// Hostile connections the kernel refused outright (backlog full): not a failure.
    pub hostile_refused: u64,
    /// One bind+unbind cycle, alone (baseline) and under attack, in microseconds.
    pub cycle_us_alone: f64,
    pub cycle_us_under_attack: f64,
    pub slowdown: f64,
    /// The daemon's resident memory: peak (VmHWM) and at the end (VmRSS), KiB.
    pub daemon_peak_rss_kib: u64,
    pub daemon_rss_after_kib: u64,
    pub seconds: f64,
    /// The daemon exited on SIGTERM and removed its socket.
    pub clean_exit: bool,
}

fn cmd(exe: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new(exe)
        .arg("--host")
        .arg(format!("sim:{}", dir.display()))
        .args(args)
        .env("PTGUARD_LOG", "error")
        .output()
        .map_err(|e| LabError::Unexpected(format!("cannot run {}: {e}", exe.display())))?;
    if !o.status.success() {
        return Err(LabError::Unexpected(format!(
            "ptguard {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device model's connection: one request line, one reply line. Like the preload
/// library, it sends a request again on a fresh connection when the broker closed the
/// old one without a byte of reply (it evicts only connections whose request it never
/// read).
struct DeviceModelConn {
    sock: PathBuf,
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl DeviceModelConn {
    fn connect(sock: &Path) -> Result<DeviceModelConn> {
        let w = UnixStream::connect(sock)?;
        w.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(DeviceModelConn {
            sock: sock.to_path_buf(),
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    fn ask(&mut self, req: &Request) -> Result<Reply> {
        let line = req.to_line();
        for _ in 0..3 {
            let mut reply = String::new();
            let sent = self.w.write_all(line.as_bytes());
            if sent.is_ok() {
                self.r.read_line(&mut reply)?;
            }
            if reply.is_empty() {
                *self = DeviceModelConn::connect(&self.sock)?;
                continue;
            }
            return Reply::parse_line(&reply)
                .map_err(|e| LabError::Unexpected(format!("not a reply: {reply:?}: {e}")));
        }
        Err(LabError::Unexpected(
            "the broker closed the connection unread three times".into(),
        ))
    }
}

/// Runs `cycles` bind+unbind pairs; returns (failures, first failure).
fn cycle(
    dm: &mut DeviceModelConn,
    cycles: usize,
    table_base: u64,
    token: &str,
) -> Result<(usize, Option<String>)> {
    let req = BindRequest {
        domid: xen::DomId(1),
        sbdf: pci::Sbdf::new(0, 3, 0, 0).map_err(|e| LabError::Unexpected(e.to_string()))?,
        epoch: 1,
        kind: xen::IrqSource::Msix {
            entry: 0,
            table_base,
        },
        gvec: 64,
        gflags: 0x10000,
        gtable: 0,
    };
    let token = Some(token.to_string());
    let bind = Request::Bind {
        req,
        token: token.clone(),
    };
    let mut failures = 0;
    let mut first = None;
    for _ in 0..cycles {
        let b = dm.ask(&bind)?;
        let Some(pirq) = b.pirq.filter(|_| b.ok) else {
            failures += 1;
            first.get_or_insert_with(|| b.to_line().trim_end().to_string());
            continue;
        };
        let unbind = Request::Unbind {
            req,
            pirq,
            token: token.clone(),
        };
        let u = dm.ask(&unbind)?;
        if !u.ok {
            failures += 1;
            first.get_or_insert_with(|| u.to_line().trim_end().to_string());
        }
    }
    Ok((failures, first))
}

/// Runs the attack with the `ptguard` executable `exe`.
pub fn run(exe: &Path, sizes: LoadSizes) -> Result<LoadReport> {
    let t0 = Instant::now();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "ptguard-broker-load-{}-{}",
        std::process::id(),
        t0.elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let result = run_in(exe, &dir, sizes, t0);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(exe: &Path, dir: &Path, sizes: LoadSizes, t0: Instant) -> Result<LoadReport> {
    cmd(
        exe,
        dir,
        &["sim", "init", "--xen", "4.17", "--pciback", "new"],
    )?;
    cmd(exe, dir, &["assignable-add", "0000:03:00.0"])?;
    cmd(exe, dir, &["sim", "create", "dm-guest"])?;
    let attached: serde_json::Value =
        serde_json::from_str(&cmd(exe, dir, &["attach", "0000:03:00.0", "1", "--json"])?)?;
    let token = attached["token"]
        .as_str()
        .ok_or_else(|| LabError::Unexpected("attach printed no token".into()))?
        .to_string();
    let show: serde_json::Value =
        serde_json::from_str(&cmd(exe, dir, &["show", "0000:03:00.0", "--json"])?)?;
    let table_base = show["ledger"]["table_base"]
        .as_u64()
        .ok_or_else(|| LabError::Unexpected("no table_base in the ledger".into()))?;
    let sock = dir.join("broker.sock");
    let mut daemon = Daemon {
        child: Command::new(exe)
            .arg("--host")
            .arg(format!("sim:{}", dir.display()))
            .arg("watch")
            .env("PTGUARD_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::Unexpected(format!("cannot start ptguard watch: {e}")))?,
    };
    let pid = daemon.child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if Instant::now() > deadline {
            return Err(LabError::Unexpected(format!(
                "ptguard watch did not open {}",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dm = DeviceModelConn::connect(&sock)?;
    // Baseline in the same run: the same cycles with nobody else on the socket.
    let alone_n = (sizes.cycles / 4).max(1);
    let t = Instant::now();
    let (mut failures, mut first) = cycle(&mut dm, alone_n, table_base, &token)?;
    let cycle_us_alone = t.elapsed().as_secs_f64() * 1e6 / alone_n as f64;

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..2)
        .map(|k| {
            let (sock, stop, refused) = (sock.clone(), stop.clone(), refused.clone());
            let share = sizes.hostile_connections / 2 + k * (sizes.hostile_connections % 2);
            let oversized = sizes.oversized_lines / 2 + k * (sizes.oversized_lines % 2);
            std::thread::spawn(move || attack(&sock, share, oversized, &stop, &refused))
        })
        .collect();
    let t = Instant::now();
    let (f, fst) = cycle(&mut dm, sizes.cycles, table_base, &token)?;
    let cycle_us_under_attack = t.elapsed().as_secs_f64() * 1e6 / sizes.cycles.max(1) as f64;
    failures += f;
    first = first.or(fst);
    for a in attackers {
        let _ = a.join();
    }
    stop.store(true, Ordering::Relaxed);
    // The well-behaved model still gets answers after the storm.
    let (f, fst) = cycle(&mut dm, 1, table_base, &token)?;
    failures += f;
    first = first.or(fst);
    let daemon_peak_rss_kib = status_kib(pid, "VmHWM:");
    let daemon_rss_after_kib = status_kib(pid, "VmRSS:");
    drop(dm);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut clean_exit = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            clean_exit = status.success() && !sock.exists();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(LoadReport {
        sizes,
        cycles_done: alone_n + sizes.cycles + 1,
        good_failures: failures,
        first_failure: first,
        hostile_refused: refused.load(Ordering::Relaxed),
        cycle_us_alone,
        cycle_us_under_attack,
        slowdown: cycle_us_under_attack / cycle_us_alone,
        daemon_peak_rss_kib,
        daemon_rss_after_kib,
        seconds: t0.elapsed().as_secs_f64(),
        clean_exit,
    })
}

/// Opens `n` hostile connections in waves of 100 held open together: most send half a
/// request and go silent, `oversized` of them send 1 MiB with no newline.
fn attack(sock: &Path, n: usize, oversized: usize, stop: &AtomicBool, refused: &AtomicU64) {
    let junk = vec![b'A'; 1 << 20];
    let mut sent_big = 0;
    let mut opened = 0;
    while opened < n && !stop.load(Ordering::Relaxed) {
        let mut wave = Vec::new();
        for _ in 0..100.min(n - opened) {
            opened += 1;
            let Ok(mut s) = UnixStream::connect(sock) else {
                refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            if sent_big < oversized {
                sent_big += 1;
                let _ = s.write_all(&junk);
            } else {
                let _ = s.write_all(br#"{"op":"bind","domid":1,"sbdf":"0000:03"#);
            }
            wave.push(s);
        }
        drop(wave);
    }
}
