//! The broker's unix socket (docs/broker.md) as one bounded event loop.
//!
//! One thread, `mio` readiness, a fixed cap on connections and on the bytes buffered per
//! connection, and idle clients timed out: no client, however many or however slow, can
//! stop the broker serving the others or grow the daemon's memory without bound. Requests
//! are answered in the loop thread through [`DaemonHost::with`], which serialises them with
//! the daemon's own work.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{
    AssignmentToken, BindRequest, Credential, DeviceModelCall, EngineError, ProtectedDomains,
    Refusal,
};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use wire::{LineError, Reply, ReplyCode, Request, MAX_LINE};
use xen::Pirq;
use xenstore::instance::SocketClaim;

use crate::host::{HostCtx, HostSpec};
use crate::metrics::Metrics;
use crate::DaemonError;

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

/// A broker request as the engine serves it.
enum Operation<'r> {
    Bind(&'r BindRequest),
    Unbind(&'r BindRequest, Pirq),
    /// One of the four libxenctrl calls.
    DeviceModelCall(DeviceModelCall),
}

/// What `req` asks the engine for.
fn operation(req: &Request) -> Operation<'_> {
    Operation::DeviceModelCall(match *req {
        Request::Bind { ref req, .. } => return Operation::Bind(req),
        Request::Unbind { ref req, pirq, .. } => return Operation::Unbind(req, Pirq(pirq)),
        Request::MapPirqMsi {
            sbdf,
            entry,
            table_base,
            pirq,
            ..
        } => DeviceModelCall::MapPirqMsi {
            sbdf,
            entry,
            table_base,
            pirq: pirq.filter(|p| *p >= 0).map(Pirq),
        },
        Request::UpdateMsiIrq {
            pirq,
            gvec,
            gflags,
            gtable,
            ..
        } => DeviceModelCall::UpdateMsiIrq {
            pirq: Pirq(pirq),
            gvec,
            gflags,
            gtable,
        },
        Request::UnbindMsiIrq { pirq, .. } => DeviceModelCall::UnbindMsiIrq { pirq: Pirq(pirq) },
        Request::UnmapPirq { pirq, .. } => DeviceModelCall::UnmapPirq { pirq: Pirq(pirq) },
    })
}

/// The reply to a refused request: its code and the sentence that discloses nothing of
/// the ledger ([`Refusal::public_text`]).
fn refused(r: &Refusal) -> Reply {
    Reply::failed(r.code(), r.public_text(), None)
}

/// Who the broker takes a request's sender to be, from what the socket and the toolstack
/// say (`peer_pid`: `SO_PEERCRED`; `dm_pid`: `device-model-pid`) and the token it
/// carries. Fails closed: a caller that is not the recorded device model and presents no
/// token is refused, whatever numbers it names.
pub fn credential_for(
    peer_pid: Option<i32>,
    dm_pid: Option<i32>,
    token: Option<&str>,
) -> Result<Credential, Refusal> {
    if peer_pid.is_some() && peer_pid == dm_pid {
        return Ok(Credential::VerifiedDeviceModel);
    }
    match (token, peer_pid, dm_pid) {
        (Some(t), _, _) => t
            .parse::<AssignmentToken>()
            .map(Credential::Token)
            .map_err(|_| Refusal::CredentialRejected),
        (None, Some(peer), Some(dm)) => Err(Refusal::NotDeviceModel {
            peer_pid: peer,
            dm_pid: dm,
        }),
        (None, _, _) => Err(Refusal::CredentialRequired),
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
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut HostCtx) -> Result<T, DaemonError>,
    ) -> Result<T, DaemonError> {
        match self {
            DaemonHost::Held(m) => {
                let mut ctx = m.lock().map_err(|_| DaemonError::Poisoned)?;
                // A real dom0: commands and the daemon take turns on the ledger, one piece
                // of work at a time (host::REAL_LEDGER_LOCK).
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
                let mut slot = cached.lock().map_err(|_| DaemonError::Poisoned)?;
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
                    return Err(DaemonError::Poisoned);
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

/// Where libxl records the pid of a domain's device model.
pub fn device_model_pid_path(domid: xen::DomId) -> String {
    format!("/local/domain/{}/image/device-model-pid", domid.0)
}

/// The pid libxl records for a domain's device model, if any.
pub fn device_model_pid(ctx: &mut HostCtx, domid: xen::DomId) -> Option<i32> {
    let path = device_model_pid_path(domid);
    let v = ctx
        .xs
        .read_optional(xenstore::TxId::NONE, &path)
        .ok()
        .flatten()?;
    String::from_utf8_lossy(&v).trim().parse().ok()
}

/// Answers one request line from a peer whose pid the socket reported (`None`: unknown).
pub fn handle_line(ctx: &mut HostCtx, line: &str, peer_pid: Option<i32>) -> Reply {
    match parse_request(line) {
        Ok(req) => handle_request(ctx, &req, peer_pid),
        Err(reply) => reply,
    }
}

/// A request line as a request, or the refusal it gets.
fn parse_request(line: &str) -> Result<Request, Reply> {
    Request::parse_line(line).map_err(|e| match e {
        LineError::TooLong { limit } => refused(&Refusal::TooLong { limit }),
        LineError::Malformed { detail } => refused(&Refusal::Malformed { detail }),
    })
}

/// Answers one request from a peer whose pid the socket reported (`None`: unknown).
pub fn handle_request(ctx: &mut HostCtx, req: &Request, peer_pid: Option<i32>) -> Reply {
    let claimed = req.domid();
    // Nothing speaks for a protected domain, proven or not (and saying so discloses
    // nothing: the list is the operator's, and dom0's is fixed).
    if ctx.protected.contains(claimed) {
        return refused(&Refusal::ProtectedDomain { domid: claimed });
    }
    // A device model may only speak for its own domain: it is the process the toolstack
    // recorded, or it holds the token of the device's assignment.
    let dm = device_model_pid(ctx, claimed);
    let credential = match credential_for(peer_pid, dm, req.token()) {
        Ok(c) => c,
        Err(refusal) => {
            tracing::info!(domid = claimed.0, "broker refused a request: {refusal}");
            return refused(&refusal);
        }
    };
    let mut e = match ctx.engine() {
        Ok(e) => e,
        Err(err) => return Reply::failed(ReplyCode::Error, err.to_string(), None),
    };
    let r = match operation(req) {
        Operation::Bind(b) => e.broker_bind(b, &credential).map(|p| Some(p.0)),
        Operation::Unbind(b, pirq) => e.broker_unbind(b, pirq, &credential).map(|_| None),
        Operation::DeviceModelCall(call) => e
            .device_model_call(claimed, &credential, &call)
            .map(|p| p.map(|p| p.0)),
    };
    match r {
        Ok(pirq) => Reply::done(pirq),
        Err(EngineError::Refused { refusal, .. } | EngineError::RefusedPirq { refusal, .. }) => {
            tracing::info!(domid = claimed.0, "broker refused a request: {refusal}");
            refused(&refusal)
        }
        Err(e @ EngineError::PirqBudgetExhausted { .. }) => Reply::failed(
            ReplyCode::PirqBudget,
            e.to_string(),
            Some(xen::Errno::ENOSPC.0),
        ),
        Err(e) => {
            let errno = match &e {
                EngineError::Xen(x) => x.errno().map(|n| n.0),
                _ => None,
            };
            Reply::failed(ReplyCode::Error, e.to_string(), errno)
        }
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
    /// No more input is read (the peer half-closed, or sent a line too long to be a
    /// request): the connection closes once every reply owed is written.
    read_closed: bool,
}

impl Conn {
    /// The next complete request line, if the input holds one.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let i = self.input.iter().position(|b| *b == b'\n')?;
        Some(self.input.drain(..=i).collect())
    }
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
    metrics: Arc<Metrics>,
) -> Result<BrokerHandle, DaemonError> {
    let mut claim = SocketClaim::acquire(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(DaemonError::io("remove stale", path)(e))
        }
        _ => {}
    }
    let mut listener =
        xenstore::instance::bind_owner_only(path).map_err(DaemonError::io("listen on", path))?;
    claim.bound();
    let start = |what| move |source| DaemonError::BrokerStart { what, source };
    let poll = Poll::new().map_err(start("its poll"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(start("its listener's registration"))?;
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
                metrics,
            };
            lp.run(&stop);
            drop(claim);
            lp.stats
        })
        .map_err(start("its thread"))?;
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
    metrics: Arc<Metrics>,
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
                    t => self.service(t),
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
                    read_closed: false,
                },
            );
            // A device model writes its request as soon as it is connected: answer it now,
            // before the next connection of a flood can evict this one for room.
            self.service(token);
        }
    }

    /// Makes room. The victim comes from the peer holding the most connections (a flood
    /// comes from few processes, a device model holds one), and of its connections one
    /// that never sent a request, oldest first, else the one idle the longest. A
    /// connection that never sent a request had none executed, so a client may send its
    /// request again on a fresh one (the preload library does).
    fn evict_one(&mut self) {
        let victim = eviction_victim(
            self.conns
                .iter()
                .map(|(t, c)| (*t, c.peer_pid, c.requested, c.last_active)),
        );
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

    /// Everything a connection's readiness allows, until nothing moves: write what is
    /// owed, answer the next complete request while its reply has room, read more. A
    /// request is read and executed only when its reply can be queued, so every request
    /// executed gets its reply (a client that does not read stops being read, and times
    /// out); a half-closed peer still gets the replies to what it sent.
    fn service(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let cap = self.limits.max_pending_output;
        let mut chunk = [0u8; 4096];
        loop {
            if write_some(&mut c).is_err() {
                let _ = self.poll.registry().deregister(&mut c.stream);
                return;
            }
            if c.output.len() < cap {
                if let Some(line) = c.next_line() {
                    c.requested = true;
                    let reply = self.answer(c.peer_pid, &line);
                    queue(&mut c, &reply);
                    continue;
                }
            }
            if c.read_closed || c.output.len() >= cap {
                break;
            }
            match c.stream.read(&mut chunk) {
                Ok(0) => c.read_closed = true,
                Ok(n) => {
                    c.last_active = Instant::now();
                    c.input.extend_from_slice(&chunk[..n]);
                    if c.input.len() > MAX_LINE && !c.input[..=MAX_LINE].contains(&b'\n') {
                        // A line that cannot be valid: say so and hang up rather than
                        // buffer it; the requests before it were answered.
                        c.input = Vec::new();
                        c.read_closed = true;
                        self.stats.too_long += 1;
                        self.metrics
                            .broker("oversized", Some(ReplyCode::TooLong.as_str()));
                        queue(&mut c, &refused(&Refusal::TooLong { limit: MAX_LINE }));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                    return;
                }
            }
        }
        let owes = !c.output.is_empty() || (c.output.len() < cap && c.input.contains(&b'\n'));
        if c.read_closed && !owes {
            let _ = self.poll.registry().deregister(&mut c.stream);
            return;
        }
        let interest = match (c.read_closed || c.output.len() >= cap, c.output.is_empty()) {
            (false, true) => Interest::READABLE,
            (false, false) => Interest::READABLE | Interest::WRITABLE,
            (true, _) => Interest::WRITABLE,
        };
        if self
            .poll
            .registry()
            .reregister(&mut c.stream, t, interest)
            .is_err()
        {
            return;
        }
        self.conns.insert(t, c);
    }

    fn answer(&mut self, peer_pid: Option<i32>, line: &[u8]) -> Reply {
        self.stats.requests += 1;
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        let (op, reply) = match parse_request(text) {
            Err(reply) => ("malformed", reply),
            Ok(req) => match self
                .host
                .with(|ctx| Ok(handle_request(ctx, &req, peer_pid)))
            {
                Ok(r) => (req.op(), r),
                Err(e) => (
                    req.op(),
                    Reply::failed(ReplyCode::Error, e.to_string(), None),
                ),
            },
        };
        self.metrics
            .broker(op, reply.failure_code().map(ReplyCode::as_str));
        reply
    }
}

/// Which connection [`BrokerLoop::evict_one`] closes, from each one's (token, peer pid,
/// whether it ever sent a request, last activity): among the peer holding the most
/// connections, one that never sent a request, oldest first.
fn eviction_victim<T: Copy>(
    conns: impl Iterator<Item = (T, Option<i32>, bool, Instant)> + Clone,
) -> Option<T> {
    let mut per_peer: HashMap<Option<i32>, usize> = HashMap::new();
    for (_, peer, _, _) in conns.clone() {
        *per_peer.entry(peer).or_default() += 1;
    }
    conns
        .min_by_key(|(_, peer, requested, last)| {
            let held = per_peer.get(peer).copied().unwrap_or(0);
            (std::cmp::Reverse(held), *requested, *last)
        })
        .map(|(t, ..)| t)
}

/// Queues one reply line.
fn queue(c: &mut Conn, reply: &Reply) {
    c.output.extend_from_slice(reply.to_line().as_bytes());
}

/// Writes what the socket takes now.
fn write_some(c: &mut Conn) -> std::io::Result<()> {
    while !c.output.is_empty() {
        match c.stream.write(&c.output) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25 (7): under a flood a device model's fresh connection was evicted as the
    /// oldest that never sent a request. The flood's own connections go first.
    #[test]
    fn a_flood_evicts_its_own_connections_before_a_device_models() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // The model (pid 100) connected first and has not sent its request yet; the
        // attacker (pid 666) holds three connections, newer, none with a request.
        let conns = [
            (1, Some(100), false, at(0)),
            (2, Some(666), false, at(5)),
            (3, Some(666), false, at(6)),
            (4, Some(666), true, at(1)),
        ];
        assert_eq!(eviction_victim(conns.iter().copied()), Some(2));
        // Each peer with one connection: the one that never asked, oldest first.
        let fair = [(1, Some(100), true, at(0)), (2, Some(200), false, at(9))];
        assert_eq!(eviction_victim(fair.iter().copied()), Some(2));
        assert_eq!(
            eviction_victim(std::iter::empty::<(u8, Option<i32>, bool, Instant)>()),
            None
        );
    }
}
