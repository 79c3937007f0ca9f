//! The engine's vocabulary and its core: how a teardown ends ([`Outcome`]), what a device
//! model asks to bind ([`BindRequest`]), and the [`Engine`] over one Xenstore connection and
//! one platform, with its crash points and notices. The work lives beside it:
//! `lifecycle.rs` (assignable-add/-remove, adopt, repair, attach), `bind.rs` (the broker's
//! bind and unbind), `teardown.rs` (docs/design.md "The cure", and recovery), `store.rs` (the ledger's
//! Xenstore reads and writes), `calls.rs` (hypervisor and PCI helpers). Every ledger change
//! with more than one node is one Xenstore transaction; a single-node change is one request
//! (xenstored applies each request atomically).

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, MapPirq, Pirq};
use xenstore::{Access, TxId, XsClient};

pub(crate) use crate::bind::refused;
pub use crate::calls::held_by_guest;
pub(crate) use crate::calls::*;
pub use crate::crash::{CrashPoint, CrashPoints, CrashStep};
use crate::ledger::*;
use crate::notice::{Notice, NoticeKind, NoticeSink};
use crate::quarantine::QuarantineReason;
use crate::refusal::{ProtectedDomains, Refusal};
pub(crate) use crate::store::*;
pub use crate::store::{read_head, read_record};
use crate::{EngineError, Platform};

type Result<T> = std::result::Result<T, EngineError>;

/// How a teardown ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "OutcomeJson")]
pub enum Outcome {
    /// Clean, reset and prepared; ready for the next guest.
    Assignable { epoch: u64 },
    /// Not provably clean; kept away from guests until the reason goes away.
    Quarantined { reason: QuarantineReason },
    /// The toolstack gave the device to another guest before its teardown could reset
    /// it: the old owner's record ended (its pirqs of the device unmapped) and the device
    /// was adopted as `to`'s at `epoch`; nothing was reset under `to`.
    HandedOver { to: DomId, epoch: u64 },
}

/// An outcome as `--json` prints it: a quarantine's reason as its text, with its cause's
/// code beside it.
#[derive(Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
enum OutcomeJson {
    Assignable {
        epoch: u64,
    },
    Quarantined {
        reason: QuarantineReason,
        cause: &'static str,
    },
    HandedOver {
        to: DomId,
        epoch: u64,
    },
}

impl From<Outcome> for OutcomeJson {
    fn from(o: Outcome) -> OutcomeJson {
        match o {
            Outcome::Assignable { epoch } => OutcomeJson::Assignable { epoch },
            Outcome::Quarantined { reason } => OutcomeJson::Quarantined {
                cause: reason.code(),
                reason,
            },
            Outcome::HandedOver { to, epoch } => OutcomeJson::HandedOver { to, epoch },
        }
    }
}

/// As an operator reads it in a log line.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Assignable { epoch } => write!(f, "clean and assignable (epoch {epoch})"),
            Outcome::Quarantined { reason } => write!(f, "QUARANTINED: {reason}"),
            Outcome::HandedOver { to, epoch } => write!(
                f,
                "handed over to {to} (epoch {epoch}) before it could be reset: the toolstack gave it on; nothing was reset under {to}"
            ),
        }
    }
}

/// What a device model asks the broker to bind: its INTx line or one MSI-X entry.
pub type BindKind = xen::IrqSource;

/// A broker request: the protocol's own type (`crates/wire`), served in-process as it is
/// on the socket.
pub use wire::BindRequest;

/// What the engine reads off a bind request: its ledger key, record and map argument.
pub(crate) trait BindRequestExt {
    fn key(&self) -> BindingKey;
    fn binding(&self, state: BindingState, pirq: Option<Pirq>) -> Binding;
    fn map_request(&self) -> MapPirq;
}

impl BindRequestExt for BindRequest {
    fn key(&self) -> BindingKey {
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

    /// `PHYSDEVOP_map_pirq`'s argument.
    fn map_request(&self) -> MapPirq {
        self.kind.map_request(self.domid, self.sbdf)
    }
}

/// ptguard's engine over one Xenstore connection and one platform.
pub struct Engine<'a> {
    pub(crate) xs: &'a mut XsClient,
    pub(crate) platform: &'a dyn Platform,
    crash_points: Option<&'a CrashPoints>,
    /// What the engine found and did that the operator must hear of (quarantines, cures,
    /// swept or unmapped pirqs), for the caller to print or log, each once: here unless the
    /// caller gave a sink of its own ([`Engine::reporting_to`]).
    pub notices: Vec<Notice>,
    sink: Option<&'a mut dyn NoticeSink>,
    pub(crate) protected: ProtectedDomains,
}

/// How long a teardown waits for pciback to let go of a removed backend before it stops
/// (and resumes from the same step on the next round).
pub const PCIBACK_RELEASE: std::time::Duration = std::time::Duration::from_secs(10);

impl<'a> Engine<'a> {
    pub fn new(xs: &'a mut XsClient, platform: &'a dyn Platform) -> Engine<'a> {
        Engine {
            xs,
            platform,
            crash_points: None,
            notices: Vec::new(),
            sink: None,
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

    /// Counts the crash points this engine passes in `points`, which may plan a crash
    /// ([`EngineError::Crashed`]) at one of them.
    pub fn counting(mut self, points: &'a CrashPoints) -> Engine<'a> {
        self.crash_points = Some(points);
        self
    }

    /// A crash point: the explorer's planned crash may stop the run here.
    pub(crate) fn checkpoint(&mut self, sbdf: Sbdf, step: CrashStep) -> Result<()> {
        match self.crash_points {
            Some(c) if c.pass() => Err(EngineError::Crashed {
                at: CrashPoint { sbdf, step },
            }),
            _ => Ok(()),
        }
    }

    /// Sends every notice to `sink` as it happens (the daemon logs and counts each at
    /// once), instead of keeping it in [`Engine::notices`].
    pub fn reporting_to(mut self, sink: &'a mut dyn NoticeSink) -> Engine<'a> {
        self.sink = Some(sink);
        self
    }

    /// Tells the operator, through the caller's sink: the engine itself never prints, so
    /// each notice lands once.
    pub(crate) fn say(&mut self, kind: NoticeKind) {
        let n = Notice::new(kind);
        match self.sink.as_mut() {
            Some(s) => s.notice(n),
            None => self.notices.push(n),
        }
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
            // A new ledger: every record it will hold is indexed by owner from the start.
            write(self.xs, TxId::NONE, OWNERS, OWNERS_INDEXED)?;
        }
        Ok(())
    }

    pub fn record(&mut self, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
        read_record(self.xs, TxId::NONE, sbdf)
    }

    pub(crate) fn require(&mut self, sbdf: Sbdf) -> Result<DeviceRecord> {
        self.record(sbdf)?
            .ok_or(EngineError::UnknownDevice { sbdf })
    }

    /// Every managed device (entries that fail to parse are returned as errors in place).
    pub fn list(&mut self) -> Result<Vec<std::result::Result<DeviceRecord, EngineError>>> {
        self.list_with(read_record)
    }

    /// Every managed device's head — state, step, owner and its incarnation, epoch — without
    /// its bindings: what a decision about which device to act on needs, one request per
    /// device however many vectors each has.
    pub fn list_heads(&mut self) -> Result<Vec<std::result::Result<DeviceRecord, EngineError>>> {
        self.list_with(read_head)
    }

    /// The heads of the devices the ledger records for `domid`, through the owner index;
    /// a ledger not yet wholly indexed is listed whole once, and indexed.
    pub fn owned_heads(
        &mut self,
        domid: DomId,
    ) -> Result<Vec<std::result::Result<DeviceRecord, EngineError>>> {
        if let Some(names) = indexed_devices(self.xs, domid)? {
            let mut out = Vec::new();
            for n in names {
                let Ok(sbdf) = Sbdf::from_xs_key(&n) else {
                    continue;
                };
                match read_head(self.xs, TxId::NONE, sbdf) {
                    Ok(Some(r)) if r.owner == Some(domid) => out.push(Ok(r)),
                    // A note the record no longer backs (edited by hand): dropped.
                    Ok(_) => rm(self.xs, TxId::NONE, &owner_index_path(domid, sbdf))?,
                    Err(e) => out.push(Err(e)),
                }
            }
            return Ok(out);
        }
        let heads = self.list_heads()?;
        // Each note is idempotent; the marker is written last, so a crash here only
        // means the next release indexes again.
        for r in heads.iter().flatten() {
            index_owner(self.xs, TxId::NONE, r)?;
        }
        write(self.xs, TxId::NONE, OWNERS, OWNERS_INDEXED)?;
        Ok(heads)
    }

    fn list_with(
        &mut self,
        read: fn(&mut XsClient, TxId, Sbdf) -> Result<Option<DeviceRecord>>,
    ) -> Result<Vec<std::result::Result<DeviceRecord, EngineError>>> {
        let mut out = Vec::new();
        for n in device_names(self.xs)? {
            match Sbdf::from_xs_key(&n) {
                Ok(sbdf) => match read(self.xs, TxId::NONE, sbdf) {
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
}
