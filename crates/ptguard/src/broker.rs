//! The broker's unix socket (docs/broker.md) as one bounded event loop.
//!
//! One thread, `mio` readiness, a fixed cap on connections and on the bytes buffered per
//! connection, and idle clients timed out: no client, however many or however slow, can
//! stop the broker serving the others or grow the daemon's memory without bound. Requests
//! are answered in the loop thread through [`DaemonHost::with`], which serialises them with
//! the daemon's own work.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::{BindRequest, Credential, DeviceModelCall, EngineError, ProtectedDomains, Refusal};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use xen::{DomId, Pirq};
use xenstore::instance::SocketClaim;

use crate::hostctx::{HostCtx, HostSpec};

/// The protocol's longest request line (without its newline).
pub const MAX_LINE: usize = 4096;

/// The loop's bounds.
#[derive(Clone, Copy, Debug)]
pub struct BrokerLimits {
    /// Connections held at once; a new one beyond it evicts the least useful (one that never
    /// made a request, oldest first; else the longest idle).
    pub max_connections: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Replies queued for a client that does not read them, before it is cut off.
    pub max_pending_output: usize,
}

impl Default for BrokerLimits {
    fn default() -> BrokerLimits {
        BrokerLimits {
            max_connections: 64,
            idle_timeout: Duration::from_secs(30),
            max_pending_output: 64 * 1024,
        }
    }
}

/// One broker request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum BrokerRequest {
    Bind(BindRequest),
    Unbind {
        #[serde(flatten)]
        req: BindRequest,
        pirq: i32,
    },
    /// `xc_physdev_map_pirq_msi` of a stock device model (the preload library).
    MapPirqMsi {
        domid: DomId,
        sbdf: pci::Sbdf,
        entry: u16,
        table_base: u64,
        /// The pirq the guest chose (pirq routing); absent: Xen chooses.
        #[serde(default)]
        pirq: Option<i32>,
        #[serde(default)]
        epoch: Option<u64>,
    },
    /// `xc_domain_update_msi_irq`.
    UpdateMsiIrq {
        domid: DomId,
        pirq: i32,
        gvec: u8,
        gflags: u32,
        gtable: u64,
        #[serde(default)]
        epoch: Option<u64>,
    },
    /// `xc_domain_unbind_msi_irq`.
    UnbindMsiIrq {
        domid: DomId,
        pirq: i32,
        #[serde(default)]
        epoch: Option<u64>,
    },
    /// `xc_physdev_unmap_pirq`.
    UnmapPirq {
        domid: DomId,
        pirq: i32,
        #[serde(default)]
        epoch: Option<u64>,
    },
}

/// A broker request as the engine serves it.
enum Operation<'r> {
    Bind(&'r BindRequest),
    Unbind(&'r BindRequest, Pirq),
    /// One of the four libxenctrl calls, with the epoch if the device model gave one.
    DeviceModelCall((Option<u64>, DeviceModelCall)),
}

impl BrokerRequest {
    /// The domain the request speaks for.
    fn domid(&self) -> DomId {
        match self {
            BrokerRequest::Bind(b) => b.domid,
            BrokerRequest::Unbind { req, .. } => req.domid,
            BrokerRequest::MapPirqMsi { domid, .. }
            | BrokerRequest::UpdateMsiIrq { domid, .. }
            | BrokerRequest::UnbindMsiIrq { domid, .. }
            | BrokerRequest::UnmapPirq { domid, .. } => *domid,
        }
    }

    /// What the request asks the engine for.
    fn operation(&self) -> Operation<'_> {
        Operation::DeviceModelCall(match *self {
            BrokerRequest::Bind(ref b) => return Operation::Bind(b),
            BrokerRequest::Unbind { ref req, pirq } => return Operation::Unbind(req, Pirq(pirq)),
            BrokerRequest::MapPirqMsi {
                sbdf,
                entry,
                table_base,
                pirq,
                epoch,
                ..
            } => (
                epoch,
                DeviceModelCall::MapPirqMsi {
                    sbdf,
                    entry,
                    table_base,
                    pirq: pirq.filter(|p| *p >= 0).map(Pirq),
                },
            ),
            BrokerRequest::UpdateMsiIrq {
                pirq,
                gvec,
                gflags,
                gtable,
                epoch,
                ..
            } => (
                epoch,
                DeviceModelCall::UpdateMsiIrq {
                    pirq: Pirq(pirq),
                    gvec,
                    gflags,
                    gtable,
                },
            ),
            BrokerRequest::UnbindMsiIrq { pirq, epoch, .. } => {
                (epoch, DeviceModelCall::UnbindMsiIrq { pirq: Pirq(pirq) })
            }
            BrokerRequest::UnmapPirq { pirq, epoch, .. } => {
                (epoch, DeviceModelCall::UnmapPirq { pirq: Pirq(pirq) })
            }
        })
    }
}

/// One broker reply line.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pirq: Option<i32>,
    /// The refusal's stable reason code (docs/broker.md), or `error` for a failure of the
    /// host (a hypercall, Xenstore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `code` `error` (and `pirq-budget`): the errno Xen answered, when a hypercall
    /// failed, so a library standing in for libxenctrl can return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

impl BrokerReply {
    fn refused(r: &Refusal) -> BrokerReply {
        BrokerReply {
            code: Some(r.code().into()),
            error: Some(r.to_string()),
            ..BrokerReply::default()
        }
    }
}

/// The host the daemon works on, shared by the broker and the watch loop.
pub enum DaemonHost {
    /// One context for the daemon's life (a real dom0; tests).
    Held(Box<Mutex<HostCtx>>),
    /// A simulated host directory: locked and saved per piece of work, so that other
    /// commands on the directory run while the daemon waits; reloaded only when one of them
    /// changed it.
    Reopened {
        spec: HostSpec,
        protected: ProtectedDomains,
        cached: Mutex<Option<Box<HostCtx>>>,
    },
}

impl DaemonHost {
    /// A daemon over a simulated host directory.
    pub fn reopened(spec: HostSpec, protected: ProtectedDomains) -> DaemonHost {
        DaemonHost::Reopened {
            spec,
            protected,
            cached: Mutex::new(None),
        }
    }

    /// Runs `f` on the host and saves what changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut HostCtx) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match self {
            DaemonHost::Held(m) => {
                let mut ctx = m
                    .lock()
                    .map_err(|_| anyhow::anyhow!("host state lock poisoned"))?;
                // A real dom0: commands and the daemon take turns on the ledger, one piece
                // of work at a time (hostctx::REAL_LEDGER_LOCK).
                ctx.relock_real()?;
                let r = f(&mut ctx);
                let saved = ctx.save();
                if matches!(ctx.spec, HostSpec::Real) {
                    ctx.unlock();
                }
                saved?;
                r
            }
            DaemonHost::Reopened {
                spec,
                protected,
                cached,
            } => {
                let mut slot = cached
                    .lock()
                    .map_err(|_| anyhow::anyhow!("host state lock poisoned"))?;
                let fresh = match slot.as_mut() {
                    Some(ctx) => ctx.relock_if_unchanged()?,
                    None => false,
                };
                if !fresh {
                    let mut ctx = HostCtx::open(spec, false)?;
                    ctx.protected = protected.clone();
                    *slot = Some(Box::new(ctx));
                }
                let Some(ctx) = slot.as_mut() else {
                    anyhow::bail!("simulated host not loaded");
                };
                let r = f(ctx);
                let saved = ctx.save();
                ctx.unlock();
                saved?;
                r
            }
        }
    }
}

/// The pid libxl records for a domain's device model, if any.
pub(crate) fn device_model_pid(ctx: &mut HostCtx, domid: xen::DomId) -> Option<i32> {
    let path = format!("/local/domain/{}/image/device-model-pid", domid.0);
    let v = ctx
        .xs
        .read_optional(xenstore::TxId::NONE, &path)
        .ok()
        .flatten()?;
    String::from_utf8_lossy(&v).trim().parse().ok()
}

/// Answers one request line from a peer whose pid the socket reported (`None`: unknown).
pub fn handle_line(ctx: &mut HostCtx, line: &str, peer_pid: Option<i32>) -> BrokerReply {
    if line.len() > MAX_LINE {
        return BrokerReply::refused(&Refusal::TooLong { limit: MAX_LINE });
    }
    let req: BrokerRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return BrokerReply::refused(&Refusal::Malformed {
                detail: e.to_string(),
            })
        }
    };
    let claimed = req.domid();
    // A device model may only speak for its own domain: when libxl recorded the model's pid,
    // the connecting process must be it.
    let dm = device_model_pid(ctx, claimed);
    if let (Some(peer), Some(dm)) = (peer_pid, dm) {
        if peer != dm {
            return BrokerReply::refused(&Refusal::NotDeviceModel {
                peer_pid: peer,
                dm_pid: dm,
            });
        }
    }
    let verified = peer_pid.is_some() && peer_pid == dm;
    let r = match req.operation() {
        Operation::Bind(b) => ctx.engine().bind(b).map(|p| Some(p.0)),
        Operation::Unbind(b, pirq) => ctx.engine().unbind(b, pirq).map(|_| None),
        Operation::DeviceModelCall((epoch, call)) => {
            let credential = match (epoch, verified) {
                (Some(e), _) => Credential::Epoch(e),
                (None, true) => Credential::VerifiedDeviceModel,
                (None, false) => return BrokerReply::refused(&Refusal::EpochRequired),
            };
            ctx.engine()
                .device_model_call(claimed, credential, &call)
                .map(|p| p.map(|p| p.0))
        }
    };
    match r {
        Ok(pirq) => BrokerReply {
            ok: true,
            pirq,
            ..BrokerReply::default()
        },
        Err(EngineError::Refused { refusal, .. } | EngineError::RefusedPirq { refusal, .. }) => {
            BrokerReply::refused(&refusal)
        }
        Err(e @ EngineError::PirqBudgetExhausted { .. }) => BrokerReply {
            code: Some("pirq-budget".into()),
            error: Some(e.to_string()),
            errno: Some(xen::Errno::ENOSPC.0),
            ..BrokerReply::default()
        },
        Err(e) => BrokerReply {
            code: Some("error".into()),
            errno: match &e {
                EngineError::Xen(x) => x.errno().map(|n| n.0),
                _ => None,
            },
            error: Some(e.to_string()),
            ..BrokerReply::default()
        },
    }
}

struct Conn {
    stream: UnixStream,
    peer_pid: Option<i32>,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Instant,
    /// Whether it ever sent a complete request (evicted after those that did not).
    requested: bool,
    /// Close once the output is flushed (after a fatal refusal).
    closing: bool,
}

/// What the loop saw, for tests and the load benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BrokerStats {
    pub accepted: u64,
    pub evicted: u64,
    pub timed_out: u64,
    pub too_long: u64,
    pub requests: u64,
}

/// A running broker: stop it with the flag given to [`serve_broker`], then `join`.
pub struct BrokerHandle {
    thread: std::thread::JoinHandle<BrokerStats>,
}

impl BrokerHandle {
    pub fn join(self) -> BrokerStats {
        self.thread.join().unwrap_or_default()
    }
}

const LISTENER: Token = Token(0);

/// Claims `path` (one broker per socket), listens on it (mode 0600: device models run as
/// root in dom0) and serves it on a thread of its own until `stop` is set.
pub fn serve_broker(
    host: Arc<DaemonHost>,
    path: &Path,
    stop: Arc<AtomicBool>,
    limits: BrokerLimits,
) -> anyhow::Result<BrokerHandle> {
    let mut claim = SocketClaim::acquire(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove stale {}", path.display()))
        }
        _ => {}
    }
    let mut listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    claim.bound();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let poll = Poll::new().context("cannot create the broker's poll")?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let thread = std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut lp = BrokerLoop {
                poll,
                listener,
                conns: HashMap::new(),
                next_token: 1,
                host,
                limits,
                stats: BrokerStats::default(),
            };
            lp.run(&stop);
            drop(claim);
            lp.stats
        })
        .context("cannot start the broker thread")?;
    Ok(BrokerHandle { thread })
}

struct BrokerLoop {
    poll: Poll,
    listener: UnixListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    host: Arc<DaemonHost>,
    limits: BrokerLimits,
    stats: BrokerStats,
}

impl BrokerLoop {
    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(100)))
            {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("broker poll failed: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    t => {
                        if ev.is_readable() || ev.is_read_closed() {
                            self.read(t);
                        }
                        if ev.is_writable() {
                            self.flush(t);
                        }
                    }
                }
            }
            self.expire_idle();
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the backlog keeps the rest until a slot frees.
                    tracing::warn!("broker cannot accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                self.evict_one();
            }
            let token = Token(self.next_token);
            self.next_token = self.next_token.wrapping_add(1).max(1);
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let peer_pid = nix::sys::socket::getsockopt(
                &std::os::fd::AsFd::as_fd(&stream),
                nix::sys::socket::sockopt::PeerCredentials,
            )
            .ok()
            .map(|c| c.pid());
            self.stats.accepted += 1;
            self.conns.insert(
                token,
                Conn {
                    stream,
                    peer_pid,
                    input: Vec::new(),
                    output: Vec::new(),
                    last_active: Instant::now(),
                    requested: false,
                    closing: false,
                },
            );
        }
    }

    /// Makes room: a connection that never sent a request (oldest first), else the one idle
    /// the longest.
    fn evict_one(&mut self) {
        let victim = self
            .conns
            .iter()
            .min_by_key(|(_, c)| (c.requested, c.last_active))
            .map(|(t, _)| *t);
        if let Some(t) = victim {
            self.stats.evicted += 1;
            self.close(t);
        }
    }

    fn expire_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) > self.limits.idle_timeout)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            self.stats.timed_out += 1;
            self.close(t);
        }
    }

    fn close(&mut self, t: Token) {
        if let Some(mut c) = self.conns.remove(&t) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn read(&mut self, t: Token) {
        let mut chunk = [0u8; 4096];
        let mut lines = Vec::new();
        let mut eof = false;
        {
            let Some(c) = self.conns.get_mut(&t) else {
                return;
            };
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.last_active = Instant::now();
                        if c.closing {
                            continue; // discard: the connection is being cut off
                        }
                        c.input.extend_from_slice(&chunk[..n]);
                        while let Some(i) = c.input.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = c.input.drain(..=i).collect();
                            lines.push(line);
                        }
                        if c.input.len() > MAX_LINE {
                            // A line that cannot be valid: say so and hang up rather than
                            // buffer it.
                            c.input = Vec::new();
                            c.closing = true;
                            self.stats.too_long += 1;
                            lines.push(Vec::new());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        for line in lines {
            let reply = if line.is_empty() {
                BrokerReply::refused(&Refusal::TooLong { limit: MAX_LINE })
            } else {
                self.answer(t, &line)
            };
            self.queue(t, &reply);
        }
        if eof {
            self.close(t);
        } else {
            self.flush(t);
        }
    }

    fn answer(&mut self, t: Token, line: &[u8]) -> BrokerReply {
        self.stats.requests += 1;
        let peer_pid = match self.conns.get_mut(&t) {
            Some(c) => {
                c.requested = true;
                c.peer_pid
            }
            None => None,
        };
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        match self.host.with(|ctx| Ok(handle_line(ctx, text, peer_pid))) {
            Ok(r) => r,
            Err(e) => BrokerReply {
                code: Some("error".into()),
                error: Some(format!("{e:#}")),
                ..BrokerReply::default()
            },
        }
    }

    fn queue(&mut self, t: Token, reply: &BrokerReply) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        match serde_json::to_vec(reply) {
            Ok(mut v) => {
                v.push(b'\n');
                c.output.extend_from_slice(&v);
            }
            Err(_) => c.closing = true,
        }
        if c.output.len() > self.limits.max_pending_output {
            // It asks and never reads: cut it off.
            self.close(t);
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        while !c.output.is_empty() {
            match c.stream.write(&c.output) {
                Ok(0) => break,
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(t);
                    return;
                }
            }
        }
        let interest = if c.output.is_empty() {
            if c.closing {
                self.close(t);
                return;
            }
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let _ = self.poll.registry().reregister(&mut c.stream, t, interest);
    }
}
