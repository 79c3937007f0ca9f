//! The lifecycle: assignable-add/remove, attach, the broker, the teardown of DESIGN.md §2 and
//! recovery. Every ledger change with more than one node is one Xenstore transaction; a
//! single-node change is one request (xenstored applies each request atomically).

use pci::config::regs::{COMMAND, COMMAND_MEMORY, MSIX_FLAGS};
use pci::{pciback, ConfigSpace, Sbdf};
use serde::Serialize;
use xen::abi::XEN_DOMCTL_DEV_RDM_RELAXED;
use xen::{
    DomId, DomainHandle, DomainInfo, Errno, GuestIntx, Hypervisor, MapPirq, Pirq, PtIrq, XenError,
};
use xenstore::{Access, Perm, PermList, TxId, XsClient};

use crate::ledger::*;
use crate::refusal::{ProtectedDomains, Refusal};
use crate::{EngineError, Platform};

type Result<T> = std::result::Result<T, EngineError>;

/// How a teardown ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Clean, reset and prepared; ready for the next guest.
    Assignable {
        epoch: u64,
    },
    /// Not provably clean; kept away from guests until the reason goes away.
    Quarantined {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// What a device model asks the broker to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BindKind {
    /// The device's INTx line (`gsi`, the host's), bound at `guest` (the guest's virtual
    /// slot and pin; absent from older clients: the host slot, pin A).
    Intx {
        gsi: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest: Option<GuestIntx>,
    },
    Msix {
        entry: u16,
        table_base: u64,
    },
}

/// A broker request (in-process API; the unix-socket protocol carries the same fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BindRequest {
    pub domid: DomId,
    pub sbdf: Sbdf,
    /// The epoch the device model was started with.
    pub epoch: u64,
    pub kind: BindKind,
    pub gvec: u8,
    pub gflags: u32,
    pub gtable: u64,
}

impl BindRequest {
    pub(crate) fn key(&self) -> BindingKey {
        match self.kind {
            BindKind::Intx { .. } => BindingKey::Intx,
            BindKind::Msix { entry, .. } => BindingKey::Msix(entry),
        }
    }

    /// The ledger record of this request in `state`.
    fn binding(&self, state: BindingState, pirq: Option<Pirq>) -> Binding {
        Binding {
            key: self.key(),
            state,
            pirq,
            gsi: match self.kind {
                BindKind::Intx { gsi, .. } => gsi,
                BindKind::Msix { .. } => 0,
            },
            gvec: self.gvec,
            gflags: self.gflags,
            gtable: self.gtable,
            guest_intx: match self.kind {
                BindKind::Intx { guest, .. } => guest,
                BindKind::Msix { .. } => None,
            },
        }
    }

    /// `PHYSDEVOP_map_pirq`'s argument: INTx with pirq == GSI as libxc does, MSI-X with the
    /// pirq left to Xen.
    fn map_request(&self) -> MapPirq {
        match self.kind {
            BindKind::Intx { gsi, .. } => MapPirq::gsi(self.domid, gsi),
            BindKind::Msix { entry, table_base } => {
                MapPirq::msix(self.domid, self.sbdf, entry, table_base)
            }
        }
    }
}

/// ptguard's engine over one Xenstore connection and one platform.
pub struct Engine<'a> {
    pub(crate) xs: &'a mut XsClient,
    pub(crate) platform: &'a dyn Platform,
    fuel: Option<u64>,
    /// Crash points passed so far (the explorer enumerates them).
    pub checkpoints: u64,
    /// Loud notices (quarantine, unknown bindings) for the caller to print.
    pub notices: Vec<String>,
    protected: ProtectedDomains,
}

fn corrupt(path: String, value: &str, reason: impl Into<String>) -> EngineError {
    EngineError::LedgerCorrupt {
        path,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Treats the "already gone" answers of unbind/unmap/deassign/permission calls during
/// teardown as success.
pub(crate) fn unless_gone(r: std::result::Result<(), XenError>) -> Result<()> {
    match r {
        Err(e)
            if !matches!(
                e.errno(),
                Some(Errno::EINVAL) | Some(Errno::ESRCH) | Some(Errno::ENODEV) | Some(Errno::EPERM)
            ) =>
        {
            Err(e.into())
        }
        _ => Ok(()),
    }
}

/// Unbinds then unmaps one pirq (`unbind_pt_irq`, `unmap_pirq`); "already gone" is success.
pub(crate) fn unbind_and_unmap(hv: &dyn Hypervisor, domid: DomId, bind: &PtIrq) -> Result<()> {
    unless_gone(hv.unbind_pt_irq(domid, bind))?;
    unless_gone(hv.unmap_pirq(domid, bind.pirq()))
}

/// Grants or revokes `domid`'s access to every implemented BAR of the device (I/O ports or
/// memory pages), passing each call's result through `check`.
fn bar_permissions(
    hv: &dyn Hypervisor,
    pci: &dyn pci::PciHost,
    domid: DomId,
    sbdf: Sbdf,
    allow: bool,
    check: fn(std::result::Result<(), XenError>) -> Result<()>,
) -> Result<()> {
    for r in pci
        .resources(sbdf)?
        .iter()
        .take(6)
        .filter(|r| !r.is_empty())
    {
        check(if r.is_io() {
            hv.ioport_permission(domid, r.start as u32, r.len() as u32, allow)
        } else {
            hv.iomem_permission(domid, r.start >> 12, r.len().div_ceil(4096), allow)
        })?;
    }
    Ok(())
}

pub(crate) fn read_opt(xs: &mut XsClient, tx: TxId, path: &str) -> Result<Option<String>> {
    match xs.read_optional(tx, path)? {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
        None => Ok(None),
    }
}

/// Reads a device's record without its bindings (a constant number of requests).
pub fn read_head(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
    let Some(state_text) = read_opt(xs, tx, &field_path(sbdf, "state"))? else {
        return Ok(None);
    };
    let state: DeviceState = state_text
        .parse()
        .map_err(|_| corrupt(field_path(sbdf, "state"), &state_text, "unknown state"))?;
    let (owner, owner_handle) = match read_opt(xs, tx, &field_path(sbdf, "owner"))? {
        None => (None, None),
        Some(t) => {
            let bad = |what| corrupt(field_path(sbdf, "owner"), &t, what);
            let mut parts = t.split_whitespace();
            let domid = parts
                .next()
                .and_then(|d| d.parse().ok())
                .map(DomId)
                .ok_or_else(|| bad("not a domain id"))?;
            let handle = match parts.next() {
                None => None,
                Some(h) => Some(
                    h.parse::<DomainHandle>()
                        .map_err(|_| bad("not a domain handle"))?,
                ),
            };
            if parts.next().is_some() {
                return Err(bad("not \"DOMID [HANDLE]\""));
            }
            (Some(domid), handle)
        }
    };
    let epoch = match read_opt(xs, tx, &field_path(sbdf, "epoch"))? {
        None => return Err(corrupt(field_path(sbdf, "epoch"), "", "missing")),
        Some(t) => t
            .parse()
            .map_err(|_| corrupt(field_path(sbdf, "epoch"), &t, "not a number"))?,
    };
    let step = match read_opt(xs, tx, &field_path(sbdf, "step"))? {
        None => None,
        Some(t) => Some(
            t.parse()
                .map_err(|_| corrupt(field_path(sbdf, "step"), &t, "unknown step"))?,
        ),
    };
    let reason = read_opt(xs, tx, &field_path(sbdf, "reason"))?;
    let driver = read_opt(xs, tx, &field_path(sbdf, "driver"))?.filter(|d| !d.is_empty());
    let msix_size = match read_opt(xs, tx, &field_path(sbdf, "msix-size"))? {
        None => 0,
        Some(t) => t
            .parse::<u16>()
            .ok()
            .filter(|n| *n <= 2048)
            .ok_or_else(|| corrupt(field_path(sbdf, "msix-size"), &t, "not a table size"))?,
    };
    let table_base = match read_opt(xs, tx, &field_path(sbdf, "table-base"))? {
        None => None,
        Some(t) => Some(
            t.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| corrupt(field_path(sbdf, "table-base"), &t, "not a hex address"))?,
        ),
    };
    if matches!(state, DeviceState::Attached | DeviceState::TearingDown) && owner.is_none() {
        return Err(corrupt(
            field_path(sbdf, "owner"),
            "",
            format!("a {state} device needs an owner"),
        ));
    }
    Ok(Some(DeviceRecord {
        sbdf,
        state,
        owner,
        epoch,
        step,
        reason,
        driver,
        msix_size,
        table_base,
        owner_handle,
        lost_maps: 0,
        bindings: Vec::new(),
    }))
}

/// `mode` of a device adopted from the toolstack: forgotten once clean.
const COMPANION: &str = "companion";
/// `mode` of a device ptguard managed before a toolstack gave it: assignable once clean.
const COMPANION_KEEP: &str = "companion-keep";

/// The `binding/lost` node: binds retried over an intent a crash left without its pirq.
/// It lives among the bindings so that a device without one costs no extra request.
const LOST_MAPS: &str = "lost";

fn lost_maps_path(sbdf: Sbdf) -> String {
    format!("{}/binding/{LOST_MAPS}", device_path(sbdf))
}

/// `/ptguard/intx/<domid>/<gsi>[/<SSSS-BB-DD-F>]`: which attached devices of a guest use
/// one machine INTx line, so that a teardown unmaps the line's pirq only with its last user.
fn intx_line_path(domid: DomId, gsi: u32, sbdf: Option<Sbdf>) -> String {
    match sbdf {
        Some(s) => format!("{ROOT}/intx/{}/{gsi}/{}", domid.0, s.xs_key()),
        None => format!("{ROOT}/intx/{}/{gsi}", domid.0),
    }
}

/// Drops `sbdf` from its INTx line's index, and the line's node with its last user.
fn forget_intx_line(xs: &mut XsClient, tx: TxId, owner: DomId, gsi: u32, sbdf: Sbdf) -> Result<()> {
    let line = intx_line_path(owner, gsi, None);
    rm(xs, tx, &intx_line_path(owner, gsi, Some(sbdf)))?;
    match xs.directory(tx, &line) {
        Ok(n) if n.is_empty() => rm(xs, tx, &line),
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn parse_lost_maps(sbdf: Sbdf, text: &str) -> Result<u32> {
    text.parse()
        .map_err(|_| corrupt(lost_maps_path(sbdf), text, "not a count"))
}

/// Reads one binding node (`None`: absent).
pub(crate) fn read_binding(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    key: BindingKey,
) -> Result<Option<Binding>> {
    let path = binding_path(sbdf, &key);
    match read_opt(xs, tx, &path)? {
        None => Ok(None),
        Some(text) => Binding::decode(key, &text)
            .map(Some)
            .map_err(|r| corrupt(path, &text, r)),
    }
}

/// Reads one device's record inside `tx`, bindings included (`None`: not in the ledger).
pub fn read_record(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
    let Some(mut rec) = read_head(xs, tx, sbdf)? else {
        return Ok(None);
    };
    let msix_size = rec.msix_size;
    let mut bindings = Vec::new();
    let dir = format!("{}/binding", device_path(sbdf));
    let names = match xs.directory(tx, &dir) {
        Ok(n) => n,
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for name in names {
        let path = format!("{dir}/{name}");
        if name == LOST_MAPS {
            let text = read_opt(xs, tx, &path)?.unwrap_or_default();
            rec.lost_maps = parse_lost_maps(sbdf, &text)?;
            continue;
        }
        let key: BindingKey = name
            .parse()
            .map_err(|_| corrupt(path.clone(), &name, "unknown binding key"))?;
        if let BindingKey::Msix(e) = key {
            if e >= msix_size {
                return Err(corrupt(path, &name, "entry beyond the MSI-X table"));
            }
        }
        let text = read_opt(xs, tx, &path)?.unwrap_or_default();
        bindings.push(Binding::decode(key, &text).map_err(|r| corrupt(path, &text, r))?);
    }
    rec.bindings = bindings;
    Ok(Some(rec))
}

pub(crate) fn write(xs: &mut XsClient, tx: TxId, path: &str, v: &str) -> Result<()> {
    xs.write(tx, path, v.as_bytes()).map_err(Into::into)
}

pub(crate) fn rm(xs: &mut XsClient, tx: TxId, path: &str) -> Result<()> {
    match xs.rm(tx, path) {
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(()),
        r => r.map_err(Into::into),
    }
}

/// A permission list from (access, domid) pairs, the first naming the owner.
fn perm_list(entries: &[(Access, u32)]) -> PermList {
    PermList::from_vec(entries.iter().map(|(a, d)| Perm::new(*a, *d)).collect())
        .unwrap_or_else(|| PermList::owned_by(0, Access::None))
}

/// What the ledger keeps about a device itself: the driver to give it back to, its MSI-X
/// table size and the host address of the table's BAR.
fn write_device_facts(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    driver: &str,
    msix_size: u16,
    table_base: u64,
) -> Result<()> {
    write(xs, tx, &field_path(sbdf, "driver"), driver)?;
    write(
        xs,
        tx,
        &field_path(sbdf, "msix-size"),
        &msix_size.to_string(),
    )?;
    write(
        xs,
        tx,
        &field_path(sbdf, "table-base"),
        &format!("{table_base:#x}"),
    )
}

/// The device's MSI-X capability as its config space shows it now.
fn msix_cap(pci: &dyn pci::PciHost, sbdf: Sbdf) -> Result<Option<pci::MsixCap>> {
    let cfg = ConfigSpace::new(pci.read_config(sbdf)?)
        .and_then(|c| c.parse())
        .map_err(|source| pci::PciError::Config {
            sbdf,
            file: "config".into(),
            source,
        })?;
    Ok(cfg.msix)
}

/// The MSI-X table size (0: none) and the host address of the BAR holding the table, as
/// recorded in the ledger: the broker checks device models' `table_base` against it
/// instead of trusting them.
fn msix_layout(pci: &dyn pci::PciHost, sbdf: Sbdf) -> Result<(u16, u64)> {
    Ok(match msix_cap(pci, sbdf)? {
        Some(m) => (
            m.table_size,
            pci.resources(sbdf)?
                .get(usize::from(m.table_bir))
                .map_or(0, |r| r.start),
        ),
        None => (0, 0),
    })
}

/// `req` refused for `refusal`.
pub(crate) fn refused(req: &BindRequest, refusal: Refusal) -> EngineError {
    EngineError::Refused {
        sbdf: req.sbdf,
        domid: req.domid,
        refusal,
    }
}

/// The broker's checks common to bind and unbind: the device is managed, attached (attach
/// finished, no teardown running) to the requesting domain, at the epoch it presents.
/// Whether `req` may act on the device: attached to its domain at its epoch and, when the
/// ledger recorded the owner's handle, to this incarnation of that domid (`current`: the
/// requester's handle now, from getdomaininfo).
pub(crate) fn check_requester(
    rec: Option<DeviceRecord>,
    req: &BindRequest,
    current: Option<DomainHandle>,
) -> std::result::Result<DeviceRecord, Refusal> {
    let rec = rec.ok_or(Refusal::NotManaged)?;
    match (rec.state, rec.step) {
        (DeviceState::Attached, None) => {}
        (DeviceState::Attached, Some(_)) => return Err(Refusal::AttachInProgress),
        (DeviceState::TearingDown, _) => return Err(Refusal::TearingDown),
        (state, _) => return Err(Refusal::NotAttached { state }),
    }
    if rec.owner != Some(req.domid) {
        return Err(Refusal::WrongDomain { owner: rec.owner });
    }
    if let (Some(recorded), Some(now)) = (rec.owner_handle, current) {
        if recorded != now {
            return Err(Refusal::StaleIncarnation {
                domid: req.domid,
                recorded: recorded.to_string(),
                current: now.to_string(),
            });
        }
    }
    if rec.epoch != req.epoch {
        return Err(Refusal::StaleEpoch {
            presented: req.epoch,
            current: rec.epoch,
        });
    }
    Ok(rec)
}

/// Whether Xen says a guest holds `sbdf` (a device sysfs shows): `XEN_DOMCTL_test_assign_device`
/// answers 0 when dom0 or dom_io owns it and `-EINVAL` ("already assigned, or non-existent")
/// otherwise, on every release from 4.11 to 4.20. `Some(errno)`: held.
pub fn held_by_guest(hv: &dyn Hypervisor, sbdf: Sbdf) -> Result<Option<Errno>> {
    match hv.test_assign_device(sbdf) {
        Ok(()) => Ok(None),
        Err(e) => match e.errno() {
            Some(errno @ (Errno::EINVAL | Errno::EBUSY)) => Ok(Some(errno)),
            _ => Err(e.into()),
        },
    }
}

/// The `owner` node: the domid, and the domain's handle when Xen gave it one, so that a
/// later domain reusing the domid is not taken for the owner.
fn owner_text(domid: DomId, info: Option<&DomainInfo>) -> String {
    match info.map(|i| i.handle).filter(|h| !h.is_nil()) {
        Some(h) => format!("{} {h}", domid.0),
        None => domid.0.to_string(),
    }
}

/// Marks `sbdf` attached to the domain `info` describes (domid and handle) at `epoch`.
fn write_attached(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    info: &DomainInfo,
    epoch: u64,
) -> Result<()> {
    write(xs, tx, &field_path(sbdf, "state"), "attached")?;
    write(
        xs,
        tx,
        &field_path(sbdf, "owner"),
        &owner_text(info.domid, Some(info)),
    )?;
    write(xs, tx, &field_path(sbdf, "epoch"), &epoch.to_string())
}

/// Whether the domain Xen knows as `info` is the incarnation the ledger recorded.
fn same_incarnation(recorded: Option<DomainHandle>, info: &DomainInfo) -> bool {
    recorded.is_none_or(|h| h == info.handle)
}

/// The epoch after `epoch`; a hand-edited maximum must not wrap to an old one.
fn next_epoch(sbdf: Sbdf, epoch: u64) -> Result<u64> {
    epoch
        .checked_add(1)
        .ok_or(EngineError::EpochExhausted { sbdf, epoch })
}

/// How long a teardown waits for pciback to let go of a removed backend before it stops
/// (and resumes from the same step on the next round).
pub const PCIBACK_RELEASE: std::time::Duration = std::time::Duration::from_secs(10);

fn backend_dir(domid: DomId) -> String {
    format!("/local/domain/0/backend/pci/{}/0", domid.0)
}

impl<'a> Engine<'a> {
    pub fn new(xs: &'a mut XsClient, platform: &'a dyn Platform) -> Engine<'a> {
        Engine {
            xs,
            platform,
            fuel: None,
            checkpoints: 0,
            notices: Vec::new(),
            protected: ProtectedDomains::default(),
        }
    }

    /// Adds the operator's protected domains to dom0 and the reserved ids.
    pub fn protecting(mut self, protected: ProtectedDomains) -> Engine<'a> {
        self.protected = protected;
        self
    }

    /// The broker's first check, for bind and unbind alike: no request may speak for a
    /// protected domain.
    pub(crate) fn refuse_protected_requester(&self, req: &BindRequest) -> Result<()> {
        if self.protected.contains(req.domid) {
            return Err(refused(req, Refusal::ProtectedDomain { domid: req.domid }));
        }
        Ok(())
    }

    pub(crate) fn protected_domain(&self, domid: DomId) -> bool {
        self.protected.contains(domid)
    }

    pub(crate) fn refuse_protected(&self, domid: DomId, action: &'static str) -> Result<()> {
        if self.protected.contains(domid) {
            return Err(EngineError::ProtectedDomain { domid, action });
        }
        Ok(())
    }

    /// Makes the engine "crash" (return [`EngineError::Crashed`]) at crash point `n`.
    pub fn crash_at(mut self, n: u64) -> Engine<'a> {
        self.fuel = Some(n);
        self
    }

    pub(crate) fn checkpoint(&mut self, at: impl FnOnce() -> String) -> Result<()> {
        self.checkpoints += 1;
        if let Some(f) = &mut self.fuel {
            if *f == 0 {
                return Err(EngineError::Crashed { at: at() });
            }
            *f -= 1;
        }
        Ok(())
    }

    pub(crate) fn notice(&mut self, msg: String) {
        // The caller prints notices to the operator; the log keeps a copy.
        tracing::info!("{msg}");
        self.notices.push(msg);
    }

    /// Creates `/ptguard` readable and writable by dom0 only (`n0`).
    pub fn init_ledger(&mut self) -> Result<()> {
        if read_opt(self.xs, TxId::NONE, ROOT)?.is_none() {
            self.xs.mkdir(TxId::NONE, ROOT)?;
        }
        self.xs
            .set_perms(TxId::NONE, ROOT, &perm_list(&[(Access::None, 0)]))?;
        if read_opt(self.xs, TxId::NONE, DEVICES)?.is_none() {
            self.xs.mkdir(TxId::NONE, DEVICES)?;
        }
        Ok(())
    }

    pub fn record(&mut self, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
        read_record(self.xs, TxId::NONE, sbdf)
    }

    fn require(&mut self, sbdf: Sbdf) -> Result<DeviceRecord> {
        self.record(sbdf)?
            .ok_or(EngineError::UnknownDevice { sbdf })
    }

    /// Every managed device (entries that fail to parse are returned as errors in place).
    pub fn list(&mut self) -> Result<Vec<std::result::Result<DeviceRecord, EngineError>>> {
        let names = match self.xs.directory(TxId::NONE, DEVICES) {
            Ok(n) => n,
            Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for n in names {
            match Sbdf::from_xs_key(&n) {
                Ok(sbdf) => match read_record(self.xs, TxId::NONE, sbdf) {
                    Ok(Some(r)) => out.push(Ok(r)),
                    Ok(None) => {}
                    Err(e) => out.push(Err(e)),
                },
                Err(_) => out.push(Err(corrupt(
                    format!("{DEVICES}/{n}"),
                    &n,
                    "not a PCI address",
                ))),
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------------------------
    // assignable-add / -remove
    // ---------------------------------------------------------------------------------

    /// Seizes the device into pciback, quarantines it in `dom_io` and records it.
    pub fn assignable_add(&mut self, sbdf: Sbdf) -> Result<DeviceRecord> {
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        if let Some(r) = self.record(sbdf)? {
            return Err(EngineError::AlreadyManaged {
                sbdf,
                state: r.state,
            });
        }
        self.init_ledger()?;
        let (msix_size, table_base) = msix_layout(pci, sbdf)?;
        self.checkpoint(|| format!("{sbdf} assignable-add: seize"))?;
        let seized = pciback::seize(pci, sbdf)?;
        self.checkpoint(|| format!("{sbdf} assignable-add: assign dom_io"))?;
        match self
            .platform
            .hypervisor()
            .assign_device(DomId::IO, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)
        {
            // Xen before 4.11.3/4.12.2/4.13.0 has no dom_io to assign to: keep the device in
            // pciback, unassigned, as the toolstacks of that time did.
            Err(e) if e.errno() == Some(Errno::ESRCH) => {
                tracing::info!(%sbdf, "Xen has no quarantine (assign to dom_io: -ESRCH); the device stays in pciback, owned by dom0");
            }
            r => r?,
        }
        self.checkpoint(|| format!("{sbdf} assignable-add: record"))?;
        let driver = seized.original_driver.unwrap_or_default();
        self.xs.transaction(|xs, tx| -> Result<()> {
            write(xs, tx, &field_path(sbdf, "state"), "assignable")?;
            write(xs, tx, &field_path(sbdf, "epoch"), "0")?;
            write_device_facts(xs, tx, sbdf, &driver, msix_size, table_base)
        })?;
        self.require(sbdf)
    }

    /// Returns an assignable device to dom0 and its original driver, and forgets it.
    pub fn assignable_remove(&mut self, sbdf: Sbdf) -> Result<()> {
        let rec = self.require(sbdf)?;
        if rec.state != DeviceState::Assignable {
            return Err(EngineError::NotAssignable {
                sbdf,
                state: rec.state,
                hint: " (detach it first)",
            });
        }
        let hv = self.platform.hypervisor();
        // The ledger may be wrong (edited by hand, or a toolstack gave the device away
        // behind ptguard's back): ask Xen whether a guest holds it before handing it to
        // dom0's driver.
        if let Some(errno) = held_by_guest(hv, sbdf)? {
            return Err(EngineError::HeldByGuest {
                sbdf,
                state: rec.state,
                errno,
            });
        }
        // -ENODEV here: not in dom_io, i.e. already dom0's (test_assign said it is free).
        unless_gone(hv.deassign_device(DomId::IO, sbdf))?;
        self.checkpoint(|| format!("{sbdf} assignable-remove: release"))?;
        pciback::release(self.platform.pci(), sbdf, rec.driver.as_deref())?;
        rm(self.xs, TxId::NONE, &device_path(sbdf))
    }

    /// Records a device some guest already holds (the toolstack gave it, or its ledger entry
    /// was lost) as attached to `domid`, so that its teardown is ptguard's. Its bindings are
    /// unknown: that teardown keeps it quarantined until `domid` is gone.
    pub fn adopt(&mut self, sbdf: Sbdf, domid: DomId) -> Result<u64> {
        self.refuse_protected(domid, "adopt a device of")?;
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        let info = match hv.domain_info(domid)? {
            None => return Err(EngineError::UnknownDomain { domid }),
            Some(i) if i.dying => return Err(EngineError::DomainDying { domid }),
            Some(i) => i,
        };
        // Only what Xen says a guest holds: anything else is assignable-add/attach's.
        if held_by_guest(hv, sbdf)?.is_none() {
            return Err(EngineError::NotHeld { sbdf });
        }
        let (msix_size, table_base) = msix_layout(pci, sbdf)?;
        self.init_ledger()?;
        self.xs.transaction(|xs, tx| -> Result<u64> {
            let old = read_head(xs, tx, sbdf)?;
            if let Some(r) = old.as_ref().filter(|r| r.state != DeviceState::Assignable) {
                return Err(EngineError::AlreadyManaged {
                    sbdf,
                    state: r.state,
                });
            }
            let epoch = match &old {
                Some(r) => next_epoch(sbdf, r.epoch)?,
                None => 1,
            };
            let managed = old.is_some();
            let driver = old.and_then(|r| r.driver).unwrap_or_default();
            write_attached(xs, tx, sbdf, &info, epoch)?;
            write_device_facts(xs, tx, sbdf, &driver, msix_size, table_base)?;
            write(xs, tx, &field_path(sbdf, "reason"), "adopted")?;
            // The toolstack gave the device and takes it back (permissions, backend,
            // deassign); ptguard's teardown is the MSI-X part: sweep, release, reset,
            // prepare, verify. A device ptguard already managed (assignable-add) goes
            // back to assignable after it; one it did not is forgotten.
            let mode = if managed { COMPANION_KEEP } else { COMPANION };
            write(xs, tx, &field_path(sbdf, "mode"), mode)?;
            Ok(epoch)
        })
    }

    /// Makes a stuck device that no guest holds usable again without unbinding it from
    /// pciback: memory decoding on, `release_msix` then `prepare_msix` (Xen's 0→1 path
    /// clears `host_maskall` and writes Function Mask from `guest_maskall`), Enable and
    /// Function Mask cleared, and a reset if the mask survives. Returns what it did, in
    /// order; fails naming who holds the device, or what is left, when it cannot.
    pub fn repair(&mut self, sbdf: Sbdf) -> Result<Vec<String>> {
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        if let Some(r) = self.record(sbdf)? {
            if !matches!(r.state, DeviceState::Assignable) {
                return Err(EngineError::NotAssignable {
                    sbdf,
                    state: r.state,
                    hint: " (a guest may still hold it: `ptguard detach` it, or let `ptguard watch` finish its teardown)",
                });
            }
        }
        if let Some(errno) = held_by_guest(hv, sbdf)? {
            return Err(EngineError::HeldByGuest {
                sbdf,
                state: DeviceState::Assignable,
                errno,
            });
        }
        let driver = pci.driver(sbdf)?;
        if driver.as_deref() != Some(pci::host::PCIBACK) {
            return Err(EngineError::NotInPciback { sbdf, driver });
        }
        let msix = |pci: &dyn pci::PciHost| msix_cap(pci, sbdf);
        let Some(cap) = msix(pci)? else {
            return Ok(vec![
                "no MSI-X capability: nothing Xen keeps to repair".into()
            ]);
        };
        let mut done = Vec::new();
        self.ensure_memory_decoding(sbdf)?;
        done.push("memory decoding on".to_string());
        match hv.release_msix(sbdf) {
            Ok(()) => done.push("release_msix: 0".into()),
            // used_entries is not exactly 1: 0 (never prepared) or vectors still mapped.
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                done.push("release_msix: -EBUSY (not prepared, or vectors mapped)".into())
            }
            Err(e) => return Err(e.into()),
        }
        match hv.prepare_msix(sbdf) {
            Ok(()) => done.push("prepare_msix: 0 (Xen's MSI-X state starts afresh)".into()),
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                return Err(EngineError::VectorsStillMapped { sbdf });
            }
            Err(e) => return Err(e.into()),
        }
        pci.write_config(sbdf, cap.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
        done.push("MSI-X Enable and Function Mask cleared".into());
        if msix(pci)?.is_some_and(|m| m.function_mask) && pci.can_reset(sbdf)? {
            pci.reset(sbdf)?;
            self.ensure_memory_decoding(sbdf)?;
            pci.write_config(sbdf, cap.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
            done.push("Function Mask survived: reset, Message Control cleared again".into());
        }
        if msix(pci)?.is_some_and(|m| m.function_mask) {
            return Err(EngineError::StillMasked { sbdf, done });
        }
        done.push("verified: MSI-X Function Mask clear".into());
        Ok(done)
    }

    // ---------------------------------------------------------------------------------
    // attach
    // ---------------------------------------------------------------------------------

    /// Gives an assignable device to `domid`; returns the new epoch.
    pub fn attach(&mut self, sbdf: Sbdf, domid: DomId) -> Result<u64> {
        self.refuse_protected(domid, "attach a device to")?;
        let hv = self.platform.hypervisor();
        let info = match hv.domain_info(domid)? {
            None => return Err(EngineError::UnknownDomain { domid }),
            Some(i) if i.dying => return Err(EngineError::DomainDying { domid }),
            Some(i) => i,
        };
        let epoch = self.xs.transaction(|xs, tx| -> Result<u64> {
            let rec = read_head(xs, tx, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
            match (rec.state, rec.owner) {
                (DeviceState::Assignable, _) => {}
                (DeviceState::Attached, Some(owner)) => {
                    return Err(EngineError::AttachedElsewhere { sbdf, owner })
                }
                (state, _) => {
                    return Err(EngineError::NotAssignable {
                        sbdf,
                        state,
                        hint: " (see `ptguard show`)",
                    })
                }
            }
            let epoch = next_epoch(sbdf, rec.epoch)?;
            write_attached(xs, tx, sbdf, &info, epoch)?;
            write(xs, tx, &field_path(sbdf, "step"), Step::Attach.as_str())?;
            Ok(epoch)
        })?;
        match self.attach_steps(sbdf, domid) {
            Ok(()) => Ok(epoch),
            Err(e) if e.is_crash() => Err(e),
            Err(e) => {
                // Roll back through the teardown: it is idempotent and leaves the device
                // assignable (or quarantined if something is off).
                self.notice(format!(
                    "{sbdf}: attach to {domid} failed ({e}); rolling back"
                ));
                self.teardown(sbdf, "attach-failed")?;
                Err(e)
            }
        }
    }

    fn attach_steps(&mut self, sbdf: Sbdf, domid: DomId) -> Result<()> {
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        self.checkpoint(|| format!("{sbdf} attach: test_assign"))?;
        hv.test_assign_device(sbdf)?;
        if pci.can_reset(sbdf)? {
            self.checkpoint(|| format!("{sbdf} attach: reset"))?;
            pci.reset(sbdf)?;
        }
        // Assign first: a domain created without an IOMMU context (no `passthrough=` in
        // its xl config) is refused here, before it was given any permission or pirq.
        self.checkpoint(|| format!("{sbdf} attach: assign_device"))?;
        hv.assign_device(domid, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)
            .map_err(|e| match e.errno() {
                Some(Errno::EOPNOTSUPP) => EngineError::NoIommuContext { sbdf, domid },
                _ => e.into(),
            })?;
        self.checkpoint(|| format!("{sbdf} attach: permissions"))?;
        bar_permissions(hv, pci, domid, sbdf, true, |r| r.map_err(Into::into))?;
        let irq = pci.irq(sbdf)?;
        if irq > 0 && irq < 0xff {
            // The INTx pirq is a binding like any other: intent, map, confirm.
            let intx = BindRequest {
                domid,
                sbdf,
                epoch: 0,
                kind: BindKind::Intx {
                    gsi: irq,
                    guest: None,
                },
                gvec: 0,
                gflags: 0,
                gtable: 0,
            };
            let path = binding_path(sbdf, &BindingKey::Intx);
            let intent = intx.binding(BindingState::Intent, None);
            self.xs.transaction(|xs, tx| -> Result<()> {
                write(xs, tx, &path, &intent.encode())?;
                write(xs, tx, &intx_line_path(domid, irq, Some(sbdf)), "")
            })?;
            self.checkpoint(|| format!("{sbdf} attach: map INTx"))?;
            let pirq = hv.map_pirq(&intx.map_request())?;
            let mapped = intx.binding(BindingState::Mapped, Some(pirq));
            write(self.xs, TxId::NONE, &path, &mapped.encode())?;
            self.checkpoint(|| format!("{sbdf} attach: irq_permission"))?;
            hv.irq_permission(domid, Pirq(irq as i32), true)?;
        }
        self.checkpoint(|| format!("{sbdf} attach: backend"))?;
        self.write_backend(sbdf, domid)?;
        self.platform.backend_changed(sbdf, Some(domid));
        self.checkpoint(|| format!("{sbdf} attach: done"))?;
        rm(self.xs, TxId::NONE, &field_path(sbdf, "step"))
    }

    /// The PCI backend and frontend nodes as libxl writes them (xen-semantics.md §4.2).
    fn write_backend(&mut self, sbdf: Sbdf, domid: DomId) -> Result<()> {
        let be = backend_dir(domid);
        let fe = format!("/local/domain/{}/device/pci/0", domid.0);
        self.xs.transaction(|xs, tx| -> Result<()> {
            let n: u32 = read_opt(xs, tx, &format!("{be}/num_devs"))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            for i in 0..n {
                if read_opt(xs, tx, &format!("{be}/dev-{i}"))?.as_deref() == Some(&sbdf.to_string())
                {
                    return Ok(());
                }
            }
            if n == 0 {
                // As libxl: the backend is dom0's and readable by the guest; the frontend is
                // the guest's and readable by dom0. Children inherit these.
                let dom = u32::from(domid.0);
                xs.mkdir(tx, &be)?;
                xs.set_perms(
                    tx,
                    &be,
                    &perm_list(&[(Access::None, 0), (Access::Read, dom)]),
                )?;
                xs.mkdir(tx, &fe)?;
                xs.set_perms(
                    tx,
                    &fe,
                    &perm_list(&[(Access::None, dom), (Access::Read, 0)]),
                )?;
                write(xs, tx, &format!("{be}/frontend"), &fe)?;
                write(xs, tx, &format!("{be}/frontend-id"), &domid.0.to_string())?;
                write(xs, tx, &format!("{be}/online"), "1")?;
                write(xs, tx, &format!("{be}/state"), "1")?;
                write(
                    xs,
                    tx,
                    &format!("{be}/domain"),
                    &format!("domain-{}", domid.0),
                )?;
                write(xs, tx, &format!("{fe}/backend"), &be)?;
                write(xs, tx, &format!("{fe}/backend-id"), "0")?;
                write(xs, tx, &format!("{fe}/state"), "1")?;
            } else {
                write(xs, tx, &format!("{be}/state"), "7")?;
            }
            write(xs, tx, &format!("{be}/key-{n}"), &sbdf.to_string())?;
            write(xs, tx, &format!("{be}/dev-{n}"), &sbdf.to_string())?;
            write(
                xs,
                tx,
                &format!("{be}/vdevfn-{n}"),
                &format!("{:#x}", (n + 1) << 3),
            )?;
            write(
                xs,
                tx,
                &format!("{be}/opts-{n}"),
                "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=relaxed",
            )?;
            write(xs, tx, &format!("{be}/state-{n}"), "1")?;
            write(xs, tx, &format!("{be}/num_devs"), &(n + 1).to_string())?;
            Ok(())
        })
    }

    /// Removes the device's backend entry; the whole backend goes with the last device.
    /// Takes `sbdf` out of `domid`'s PCI backend; true when the domain has no PCI backend
    /// left (this was its last device, or it was gone already).
    fn remove_backend(&mut self, sbdf: Sbdf, domid: DomId) -> Result<bool> {
        let be = backend_dir(domid);
        let fe = format!("/local/domain/{}/device/pci", domid.0);
        self.xs.transaction(|xs, tx| -> Result<bool> {
            let n: u32 = read_opt(xs, tx, &format!("{be}/num_devs"))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut devs = Vec::new();
            for i in 0..n {
                if let Some(d) = read_opt(xs, tx, &format!("{be}/dev-{i}"))? {
                    devs.push(d);
                }
            }
            let before = devs.len();
            devs.retain(|d| *d != sbdf.to_string());
            if devs.len() == before {
                return Ok(devs.is_empty());
            }
            if devs.is_empty() {
                rm(xs, tx, &format!("/local/domain/0/backend/pci/{}", domid.0))?;
                rm(xs, tx, &fe)?;
                return Ok(true);
            }
            for i in 0..n {
                for k in ["key", "dev", "vdevfn", "opts", "state"] {
                    rm(xs, tx, &format!("{be}/{k}-{i}"))?;
                }
            }
            for (i, d) in devs.iter().enumerate() {
                write(xs, tx, &format!("{be}/key-{i}"), d)?;
                write(xs, tx, &format!("{be}/dev-{i}"), d)?;
                write(xs, tx, &format!("{be}/state-{i}"), "4")?;
            }
            write(xs, tx, &format!("{be}/num_devs"), &devs.len().to_string())?;
            Ok(false)
        })
    }

    // ---------------------------------------------------------------------------------
    // Broker
    // ---------------------------------------------------------------------------------

    /// Records, maps and binds one interrupt for a device model: one Xenstore transaction
    /// (check + intent), then one write recording the pirq Xen chose and one confirming the
    /// bind.
    pub fn bind(&mut self, req: &BindRequest) -> Result<Pirq> {
        let (requester, existing) = self.record_intent(req)?;
        let pirq = self.map_recorded(req, existing, None)?;
        self.bind_mapped(req, requester.as_ref(), pirq)?;
        Ok(pirq)
    }

    /// The broker's checks and the binding's intent, in one transaction: the requester and
    /// the binding the ledger already holds for the interrupt (`Mapped`: mapped before, by
    /// attach for INTx or by a device model's separate map; the caller binds it).
    pub(crate) fn record_intent(
        &mut self,
        req: &BindRequest,
    ) -> Result<(Option<DomainInfo>, Option<Binding>)> {
        let key = req.key();
        let refuse = |refusal| refused(req, refusal);
        self.refuse_protected_requester(req)?;
        if let BindKind::Intx { gsi, guest } = req.kind {
            if let Some(g) = guest.filter(|g| !g.is_valid()) {
                return Err(refuse(Refusal::BadGuestIntx {
                    device: g.device,
                    intx: g.intx,
                }));
            }
            // A device model may only map its own device's line: any other GSI would hand
            // its guest a host interrupt (a disk's, a timer's).
            let line = self.platform.pci().irq(req.sbdf)?;
            let line = (line > 0 && line < 0xff).then_some(line);
            if line != Some(gsi) {
                return Err(refuse(Refusal::NotDeviceGsi {
                    presented: gsi,
                    line,
                }));
            }
        }
        // Who the requester is now: its handle names the incarnation, and a PV guest gets
        // no XEN_DOMCTL_bind_pt_irq.
        let requester = self.platform.hypervisor().domain_info(req.domid)?;
        let existing = self.xs.transaction(|xs, tx| -> Result<Option<Binding>> {
            let rec = read_head(xs, tx, req.sbdf)?;
            let rec = check_requester(rec, req, requester.map(|i| i.handle)).map_err(refuse)?;
            if let BindKind::Msix { entry, table_base } = req.kind {
                if entry >= rec.msix_size {
                    return Err(refuse(Refusal::EntryBeyondTable {
                        entry,
                        table_size: rec.msix_size,
                    }));
                }
                if let Some(expected) = rec.table_base.filter(|t| *t != table_base) {
                    return Err(refuse(Refusal::WrongTableBase {
                        presented: table_base,
                        expected,
                    }));
                }
            }
            let found = read_binding(xs, tx, req.sbdf, key)?;
            if found.is_some_and(|b| b.state == BindingState::Intent && b.pirq.is_none()) {
                // A crash hit this bind between its intent and its pirq: the map may have
                // reached Xen. Its pirq is lost; count it so the teardown can say why it must
                // wait for the owner to go (docs/ledger.md, "The map→record window").
                let path = lost_maps_path(req.sbdf);
                let lost = match read_opt(xs, tx, &path)? {
                    Some(t) => parse_lost_maps(req.sbdf, &t)?,
                    None => 0,
                };
                write(xs, tx, &path, &lost.saturating_add(1).to_string())?;
            }
            let existing = found.filter(|b| b.state != BindingState::Intent);
            match existing {
                // The INTx pirq attach mapped: qemu binds it.
                Some(b) if b.state == BindingState::Mapped => {}
                Some(b) if b.state != BindingState::Intent => {
                    return Err(refuse(Refusal::already_bound(key)))
                }
                // No binding, or an unconfirmed intent a crash left behind: (re)record it. An
                // earlier map that did happen is caught by release_msix at teardown.
                _ => {
                    let intent = req.binding(BindingState::Intent, None);
                    write(xs, tx, &binding_path(req.sbdf, &key), &intent.encode())?;
                    if let BindKind::Intx { gsi, .. } = req.kind {
                        write(xs, tx, &intx_line_path(req.domid, gsi, Some(req.sbdf)), "")?;
                    }
                }
            }
            Ok(existing)
        })?;
        Ok((requester, existing))
    }

    /// Maps the interrupt `record_intent` recorded (unless `existing` holds its pirq) and
    /// records the pirq Xen chose: the binding is then `Mapped`. `requested`: a pirq the
    /// device model asks for (a guest using pirq routing chose it), else Xen chooses.
    pub(crate) fn map_recorded(
        &mut self,
        req: &BindRequest,
        existing: Option<Binding>,
        requested: Option<Pirq>,
    ) -> Result<Pirq> {
        let key = req.key();
        let hv = self.platform.hypervisor();
        let path = binding_path(req.sbdf, &key);
        // Mapped before (INTx by attach, or a map a crash interrupted): nothing to map.
        if let Some(p) = existing.and_then(|b| b.pirq) {
            return Ok(p);
        }
        self.checkpoint(|| format!("{} bind {key}: map_pirq", req.sbdf))?;
        let mut map = req.map_request();
        if requested.is_some() {
            map.pirq = requested;
        }
        let pirq = match hv.map_pirq(&map) {
            Ok(p) => p,
            Err(e) => {
                rm(self.xs, TxId::NONE, &path)?;
                // Xen hands a guest only extra_guest_irqs MSI pirqs.
                if e.errno() == Some(Errno::ENOSPC) {
                    return Err(EngineError::PirqBudgetExhausted {
                        sbdf: req.sbdf,
                        domid: req.domid,
                    });
                }
                return Err(e.into());
            }
        };
        // Recorded at once: Xen chose the pirq and offers no way to list a domain's
        // pirqs, so this write is what lets a teardown find it (docs/ledger.md).
        self.checkpoint(|| format!("{} bind {key}: record pirq", req.sbdf))?;
        let record = req.binding(BindingState::Mapped, Some(pirq));
        write(self.xs, TxId::NONE, &path, &record.encode())?;
        Ok(pirq)
    }

    /// `XEN_DOMCTL_bind_pt_irq` for a mapped interrupt, then the confirming write.
    pub(crate) fn bind_mapped(
        &mut self,
        req: &BindRequest,
        requester: Option<&DomainInfo>,
        pirq: Pirq,
    ) -> Result<()> {
        let key = req.key();
        let hv = self.platform.hypervisor();
        let path = binding_path(req.sbdf, &key);
        let mut record = req.binding(BindingState::Mapped, Some(pirq));
        // XEN_DOMCTL_bind_pt_irq is for HVM guests only (a PV guest binds the pirq to an
        // event channel itself; Xen 4.17 answers -EINVAL for a PV domain).
        let hvm = requester.is_none_or(|i| i.hvm);
        self.checkpoint(|| format!("{} bind {key}: bind_pt_irq", req.sbdf))?;
        if hvm {
            if let Err(e) = hv.bind_pt_irq(req.domid, &record.pt_irq(pirq, req.sbdf)) {
                let _ = hv.unmap_pirq(req.domid, pirq);
                rm(self.xs, TxId::NONE, &path)?;
                return Err(e.into());
            }
        }
        self.checkpoint(|| format!("{} bind {key}: confirm", req.sbdf))?;
        record.state = BindingState::Bound;
        write(self.xs, TxId::NONE, &path, &record.encode())
    }

    /// Unbinds and unmaps one interrupt a device model bound through the broker. The same
    /// checks as a bind: the device is attached to the requester at the current epoch, and
    /// the ledger holds that binding with that pirq.
    pub fn unbind(&mut self, req: &BindRequest, pirq: Pirq) -> Result<()> {
        let key = req.key();
        let path = binding_path(req.sbdf, &key);
        let refuse = |refusal| refused(req, refusal);
        self.refuse_protected_requester(req)?;
        let requester = self.platform.hypervisor().domain_info(req.domid)?;
        let b = self.xs.transaction(|xs, tx| -> Result<Binding> {
            let rec = read_head(xs, tx, req.sbdf)?;
            check_requester(rec, req, requester.map(|i| i.handle)).map_err(refuse)?;
            let b = read_binding(xs, tx, req.sbdf, key)?
                .filter(|b| b.pirq == Some(pirq) && b.state != BindingState::Intent)
                .ok_or_else(|| {
                    refuse(Refusal::NoSuchBinding {
                        key: key.to_string(),
                        pirq: pirq.0,
                    })
                })?;
            let u = Binding {
                state: BindingState::Unbinding,
                ..b
            };
            write(xs, tx, &path, &u.encode())?;
            Ok(b)
        })?;
        let hv = self.platform.hypervisor();
        self.checkpoint(|| format!("{} unbind {key}", req.sbdf))?;
        if key == BindingKey::Intx {
            self.release_intx_line(req.sbdf, req.domid, &b, pirq)?;
        } else {
            unbind_and_unmap(hv, req.domid, &b.pt_irq(pirq, req.sbdf))?;
        }
        self.checkpoint(|| format!("{} unbind {key}: forget", req.sbdf))?;
        if key == BindingKey::Intx {
            return self.xs.transaction(|xs, tx| -> Result<()> {
                forget_intx_line(xs, tx, req.domid, b.gsi, req.sbdf)?;
                rm(xs, tx, &path)
            });
        }
        rm(self.xs, TxId::NONE, &path)
    }

    // ---------------------------------------------------------------------------------
    // Teardown (DESIGN.md §2)
    // ---------------------------------------------------------------------------------

    /// Hot-unplug: tears the device down while its owner may still run.
    pub fn detach(&mut self, sbdf: Sbdf) -> Result<Outcome> {
        self.teardown(sbdf, "unplug")
    }

    /// The owner is gone or going (reboot, destroy): tears down every device it had.
    pub fn domain_released(&mut self, domid: DomId) -> Result<Vec<(Sbdf, Outcome)>> {
        self.refuse_protected(domid, "tear down the devices of")?;
        let mut out = Vec::new();
        for rec in self.list()?.into_iter().flatten() {
            if rec.owner == Some(domid) {
                out.push((rec.sbdf, self.teardown(rec.sbdf, "destroy")?));
            }
        }
        Ok(out)
    }

    /// Starts (or resumes) the teardown of one device.
    pub fn teardown(&mut self, sbdf: Sbdf, reason: &str) -> Result<Outcome> {
        let start = self.xs.transaction(|xs, tx| -> Result<Option<Outcome>> {
            let rec = read_head(xs, tx, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
            match rec.state {
                DeviceState::Assignable => Ok(Some(Outcome::Assignable { epoch: rec.epoch })),
                DeviceState::Failed => Ok(Some(Outcome::Failed {
                    reason: rec.reason.unwrap_or_default(),
                })),
                DeviceState::Attached => {
                    write(xs, tx, &field_path(sbdf, "state"), "tearing-down")?;
                    write(xs, tx, &field_path(sbdf, "step"), Step::Revoke.as_str())?;
                    write(xs, tx, &field_path(sbdf, "reason"), reason)?;
                    Ok(None)
                }
                DeviceState::TearingDown | DeviceState::Quarantined => Ok(None),
            }
        })?;
        if let Some(o) = start {
            return Ok(o);
        }
        self.run_teardown(sbdf)
    }

    fn set_step(&mut self, sbdf: Sbdf, step: Step) -> Result<()> {
        write(
            self.xs,
            TxId::NONE,
            &field_path(sbdf, "step"),
            step.as_str(),
        )
    }

    /// Tears down `sbdf`'s INTx in `owner`: its own guest link always; the pirq (and the
    /// line's IRQ permission) only if no other device of `owner` shares the machine line,
    /// since unmapping a pirq force-unbinds every device bound to it (qemu refcounts the
    /// same way). The caller forgets the line's index node ([`forget_intx_line`]) in the
    /// transaction that forgets the binding, so a resumed teardown decides the same way.
    fn release_intx_line(
        &mut self,
        sbdf: Sbdf,
        owner: DomId,
        b: &Binding,
        pirq: Pirq,
    ) -> Result<()> {
        let hv = self.platform.hypervisor();
        if b.state != BindingState::Mapped {
            // Mapped only (attach's map, never bound by a device model): Xen 4.17.5
            // answers an unbind with -EINVAL; there is no link to remove.
            unless_gone(hv.unbind_pt_irq(owner, &b.pt_irq(pirq, sbdf)))?;
        }
        let own = sbdf.xs_key();
        let others: Vec<String> = match self
            .xs
            .directory(TxId::NONE, &intx_line_path(owner, b.gsi, None))
        {
            Ok(n) => n.into_iter().filter(|n| *n != own).collect(),
            Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if others.is_empty() {
            unless_gone(hv.unmap_pirq(owner, pirq))?;
            unless_gone(hv.irq_permission(owner, Pirq(b.gsi as i32), false))?;
        } else {
            tracing::info!(%sbdf, %owner, gsi = b.gsi, shared_with = ?others, "INTx line shared with other devices of the guest: its pirq stays mapped for them");
        }
        Ok(())
    }

    fn quarantine(&mut self, sbdf: Sbdf, reason: String) -> Result<Outcome> {
        self.xs.transaction(|xs, tx| -> Result<()> {
            write(xs, tx, &field_path(sbdf, "state"), "quarantined")?;
            write(xs, tx, &field_path(sbdf, "reason"), &reason)?;
            Ok(())
        })?;
        self.notice(format!("{sbdf}: QUARANTINED: {reason}"));
        Ok(Outcome::Quarantined { reason })
    }

    /// Turns memory decoding on so Xen masks vectors in the table instead of falling back
    /// to `host_maskall` (DESIGN.md §2 step 2, xen-semantics.md §1.3).
    /// Turns memory decoding on where Xen looks for it (`memory_decoded()`): the function
    /// itself, or for an SR-IOV virtual function its physical function (a VF's own Memory
    /// bit is hard-wired 0, so writing it would change nothing).
    pub(crate) fn ensure_memory_decoding(&mut self, sbdf: Sbdf) -> Result<()> {
        let pci = self.platform.pci();
        let sbdf = pci.physfn(sbdf)?.unwrap_or(sbdf);
        let cfg = pci.read_config(sbdf)?;
        let cmd = u16::from_le_bytes([
            cfg.get(4).copied().unwrap_or(0),
            cfg.get(5).copied().unwrap_or(0),
        ]);
        if cmd & COMMAND_MEMORY == 0 {
            pci.write_config(sbdf, COMMAND, &(cmd | COMMAND_MEMORY).to_le_bytes())?;
        }
        Ok(())
    }

    fn run_teardown(&mut self, sbdf: Sbdf) -> Result<Outcome> {
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        // Read once; each step journals its successor and updates this copy (the broker
        // refuses a tearing-down device, so nobody else changes the record meanwhile).
        let mut rec = self.require(sbdf)?;
        // Companion mode (an adopted device): the toolstack revokes, removes its backend
        // and deassigns; doing it too would race it.
        let mode = read_opt(self.xs, TxId::NONE, &field_path(sbdf, "mode"))?;
        let companion = matches!(mode.as_deref(), Some(COMPANION | COMPANION_KEEP));
        let forget = mode.as_deref() == Some(COMPANION);
        // A domain that reused the owner's domid is another guest: none of the owner-directed
        // calls (permissions, backend, unbind/unmap, deassign) may touch it. Xen already
        // freed everything of the owner when it destroyed it.
        let replaced = match (rec.owner, rec.owner_handle) {
            (Some(d), Some(h)) => hv.domain_info(d)?.is_some_and(|i| i.handle != h),
            _ => false,
        };
        if replaced {
            self.notice(format!("{sbdf}: its owner was destroyed and its domid reused by another domain; nothing of that domain is touched"));
        }
        let mut swept = false;
        loop {
            let owner = rec
                .owner
                .ok_or_else(|| corrupt(field_path(sbdf, "owner"), "", "missing during teardown"))?;
            if self.protected.contains(owner) {
                // Only a hand-edited ledger (or a domain protected after the attach) gets
                // here: revoking or unbinding would strip a protected domain.
                let why = format!("the ledger names protected domain {owner} as the owner; nothing was revoked, unbound or reset (check the ledger by hand)");
                if rec.state == DeviceState::Quarantined && rec.reason.as_deref() == Some(&why) {
                    return Ok(Outcome::Quarantined { reason: why });
                }
                return self.quarantine(sbdf, why);
            }
            let step = rec.step.unwrap_or(Step::Revoke);
            self.checkpoint(|| format!("{sbdf} teardown: {}", step.as_str()))?;
            let next = match step {
                Step::Attach | Step::Revoke if replaced || companion => Step::Unbind,
                Step::Attach | Step::Revoke => {
                    bar_permissions(hv, pci, owner, sbdf, false, unless_gone)?;
                    // The INTx line's permission goes with its pirq (Unbind): another
                    // device of the same guest may share the line.
                    let backend_gone = self.remove_backend(sbdf, owner)?;
                    self.platform.backend_changed(sbdf, None);
                    if backend_gone {
                        // pciback resets and gives the device back in its own worker, after
                        // the Xenstore removal: everything from here on must come after
                        // that, or its reset (and the old pciback's Command write) would
                        // undo ours.
                        let released = pci.wait_backend_released(owner.0, PCIBACK_RELEASE)?;
                        if !released {
                            return Err(EngineError::PcibackHoldsBackend {
                                sbdf,
                                domid: owner,
                                waited: PCIBACK_RELEASE,
                            });
                        }
                    }
                    Step::Unbind
                }
                Step::Unbind => {
                    self.ensure_memory_decoding(sbdf)?;
                    let known: Vec<Binding> = rec
                        .bindings
                        .iter()
                        .filter(|b| b.pirq.is_some())
                        .copied()
                        .collect();
                    for b in known.iter().filter(|_| !replaced) {
                        let Some(pirq) = b.pirq else { continue };
                        self.checkpoint(|| format!("{sbdf} teardown: force-unbind {}", b.key))?;
                        if b.key == BindingKey::Intx {
                            self.release_intx_line(sbdf, owner, b, pirq)?;
                        } else if b.state == BindingState::Mapped {
                            // Mapped (attach's INTx) but never bound by a device model:
                            // Xen 4.17.5 answers an unbind with -EINVAL and logs
                            // `pt_irq_destroy_bind failed`; the unmap alone is the cleanup.
                            unless_gone(hv.unmap_pirq(owner, pirq))?;
                        } else {
                            unbind_and_unmap(hv, owner, &b.pt_irq(pirq, sbdf))?;
                        }
                    }
                    self.checkpoint(|| format!("{sbdf} teardown: forget bindings"))?;
                    // The lost-maps count stays until the teardown ends: Release needs it.
                    let all_known = known.len() == rec.bindings.len() && rec.lost_maps == 0;
                    let intx_gsi = known
                        .iter()
                        .find(|b| b.key == BindingKey::Intx)
                        .map(|b| b.gsi);
                    self.xs.transaction(|xs, tx| -> Result<()> {
                        if let Some(gsi) = intx_gsi {
                            forget_intx_line(xs, tx, owner, gsi, sbdf)?;
                        }
                        if all_known {
                            // One recursive rm instead of one per binding.
                            rm(xs, tx, &field_path(sbdf, "binding"))?;
                        } else {
                            for b in &known {
                                rm(xs, tx, &binding_path(sbdf, &b.key))?;
                            }
                        }
                        write(xs, tx, &field_path(sbdf, "step"), Step::Release.as_str())
                    })?;
                    rec.bindings.retain(|b| b.pirq.is_none());
                    rec.step = Some(Step::Release);
                    continue;
                }
                Step::Deassign if replaced || companion => Step::Reset,
                Step::Deassign => {
                    match hv.deassign_device(owner, sbdf) {
                        // A domain without an IOMMU context never had the device (an attach
                        // refused at assign, rolled back through here).
                        Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {}
                        r => unless_gone(r)?,
                    }
                    Step::Reset
                }
                Step::Release => {
                    if rec.msix_size == 0 {
                        Step::Deassign
                    } else {
                        let mut released = hv.release_msix(sbdf);
                        if released.as_ref().err().and_then(XenError::errno) == Some(Errno::EBUSY)
                            && hv.prepare_msix(sbdf).is_ok()
                        {
                            // The count was 0: a crash hit after our release and before the
                            // step was recorded. Prepare took it back to 1; release again.
                            released = hv.release_msix(sbdf);
                        }
                        match released {
                            // Deassign only once no stale binding is left: until then the
                            // device stays with its (dying) owner, never with a new one.
                            Ok(()) => Step::Deassign,
                            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                                let info = hv.domain_info(owner)?.filter(|_| !replaced);
                                // Bindings the ledger does not know (a stock device model's)
                                // of an owner that will never run again: sweep them, with
                                // decoding on, and release again. Idempotent, so a crash
                                // here resumes at this step and sweeps again.
                                if !swept && info.as_ref().is_some_and(|i| i.finished()) {
                                    swept = true;
                                    self.ensure_memory_decoding(sbdf)?;
                                    self.checkpoint(|| format!("{sbdf} teardown: sweep {owner}"))?;
                                    if !self.sweep(owner)?.unmapped.is_empty() {
                                        continue;
                                    }
                                }
                                let unconfirmed = rec.bindings.len();
                                let lost = rec.lost_maps as usize + unconfirmed;
                                let why = match info {
                                    Some(i) if !i.dying && !i.shutdown && lost > 0 => format!(
                                        "release_msix answered -EBUSY while {owner} still runs: {lost} bind(s) were interrupted by a crash between map_pirq and recording the pirq Xen chose, so a mapping nobody can name may remain; kept from every guest until {owner} is gone (Xen then frees its pirqs)"
                                    ),
                                    Some(i) if !i.dying && !i.shutdown => format!(
                                        "release_msix answered -EBUSY while {owner} still runs: it holds bindings the ledger does not know — its device model bypassed the broker; kept from every guest until {owner} is gone"
                                    ),
                                    Some(_) => format!(
                                        "release_msix answered -EBUSY: {owner} holds bindings the ledger does not know ({unconfirmed} unconfirmed intents); waiting for {owner} to be destroyed"
                                    ),
                                    None => "release_msix answered -EBUSY although the owner is gone: another domain still maps the device".to_string(),
                                };
                                return self.quarantine(sbdf, why);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Step::Reset => {
                    if pci.can_reset(sbdf)? {
                        pci.reset(sbdf)?;
                    } else {
                        self.notice(format!("{sbdf}: no reset method; relying on prepare and a cleared Message Control"));
                    }
                    Step::Prepare
                }
                Step::Prepare => {
                    if rec.msix_size > 0 {
                        let mut r = hv.prepare_msix(sbdf);
                        if r.as_ref().err().and_then(XenError::errno) == Some(Errno::ENXIO) {
                            self.ensure_memory_decoding(sbdf)?;
                            r = hv.prepare_msix(sbdf);
                        }
                        match r {
                            Ok(()) => {}
                            // Already prepared: a resumed teardown that crashed after this call.
                            Err(e)
                                if e.errno() == Some(Errno::EBUSY)
                                    && self.prepared_by_us(sbdf)? => {}
                            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                                return self.quarantine(sbdf, "prepare_msix answered -EBUSY: a vector was mapped after release".into());
                            }
                            Err(e) => return Err(e.into()),
                        }
                        // Enable and Function Mask off: some devices keep MASKALL across reset.
                        let cfg = ConfigSpace::new(pci.read_config(sbdf)?).and_then(|c| c.parse());
                        if let Ok(Some(m)) = cfg.map(|c| c.msix) {
                            pci.write_config(sbdf, m.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
                        }
                    }
                    Step::Verify
                }
                Step::Verify => {
                    let cfg = ConfigSpace::new(pci.read_config(sbdf)?).and_then(|c| c.parse());
                    let dry = self.platform.is_dry_run();
                    // Only what a real host can read: the config space. Xen's own MSI-X state is
                    // the independent oracle's to check (`World::msix_clean`), not ours.
                    let problem = match cfg {
                        _ if dry => None,
                        Ok(c) => match c.msix {
                            Some(m) if m.function_mask => {
                                Some("MSI-X Function Mask still set".to_string())
                            }
                            Some(m) if m.enabled => Some("MSI-X still enabled".to_string()),
                            _ => None,
                        },
                        Err(e) => Some(format!("config space unreadable: {e}")),
                    };
                    if let Some(p) = problem {
                        return self.quarantine(sbdf, format!("verification failed: {p}"));
                    }
                    let epoch = next_epoch(sbdf, rec.epoch)?;
                    if forget {
                        // The toolstack owns the device between guests: ptguard keeps a
                        // record only while a guest holds it (the next one is adopted anew).
                        rm(self.xs, TxId::NONE, &device_path(sbdf))?;
                        return Ok(Outcome::Assignable { epoch });
                    }
                    self.xs.transaction(|xs, tx| -> Result<()> {
                        write(xs, tx, &field_path(sbdf, "state"), "assignable")?;
                        write(xs, tx, &field_path(sbdf, "epoch"), &epoch.to_string())?;
                        for f in ["owner", "step", "reason", "binding", "mode"] {
                            rm(xs, tx, &field_path(sbdf, f))?;
                        }
                        Ok(())
                    })?;
                    return Ok(Outcome::Assignable { epoch });
                }
            };
            self.set_step(sbdf, next)?;
            rec.step = Some(next);
        }
    }

    /// Whether the device is prepared by pciback/us already (the step after a crash that
    /// happened between `prepare_msix` and recording it): a second release would say so.
    fn prepared_by_us(&mut self, sbdf: Sbdf) -> Result<bool> {
        // release_msix succeeds only with exactly prepare's reference; redo prepare at once.
        let hv = self.platform.hypervisor();
        match hv.release_msix(sbdf) {
            Ok(()) => {
                hv.prepare_msix(sbdf)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    // ---------------------------------------------------------------------------------
    // Recovery
    // ---------------------------------------------------------------------------------

    /// Finishes whatever a crash left half done: teardowns, quarantines whose owner is gone,
    /// attaches interrupted midway, devices whose owner died while ptguard was down.
    pub fn recover(&mut self) -> Result<Vec<(Sbdf, Outcome)>> {
        let hv = self.platform.hypervisor();
        let mut out = Vec::new();
        for rec in self.list()? {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    self.notice(format!("recover: skipping a corrupt ledger entry: {e}"));
                    continue;
                }
            };
            let sbdf = rec.sbdf;
            // A domain that reuses the owner's domid is not the owner (its handle differs).
            let owner_alive = match rec.owner {
                Some(d) => hv.domain_info(d)?.is_some_and(|i| {
                    !i.dying && !i.shutdown && same_incarnation(rec.owner_handle, &i)
                }),
                None => false,
            };
            let outcome = match rec.state {
                DeviceState::TearingDown | DeviceState::Quarantined => self.run_teardown(sbdf),
                DeviceState::Attached if rec.step == Some(Step::Attach) => {
                    self.teardown(sbdf, "attach-interrupted")
                }
                DeviceState::Attached if !owner_alive => self.teardown(sbdf, "destroy"),
                _ => continue,
            };
            let outcome = match outcome {
                Ok(o) => Some(o),
                Err(e) if e.is_crash() => return Err(e),
                // One device's failing step must not stop the rest (nor the daemon): keep
                // it from guests, say why, and retry it on the next round.
                Err(e) => {
                    let step = self
                        .record(sbdf)
                        .ok()
                        .flatten()
                        .and_then(|r| r.step)
                        .map_or("its first step", |s| s.as_str());
                    let why = format!("teardown stopped at {step}: {e}; retried on the next domain event or command");
                    Some(self.quarantine(sbdf, why)?)
                }
            };
            if let Some(o) = outcome {
                out.push((sbdf, o));
            }
        }
        Ok(out)
    }
}
