//! The embedded xenstored: a single-threaded poll loop (as the C daemon's) that serves the
//! [`Store`] over a unix socket at `<rundir>/socket`, plus domain connections handed out
//! in-process (the stand-in for a guest's shared ring), and a control handle.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::perms::XsDomId;
use crate::store::{Action, ConnId, Quotas, Store, StoreStats};
use crate::wire::FrameDecoder;
use crate::XenstoreError;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Settings of the embedded server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Directory holding `socket` (as `XENSTORED_RUNDIR`).
    pub rundir: PathBuf,
    pub quotas: Quotas,
    /// A connection whose unsent output exceeds this many bytes (a client that floods
    /// watches and never reads) is dropped rather than letting memory grow.
    pub max_pending_output: usize,
}

impl ServerConfig {
    pub fn new(rundir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            rundir: rundir.into(),
            quotas: Quotas::default(),
            max_pending_output: 8 << 20,
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.rundir.join("socket")
    }
}

type StoreFn = Box<dyn FnOnce(&mut Store) -> Vec<Action> + Send>;

enum Command {
    Shutdown,
    ConnectDomain(
        XsDomId,
        mpsc::Sender<io::Result<std::os::unix::net::UnixStream>>,
    ),
    WithStore(StoreFn),
}

/// Controls a running server; dropping it shuts the server down.
pub struct ServerHandle {
    socket: PathBuf,
    waker: Arc<Waker>,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<Result<(), XenstoreError>>>,
}

impl ServerHandle {
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    fn send(&self, c: Command) -> Result<(), XenstoreError> {
        self.commands
            .send(c)
            .map_err(|_| XenstoreError::ServerGone)?;
        self.waker.wake().map_err(|source| XenstoreError::Io {
            context: "waking the xenstored loop".into(),
            source,
        })
    }

    /// Runs `f` on the store inside the server loop and routes the actions it returns.
    pub fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> (T, Vec<Action>) + Send + 'static,
    ) -> Result<T, XenstoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::WithStore(Box::new(move |s| {
            let (v, actions) = f(s);
            let _ = tx.send(v);
            actions
        })))?;
        rx.recv().map_err(|_| XenstoreError::ServerGone)
    }

    /// Introduces `domid` and fires `@introduceDomain`.
    pub fn introduce_domain(&self, domid: XsDomId) -> Result<(), XenstoreError> {
        self.with_store(move |s| ((), s.introduce_domain(domid)))
    }

    /// Releases `domid` (closing its connections) and fires `@releaseDomain`.
    pub fn release_domain(&self, domid: XsDomId) -> Result<(), XenstoreError> {
        self.with_store(move |s| ((), s.release_domain(domid)))
    }

    pub fn stats(&self) -> Result<StoreStats, XenstoreError> {
        self.with_store(|s| (s.stats().clone(), Vec::new()))
    }

    /// A connection speaking the wire protocol as domain `domid` (which must have been
    /// introduced): the in-process stand-in for a guest's Xenstore ring.
    pub fn connect_domain(
        &self,
        domid: XsDomId,
    ) -> Result<std::os::unix::net::UnixStream, XenstoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::ConnectDomain(domid, tx))?;
        rx.recv()
            .map_err(|_| XenstoreError::ServerGone)?
            .map_err(|source| XenstoreError::Io {
                context: format!("connecting as domain {domid}"),
                source,
            })
    }

    /// Asks the loop to stop and waits for it.
    pub fn shutdown(mut self) -> Result<(), XenstoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), XenstoreError> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.waker.wake();
        t.join().map_err(|_| XenstoreError::ServerGone)?
    }

    /// Waits until the loop ends (after a shutdown request).
    pub fn join(mut self) -> Result<(), XenstoreError> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| XenstoreError::ServerGone)?,
            None => Ok(()),
        }
    }

    /// A cloneable requester of shutdown, for signal handlers.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            waker: self.waker.clone(),
            commands: self.commands.clone(),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Requests shutdown of a running server from another thread.
#[derive(Clone)]
pub struct ShutdownTrigger {
    waker: Arc<Waker>,
    commands: mpsc::Sender<Command>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.waker.wake();
    }
}

struct ConnIo {
    stream: UnixStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    want_write: bool,
}

struct Loop {
    poll: Poll,
    listener: UnixListener,
    store: Store,
    conns: HashMap<ConnId, ConnIo>,
    commands: mpsc::Receiver<Command>,
    max_pending_output: usize,
    /// Released (and our socket removed) when the loop ends.
    claim: Option<crate::instance::SocketClaim>,
}

/// Starts the server on a thread of its own. The socket exists when this returns.
pub fn start(config: ServerConfig) -> Result<ServerHandle, XenstoreError> {
    let socket = config.socket_path();
    let io_err = |context: String| move |source| XenstoreError::Io { context, source };
    std::fs::create_dir_all(&config.rundir)
        .map_err(io_err(format!("creating {}", config.rundir.display())))?;
    // One server per socket; a socket left by a dead server may be replaced.
    let mut claim = crate::instance::SocketClaim::acquire(&socket)?;
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing stale {}", socket.display()))(e)),
    }
    // Every connection on the socket is dom0 (as with xenstored's own socket): only dom0's
    // root, or whoever runs this server, may reach it.
    let mut listener = crate::instance::bind_owner_only(&socket)
        .map_err(io_err(format!("binding {}", socket.display())))?;
    claim.bound();
    let poll = Poll::new().map_err(io_err("creating poll".into()))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(io_err("registering listener".into()))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("creating waker".into()))?);
    let (tx, rx) = mpsc::channel();
    let mut lp = Loop {
        poll,
        listener,
        store: Store::new(config.quotas.clone()),
        conns: HashMap::new(),
        commands: rx,
        max_pending_output: config.max_pending_output,
        claim: Some(claim),
    };
    let thread = std::thread::Builder::new()
        .name("xenstored".into())
        .spawn(move || lp.run())
        .map_err(io_err("spawning the xenstored thread".into()))?;
    tracing::info!(target: "xenstored", socket = %socket.display(), "xenstored listening");
    Ok(ServerHandle {
        socket,
        waker,
        commands: tx,
        thread: Some(thread),
    })
}

impl Loop {
    fn run(&mut self) -> Result<(), XenstoreError> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(XenstoreError::Io {
                    context: "polling".into(),
                    source: e,
                });
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        if !self.drain_commands() {
                            self.finish();
                            return Ok(());
                        }
                    }
                    Token(t) => {
                        let id = (t - FIRST_CONN) as ConnId;
                        if ev.is_readable() || ev.is_read_closed() {
                            self.read_conn(id);
                        }
                        if ev.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.claim = None;
        tracing::info!(target: "xenstored", "xenstored stopped");
    }

    fn add_conn(&mut self, mut stream: UnixStream, domid: XsDomId) -> io::Result<ConnId> {
        let id = self.store.connect(domid);
        let token = Token(id as usize + FIRST_CONN);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            self.store.disconnect(id);
            return Err(e);
        }
        self.conns.insert(
            id,
            ConnIo {
                stream,
                decoder: FrameDecoder::new(),
                out: Vec::new(),
                out_pos: 0,
                want_write: false,
            },
        );
        tracing::debug!(target: "xenstored", conn = id, domid, "connection opened");
        Ok(id)
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // dom0's privilege goes only to a process of the server's own user.
                    if !crate::instance::peer_is_owner(&stream) {
                        tracing::warn!(target: "xenstored", "refused a connection from another user");
                        continue;
                    }
                    if let Err(e) = self.add_conn(stream, 0) {
                        tracing::warn!(target: "xenstored", "cannot register connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(target: "xenstored", "accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Returns false when asked to shut down.
    fn drain_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Shutdown => return false,
                Command::ConnectDomain(domid, reply) => {
                    let r = if self.store.is_introduced(domid) {
                        self.connect_domain(domid)
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("domain {domid} is not introduced to xenstored"),
                        ))
                    };
                    let _ = reply.send(r);
                }
                Command::WithStore(f) => {
                    let actions = f(&mut self.store);
                    self.apply(actions);
                }
            }
        }
        true
    }

    fn connect_domain(&mut self, domid: XsDomId) -> io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        self.add_conn(UnixStream::from_std(ours), domid)?;
        Ok(theirs)
    }

    fn read_conn(&mut self, id: ConnId) {
        let mut buf = [0u8; 8192];
        let mut eof = false;
        {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => c.decoder.push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        loop {
            let next = match self.conns.get_mut(&id) {
                Some(c) => c.decoder.next_message(),
                None => return,
            };
            match next {
                Ok(Some(msg)) => {
                    let actions = self.store.handle(id, msg);
                    self.apply(actions);
                }
                Ok(None) => break,
                Err(e) => {
                    // As xenstored does with a client that breaks framing: drop it.
                    tracing::warn!(target: "xenstored", conn = id, "closing connection: {e}");
                    self.close(id);
                    return;
                }
            }
        }
        if eof {
            self.close(id);
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut touched = BTreeSet::new();
        for a in actions {
            match a {
                Action::Send(id, msg) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        msg.encode_into(&mut c.out);
                        touched.insert(id);
                    }
                }
                Action::Close(id) => {
                    self.close(id);
                }
            }
        }
        for id in touched {
            self.flush(id);
        }
    }

    fn flush(&mut self, id: ConnId) {
        let limit = self.max_pending_output;
        let mut drop_it = false;
        if let Some(c) = self.conns.get_mut(&id) {
            while c.out_pos < c.out.len() {
                match c.stream.write(&c.out[c.out_pos..]) {
                    Ok(0) => {
                        drop_it = true;
                        break;
                    }
                    Ok(n) => c.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        drop_it = true;
                        break;
                    }
                }
            }
            if c.out_pos == c.out.len() {
                c.out.clear();
                c.out_pos = 0;
            } else if c.out.len() - c.out_pos > limit {
                tracing::warn!(target: "xenstored", conn = id, "closing connection: {} bytes unread", c.out.len() - c.out_pos);
                drop_it = true;
            }
            let want = !c.out.is_empty();
            if !drop_it && want != c.want_write {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let token = Token(id as usize + FIRST_CONN);
                if self
                    .poll
                    .registry()
                    .reregister(&mut c.stream, token, interest)
                    .is_err()
                {
                    drop_it = true;
                }
                c.want_write = want;
            }
        }
        if drop_it {
            self.close(id);
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            tracing::debug!(target: "xenstored", conn = id, "connection closed");
        }
        self.store.disconnect(id);
    }
}
