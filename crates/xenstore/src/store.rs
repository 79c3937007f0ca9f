//! The xenstored state machine, free of I/O: connections hand it whole request messages and
//! it answers with the messages to send (replies and watch events) and connections to close.
//!
//! The tree is a persistent ordered map from absolute path to node, so a transaction's
//! snapshot is an O(1) clone. Every node carries a generation, bumped on each change; a
//! transaction remembers the paths it touched and commits only if none of them changed
//! generation meanwhile (the per-node conflict rule of the C xenstored), answering `EAGAIN`
//! otherwise. Every operation runs on a copy and is installed whole, so a failing request
//! changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use imbl::OrdMap;

use crate::path::{self, ResolvedPath, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Access, PermList, XsDomId};
use crate::wire::{join_strings, split_strings, ErrorCode, Message, Op, PAYLOAD_MAX};

/// Identifies one client connection (a socket, or a domain's ring).
pub type ConnId = u64;

/// Per-domain limits, as the C xenstored's defaults (`-E`, `-W`, `-t`, `-S`, ...). Dom0 is
/// exempt, as in xenstored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`quota-nr-entries`); over it: `ENOSPC`.
    pub nodes_per_domain: usize,
    /// Bytes of one node's value (`quota-max-entry-size`); over it: `E2BIG`.
    pub value_size: usize,
    /// Watches a domain may hold (`quota-nr-watches`); over it: `E2BIG`.
    pub watches_per_domain: usize,
    /// Transactions a connection may have open (`quota-max-transaction`); over it: `ENOSPC`.
    pub transactions_per_conn: usize,
    /// Entries in one node's permission list; over it: `ENOSPC`.
    pub perms_per_node: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            nodes_per_domain: 1000,
            value_size: 2048,
            watches_per_domain: 128,
            transactions_per_conn: 10,
            perms_per_node: 5,
        }
    }
}

/// What the I/O layer must do after a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(ConnId, Message),
    Close(ConnId),
}

/// Counters for benchmarks and `--trace`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub requests: u64,
    pub errors: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub watch_events: u64,
}

#[derive(Clone, Debug)]
struct Node {
    value: Arc<[u8]>,
    perms: PermList,
    /// Child names in creation order (xenstored lists them in that order).
    children: Vec<String>,
    generation: u64,
}

type Tree = OrdMap<Arc<str>, Arc<Node>>;

/// One change that may fire watches.
#[derive(Clone, Debug)]
struct Change {
    path: String,
    /// Only watches on exactly this path fire (nodes removed below the removed node).
    exact: bool,
    perms: PermList,
}

#[derive(Clone, Debug, Default)]
struct OpLog {
    accessed: BTreeSet<String>,
    changes: Vec<Change>,
    /// Node-count changes per owning domain, not yet applied to the live counts.
    count_delta: HashMap<XsDomId, i64>,
}

impl OpLog {
    fn merge(&mut self, other: OpLog) {
        self.accessed.extend(other.accessed);
        self.changes.extend(other.changes);
        for (d, n) in other.count_delta {
            *self.count_delta.entry(d).or_default() += n;
        }
    }
}

#[derive(Clone, Debug)]
struct Transaction {
    conn: ConnId,
    base: Tree,
    work: Tree,
    log: OpLog,
}

#[derive(Clone, Debug)]
struct Watch {
    /// Resolved absolute path, or the `@special` name.
    abs: String,
    /// Bytes of `abs` the client did not write (relative watches report relative paths).
    prefix_len: usize,
    token: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Conn {
    domid: XsDomId,
    watches: Vec<Watch>,
}

#[derive(Clone, Debug, Default)]
struct DomainInfo {
    introduced: bool,
    target: Option<XsDomId>,
}

/// The whole xenstored state.
pub struct Store {
    tree: Tree,
    generation: u64,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    txns: BTreeMap<u32, Transaction>,
    last_txid: u32,
    domains: BTreeMap<XsDomId, DomainInfo>,
    node_counts: HashMap<XsDomId, usize>,
    quotas: Quotas,
    stats: StoreStats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// One request's view: a private copy of the tree it runs on and what it touched.
struct OpCtx<'a> {
    tree: Tree,
    log: OpLog,
    live_counts: &'a HashMap<XsDomId, usize>,
    generation: &'a mut u64,
    domid: XsDomId,
    target: Option<XsDomId>,
    quotas: &'a Quotas,
}

type OpResult<T> = Result<T, ErrorCode>;

impl OpCtx<'_> {
    fn privileged(&self) -> bool {
        self.domid == 0
    }

    fn get(&mut self, p: &str) -> Option<Arc<Node>> {
        self.log.accessed.insert(p.to_string());
        self.tree.get(p).cloned()
    }

    fn next_gen(&mut self) -> u64 {
        *self.generation += 1;
        *self.generation
    }

    fn put(&mut self, p: &str, mut node: Node) {
        node.generation = self.next_gen();
        self.log.accessed.insert(p.to_string());
        self.tree.insert(Arc::from(p), Arc::new(node));
    }

    fn count(&mut self, owner: XsDomId, delta: i64) {
        *self.log.count_delta.entry(owner).or_default() += delta;
    }

    fn allowed(&self, node: &Node, need: Need) -> bool {
        let a = node.perms.access_for(self.domid, self.target);
        match need {
            Need::Read => a.can_read(),
            Need::Write => a.can_write(),
        }
    }

    /// The node at `p` if it exists and the caller has `need` on it. For a missing node,
    /// `ENOENT` if the caller has `need` on its nearest existing ancestor, else `EACCES`
    /// (so that existence is not revealed to those who may not see it).
    fn lookup(&mut self, p: &str, need: Need) -> OpResult<Arc<Node>> {
        if let Some(n) = self.get(p) {
            return if self.allowed(&n, need) {
                Ok(n)
            } else {
                Err(ErrorCode::Eacces)
            };
        }
        let mut cur = path::parent(p);
        while let Some(a) = cur {
            if let Some(n) = self.get(a) {
                return Err(if self.allowed(&n, need) {
                    ErrorCode::Enoent
                } else {
                    ErrorCode::Eacces
                });
            }
            cur = path::parent(a);
        }
        Err(ErrorCode::Enoent)
    }

    /// Creates `p` and any missing parents with empty values, each inheriting its parent's
    /// permissions. The caller has checked write access on the nearest existing ancestor.
    fn create(&mut self, p: &str) -> OpResult<()> {
        let mut missing = vec![p.to_string()];
        let mut anc = path::parent(p);
        let existing = loop {
            let Some(a) = anc else {
                return Err(ErrorCode::Enoent);
            };
            if let Some(n) = self.get(a) {
                break (a.to_string(), n);
            }
            missing.push(a.to_string());
            anc = path::parent(a);
        };
        let (mut parent_path, parent_node) = existing;
        let mut parent = (*parent_node).clone();
        for child in missing.iter().rev() {
            let perms = parent.perms.inherit(self.domid);
            let owner = perms.owner();
            if !self.privileged() && owner != 0 {
                let have = *self.live_counts.get(&owner).unwrap_or(&0) as i64
                    + self.log.count_delta.get(&owner).copied().unwrap_or(0);
                if have >= self.quotas.nodes_per_domain as i64 {
                    return Err(ErrorCode::Enospc);
                }
            }
            parent.children.push(path::basename(child).to_string());
            self.put(&parent_path, parent);
            self.count(owner, 1);
            parent = Node {
                value: Arc::from(&b""[..]),
                perms,
                children: Vec::new(),
                generation: 0,
            };
            parent_path = child.clone();
        }
        self.put(&parent_path, parent);
        Ok(())
    }

    fn write(&mut self, p: &str, value: &[u8]) -> OpResult<()> {
        if !self.privileged() && value.len() > self.quotas.value_size {
            return Err(ErrorCode::E2big);
        }
        match self.lookup(p, Need::Write) {
            Ok(_) => {}
            Err(ErrorCode::Enoent) => self.create(p)?,
            Err(e) => return Err(e),
        }
        let Some(node) = self.get(p) else {
            return Err(ErrorCode::Eio);
        };
        let mut node = (*node).clone();
        node.value = Arc::from(value);
        let perms = node.perms.clone();
        self.put(p, node);
        self.log.changes.push(Change {
            path: p.to_string(),
            exact: false,
            perms,
        });
        Ok(())
    }

    fn mkdir(&mut self, p: &str) -> OpResult<()> {
        match self.lookup(p, Need::Write) {
            Ok(_) => Ok(()),
            Err(ErrorCode::Enoent) => {
                self.create(p)?;
                let perms = self.get(p).map(|n| n.perms.clone());
                if let Some(perms) = perms {
                    self.log.changes.push(Change {
                        path: p.to_string(),
                        exact: false,
                        perms,
                    });
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn rm(&mut self, p: &str) -> OpResult<()> {
        if p == "/" {
            return Err(ErrorCode::Einval);
        }
        let node = match self.lookup(p, Need::Write) {
            Ok(n) => n,
            Err(ErrorCode::Enoent) => {
                // Absent is fine if the parent exists.
                let parent = path::parent(p).unwrap_or("/");
                return match self.get(parent) {
                    Some(_) => Ok(()),
                    None => Err(ErrorCode::Enoent),
                };
            }
            Err(e) => return Err(e),
        };
        // Collect the subtree, depth first, parents before children.
        let mut order = Vec::new();
        let mut stack = vec![(p.to_string(), node)];
        while let Some((path_now, n)) = stack.pop() {
            for c in n.children.iter().rev() {
                let cp = path::child(&path_now, c);
                if let Some(cn) = self.get(&cp) {
                    stack.push((cp, cn));
                }
            }
            order.push((path_now, n));
        }
        for (i, (path_now, n)) in order.iter().enumerate() {
            self.tree.remove(path_now.as_str());
            self.count(n.perms.owner(), -1);
            self.log.changes.push(Change {
                path: path_now.clone(),
                exact: i != 0,
                perms: n.perms.clone(),
            });
        }
        let parent_path = path::parent(p).unwrap_or("/");
        if let Some(parent) = self.get(parent_path) {
            let mut parent = (*parent).clone();
            let name = path::basename(p);
            parent.children.retain(|c| c != name);
            self.put(parent_path, parent);
        }
        Ok(())
    }

    fn set_perms(&mut self, p: &str, perms: PermList) -> OpResult<()> {
        let node = self.lookup(p, Need::Write)?;
        if !node.perms.is_owner(self.domid, self.target) {
            return Err(ErrorCode::Eacces);
        }
        if !self.privileged() {
            if perms.entries().len() > self.quotas.perms_per_node {
                return Err(ErrorCode::Enospc);
            }
            if perms.owner() != node.perms.owner() {
                return Err(ErrorCode::Eperm);
            }
        }
        let mut node = (*node).clone();
        if node.perms.owner() != perms.owner() {
            self.count(node.perms.owner(), -1);
            self.count(perms.owner(), 1);
        }
        node.perms = perms.clone();
        self.put(p, node);
        self.log.changes.push(Change {
            path: p.to_string(),
            exact: false,
            perms,
        });
        Ok(())
    }
}

/// How an incoming request is to be parsed.
fn args(payload: &[u8], n: usize) -> OpResult<Vec<&[u8]>> {
    let parts = split_strings(payload).ok_or(ErrorCode::Einval)?;
    if parts.len() != n {
        return Err(ErrorCode::Einval);
    }
    Ok(parts)
}

fn parse_u32(b: &[u8]) -> OpResult<u32> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return Err(ErrorCode::Einval);
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ErrorCode::Einval)
}

const OK: &[u8] = b"OK\0";

impl Default for Store {
    fn default() -> Store {
        Store::new(Quotas::default())
    }
}

impl Store {
    /// A store holding what xenstored and `xen-init-dom0` create at boot: `/`, `/tool`,
    /// `/tool/xenstored` and `/local/domain/0`, all owned by dom0 (`n0`).
    pub fn new(quotas: Quotas) -> Store {
        let mut s = Store {
            tree: Tree::new(),
            generation: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            txns: BTreeMap::new(),
            last_txid: 0,
            domains: BTreeMap::new(),
            node_counts: HashMap::new(),
            quotas,
            stats: StoreStats::default(),
        };
        s.tree.insert(
            Arc::from("/"),
            Arc::new(Node {
                value: Arc::from(&b""[..]),
                perms: PermList::owned_by(0, Access::None),
                children: Vec::new(),
                generation: 0,
            }),
        );
        s.domains.insert(
            0,
            DomainInfo {
                introduced: true,
                target: None,
            },
        );
        let boot = s.connect(0);
        for (p, v) in [
            ("/tool/xenstored", &b""[..]),
            ("/local/domain/0/name", b"Domain-0"),
            ("/local/domain/0/domid", b"0"),
        ] {
            let mut payload = join_strings(&[p]);
            payload.pop();
            payload.push(0);
            payload.extend_from_slice(v);
            s.handle(boot, Message::new(Op::Write, 0, 0, payload));
        }
        s.disconnect(boot);
        s.stats = StoreStats::default();
        s
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Nodes in the tree, root included.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Approximate bytes held by node names and values (for the ledger-size benchmark).
    pub fn approx_bytes(&self) -> usize {
        self.tree
            .iter()
            .map(|(k, n)| k.len() + n.value.len() + 8 * n.perms.entries().len())
            .sum()
    }

    /// Registers a connection of domain `domid` (0 for the unix socket).
    pub fn connect(&mut self, domid: XsDomId) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
            },
        );
        id
    }

    /// Forgets a connection with its watches and open transactions (which are discarded).
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.txns.retain(|_, t| t.conn != conn);
    }

    pub fn conn_domid(&self, conn: ConnId) -> Option<XsDomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    pub fn is_introduced(&self, domid: XsDomId) -> bool {
        self.domains.get(&domid).is_some_and(|d| d.introduced)
    }

    /// Introduces a domain (as INTRODUCE does) and fires `@introduceDomain`.
    pub fn introduce_domain(&mut self, domid: XsDomId) -> Vec<Action> {
        let info = self.domains.entry(domid).or_default();
        let fresh = !info.introduced;
        info.introduced = true;
        if fresh {
            self.fire_special(INTRODUCE_DOMAIN)
        } else {
            Vec::new()
        }
    }

    /// Releases a domain (RELEASE, or destruction): closes its connections, drops its
    /// watches and transactions, and fires `@releaseDomain`.
    pub fn release_domain(&mut self, domid: XsDomId) -> Vec<Action> {
        let mut out = Vec::new();
        if domid != 0 {
            self.domains.remove(&domid);
            let gone: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.domid == domid)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                self.disconnect(id);
                out.push(Action::Close(id));
            }
        }
        out.extend(self.fire_special(RELEASE_DOMAIN));
        out
    }

    /// Fires a special watch (`@introduceDomain`, `@releaseDomain`). Only privileged
    /// connections and device-model domains (those with a SET_TARGET target) get them.
    pub fn fire_special(&mut self, name: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for (id, c) in &self.conns {
            let target = self.domains.get(&c.domid).and_then(|d| d.target);
            if c.domid != 0 && target.is_none() {
                continue;
            }
            for w in &c.watches {
                if w.abs == name {
                    out.push(Action::Send(*id, event(name, &w.token)));
                }
            }
        }
        self.stats.watch_events += out.len() as u64;
        out
    }

    fn target_of(&self, domid: XsDomId) -> Option<XsDomId> {
        self.domains.get(&domid).and_then(|d| d.target)
    }

    /// Handles one request from `conn`; returns the reply and any events and closures.
    pub fn handle(&mut self, conn: ConnId, msg: Message) -> Vec<Action> {
        self.stats.requests += 1;
        let mut out = Vec::new();
        let Some(domid) = self.conn_domid(conn) else {
            return out;
        };
        let result = self.dispatch(conn, domid, &msg, &mut out);
        let reply = match result {
            Ok(payload) => msg.reply(payload),
            Err(code) => {
                self.stats.errors += 1;
                msg.error_reply(code)
            }
        };
        // The reply goes first; the watch events this request caused follow it.
        out.insert(0, Action::Send(conn, reply));
        out
    }

    fn dispatch(
        &mut self,
        conn: ConnId,
        domid: XsDomId,
        msg: &Message,
        out: &mut Vec<Action>,
    ) -> OpResult<Vec<u8>> {
        let Some(op) = msg.op() else {
            return Err(ErrorCode::Enosys);
        };
        // Watches ignore tx_id; everything else names a transaction of this connection.
        let tx = match op {
            Op::Watch | Op::Unwatch => None,
            _ if msg.tx_id == 0 => None,
            _ => match self.txns.get(&msg.tx_id) {
                Some(t) if t.conn == conn => Some(msg.tx_id),
                _ => return Err(ErrorCode::Enoent),
            },
        };
        let p = &msg.payload;
        match op {
            Op::Read => {
                let [raw] = args(p, 1)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let rp = resolve(raw, domid)?;
                self.run(conn, tx, domid, out, |c| {
                    c.lookup(&rp.abs, Need::Read).map(|n| n.value.to_vec())
                })
            }
            Op::Write => {
                let nul = p.iter().position(|b| *b == 0).ok_or(ErrorCode::Einval)?;
                let rp = resolve(&p[..nul], domid)?;
                let value = &p[nul + 1..];
                self.run(conn, tx, domid, out, |c| c.write(&rp.abs, value))
                    .map(|_| OK.to_vec())
            }
            Op::Mkdir => {
                let rp = resolve(one(p)?, domid)?;
                self.run(conn, tx, domid, out, |c| c.mkdir(&rp.abs))
                    .map(|_| OK.to_vec())
            }
            Op::Rm => {
                let rp = resolve(one(p)?, domid)?;
                self.run(conn, tx, domid, out, |c| c.rm(&rp.abs))
                    .map(|_| OK.to_vec())
            }
            Op::Directory => {
                let rp = resolve(one(p)?, domid)?;
                let list = self.run(conn, tx, domid, out, |c| {
                    c.lookup(&rp.abs, Need::Read)
                        .map(|n| join_strings(&n.children))
                })?;
                if list.len() > PAYLOAD_MAX {
                    return Err(ErrorCode::E2big);
                }
                Ok(list)
            }
            Op::DirectoryPart => {
                let [raw, off] = args(p, 2)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let rp = resolve(raw, domid)?;
                let offset = parse_u32(off)? as usize;
                let (generation, list) = self.run(conn, tx, domid, out, |c| {
                    c.lookup(&rp.abs, Need::Read)
                        .map(|n| (n.generation, join_strings(&n.children)))
                })?;
                directory_part(generation, &list, offset)
            }
            Op::GetPerms => {
                let rp = resolve(one(p)?, domid)?;
                self.run(conn, tx, domid, out, |c| {
                    c.lookup(&rp.abs, Need::Read).map(|n| n.perms.to_payload())
                })
            }
            Op::SetPerms => {
                let parts = split_strings(p).ok_or(ErrorCode::Einval)?;
                let (raw, perm_parts) = parts.split_first().ok_or(ErrorCode::Einval)?;
                let rp = resolve(raw, domid)?;
                let perms = PermList::parse_all(perm_parts.iter().copied())
                    .map_err(|_| ErrorCode::Einval)?;
                self.run(conn, tx, domid, out, |c| c.set_perms(&rp.abs, perms))
                    .map(|_| OK.to_vec())
            }
            Op::Watch => {
                let [raw, token] = args(p, 2)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let rp = path::resolve(raw, domid, true).map_err(|_| ErrorCode::Einval)?;
                self.watch(conn, domid, rp, token, out)
            }
            Op::Unwatch => {
                let [raw, token] = args(p, 2)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let rp = path::resolve(raw, domid, true).map_err(|_| ErrorCode::Einval)?;
                let c = self.conns.get_mut(&conn).ok_or(ErrorCode::Eio)?;
                let before = c.watches.len();
                c.watches.retain(|w| !(w.abs == rp.abs && w.token == token));
                if c.watches.len() == before {
                    return Err(ErrorCode::Enoent);
                }
                Ok(OK.to_vec())
            }
            Op::TransactionStart => {
                if msg.tx_id != 0 {
                    return Err(ErrorCode::Ebusy);
                }
                if domid != 0 {
                    let open = self.txns.values().filter(|t| t.conn == conn).count();
                    if open >= self.quotas.transactions_per_conn {
                        return Err(ErrorCode::Enospc);
                    }
                }
                let id = self.next_txid();
                self.txns.insert(
                    id,
                    Transaction {
                        conn,
                        base: self.tree.clone(),
                        work: self.tree.clone(),
                        log: OpLog::default(),
                    },
                );
                Ok(join_strings(&[id.to_string()]))
            }
            Op::TransactionEnd => {
                let Some(id) = tx else {
                    return Err(ErrorCode::Enoent);
                };
                let commit = match one(p)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(ErrorCode::Einval),
                };
                let t = self.txns.remove(&id).ok_or(ErrorCode::Enoent)?;
                if commit {
                    self.commit(t, out)?;
                }
                Ok(OK.to_vec())
            }
            Op::GetDomainPath => {
                let d = parse_u32(one(p)?)?;
                Ok(join_strings(&[path::domain_path(d)]))
            }
            Op::IsDomainIntroduced => {
                let d = parse_u32(one(p)?)?;
                Ok(if self.is_introduced(d) {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            Op::Introduce => {
                require_dom0(domid)?;
                let [d, mfn, evtchn] = args(p, 3)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let d = parse_u32(d)?;
                if d == 0 || d >= 0x7ff0 {
                    return Err(ErrorCode::Einval);
                }
                // The mfn is signed decimal; the event channel unsigned. Neither is used
                // here (there is no ring to map) but both must be well formed.
                let mfn_digits = mfn.strip_prefix(b"-").unwrap_or(mfn);
                parse_u32(mfn_digits).or_else(|_| {
                    std::str::from_utf8(mfn_digits)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(|_| 0)
                        .ok_or(ErrorCode::Einval)
                })?;
                parse_u32(evtchn)?;
                out.extend(self.introduce_domain(d));
                Ok(OK.to_vec())
            }
            Op::Release => {
                require_dom0(domid)?;
                let d = parse_u32(one(p)?)?;
                if d == 0 {
                    return Err(ErrorCode::Einval);
                }
                if !self.is_introduced(d) {
                    return Err(ErrorCode::Enoent);
                }
                out.extend(self.release_domain(d));
                Ok(OK.to_vec())
            }
            Op::Resume => {
                require_dom0(domid)?;
                let d = parse_u32(one(p)?)?;
                if !self.is_introduced(d) {
                    return Err(ErrorCode::Enoent);
                }
                Ok(OK.to_vec())
            }
            Op::SetTarget => {
                require_dom0(domid)?;
                let [d, t] = args(p, 2)?[..] else {
                    return Err(ErrorCode::Einval);
                };
                let (d, t) = (parse_u32(d)?, parse_u32(t)?);
                if !self.is_introduced(d) || !self.is_introduced(t) {
                    return Err(ErrorCode::Enoent);
                }
                if let Some(info) = self.domains.get_mut(&d) {
                    info.target = Some(t);
                }
                Ok(OK.to_vec())
            }
            Op::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.watches.clear();
                }
                self.txns.retain(|_, t| t.conn != conn);
                Ok(OK.to_vec())
            }
            Op::Control => {
                require_dom0(domid)?;
                let parts = split_strings(p).ok_or(ErrorCode::Einval)?;
                match parts.first().copied() {
                    Some(b"print") => {
                        let text = parts.get(1).copied().unwrap_or(b"");
                        tracing::info!(target: "xenstored", "control print: {}", String::from_utf8_lossy(text));
                        Ok(OK.to_vec())
                    }
                    Some(b"help") => Ok(join_strings(&["help", "print"])),
                    _ => Err(ErrorCode::Einval),
                }
            }
            Op::WatchEvent | Op::Error => Err(ErrorCode::Enosys),
        }
    }

    fn next_txid(&mut self) -> u32 {
        loop {
            self.last_txid = self.last_txid.wrapping_add(1);
            if self.last_txid != 0 && !self.txns.contains_key(&self.last_txid) {
                return self.last_txid;
            }
        }
    }

    /// Runs `f` on a copy of the live tree (tx `None`) or of the transaction's tree, and
    /// installs the copy only if `f` succeeds. Live changes fire watches at once.
    fn run<T>(
        &mut self,
        conn: ConnId,
        tx: Option<u32>,
        domid: XsDomId,
        out: &mut Vec<Action>,
        f: impl FnOnce(&mut OpCtx<'_>) -> OpResult<T>,
    ) -> OpResult<T> {
        let target = self.target_of(domid);
        match tx {
            None => {
                let mut ctx = OpCtx {
                    tree: self.tree.clone(),
                    log: OpLog::default(),
                    live_counts: &self.node_counts,
                    generation: &mut self.generation,
                    domid,
                    target,
                    quotas: &self.quotas,
                };
                let r = f(&mut ctx)?;
                let OpCtx { tree, log, .. } = ctx;
                self.tree = tree;
                apply_counts(&mut self.node_counts, &log.count_delta);
                self.fire(&log.changes, out);
                Ok(r)
            }
            Some(id) => {
                let t = self.txns.get_mut(&id).ok_or(ErrorCode::Enoent)?;
                debug_assert_eq!(t.conn, conn);
                let mut ctx = OpCtx {
                    tree: t.work.clone(),
                    log: OpLog {
                        count_delta: t.log.count_delta.clone(),
                        ..OpLog::default()
                    },
                    live_counts: &self.node_counts,
                    generation: &mut self.generation,
                    domid,
                    target,
                    quotas: &self.quotas,
                };
                let r = f(&mut ctx);
                let OpCtx { tree, mut log, .. } = ctx;
                match r {
                    Ok(v) => {
                        t.work = tree;
                        t.log.count_delta.clear();
                        t.log.merge(log);
                        Ok(v)
                    }
                    Err(e) => {
                        // Reads still count as accessed for conflict detection.
                        log.changes.clear();
                        log.count_delta = HashMap::new();
                        t.log.accessed.extend(log.accessed);
                        Err(e)
                    }
                }
            }
        }
    }

    fn commit(&mut self, t: Transaction, out: &mut Vec<Action>) -> OpResult<()> {
        let gen = |tree: &Tree, p: &str| tree.get(p).map(|n| n.generation);
        if t.log
            .accessed
            .iter()
            .any(|p| gen(&self.tree, p) != gen(&t.base, p))
        {
            self.stats.conflicts += 1;
            return Err(ErrorCode::Eagain);
        }
        for p in &t.log.accessed {
            let old = t.base.get(p.as_str());
            let new = t.work.get(p.as_str());
            let same = match (old, new) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(o) = old {
                apply_counts(
                    &mut self.node_counts,
                    &HashMap::from([(o.perms.owner(), -1)]),
                );
            }
            match new {
                Some(n) => {
                    apply_counts(
                        &mut self.node_counts,
                        &HashMap::from([(n.perms.owner(), 1)]),
                    );
                    self.generation += 1;
                    let mut n = (**n).clone();
                    n.generation = self.generation;
                    self.tree.insert(Arc::from(p.as_str()), Arc::new(n));
                }
                None => {
                    self.tree.remove(p.as_str());
                }
            }
        }
        self.stats.commits += 1;
        self.fire(&t.log.changes, out);
        Ok(())
    }

    fn watch(
        &mut self,
        conn: ConnId,
        domid: XsDomId,
        rp: ResolvedPath,
        token: &[u8],
        out: &mut Vec<Action>,
    ) -> OpResult<Vec<u8>> {
        let total_for_domain: usize = self
            .conns
            .values()
            .filter(|c| c.domid == domid)
            .map(|c| c.watches.len())
            .sum();
        let c = self.conns.get_mut(&conn).ok_or(ErrorCode::Eio)?;
        if c.watches
            .iter()
            .any(|w| w.abs == rp.abs && w.token == token)
        {
            return Err(ErrorCode::Eexist);
        }
        if domid != 0 && total_for_domain >= self.quotas.watches_per_domain {
            return Err(ErrorCode::E2big);
        }
        let w = Watch {
            abs: rp.abs,
            prefix_len: rp.prefix_len,
            token: token.to_vec(),
        };
        // xenstored fires every new watch once, straight after its OK.
        out.push(Action::Send(conn, event(&w.abs[w.prefix_len..], &w.token)));
        self.stats.watch_events += 1;
        c.watches.push(w);
        Ok(OK.to_vec())
    }

    fn fire(&mut self, changes: &[Change], out: &mut Vec<Action>) {
        for ch in changes {
            for (id, c) in &self.conns {
                let target = self.domains.get(&c.domid).and_then(|d| d.target);
                if !ch.perms.access_for(c.domid, target).can_read() {
                    continue;
                }
                for w in &c.watches {
                    let hit = if ch.exact {
                        w.abs == ch.path
                    } else {
                        path::is_at_or_below(&ch.path, &w.abs)
                    };
                    if hit && ch.path.len() >= w.prefix_len {
                        out.push(Action::Send(*id, event(&ch.path[w.prefix_len..], &w.token)));
                        self.stats.watch_events += 1;
                    }
                }
            }
        }
    }
}

fn apply_counts(counts: &mut HashMap<XsDomId, usize>, delta: &HashMap<XsDomId, i64>) {
    for (d, n) in delta {
        let e = counts.entry(*d).or_default();
        *e = (*e as i64 + n).max(0) as usize;
    }
}

fn require_dom0(domid: XsDomId) -> OpResult<()> {
    if domid == 0 {
        Ok(())
    } else {
        Err(ErrorCode::Eacces)
    }
}

fn one(payload: &[u8]) -> OpResult<&[u8]> {
    let parts = args(payload, 1)?;
    Ok(parts[0])
}

fn resolve(raw: &[u8], domid: XsDomId) -> OpResult<ResolvedPath> {
    path::resolve(raw, domid, false).map_err(|_| ErrorCode::Einval)
}

fn event(path: &str, token: &[u8]) -> Message {
    let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
    payload.extend_from_slice(path.as_bytes());
    payload.push(0);
    payload.extend_from_slice(token);
    payload.push(0);
    Message::new(Op::WatchEvent, 0, 0, payload)
}

/// One DIRECTORY_PART reply: `<gencnt>\0` then whole child names from byte `offset` of the
/// NUL-joined list while they fit, and an empty string (an extra NUL) once the list ends —
/// the end marker libxenstore's `xs_directory_part` looks for.
fn directory_part(generation: u64, list: &[u8], offset: usize) -> OpResult<Vec<u8>> {
    if offset > list.len() || (offset > 0 && list[offset - 1] != 0) {
        return Err(ErrorCode::Einval);
    }
    let mut out = join_strings(&[generation.to_string()]);
    let room = PAYLOAD_MAX - out.len() - 1;
    let rest = &list[offset..];
    let mut take = 0;
    for name in rest.split_inclusive(|b| *b == 0) {
        if take + name.len() > room {
            break;
        }
        take += name.len();
    }
    out.extend_from_slice(&rest[..take]);
    if take == rest.len() {
        out.push(0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: Op, tx: u32, parts: &[&[u8]]) -> Message {
        Message::new(op, 1, tx, join_strings(parts))
    }

    fn write_msg(tx: u32, p: &str, v: &[u8]) -> Message {
        let mut payload = p.as_bytes().to_vec();
        payload.push(0);
        payload.extend_from_slice(v);
        Message::new(Op::Write, 1, tx, payload)
    }

    fn reply(actions: &[Action]) -> &Message {
        match &actions[0] {
            Action::Send(_, m) => m,
            Action::Close(_) => panic!("expected a reply"),
        }
    }

    #[test]
    fn write_read_creates_parents_with_inherited_perms() {
        let mut s = Store::default();
        let c = s.connect(0);
        assert_eq!(
            reply(&s.handle(c, write_msg(0, "/a/b/c", b"v"))).payload,
            OK
        );
        assert_eq!(
            reply(&s.handle(c, req(Op::Read, 0, &[b"/a/b/c"]))).payload,
            b"v"
        );
        assert_eq!(
            reply(&s.handle(c, req(Op::Read, 0, &[b"/a/b"]))).payload,
            b""
        );
        assert_eq!(
            reply(&s.handle(c, req(Op::GetPerms, 0, &[b"/a"]))).payload,
            b"n0\0"
        );
    }

    #[test]
    fn transaction_conflict_is_eagain_and_changes_nothing() {
        let mut s = Store::default();
        let a = s.connect(0);
        let b = s.connect(0);
        s.handle(a, write_msg(0, "/x", b"1"));
        let txid: u32 = {
            let r = s.handle(a, req(Op::TransactionStart, 0, &[b""]));
            let p = &reply(&r).payload;
            std::str::from_utf8(&p[..p.len() - 1])
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(
            reply(&s.handle(a, req(Op::Read, txid, &[b"/x"]))).payload,
            b"1"
        );
        s.handle(a, write_msg(txid, "/y", b"from-tx"));
        s.handle(b, write_msg(0, "/x", b"2"));
        let end = s.handle(a, req(Op::TransactionEnd, txid, &[b"T"]));
        assert_eq!(reply(&end).error_code(), Some(ErrorCode::Eagain));
        assert_eq!(
            reply(&s.handle(a, req(Op::Read, 0, &[b"/y"]))).error_code(),
            Some(ErrorCode::Enoent)
        );
    }

    #[test]
    fn directory_part_chunks_and_terminates() {
        let names: Vec<String> = (0..1000).map(|i| format!("child{i:04}")).collect();
        let list = join_strings(&names);
        let mut off = 0;
        let mut got = Vec::new();
        loop {
            let r = directory_part(9, &list, off).unwrap();
            assert!(r.len() <= PAYLOAD_MAX);
            assert!(r.starts_with(b"9\0"));
            let body = &r[2..];
            got.extend_from_slice(body);
            off += body.len();
            if body.ends_with(b"\0\0") || body == b"\0" {
                break;
            }
        }
        got.pop();
        assert_eq!(got, list);
        assert_eq!(directory_part(1, &list, 3), Err(ErrorCode::Einval));
    }
}
