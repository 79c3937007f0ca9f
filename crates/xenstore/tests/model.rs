//! Random operation sequences against the real server (over its socket) and against a small,
//! deliberately naive reference model (full-copy snapshots, a plain BTreeMap, versions
//! instead of generations). Every reply and every watch event must match.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use xenstore::server::{self, ServerConfig};
use xenstore::wire::{FrameDecoder, Message, Op};

const DOMU: u32 = 5;

#[derive(Clone, Debug)]
enum MOp {
    Write(usize, bool, &'static str, Vec<u8>),
    Read(usize, bool, &'static str),
    Mkdir(usize, bool, &'static str),
    Rm(usize, bool, &'static str),
    Dir(usize, bool, &'static str),
    GetPerms(usize, bool, &'static str),
    SetPerms(usize, bool, &'static str, &'static [&'static str]),
    TxStart(usize),
    TxEnd(usize, bool),
    Watch(usize, &'static str, &'static str),
    Unwatch(usize, &'static str, &'static str),
}

const PATHS: &[&str] = &[
    "/a",
    "/a/b",
    "/a/b/c",
    "/d",
    "/d/e",
    "/local/domain/5",
    "/local/domain/5/x",
    "x",
    "x/y",
    "/",
    "/a//b",
    "@releaseDomain",
];
const PERMS: &[&[&str]] = &[
    &["n0"],
    &["r0"],
    &["b5"],
    &["n5", "r0"],
    &["n0", "b5"],
    &["r5"],
    &["q1"],
];
const TOKENS: &[&str] = &["t1", "t2"];

fn op_strategy() -> impl Strategy<Value = MOp> {
    let c = 0usize..3;
    let p = prop::sample::select(PATHS);
    let tx = any::<bool>();
    let val = prop::collection::vec(prop::sample::select(b"abc".to_vec()), 0..4);
    prop_oneof![
        4 => (c.clone(), tx, p.clone(), val).prop_map(|(c, t, p, v)| MOp::Write(c, t, p, v)),
        3 => (c.clone(), tx, p.clone()).prop_map(|(c, t, p)| MOp::Read(c, t, p)),
        1 => (c.clone(), tx, p.clone()).prop_map(|(c, t, p)| MOp::Mkdir(c, t, p)),
        2 => (c.clone(), tx, p.clone()).prop_map(|(c, t, p)| MOp::Rm(c, t, p)),
        1 => (c.clone(), tx, p.clone()).prop_map(|(c, t, p)| MOp::Dir(c, t, p)),
        1 => (c.clone(), tx, p.clone()).prop_map(|(c, t, p)| MOp::GetPerms(c, t, p)),
        2 => (c.clone(), tx, p.clone(), prop::sample::select(PERMS))
            .prop_map(|(c, t, p, q)| MOp::SetPerms(c, t, p, q)),
        2 => c.clone().prop_map(MOp::TxStart),
        2 => (c.clone(), any::<bool>()).prop_map(|(c, b)| MOp::TxEnd(c, b)),
        1 => (c.clone(), p.clone(), prop::sample::select(TOKENS)).prop_map(|(c, p, t)| MOp::Watch(c, p, t)),
        1 => (c, p, prop::sample::select(TOKENS)).prop_map(|(c, p, t)| MOp::Unwatch(c, p, t)),
    ]
}

// ---------------------------------------------------------------- the reference model

#[derive(Clone, Debug, PartialEq)]
struct MNode {
    value: Vec<u8>,
    perms: Vec<(u8, u32)>,
    children: Vec<String>,
    ver: u64,
}

type MTree = BTreeMap<String, MNode>;
/// (changed path, exact-only, the node's permissions)
type MChange = (String, bool, Vec<(u8, u32)>);

#[derive(Clone, Debug)]
struct MTx {
    base: MTree,
    work: MTree,
    accessed: BTreeSet<String>,
    changes: Vec<MChange>,
}

#[derive(Clone, Debug)]
struct MConn {
    domid: u32,
    tx: Option<MTx>,
    watches: Vec<(String, usize, String)>,
    events: Vec<(String, String)>,
}

struct Model {
    live: MTree,
    ver: u64,
    conns: Vec<MConn>,
    last_txid: u32,
}

fn access(perms: &[(u8, u32)], domid: u32) -> u8 {
    if domid == 0 || perms[0].1 == domid {
        return b'b';
    }
    let mut a = perms[0].0;
    for (l, d) in &perms[1..] {
        if *d == domid {
            a = *l;
        }
    }
    a
}

fn can(perms: &[(u8, u32)], domid: u32, need: u8) -> bool {
    let a = access(perms, domid);
    a == b'b' || a == need
}

fn parent(p: &str) -> Option<String> {
    if p == "/" {
        return None;
    }
    let i = p.rfind('/').unwrap();
    Some(if i == 0 { "/".into() } else { p[..i].into() })
}

fn resolve(raw: &str, domid: u32, special: bool) -> Result<(String, usize), &'static str> {
    if raw.starts_with('@') {
        return if special {
            Ok((raw.into(), 0))
        } else {
            Err("EINVAL")
        };
    }
    if raw.contains("//") || (raw != "/" && raw.ends_with('/')) {
        return Err("EINVAL");
    }
    if raw.starts_with('/') {
        Ok((raw.into(), 0))
    } else {
        let pre = format!("/local/domain/{domid}/");
        Ok((format!("{pre}{raw}"), pre.len()))
    }
}

struct Ctx<'a> {
    t: MTree,
    ver: &'a mut u64,
    domid: u32,
    accessed: BTreeSet<String>,
    changes: Vec<MChange>,
}

impl Ctx<'_> {
    fn get(&mut self, p: &str) -> Option<MNode> {
        self.accessed.insert(p.into());
        self.t.get(p).cloned()
    }
    fn put(&mut self, p: &str, mut n: MNode) {
        *self.ver += 1;
        n.ver = *self.ver;
        self.accessed.insert(p.into());
        self.t.insert(p.into(), n);
    }
    fn lookup(&mut self, p: &str, need: u8) -> Result<MNode, &'static str> {
        if let Some(n) = self.get(p) {
            return if can(&n.perms, self.domid, need) {
                Ok(n)
            } else {
                Err("EACCES")
            };
        }
        let mut a = parent(p);
        while let Some(x) = a {
            if let Some(n) = self.get(&x) {
                return Err(if can(&n.perms, self.domid, need) {
                    "ENOENT"
                } else {
                    "EACCES"
                });
            }
            a = parent(&x);
        }
        Err("ENOENT")
    }
    fn create(&mut self, p: &str) {
        let mut chain = vec![p.to_string()];
        let mut a = parent(p).unwrap();
        while self.get(&a).is_none() {
            chain.push(a.clone());
            a = parent(&a).unwrap();
        }
        for c in chain.iter().rev() {
            let par_path = parent(c).unwrap();
            let mut par = self.get(&par_path).unwrap();
            let mut perms = par.perms.clone();
            if self.domid != 0 {
                perms[0].1 = self.domid;
            }
            par.children.push(c.rsplit('/').next().unwrap().into());
            self.put(&par_path, par);
            self.put(
                c,
                MNode {
                    value: vec![],
                    perms,
                    children: vec![],
                    ver: 0,
                },
            );
        }
    }
    fn write(&mut self, p: &str, v: &[u8]) -> Result<Vec<u8>, &'static str> {
        match self.lookup(p, b'w') {
            Ok(_) => {}
            Err("ENOENT") => self.create(p),
            Err(e) => return Err(e),
        }
        let mut n = self.get(p).unwrap();
        n.value = v.to_vec();
        let perms = n.perms.clone();
        self.put(p, n);
        self.changes.push((p.into(), false, perms));
        Ok(b"OK\0".to_vec())
    }
    fn mkdir(&mut self, p: &str) -> Result<Vec<u8>, &'static str> {
        match self.lookup(p, b'w') {
            Ok(_) => {}
            Err("ENOENT") => {
                self.create(p);
                let perms = self.get(p).unwrap().perms;
                self.changes.push((p.into(), false, perms));
            }
            Err(e) => return Err(e),
        }
        Ok(b"OK\0".to_vec())
    }
    fn rm(&mut self, p: &str) -> Result<Vec<u8>, &'static str> {
        if p == "/" {
            return Err("EINVAL");
        }
        let n = match self.lookup(p, b'w') {
            Ok(n) => n,
            Err("ENOENT") => {
                return if self.get(&parent(p).unwrap()).is_some() {
                    Ok(b"OK\0".to_vec())
                } else {
                    Err("ENOENT")
                };
            }
            Err(e) => return Err(e),
        };
        let mut order = vec![];
        let mut stack = vec![(p.to_string(), n)];
        while let Some((q, n)) = stack.pop() {
            for c in n.children.iter().rev() {
                let cp = if q == "/" {
                    format!("/{c}")
                } else {
                    format!("{q}/{c}")
                };
                let cn = self.get(&cp).unwrap();
                stack.push((cp, cn));
            }
            order.push((q, n));
        }
        for (i, (q, n)) in order.iter().enumerate() {
            self.t.remove(q);
            self.changes.push((q.clone(), i != 0, n.perms.clone()));
        }
        let pp = parent(p).unwrap();
        let mut par = self.get(&pp).unwrap();
        let name = p.rsplit('/').next().unwrap();
        par.children.retain(|c| c != name);
        self.put(&pp, par);
        Ok(b"OK\0".to_vec())
    }
    fn set_perms(&mut self, p: &str, perms: Vec<(u8, u32)>) -> Result<Vec<u8>, &'static str> {
        let n = self.lookup(p, b'w')?;
        let owner = n.perms[0].1;
        if !(self.domid == 0 || owner == self.domid) {
            return Err("EACCES");
        }
        if self.domid != 0 && perms[0].1 != owner {
            return Err("EPERM");
        }
        let mut n = n;
        n.perms = perms.clone();
        self.put(p, n);
        self.changes.push((p.into(), false, perms));
        Ok(b"OK\0".to_vec())
    }
}

fn is_at_or_below(node: &str, anc: &str) -> bool {
    anc == "/"
        || node == anc
        || (node.starts_with(anc) && node.as_bytes().get(anc.len()) == Some(&b'/'))
}

impl Model {
    fn new(conn_domids: &[u32]) -> Model {
        let n0 = || vec![(b'n', 0u32)];
        let mut live = MTree::new();
        let mut add = |p: &str, v: &[u8], perms: Vec<(u8, u32)>, children: &[&str]| {
            live.insert(
                p.into(),
                MNode {
                    value: v.to_vec(),
                    perms,
                    children: children.iter().map(|s| s.to_string()).collect(),
                    ver: 0,
                },
            );
        };
        add("/", b"", n0(), &["tool", "local"]);
        add("/tool", b"", n0(), &["xenstored"]);
        add("/tool/xenstored", b"", n0(), &[]);
        add("/local", b"", n0(), &["domain"]);
        add("/local/domain", b"", n0(), &["0", "5"]);
        add("/local/domain/0", b"", n0(), &["name", "domid"]);
        add("/local/domain/0/name", b"Domain-0", n0(), &[]);
        add("/local/domain/0/domid", b"0", n0(), &[]);
        add("/local/domain/5", b"", vec![(b'n', DOMU)], &[]);
        Model {
            live,
            ver: 0,
            conns: conn_domids
                .iter()
                .map(|d| MConn {
                    domid: *d,
                    tx: None,
                    watches: vec![],
                    events: vec![],
                })
                .collect(),
            last_txid: 0,
        }
    }

    fn fire(&mut self, changes: &[MChange]) {
        for (path, exact, perms) in changes {
            for c in &mut self.conns {
                if !can(perms, c.domid, b'r') {
                    continue;
                }
                for (abs, pre, tok) in &c.watches {
                    let hit = if *exact {
                        abs == path
                    } else {
                        is_at_or_below(path, abs)
                    };
                    if hit && path.len() >= *pre {
                        c.events.push((path[*pre..].to_string(), tok.clone()));
                    }
                }
            }
        }
    }

    fn run<F>(&mut self, ci: usize, use_tx: bool, f: F) -> Result<Vec<u8>, &'static str>
    where
        F: FnOnce(&mut Ctx) -> Result<Vec<u8>, &'static str>,
    {
        let domid = self.conns[ci].domid;
        let in_tx = use_tx && self.conns[ci].tx.is_some();
        let t = if in_tx {
            self.conns[ci].tx.as_ref().unwrap().work.clone()
        } else {
            self.live.clone()
        };
        let mut ctx = Ctx {
            t,
            ver: &mut self.ver,
            domid,
            accessed: BTreeSet::new(),
            changes: vec![],
        };
        let r = f(&mut ctx);
        let Ctx {
            t,
            accessed,
            changes,
            ..
        } = ctx;
        if in_tx {
            let tx = self.conns[ci].tx.as_mut().unwrap();
            tx.accessed.extend(accessed);
            if r.is_ok() {
                tx.work = t;
                tx.changes.extend(changes);
            }
        } else if r.is_ok() {
            self.live = t;
            self.fire(&changes);
        }
        r
    }

    fn apply(&mut self, op: &MOp) -> Result<Vec<u8>, &'static str> {
        let perm_list = |q: &[&str]| -> Result<Vec<(u8, u32)>, &'static str> {
            q.iter()
                .map(|s| {
                    let b = s.as_bytes();
                    if !b"nrwb".contains(&b[0]) {
                        return Err("EINVAL");
                    }
                    Ok((b[0], s[1..].parse().unwrap()))
                })
                .collect()
        };
        match op.clone() {
            MOp::Write(c, t, p, v) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| x.write(&abs, &v))
            }
            MOp::Read(c, t, p) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| x.lookup(&abs, b'r').map(|n| n.value))
            }
            MOp::Mkdir(c, t, p) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| x.mkdir(&abs))
            }
            MOp::Rm(c, t, p) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| x.rm(&abs))
            }
            MOp::Dir(c, t, p) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| {
                    x.lookup(&abs, b'r').map(|n| {
                        n.children
                            .iter()
                            .flat_map(|s| [s.as_bytes(), b"\0"].concat())
                            .collect()
                    })
                })
            }
            MOp::GetPerms(c, t, p) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                self.run(c, t, |x| {
                    x.lookup(&abs, b'r').map(|n| {
                        n.perms
                            .iter()
                            .flat_map(|(l, d)| format!("{}{d}\0", *l as char).into_bytes())
                            .collect()
                    })
                })
            }
            MOp::SetPerms(c, t, p, q) => {
                let (abs, _) = resolve(p, self.conns[c].domid, false)?;
                let perms = perm_list(q)?;
                self.run(c, t, |x| x.set_perms(&abs, perms))
            }
            MOp::TxStart(c) => {
                if self.conns[c].tx.is_some() {
                    return Err("EBUSY");
                }
                self.last_txid += 1;
                let id = self.last_txid;
                self.conns[c].tx = Some(MTx {
                    base: self.live.clone(),
                    work: self.live.clone(),
                    accessed: BTreeSet::new(),
                    changes: vec![],
                });
                Ok(format!("{id}\0").into_bytes())
            }
            MOp::TxEnd(c, commit) => {
                let Some(tx) = self.conns[c].tx.take() else {
                    return Err("ENOENT");
                };
                if !commit {
                    return Ok(b"OK\0".to_vec());
                }
                let ver = |t: &MTree, p: &str| t.get(p).map(|n| n.ver);
                if tx
                    .accessed
                    .iter()
                    .any(|p| ver(&self.live, p) != ver(&tx.base, p))
                {
                    return Err("EAGAIN");
                }
                for p in &tx.accessed {
                    let (old, new) = (tx.base.get(p), tx.work.get(p));
                    if old == new {
                        continue;
                    }
                    match new {
                        Some(n) => {
                            self.ver += 1;
                            let mut n = n.clone();
                            n.ver = self.ver;
                            self.live.insert(p.clone(), n);
                        }
                        None => {
                            self.live.remove(p);
                        }
                    }
                }
                self.fire(&tx.changes);
                Ok(b"OK\0".to_vec())
            }
            MOp::Watch(c, p, tok) => {
                let (abs, pre) = resolve(p, self.conns[c].domid, true)?;
                let conn = &mut self.conns[c];
                if conn.watches.iter().any(|(a, _, t)| *a == abs && t == tok) {
                    return Err("EEXIST");
                }
                conn.events.push((abs[pre..].to_string(), tok.to_string()));
                conn.watches.push((abs, pre, tok.to_string()));
                Ok(b"OK\0".to_vec())
            }
            MOp::Unwatch(c, p, tok) => {
                let (abs, _) = resolve(p, self.conns[c].domid, true)?;
                let conn = &mut self.conns[c];
                let n = conn.watches.len();
                conn.watches.retain(|(a, _, t)| !(*a == abs && t == tok));
                if conn.watches.len() == n {
                    Err("ENOENT")
                } else {
                    Ok(b"OK\0".to_vec())
                }
            }
        }
    }
}

// ---------------------------------------------------------------- the real server

struct Wire {
    s: UnixStream,
    d: FrameDecoder,
    tx: u32,
    req: u32,
}

impl Wire {
    fn call(
        &mut self,
        op: Op,
        tx: u32,
        payload: Vec<u8>,
        events: &mut Vec<(String, String)>,
    ) -> Message {
        self.req += 1;
        self.s
            .write_all(&Message::new(op, self.req, tx, payload).encode())
            .unwrap();
        let mut buf = [0u8; 8192];
        loop {
            while let Some(m) = self.d.next_message().unwrap() {
                if m.msg_type == Op::WatchEvent.code() {
                    let parts: Vec<String> = m
                        .payload
                        .split(|b| *b == 0)
                        .map(|s| String::from_utf8_lossy(s).into())
                        .collect();
                    events.push((parts[0].clone(), parts[1].clone()));
                    continue;
                }
                assert_eq!(m.req_id, self.req);
                return m;
            }
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the connection");
            self.d.push(&buf[..n]);
        }
    }
}

fn payload_of(op: &MOp) -> (Op, Vec<u8>) {
    let z = |parts: &[&[u8]]| {
        parts
            .iter()
            .flat_map(|p| [*p, b"\0"].concat())
            .collect::<Vec<u8>>()
    };
    match op {
        MOp::Write(_, _, p, v) => (Op::Write, [p.as_bytes(), b"\0", v].concat()),
        MOp::Read(_, _, p) => (Op::Read, z(&[p.as_bytes()])),
        MOp::Mkdir(_, _, p) => (Op::Mkdir, z(&[p.as_bytes()])),
        MOp::Rm(_, _, p) => (Op::Rm, z(&[p.as_bytes()])),
        MOp::Dir(_, _, p) => (Op::Directory, z(&[p.as_bytes()])),
        MOp::GetPerms(_, _, p) => (Op::GetPerms, z(&[p.as_bytes()])),
        MOp::SetPerms(_, _, p, q) => {
            let mut v = vec![p.as_bytes()];
            v.extend(q.iter().map(|s| s.as_bytes()));
            (Op::SetPerms, z(&v))
        }
        MOp::TxStart(_) => (Op::TransactionStart, z(&[b""])),
        MOp::TxEnd(_, c) => (Op::TransactionEnd, z(&[if *c { b"T" } else { b"F" }])),
        MOp::Watch(_, p, t) => (Op::Watch, z(&[p.as_bytes(), t.as_bytes()])),
        MOp::Unwatch(_, p, t) => (Op::Unwatch, z(&[p.as_bytes(), t.as_bytes()])),
    }
}

fn conn_and_tx(op: &MOp) -> (usize, bool) {
    match op {
        MOp::Write(c, t, ..)
        | MOp::Read(c, t, _)
        | MOp::Mkdir(c, t, _)
        | MOp::Rm(c, t, _)
        | MOp::Dir(c, t, _)
        | MOp::GetPerms(c, t, _)
        | MOp::SetPerms(c, t, ..) => (*c, *t),
        MOp::TxStart(c) => (*c, true),
        MOp::TxEnd(c, _) => (*c, true),
        MOp::Watch(c, ..) | MOp::Unwatch(c, ..) => (*c, false),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn server_matches_reference_model(ops in prop::collection::vec(op_strategy(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let h = server::start(ServerConfig::new(dir.path())).unwrap();
        h.introduce_domain(DOMU).unwrap();
        {
            let mut setup = xenstore::XsClient::connect(h.socket_path()).unwrap();
            setup.mkdir(xenstore::TxId::NONE, "/local/domain/5").unwrap();
            setup.set_perms(xenstore::TxId::NONE, "/local/domain/5", &xenstore::PermList::owned_by(DOMU, xenstore::Access::None)).unwrap();
        }
        let domids = [0, 0, DOMU];
        let mut model = Model::new(&domids);
        let mut wires: Vec<Wire> = domids.iter().map(|d| {
            let s = if *d == 0 { UnixStream::connect(h.socket_path()).unwrap() } else { h.connect_domain(*d).unwrap() };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Wire { s, d: FrameDecoder::new(), tx: 0, req: 0 }
        }).collect();
        let mut got_events: Vec<Vec<(String, String)>> = vec![vec![]; 3];
        for op in &ops {
            let (c, use_tx) = conn_and_tx(op);
            let expect = model.apply(op);
            let (wop, payload) = payload_of(op);
            let tx = if use_tx { wires[c].tx } else { 0 };
            let reply = wires[c].call(wop, tx, payload, &mut got_events[c]);
            match &expect {
                Ok(p) => {
                    prop_assert_eq!(reply.msg_type, wop.code(), "op {:?}: got {:?}", op, String::from_utf8_lossy(&reply.payload));
                    prop_assert_eq!(&reply.payload, p, "op {:?}", op);
                }
                Err(e) => {
                    prop_assert_eq!(reply.error_code().map(|c| c.name()), Some(*e), "op {:?}", op);
                }
            }
            match op {
                MOp::TxStart(_) if expect.is_ok() => {
                    wires[c].tx = String::from_utf8_lossy(&reply.payload[..reply.payload.len() - 1]).parse().unwrap();
                }
                MOp::TxEnd(..) => wires[c].tx = 0,
                _ => {}
            }
            // Sync every connection so events caused by this op have arrived.
            for (i, w) in wires.iter_mut().enumerate() {
                w.call(Op::GetDomainPath, 0, b"0\0".to_vec(), &mut got_events[i]);
            }
            for (i, (got, conn)) in got_events.iter().zip(&model.conns).enumerate() {
                prop_assert_eq!(got, &conn.events, "events of conn {} after {:?}", i, op);
            }
        }
    }
}
