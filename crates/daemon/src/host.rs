//! Which host a command acts on: the real dom0 (privcmd, /sys, xenstored's socket) or a
//! simulated host whose state lives in a directory (`--host sim:DIR`), and the dry-run
//! wrapper that records instead of acting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engine::{Platform, ProtectedDomains};
use pci::host::{PciHost, Resource};
use pci::sysfs::SysfsHost;
use pci::{PciError, Sbdf};
use serde::{Deserialize, Serialize};
use sim::dm::DeviceModel;
use sim::{DeviceSpec, PcibackProfile, Profile, SimHost, SimOp, XenProfile};
use xen::record::Recorder;
use xen::{DomId, Hypervisor, XenError};
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;
use xenstore::{PermList, TxId, XsClient};

use crate::sim_platform::SimPlatform;
use crate::DaemonError;

/// `--host`: `real` or `sim:DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSpec {
    Real,
    Sim(PathBuf),
}

impl std::str::FromStr for HostSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<HostSpec, String> {
        if s == "real" {
            return Ok(HostSpec::Real);
        }
        match s.strip_prefix("sim:") {
            Some(d) if !d.is_empty() => Ok(HostSpec::Sim(PathBuf::from(d))),
            _ => Err("expected `real` or `sim:DIR`".into()),
        }
    }
}

/// The pid a simulated host records for domain `domid`'s device model, as libxl records
/// the pid of the qemu it spawns. Above Linux's largest pid (2^22), so that no real
/// process connecting to the broker can be taken for it: a test or tool acting as a
/// simulated guest's device model over the socket presents the assignment token.
pub fn simulated_device_model_pid(domid: xen::DomId) -> i32 {
    5_000_000 + i32::from(domid.0)
}

/// What a simulated host directory holds besides its Xenstore.
#[derive(Serialize, Deserialize)]
pub struct SimState {
    pub profile: Profile,
    pub journal: Vec<SimOp>,
    /// Device models of running HVM guests, by domid.
    pub device_models: BTreeMap<u16, DeviceModel>,
    /// Epoch each device model was started with.
    pub dm_epochs: BTreeMap<u16, u64>,
    /// Devices the toolstack gave each guest (`sim plug`): their device model binds by
    /// direct hypercalls, not through the broker.
    #[serde(default)]
    pub toolstack_devices: BTreeMap<u16, std::collections::BTreeSet<Sbdf>>,
}

/// One Xenstore node, for saving a simulated host's store.
#[derive(Serialize, Deserialize)]
struct XsNode {
    path: String,
    value: String,
    perms: String,
}

/// A shared, ordered log of what a command did (or, in a dry run, would do).
#[derive(Clone, Default)]
pub struct OpLog(Arc<Mutex<Vec<String>>>);

impl OpLog {
    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.0.lock() {
            l.push(line);
        }
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The operation log of the last host opened in this process, for `--trace` of a command
/// that failed after its context was gone.
static LAST_OP_LOG: Mutex<Option<OpLog>> = Mutex::new(None);

pub fn last_op_log() -> Vec<String> {
    LAST_OP_LOG
        .lock()
        .ok()
        .and_then(|l| l.as_ref().map(OpLog::lines))
        .unwrap_or_default()
}

/// A `PciHost` that logs every write and, in a dry run, skips it.
pub struct LoggedPci {
    inner: Arc<dyn PciHost>,
    log: OpLog,
    dry_run: bool,
    /// A dry run's config-space writes, per device in order: read back over the device's
    /// real config space, so that what the run checks (a teardown's verification) sees
    /// what it would have written, and the engine needs no notion of a dry run.
    unwritten: std::sync::Mutex<std::collections::BTreeMap<Sbdf, Vec<ConfigWrite>>>,
}

/// One config-space write: offset and bytes.
type ConfigWrite = (u16, Vec<u8>);

impl LoggedPci {
    fn write(
        &self,
        what: String,
        f: impl FnOnce() -> Result<(), PciError>,
    ) -> Result<(), PciError> {
        self.log.push(format!("sysfs     {what}"));
        if self.dry_run {
            Ok(())
        } else {
            f()
        }
    }
}

const SYS: &str = "/sys/bus/pci";

impl PciHost for LoggedPci {
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError> {
        self.inner.list_devices()
    }
    fn exists(&self, s: Sbdf) -> Result<bool, PciError> {
        self.inner.exists(s)
    }
    fn read_config(&self, s: Sbdf) -> Result<Vec<u8>, PciError> {
        let mut cfg = self.inner.read_config(s)?;
        if let Ok(unwritten) = self.unwritten.lock() {
            for (off, data) in unwritten.get(&s).into_iter().flatten() {
                let at = usize::from(*off);
                if let Some(dst) = cfg.get_mut(at..at + data.len()) {
                    dst.copy_from_slice(data);
                }
            }
        }
        Ok(cfg)
    }
    fn write_config(&self, s: Sbdf, off: u16, data: &[u8]) -> Result<(), PciError> {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        if self.dry_run {
            if let Ok(mut unwritten) = self.unwritten.lock() {
                unwritten.entry(s).or_default().push((off, data.to_vec()));
            }
        }
        self.write(
            format!("{SYS}/devices/{s}/config @{off:#x} <- {hex}"),
            || self.inner.write_config(s, off, data),
        )
    }
    fn resources(&self, s: Sbdf) -> Result<Vec<Resource>, PciError> {
        self.inner.resources(s)
    }
    fn irq(&self, s: Sbdf) -> Result<u32, PciError> {
        self.inner.irq(s)
    }
    fn msi_irqs(&self, s: Sbdf) -> Result<Vec<u32>, PciError> {
        self.inner.msi_irqs(s)
    }
    fn enabled(&self, s: Sbdf) -> Result<bool, PciError> {
        self.inner.enabled(s)
    }
    fn driver(&self, s: Sbdf) -> Result<Option<String>, PciError> {
        self.inner.driver(s)
    }
    fn physfn(&self, s: Sbdf) -> Result<Option<Sbdf>, PciError> {
        self.inner.physfn(s)
    }
    fn driver_override(&self, s: Sbdf) -> Result<Option<String>, PciError> {
        self.inner.driver_override(s)
    }
    fn set_driver_override(&self, s: Sbdf, d: Option<&str>) -> Result<(), PciError> {
        self.write(
            format!("{SYS}/devices/{s}/driver_override <- {d:?}"),
            || self.inner.set_driver_override(s, d),
        )
    }
    fn reset_methods(&self, s: Sbdf) -> Result<Option<Vec<String>>, PciError> {
        self.inner.reset_methods(s)
    }
    fn can_reset(&self, s: Sbdf) -> Result<bool, PciError> {
        self.inner.can_reset(s)
    }
    fn reset(&self, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/devices/{s}/reset <- 1"), || {
            self.inner.reset(s)
        })
    }
    fn driver_bind(&self, d: &str, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/drivers/{d}/bind <- {s}"), || {
            self.inner.driver_bind(d, s)
        })
    }
    fn driver_unbind(&self, d: &str, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/drivers/{d}/unbind <- {s}"), || {
            self.inner.driver_unbind(d, s)
        })
    }
    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError> {
        self.inner.pciback_slots()
    }
    fn pciback_new_slot(&self, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/drivers/pciback/new_slot <- {s}"), || {
            self.inner.pciback_new_slot(s)
        })
    }
    fn pciback_remove_slot(&self, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/drivers/pciback/remove_slot <- {s}"), || {
            self.inner.pciback_remove_slot(s)
        })
    }
    fn pciback_permissive(&self, s: Sbdf) -> Result<(), PciError> {
        self.write(format!("{SYS}/drivers/pciback/permissive <- {s}"), || {
            self.inner.pciback_permissive(s)
        })
    }
    fn pciback_allow_interrupt_control(&self, s: Sbdf) -> Result<(), PciError> {
        self.write(
            format!("{SYS}/drivers/pciback/allow_interrupt_control <- {s}"),
            || self.inner.pciback_allow_interrupt_control(s),
        )
    }
    fn yield_to_dom0(&self, wait: std::time::Duration) {
        self.inner.yield_to_dom0(wait);
    }
    fn wait_backend_released(
        &self,
        domid: u16,
        timeout: std::time::Duration,
    ) -> Result<bool, PciError> {
        // A dry run removed no backend: nothing to wait for.
        if self.dry_run {
            return Ok(true);
        }
        let released = self.inner.wait_backend_released(domid, timeout)?;
        self.log.push(format!(
            "sysfs     /sys/bus/xen-backend/devices/pci-{domid}-0 {}",
            if released {
                "gone (pciback released the backend)"
            } else {
                "still present"
            }
        ));
        Ok(released)
    }
}

/// The platform a command runs on, with every hypercall and sysfs write logged.
pub struct CmdPlatform {
    hv: Recorder<Arc<dyn Hypervisor>>,
    pci: LoggedPci,
    sim: Option<SimPlatform>,
}

impl Platform for CmdPlatform {
    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.hv
    }
    fn pci(&self) -> &dyn PciHost {
        &self.pci
    }
    fn pv_memory_map(&self, domain: &xen::DomainInfo) -> engine::PvMemoryMap {
        match &self.sim {
            Some(sim) => sim.pv_memory_map(domain),
            None => crate::libxl_record::pv_memory_map(
                Path::new(crate::libxl_record::XEN_LIB_DIR),
                domain,
            ),
        }
    }
}

/// Everything a command needs.
pub struct HostCtx {
    pub spec: HostSpec,
    pub platform: CmdPlatform,
    pub xs: XsClient,
    pub log: OpLog,
    pub sim: Option<(SimHost, LocalXenstore, SimState)>,
    pub dry_run: bool,
    /// Domains no command may touch besides dom0 and the reserved ids (`--protect`).
    pub protected: ProtectedDomains,
    /// A simulated host's state file as last read or written: saving an unchanged host
    /// writes nothing.
    saved: Option<String>,
    /// The host's lock: a simulated host's directory for the whole command (its state is
    /// loaded, changed and saved as a unit, so concurrent commands take turns), or a real
    /// dom0's ledger lock. [`HostCtx::engine`] requires it held.
    lock: LedgerLock,
}

/// Whether this process may change the ledger now.
enum LedgerLock {
    /// Held: the lock file's flock, let go when dropped.
    Held {
        _flock: nix::fcntl::Flock<std::fs::File>,
    },
    /// A real dom0 whose `/run/ptguard` cannot be made: not serialised (warned once), the
    /// way ptguard behaved before the lock existed.
    Unserialised,
    /// A dry run: nothing is written, so there is nothing to serialise.
    DryRun,
    /// Let go between pieces of a daemon's work ([`HostCtx::unlock`]); no engine until it
    /// is taken again.
    Released,
}

impl LedgerLock {
    fn real(lock: Option<nix::fcntl::Flock<std::fs::File>>) -> LedgerLock {
        lock.map_or(LedgerLock::Unserialised, |f| LedgerLock::Held { _flock: f })
    }
}

/// Where a real dom0's ptguard commands and daemon take turns on the ledger: each command,
/// and each round of the daemon (a teardown, a broker request), holds this lock, so that
/// recovery in the daemon never runs a device's steps while a command runs them too.
pub const REAL_LEDGER_LOCK: &str = "/run/ptguard/ledger.lock";

/// Takes [`REAL_LEDGER_LOCK`], waiting up to 60 s (a teardown may wait 10 s for pciback);
/// `None` when `/run/ptguard` cannot be made (a warning says the commands are not
/// serialised then).
pub fn lock_real_ledger() -> Result<Option<nix::fcntl::Flock<std::fs::File>>, DaemonError> {
    let path = Path::new(REAL_LEDGER_LOCK);
    if let Some(dir) = path.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(
                "cannot create {}: {e}; commands and the daemon are not serialised",
                dir.display()
            );
            return Ok(None);
        }
    }
    lock_file(path, std::time::Duration::from_secs(60)).map(Some)
}

/// Takes `DIR/lock`, waiting up to 10 s for another command to finish.
pub fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    lock_file(&dir.join("lock"), std::time::Duration::from_secs(10))
}

/// Another ptguard process holds the host's lock longer than this one waits. The daemon
/// treats it as "try again next round", never as a reason to stop.
#[derive(Debug, thiserror::Error)]
#[error("{} is held by another ptguard process ({holder}) for longer than {waited:?}; try again when it is done", path.display())]
pub struct HostBusy {
    pub path: PathBuf,
    /// "pid N", as the holder wrote it into the lock file, or "unknown".
    pub holder: String,
    pub waited: std::time::Duration,
}

/// Locks `path` (flock), waiting up to `wait`. The holder writes its pid into the file, so
/// a waiter can say who holds it. A lock taken on a file that was meanwhile removed or
/// replaced at `path` is let go and taken again on the file now there: otherwise two
/// processes could each hold "the" lock on two different files.
fn lock_file(
    path: &Path,
    wait: std::time::Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let path = path.to_path_buf();
    let deadline = std::time::Instant::now() + wait;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(DaemonError::io("open", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut l) => {
                let same = match (l.metadata(), std::fs::metadata(&path)) {
                    (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
                    _ => false,
                };
                if !same {
                    continue;
                }
                let _ = l.set_len(0);
                let _ = l.rewind();
                let _ = write!(l, "{}", std::process::id());
                return Ok(l);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                    .map_or("unknown".into(), |p| format!("pid {p}"));
                return Err(HostBusy {
                    path,
                    holder,
                    waited: wait,
                }
                .into());
            }
            Err((_, source)) => return Err(DaemonError::Lock { path, source }),
        }
    }
}

/// The one file a simulated host's state lives in: the hypervisor's journal, the device
/// models and the Xenstore tree together, so that a kill at any instant leaves the
/// hypervisor and the ledger agreeing (both old or both new).
pub fn sim_state_path(dir: &Path) -> PathBuf {
    dir.join("host.json")
}

/// The whole of a simulated host on disk.
#[derive(Serialize, Deserialize)]
struct SimFile {
    sim: SimState,
    xenstore: Vec<XsNode>,
}

/// A new simulated host in `dir` (see [`sim_init`]), opened: the context a daemon or a
/// test works on, with the simulated host and its in-process xenstored for direct access.
pub fn sim_open(
    dir: &Path,
    xen: XenProfile,
    pciback: PcibackProfile,
    devices: &[DeviceSpec],
) -> Result<(HostCtx, SimHost, LocalXenstore), DaemonError> {
    sim_init(dir, xen, pciback, devices)?;
    let ctx = HostCtx::open(&HostSpec::Sim(dir.to_path_buf()), false)?;
    let (host, xs) = ctx
        .sim
        .as_ref()
        .map(|(h, x, _)| (h.clone(), x.clone()))
        .ok_or_else(|| DaemonError::NoSimHost {
            dir: dir.to_path_buf(),
        })?;
    Ok((ctx, host, xs))
}

/// Creates a simulated host directory. Two concurrent `sim init`s of one directory: one
/// wins, the other fails (the state file is created under the directory's lock).
pub fn sim_init(
    dir: &Path,
    xen: XenProfile,
    pciback: PcibackProfile,
    devices: &[DeviceSpec],
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(dir).map_err(DaemonError::io("create", dir))?;
    let _lock = lock_dir(dir)?;
    let state_file = sim_state_path(dir);
    if state_file.exists() {
        return Err(DaemonError::SimHostExists {
            dir: dir.to_path_buf(),
        });
    }
    let host = SimHost::new(Profile::new(xen, pciback));
    for d in devices {
        host.add_device(d.clone());
    }
    let state = SimState {
        profile: host.profile(),
        journal: host.journal(),
        device_models: BTreeMap::new(),
        dm_epochs: BTreeMap::new(),
        toolstack_devices: BTreeMap::new(),
    };
    let xs = LocalXenstore::new(Quotas::default());
    let text = sim_file_text(&state, &xs)?;
    write_atomically(&state_file, &text)
}

fn sim_file_text(sim: &SimState, xs: &LocalXenstore) -> Result<String, DaemonError> {
    #[derive(Serialize)]
    struct SimFileRef<'a> {
        sim: &'a SimState,
        xenstore: Vec<XsNode>,
    }
    let mut xenstore = Vec::new();
    walk(&mut xs.connect(0), "/", &mut xenstore)?;
    serde_json::to_string_pretty(&SimFileRef { sim, xenstore }).map_err(DaemonError::SimStateEncode)
}

/// Replaces `path` with `text` so that a reader (or a kill) sees either the old or the new
/// content: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, text: &str) -> Result<(), DaemonError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(DaemonError::io("write", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(DaemonError::io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(DaemonError::io("replace", path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// An in-process xenstored holding a copy of the subtrees `roots` of `real`.
pub fn copy_to_local(real: &mut XsClient, roots: &[&str]) -> Result<XsClient, DaemonError> {
    let local = LocalXenstore::new(Quotas::default());
    let mut c = local.connect(0);
    for root in roots {
        let Some(value) = real.read_optional(TxId::NONE, root)? else {
            continue;
        };
        let mut nodes = vec![XsNode {
            path: root.to_string(),
            value: String::from_utf8_lossy(&value).into_owned(),
            perms: real.get_perms(TxId::NONE, root)?.to_string(),
        }];
        walk(real, root, &mut nodes)?;
        restore(&mut c, &nodes)?;
    }
    Ok(c)
}

fn restore(c: &mut XsClient, nodes: &[XsNode]) -> Result<(), DaemonError> {
    for n in nodes {
        c.write(TxId::NONE, &n.path, n.value.as_bytes())?;
        if let Ok(p) = PermList::parse_all(n.perms.split(',').map(str::as_bytes)) {
            c.set_perms(TxId::NONE, &n.path, &p)?;
        }
    }
    Ok(())
}

fn walk(c: &mut XsClient, path: &str, out: &mut Vec<XsNode>) -> Result<(), DaemonError> {
    for child in c.directory(TxId::NONE, path)? {
        let p = if path == "/" {
            format!("/{child}")
        } else {
            format!("{path}/{child}")
        };
        let value = String::from_utf8_lossy(&c.read(TxId::NONE, &p)?).into_owned();
        let perms = c.get_perms(TxId::NONE, &p)?.to_string();
        out.push(XsNode {
            path: p.clone(),
            value,
            perms,
        });
        walk(c, &p, out)?;
    }
    Ok(())
}

impl HostCtx {
    /// Opens the host. A real host needs privcmd and xenstored; a missing one fails here,
    /// before anything is written.
    pub fn open(spec: &HostSpec, dry_run: bool) -> Result<HostCtx, DaemonError> {
        let mut ctx = HostCtx::open_untraced(spec, dry_run)?;
        ctx.trace_xenstore();
        Ok(ctx)
    }

    fn open_untraced(spec: &HostSpec, dry_run: bool) -> Result<HostCtx, DaemonError> {
        let log = OpLog::default();
        if let Ok(mut last) = LAST_OP_LOG.lock() {
            *last = Some(log.clone());
        }
        match spec {
            HostSpec::Real => {
                let hv = xen::privcmd::Privcmd::open()?;
                let mut xs = XsClient::open()?;
                if dry_run {
                    // A dry run works on an in-process copy of what ptguard reads and
                    // writes, so the real Xenstore is never written.
                    xs = copy_to_local(
                        &mut xs,
                        &[engine::ledger::ROOT, "/local/domain/0/backend/pci"],
                    )?;
                }
                let pci: Arc<dyn PciHost> = Arc::new(SysfsHost::new("/sys"));
                let hv: Arc<dyn Hypervisor> = Arc::new(hv);
                // A dry run changes nothing: it need not wait for anyone.
                let lock = if dry_run { None } else { lock_real_ledger()? };
                Ok(HostCtx {
                    spec: spec.clone(),
                    platform: platform(hv, pci, None, &log, dry_run),
                    xs,
                    log,
                    sim: None,
                    dry_run,
                    protected: ProtectedDomains::default(),
                    saved: None,
                    lock: if dry_run {
                        LedgerLock::DryRun
                    } else {
                        LedgerLock::real(lock)
                    },
                })
            }
            HostSpec::Sim(dir) => {
                let state_file = sim_state_path(dir);
                let missing = || DaemonError::NoSimHost {
                    dir: dir.to_path_buf(),
                };
                if !state_file.exists() {
                    return Err(missing());
                }
                let lock = lock_dir(dir)?;
                let text = std::fs::read_to_string(&state_file).map_err(|_| missing())?;
                let file: SimFile =
                    serde_json::from_str(&text).map_err(|source| DaemonError::SimStateCorrupt {
                        path: state_file.clone(),
                        source,
                    })?;
                let state = file.sim;
                let host = SimHost::replay(state.profile, &state.journal);
                let xs = LocalXenstore::new(Quotas::default());
                for d in host.with_world(|w| w.domains.keys().copied().collect::<Vec<_>>()) {
                    if d != DomId::DOM0 {
                        xs.introduce_domain(u32::from(d.0));
                    }
                }
                let mut c = xs.connect(0);
                restore(&mut c, &file.xenstore)?;
                let host = host.with_sink(Arc::new(xs.clone()));
                // pciback watches the backends from here on (its first run reads them all).
                let simp = SimPlatform::new(host.clone(), xs.connect(0))?;
                let hv: Arc<dyn Hypervisor> = Arc::new(host.clone());
                let pci: Arc<dyn PciHost> = Arc::new(simp.clone());
                Ok(HostCtx {
                    spec: spec.clone(),
                    platform: platform(hv, pci, Some(simp), &log, dry_run),
                    xs: c,
                    log,
                    sim: Some((host, xs, state)),
                    dry_run,
                    protected: ProtectedDomains::default(),
                    saved: Some(text),
                    lock: LedgerLock::Held { _flock: lock },
                })
            }
        }
    }

    /// Lets go of the host's lock (a simulated host's directory, a real dom0's ledger lock)
    /// between pieces of work (a daemon).
    pub fn unlock(&mut self) {
        self.lock = LedgerLock::Released;
    }

    /// Takes a real dom0's ledger lock again for one piece of the daemon's work.
    pub fn relock_real(&mut self) -> Result<(), DaemonError> {
        if matches!(self.spec, HostSpec::Real) && matches!(self.lock, LedgerLock::Released) {
            self.lock = if self.dry_run {
                LedgerLock::DryRun
            } else {
                LedgerLock::real(lock_real_ledger()?)
            };
        }
        Ok(())
    }

    /// Takes a simulated host directory's lock again; `false` (lock released) when another
    /// command changed the state meanwhile, so this context is stale and must be reopened.
    pub fn relock_if_unchanged(&mut self) -> Result<bool, DaemonError> {
        let HostSpec::Sim(dir) = &self.spec else {
            return Ok(true);
        };
        let lock = lock_dir(dir)?;
        let now = std::fs::read_to_string(sim_state_path(dir)).ok();
        if now.is_some() && now == self.saved {
            self.lock = LedgerLock::Held { _flock: lock };
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The simulated platform, whose dom0 work (pciback, pcifront) a simulated toolstack
    /// lets run while it waits; `None` on a real host.
    pub fn sim_platform(&self) -> Option<SimPlatform> {
        self.platform.sim.clone()
    }

    /// Saves a simulated host's state when it changed (nothing to do for a real host or a
    /// dry run).
    pub fn save(&mut self) -> Result<(), DaemonError> {
        if self.dry_run {
            return Ok(());
        }
        if let Some(simp) = &self.platform.sim {
            // dom0's work after the command: pciback reacts to the backends it wrote, and
            // its worker gives back what a removed backend held (time passes between
            // commands).
            simp.settle();
        }
        if let (HostSpec::Sim(dir), Some((host, xs, state))) = (&self.spec, &mut self.sim) {
            state.journal = host.journal();
            let text = sim_file_text(state, xs)?;
            if self.saved.as_deref() != Some(text.as_str()) {
                write_atomically(&sim_state_path(dir), &text)?;
                self.saved = Some(text);
            }
        }
        Ok(())
    }

    /// Logs every Xenstore request, reads included, interleaved with the hypercalls and
    /// sysfs writes: what a command costs is all there.
    fn trace_xenstore(&mut self) {
        let log = self.log.clone();
        self.xs.set_trace(Some(Box::new(move |op, tx, path| {
            let tx = if tx == TxId::NONE {
                String::new()
            } else {
                format!(" (tx {})", tx.0)
            };
            log.push(format!("xenstore  {op} {path}{tx}"));
        })));
    }

    /// The engine over this host, only while the host's lock is held: a daemon that let
    /// go of it between rounds cannot act on the ledger until it takes it again.
    pub fn engine(&mut self) -> Result<engine::Engine<'_>, DaemonError> {
        if matches!(self.lock, LedgerLock::Released) {
            return Err(DaemonError::LedgerNotLocked);
        }
        Ok(engine::Engine::new(&mut self.xs, &self.platform).protecting(self.protected.clone()))
    }
}

fn platform(
    hv: Arc<dyn Hypervisor>,
    pci: Arc<dyn PciHost>,
    sim: Option<SimPlatform>,
    log: &OpLog,
    dry_run: bool,
) -> CmdPlatform {
    let l = log.clone();
    CmdPlatform {
        hv: Recorder::new(hv)
            .dry_run(dry_run)
            .on_call(Box::new(move |r| l.push(format!("hypercall {r}")))),
        pci: LoggedPci {
            inner: pci,
            log: log.clone(),
            dry_run,
            unwritten: Default::default(),
        },
        sim,
    }
}

/// `XenError` for commands that need a hypervisor and find none.
pub fn no_xen_hint(e: &XenError) -> Option<&'static str> {
    matches!(e, XenError::NoXen { .. })
        .then_some("use --host sim:DIR to try ptguard on the simulated host")
}
