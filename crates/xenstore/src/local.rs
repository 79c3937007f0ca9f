//! An in-process xenstored: the [`Store`] state machine shared by any number of
//! [`XsClient`]s without a socket. Replies and watch events are routed to each connection's
//! queue exactly as the socket server would write them, so code tested against it behaves
//! the same against a real xenstored. Used by the simulated host and the crash explorer,
//! where thousands of short runs would otherwise spend their time in syscalls.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::XsClient;
use crate::perms::XsDomId;
use crate::store::{Action, ConnId, Quotas, Store};
use crate::wire::Message;

#[derive(Default)]
struct Inner {
    store: Store,
    queues: HashMap<ConnId, VecDeque<Message>>,
}

impl Inner {
    fn route(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(c, m) => self.queues.entry(c).or_default().push_back(m),
                Action::Close(c) => {
                    self.store.disconnect(c);
                    self.queues.remove(&c);
                }
            }
        }
    }
}

/// A shared in-process xenstored. Cloning shares it.
#[derive(Clone, Default)]
pub struct LocalXenstore {
    inner: Arc<Mutex<Inner>>,
}

/// One connection of a [`LocalXenstore`], owned by an [`XsClient`].
pub struct LocalConn {
    xs: LocalXenstore,
    conn: ConnId,
}

impl LocalXenstore {
    pub fn new(quotas: Quotas) -> LocalXenstore {
        LocalXenstore {
            inner: Arc::new(Mutex::new(Inner {
                store: Store::new(quotas),
                queues: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client connected as `domid` (0: a dom0 tool).
    pub fn connect(&self, domid: XsDomId) -> XsClient {
        let conn = self.lock().store.connect(domid);
        XsClient::from_local(LocalConn {
            xs: self.clone(),
            conn,
        })
    }

    pub fn introduce_domain(&self, domid: XsDomId) {
        let mut g = self.lock();
        let a = g.store.introduce_domain(domid);
        g.route(a);
    }

    pub fn release_domain(&self, domid: XsDomId) {
        let mut g = self.lock();
        let a = g.store.release_domain(domid);
        g.route(a);
    }

    /// Reads the store (statistics, node counts).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.lock().store)
    }
}

impl LocalConn {
    pub(crate) fn send(&mut self, msg: Message) {
        let mut g = self.xs.lock();
        let a = g.store.handle(self.conn, msg);
        g.route(a);
    }

    pub(crate) fn next_message(&mut self) -> Option<Message> {
        self.xs.lock().queues.get_mut(&self.conn)?.pop_front()
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        let mut g = self.xs.lock();
        g.store.disconnect(self.conn);
        g.queues.remove(&self.conn);
    }
}
