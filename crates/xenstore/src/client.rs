//! A blocking Xenstore client over a unix socket (or any stream speaking the wire protocol).
//!
//! One request is in flight at a time; watch events that arrive while waiting for a reply
//! are queued and handed out by [`XsClient::next_event`]. Use one client per thread (open
//! another connection with [`XsClient::reconnect`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::perms::{PermList, XsDomId};
use crate::wire::{join_strings, split_strings, ErrorCode, FrameDecoder, Message, Op, PAYLOAD_MAX};
use crate::XenstoreError;

/// A transaction id; [`TxId::NONE`] outside transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId(pub u32);

impl TxId {
    pub const NONE: TxId = TxId(0);
}

/// One `WATCH_EVENT`: the changed path (as the watch was registered: relative paths stay
/// relative) and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Requests and round trips made by a client, for benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    pub transactions_started: u64,
    pub transactions_committed: u64,
    pub conflicts: u64,
}

/// Where libxenstore looks for the daemon: `$XENSTORED_PATH`, else
/// `$XENSTORED_RUNDIR/socket`, else `/run/xenstored/socket`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let rundir = std::env::var_os("XENSTORED_RUNDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/xenstored"));
    rundir.join("socket")
}

/// How a client reaches its xenstored.
enum Transport {
    Socket(UnixStream),
    /// An in-process [`crate::local::LocalXenstore`]: same state machine, no socket.
    Local(crate::local::LocalConn),
}

pub struct XsClient {
    stream: Transport,
    path: Option<PathBuf>,
    decoder: FrameDecoder,
    next_req: u32,
    events: VecDeque<WatchEvent>,
    stats: ClientStats,
    trace: Option<RequestTrace>,
}

/// Called with every request a client sends (operation, transaction, path), for `--trace`.
pub type RequestTrace = Box<dyn FnMut(Op, TxId, &str) + Send>;

/// How many times [`XsClient::transaction`] retries a conflicting commit.
pub const TRANSACTION_RETRIES: usize = 64;

impl XsClient {
    /// Connects to the daemon where libxenstore would.
    pub fn open() -> Result<XsClient, XenstoreError> {
        XsClient::connect(default_socket_path())
    }

    pub fn connect(path: impl AsRef<Path>) -> Result<XsClient, XenstoreError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| XenstoreError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = XsClient::from_stream(stream);
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Wraps an already connected stream (e.g. a domain connection of the embedded server).
    pub fn from_stream(stream: UnixStream) -> XsClient {
        XsClient::with_transport(Transport::Socket(stream))
    }

    pub(crate) fn from_local(conn: crate::local::LocalConn) -> XsClient {
        XsClient::with_transport(Transport::Local(conn))
    }

    fn with_transport(stream: Transport) -> XsClient {
        XsClient {
            stream,
            path: None,
            decoder: FrameDecoder::new(),
            next_req: 1,
            events: VecDeque::new(),
            stats: ClientStats::default(),
            trace: None,
        }
    }

    /// A new connection to the same socket.
    pub fn reconnect(&self) -> Result<XsClient, XenstoreError> {
        match &self.path {
            Some(p) => XsClient::connect(p),
            None => Err(XenstoreError::NotReconnectable),
        }
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Reports every request to `trace` from now on (`None` stops it).
    pub fn set_trace(&mut self, trace: Option<RequestTrace>) {
        self.trace = trace;
    }

    fn io(op: Op, path: &str) -> impl FnOnce(io::Error) -> XenstoreError + '_ {
        move |source| XenstoreError::Io {
            context: format!("{op} {path}"),
            source,
        }
    }

    fn read_message(&mut self, op: Op, path: &str) -> Result<Message, XenstoreError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            let stream = match &mut self.stream {
                Transport::Socket(s) => s,
                Transport::Local(l) => {
                    return l.next_message().ok_or_else(|| XenstoreError::Closed {
                        context: format!("{op} {path}"),
                    })
                }
            };
            let n = stream.read(&mut buf).map_err(Self::io(op, path))?;
            if n == 0 {
                return Err(XenstoreError::Closed {
                    context: format!("{op} {path}"),
                });
            }
            self.decoder.push(&buf[..n]);
        }
    }

    fn queue_event(&mut self, m: &Message) -> Result<(), XenstoreError> {
        let parts = split_strings(&m.payload).ok_or_else(|| XenstoreError::Protocol {
            op: Op::WatchEvent,
            reason: "event payload is not NUL-terminated".into(),
        })?;
        if parts.len() < 2 {
            return Err(XenstoreError::Protocol {
                op: Op::WatchEvent,
                reason: format!("event has {} fields, expected 2", parts.len()),
            });
        }
        self.events.push_back(WatchEvent {
            path: String::from_utf8_lossy(parts[0]).into_owned(),
            token: String::from_utf8_lossy(parts[1]).into_owned(),
        });
        Ok(())
    }

    /// Sends one request and waits for its reply. `path` only labels errors.
    pub fn request(
        &mut self,
        op: Op,
        tx: TxId,
        payload: Vec<u8>,
        path: &str,
    ) -> Result<Vec<u8>, XenstoreError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(XenstoreError::TooLarge {
                op,
                path: path.to_string(),
                len: payload.len(),
            });
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let msg = Message::new(op, req_id, tx.0, payload);
        match &mut self.stream {
            Transport::Socket(s) => s.write_all(&msg.encode()).map_err(Self::io(op, path))?,
            Transport::Local(l) => l.send(msg),
        }
        self.stats.requests += 1;
        if let Some(t) = &mut self.trace {
            t(op, tx, path);
        }
        loop {
            let m = self.read_message(op, path)?;
            if m.msg_type == Op::WatchEvent.code() {
                self.queue_event(&m)?;
                continue;
            }
            if m.req_id != req_id {
                return Err(XenstoreError::Protocol {
                    op,
                    reason: format!("reply for request {} while waiting for {req_id}", m.req_id),
                });
            }
            if m.msg_type == Op::Error.code() {
                let code = m.error_code().ok_or_else(|| XenstoreError::Protocol {
                    op,
                    reason: format!(
                        "unknown error name {:?}",
                        String::from_utf8_lossy(&m.payload)
                    ),
                })?;
                return Err(XenstoreError::Remote {
                    op,
                    path: path.to_string(),
                    code,
                });
            }
            if m.msg_type != op.code() {
                return Err(XenstoreError::Protocol {
                    op,
                    reason: format!("reply of type {} to {op}", m.msg_type),
                });
            }
            return Ok(m.payload);
        }
    }

    fn path_req(&mut self, op: Op, tx: TxId, path: &str) -> Result<Vec<u8>, XenstoreError> {
        self.request(op, tx, join_strings(&[path]), path)
    }

    fn expect_ok(op: Op, path: &str, reply: &[u8]) -> Result<(), XenstoreError> {
        if reply == b"OK\0" {
            Ok(())
        } else {
            Err(XenstoreError::Protocol {
                op,
                reason: format!(
                    "expected OK for {path}, got {:?}",
                    String::from_utf8_lossy(reply)
                ),
            })
        }
    }

    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XenstoreError> {
        self.path_req(Op::Read, tx, path)
    }

    /// Reads a value as UTF-8 text.
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<String, XenstoreError> {
        let v = self.read(tx, path)?;
        String::from_utf8(v).map_err(|_| XenstoreError::Protocol {
            op: Op::Read,
            reason: format!("value of {path} is not UTF-8"),
        })
    }

    /// `Ok(None)` if the node does not exist.
    pub fn read_optional(
        &mut self,
        tx: TxId,
        path: &str,
    ) -> Result<Option<Vec<u8>>, XenstoreError> {
        match self.read(tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code() == Some(ErrorCode::Enoent) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XenstoreError> {
        let mut payload = Vec::with_capacity(path.len() + 1 + value.len());
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value);
        let r = self.request(Op::Write, tx, payload, path)?;
        Self::expect_ok(Op::Write, path, &r)
    }

    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), XenstoreError> {
        let r = self.path_req(Op::Mkdir, tx, path)?;
        Self::expect_ok(Op::Mkdir, path, &r)
    }

    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<(), XenstoreError> {
        let r = self.path_req(Op::Rm, tx, path)?;
        Self::expect_ok(Op::Rm, path, &r)
    }

    /// Child names; falls back to DIRECTORY_PART when the list exceeds one payload.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XenstoreError> {
        match self.path_req(Op::Directory, tx, path) {
            Ok(r) => Ok(names(&r)),
            Err(e) if e.code() == Some(ErrorCode::E2big) => self.directory_part(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_part(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XenstoreError> {
        'restart: for _ in 0..TRANSACTION_RETRIES {
            let mut all = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            loop {
                let payload = join_strings(&[path.as_bytes(), all.len().to_string().as_bytes()]);
                let r = self.request(Op::DirectoryPart, tx, payload, path)?;
                let nul =
                    r.iter()
                        .position(|b| *b == 0)
                        .ok_or_else(|| XenstoreError::Protocol {
                            op: Op::DirectoryPart,
                            reason: "reply without generation".into(),
                        })?;
                let gen = r[..nul].to_vec();
                match &generation {
                    Some(g) if *g != gen => continue 'restart,
                    _ => generation = Some(gen),
                }
                let body = &r[nul + 1..];
                all.extend_from_slice(body);
                if body.is_empty() {
                    return Err(XenstoreError::Protocol {
                        op: Op::DirectoryPart,
                        reason: "empty chunk without end marker".into(),
                    });
                }
                if all == b"\0" || all.ends_with(b"\0\0") {
                    all.pop();
                    return Ok(names(&all));
                }
            }
        }
        Err(XenstoreError::Protocol {
            op: Op::DirectoryPart,
            reason: format!("{path} kept changing while being listed"),
        })
    }

    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<PermList, XenstoreError> {
        let r = self.path_req(Op::GetPerms, tx, path)?;
        let parts = split_strings(&r).ok_or_else(|| XenstoreError::Protocol {
            op: Op::GetPerms,
            reason: "permissions not NUL-terminated".into(),
        })?;
        PermList::parse_all(parts).map_err(|e| XenstoreError::Protocol {
            op: Op::GetPerms,
            reason: e.to_string(),
        })
    }

    pub fn set_perms(
        &mut self,
        tx: TxId,
        path: &str,
        perms: &PermList,
    ) -> Result<(), XenstoreError> {
        let mut payload = join_strings(&[path]);
        payload.extend_from_slice(&perms.to_payload());
        let r = self.request(Op::SetPerms, tx, payload, path)?;
        Self::expect_ok(Op::SetPerms, path, &r)
    }

    pub fn get_domain_path(&mut self, domid: XsDomId) -> Result<String, XenstoreError> {
        let r = self.request(
            Op::GetDomainPath,
            TxId::NONE,
            join_strings(&[domid.to_string()]),
            "",
        )?;
        Ok(names(&r).into_iter().next().unwrap_or_default())
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XenstoreError> {
        let r = self.request(Op::Watch, TxId::NONE, join_strings(&[path, token]), path)?;
        Self::expect_ok(Op::Watch, path, &r)
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XenstoreError> {
        let r = self.request(Op::Unwatch, TxId::NONE, join_strings(&[path, token]), path)?;
        Self::expect_ok(Op::Unwatch, path, &r)
    }

    pub fn reset_watches(&mut self) -> Result<(), XenstoreError> {
        let r = self.request(Op::ResetWatches, TxId::NONE, join_strings(&[""]), "")?;
        Self::expect_ok(Op::ResetWatches, "", &r)
    }

    /// The next watch event, waiting at most `timeout` (`None`: wait for ever).
    pub fn next_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<WatchEvent>, XenstoreError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut buf = [0u8; 8192];
        loop {
            while let Some(m) = self.decoder.next_message()? {
                if m.msg_type == Op::WatchEvent.code() {
                    self.queue_event(&m)?;
                } else {
                    return Err(XenstoreError::Protocol {
                        op: Op::WatchEvent,
                        reason: format!("unsolicited message of type {}", m.msg_type),
                    });
                }
            }
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if let Transport::Local(l) = &mut self.stream {
                match l.next_message() {
                    Some(m) if m.msg_type == Op::WatchEvent.code() => {
                        self.queue_event(&m)?;
                        continue;
                    }
                    Some(m) => {
                        return Err(XenstoreError::Protocol {
                            op: Op::WatchEvent,
                            reason: format!("unsolicited message of type {}", m.msg_type),
                        })
                    }
                    // In-process: nothing queued means nothing arrives while we wait.
                    None => return Ok(None),
                }
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
                None => None,
            };
            let stream = match &mut self.stream {
                Transport::Socket(s) => s,
                Transport::Local(_) => return Ok(None),
            };
            stream
                .set_read_timeout(wait)
                .map_err(Self::io(Op::WatchEvent, ""))?;
            let r = stream.read(&mut buf);
            stream
                .set_read_timeout(None)
                .map_err(Self::io(Op::WatchEvent, ""))?;
            match r {
                Ok(0) => {
                    return Err(XenstoreError::Closed {
                        context: "waiting for watch events".into(),
                    })
                }
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(Op::WatchEvent, "")(e)),
            }
        }
    }

    /// Whether this client talks to an in-process store ([`crate::local::LocalXenstore`]):
    /// then a change's watch events are queued by the time the change's reply is.
    pub fn is_in_process(&self) -> bool {
        matches!(self.stream, Transport::Local(_))
    }

    /// Events already received and queued.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    pub fn transaction_start(&mut self) -> Result<TxId, XenstoreError> {
        let r = self.request(Op::TransactionStart, TxId::NONE, join_strings(&[""]), "")?;
        let text = names(&r).into_iter().next().unwrap_or_default();
        let id = text.parse::<u32>().map_err(|_| XenstoreError::Protocol {
            op: Op::TransactionStart,
            reason: format!("transaction id {text:?} is not a number"),
        })?;
        self.stats.transactions_started += 1;
        Ok(TxId(id))
    }

    /// Ends a transaction. A commit that conflicted returns the `EAGAIN` remote error.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XenstoreError> {
        let flag = if commit { "T" } else { "F" };
        match self.request(Op::TransactionEnd, tx, join_strings(&[flag]), "") {
            Ok(r) => {
                if commit {
                    self.stats.transactions_committed += 1;
                }
                Self::expect_ok(Op::TransactionEnd, "", &r)
            }
            Err(e) => {
                if e.code() == Some(ErrorCode::Eagain) {
                    self.stats.conflicts += 1;
                }
                Err(e)
            }
        }
    }

    /// Runs `body` in a transaction and commits it, starting again on `EAGAIN` (at most
    /// [`TRANSACTION_RETRIES`] times). An error from `body` aborts the transaction.
    pub fn transaction<T, E>(
        &mut self,
        mut body: impl FnMut(&mut XsClient, TxId) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<XenstoreError>,
    {
        for _ in 0..TRANSACTION_RETRIES {
            let tx = self.transaction_start()?;
            let value = match body(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(e) if e.code() == Some(ErrorCode::Eagain) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(XenstoreError::TooManyConflicts {
            attempts: TRANSACTION_RETRIES,
        }
        .into())
    }

    pub fn introduce(
        &mut self,
        domid: XsDomId,
        mfn: u64,
        evtchn: u32,
    ) -> Result<(), XenstoreError> {
        let payload = join_strings(&[domid.to_string(), mfn.to_string(), evtchn.to_string()]);
        let r = self.request(Op::Introduce, TxId::NONE, payload, "")?;
        Self::expect_ok(Op::Introduce, "", &r)
    }

    pub fn release(&mut self, domid: XsDomId) -> Result<(), XenstoreError> {
        let r = self.request(
            Op::Release,
            TxId::NONE,
            join_strings(&[domid.to_string()]),
            "",
        )?;
        Self::expect_ok(Op::Release, "", &r)
    }

    pub fn is_domain_introduced(&mut self, domid: XsDomId) -> Result<bool, XenstoreError> {
        let r = self.request(
            Op::IsDomainIntroduced,
            TxId::NONE,
            join_strings(&[domid.to_string()]),
            "",
        )?;
        Ok(r == b"T\0")
    }

    pub fn set_target(&mut self, domid: XsDomId, target: XsDomId) -> Result<(), XenstoreError> {
        let payload = join_strings(&[domid.to_string(), target.to_string()]);
        let r = self.request(Op::SetTarget, TxId::NONE, payload, "")?;
        Self::expect_ok(Op::SetTarget, "", &r)
    }
}

fn names(payload: &[u8]) -> Vec<String> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}
