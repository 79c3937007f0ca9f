//! Why the broker (or a lifecycle command) refuses a request, with a stable code per reason.
//!
//! The codes are part of the broker protocol (`docs/broker.md`): a device model or a
//! toolstack may match on them, so they never change meaning. The text says what was asked
//! and what the ledger or the host says instead.

use std::fmt;

use serde::Serialize;
use wire::ReplyCode;
use xen::DomId;

use crate::ledger::{BindingKey, DeviceState};
use crate::Liveness;

/// One reason to refuse a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Refusal {
    /// The device has no ledger entry.
    NotManaged,
    /// The device is not attached to anyone (assignable, quarantined, failed).
    NotAttached { state: DeviceState },
    /// An attach has not finished yet.
    AttachInProgress,
    /// A teardown runs: the broker accepts nothing until the device is clean.
    TearingDown,
    /// The device belongs to another domain (or to none).
    WrongDomain { owner: Option<DomId> },
    /// The requester reuses the owner's domid but is another domain (its handle differs
    /// from the one recorded when the device was given).
    StaleIncarnation {
        domid: DomId,
        recorded: String,
        current: String,
    },
    /// The requester is the owner's incarnation but will never run again (dying, shut
    /// down for good): its vectors are its teardown's, not its device model's to add.
    RequesterFinished { domid: DomId, liveness: Liveness },
    /// The request carries an epoch of an earlier assignment.
    StaleEpoch { presented: u64, current: u64 },
    /// An MSI-X entry at or beyond the device's table size.
    EntryBeyondTable { entry: u16, table_size: u16 },
    /// `table_base` is not the host address of the device's MSI-X BAR.
    WrongTableBase { presented: u64, expected: u64 },
    /// An INTx request for a GSI that is not the device's own interrupt line.
    NotDeviceGsi { presented: u32, line: Option<u32> },
    /// An INTx guest slot beyond 31 or a pin beyond INTD.
    BadGuestIntx { device: u8, intx: u8 },
    /// The interrupt is bound already.
    AlreadyBound { key: String },
    /// An unbind of a binding the ledger does not hold (or with another pirq).
    NoSuchBinding { key: String, pirq: i32 },
    /// dom0, dom_io, dom_xen, a reserved id, or a domain the operator protected.
    ProtectedDomain { domid: DomId },
    /// The connecting process is not the domain's device model.
    NotDeviceModel { peer_pid: i32, dm_pid: i32 },
    /// A request from a process not proven to be the domain's device model (no
    /// `device-model-pid` in Xenstore, another pid, or the socket could not name the peer)
    /// that carries no token.
    CredentialRequired,
    /// The token is not the one handed out for the device's current assignment to this
    /// domain (or the device is not attached to it: an unproven caller learns nothing more).
    CredentialRejected,
    /// A device model asked to map a pirq that another interrupt of its domain holds (its
    /// INTx, another vector) or that lies in the GSI range: Xen would answer success
    /// without mapping anything.
    PirqInUse { pirq: i32 },
    /// The request line is not a request.
    Malformed { detail: String },
    /// The request line is longer than the protocol allows.
    TooLong { limit: usize },
}

impl Refusal {
    /// The stable reason code, as sent in the broker's `code` field.
    pub fn code(&self) -> ReplyCode {
        match self {
            Refusal::NotManaged => ReplyCode::NotManaged,
            Refusal::NotAttached { .. } => ReplyCode::NotAttached,
            Refusal::AttachInProgress => ReplyCode::AttachInProgress,
            Refusal::TearingDown => ReplyCode::TearingDown,
            Refusal::WrongDomain { .. } => ReplyCode::WrongDomain,
            Refusal::StaleIncarnation { .. } => ReplyCode::StaleIncarnation,
            Refusal::RequesterFinished { .. } => ReplyCode::RequesterFinished,
            Refusal::StaleEpoch { .. } => ReplyCode::StaleEpoch,
            Refusal::EntryBeyondTable { .. } => ReplyCode::EntryBeyondTable,
            Refusal::WrongTableBase { .. } => ReplyCode::WrongTableBase,
            Refusal::NotDeviceGsi { .. } => ReplyCode::NotDeviceGsi,
            Refusal::BadGuestIntx { .. } => ReplyCode::BadGuestIntx,
            Refusal::AlreadyBound { .. } => ReplyCode::AlreadyBound,
            Refusal::NoSuchBinding { .. } => ReplyCode::NoSuchBinding,
            Refusal::ProtectedDomain { .. } => ReplyCode::ProtectedDomain,
            Refusal::NotDeviceModel { .. } => ReplyCode::NotDeviceModel,
            Refusal::CredentialRequired => ReplyCode::CredentialRequired,
            Refusal::CredentialRejected => ReplyCode::CredentialRejected,
            Refusal::PirqInUse { .. } => ReplyCode::PirqInUse,
            Refusal::Malformed { .. } => ReplyCode::Malformed,
            Refusal::TooLong { .. } => ReplyCode::TooLong,
        }
    }

    /// The sentence the broker sends: what was wrong with the request, and nothing of the
    /// ledger's or another domain's state (no epoch, pid, owner, handle or device state), so
    /// a refusal teaches a caller nothing it could present next time. The full text
    /// ([`fmt::Display`]) goes to the daemon's log.
    pub fn public_text(&self) -> String {
        match self {
            Refusal::NotAttached { .. } => "the device is not attached".into(),
            Refusal::WrongDomain { .. } => "the device is not attached to this domain".into(),
            Refusal::StaleIncarnation { domid, .. } => {
                format!("{domid} is not the domain the device was given to")
            }
            Refusal::StaleEpoch { presented, .. } => {
                format!("epoch {presented} is not the device's current assignment")
            }
            Refusal::RequesterFinished { domid, .. } => format!("{domid} will not run again"),
            Refusal::NotDeviceModel { .. } => {
                "the connecting process is not the domain's device model".into()
            }
            Refusal::WrongTableBase { presented, .. } => {
                format!("table_base {presented:#x} is not the device's MSI-X BAR")
            }
            Refusal::NotDeviceGsi { presented, .. } => {
                format!("GSI {presented} is not the device's interrupt line")
            }
            other => other.to_string(),
        }
    }

    pub(crate) fn already_bound(key: BindingKey) -> Refusal {
        Refusal::AlreadyBound {
            key: key.to_string(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotManaged => f.write_str("the device is not managed by ptguard"),
            Refusal::NotAttached { state } => write!(f, "the device is {state}, not attached"),
            Refusal::AttachInProgress => f.write_str("the device's attach has not finished"),
            Refusal::TearingDown => f.write_str("the device is being torn down"),
            Refusal::WrongDomain { owner: Some(o) } => write!(f, "the device is attached to {o}"),
            Refusal::WrongDomain { owner: None } => f.write_str("the device has no owner"),
            Refusal::StaleEpoch { presented, current } => {
                write!(f, "stale epoch {presented} (current {current})")
            }
            Refusal::StaleIncarnation {
                domid,
                recorded,
                current,
            } => write!(
                f,
                "{domid} is not the domain the device was given to: that one (handle {recorded}) is gone and its domid was reused (handle {current})"
            ),
            Refusal::RequesterFinished { domid, liveness } => write!(
                f,
                "{domid} is {liveness}: a domain that will not run again gets no new interrupt; its teardown takes the device back"
            ),
            Refusal::EntryBeyondTable { entry, table_size } => write!(
                f,
                "MSI-X entry {entry} is beyond the table ({table_size} entries)"
            ),
            Refusal::WrongTableBase {
                presented,
                expected,
            } => write!(
                f,
                "table_base {presented:#x} is not the device's MSI-X BAR ({expected:#x})"
            ),
            Refusal::NotDeviceGsi {
                presented,
                line: Some(l),
            } => write!(
                f,
                "GSI {presented} is not the device's interrupt line (GSI {l})"
            ),
            Refusal::NotDeviceGsi {
                presented,
                line: None,
            } => write!(
                f,
                "GSI {presented} requested, but the device has no INTx line"
            ),
            Refusal::BadGuestIntx { device, intx } => write!(
                f,
                "guest INTx at slot {device} pin {intx}: a guest slot is 0-31 and a pin 0-3 (INTA-INTD)"
            ),
            Refusal::AlreadyBound { key } => write!(f, "{key} is already bound"),
            Refusal::NoSuchBinding { key, pirq } => {
                write!(f, "the ledger holds no binding {key} with pirq {pirq}")
            }
            Refusal::ProtectedDomain { domid } => write!(
                f,
                "{domid} is a protected domain (dom0, dom_io, dom_xen, a reserved id or one given with --protect); ptguard never changes its interrupts, devices or permissions"
            ),
            Refusal::NotDeviceModel { peer_pid, dm_pid } => write!(
                f,
                "request from pid {peer_pid}, but the domain's device model is pid {dm_pid}"
            ),
            Refusal::CredentialRequired => f.write_str(
                "a request is accepted only from the domain's device model as the toolstack recorded it (/local/domain/<domid>/image/device-model-pid) or with the token `ptguard attach` printed",
            ),
            Refusal::CredentialRejected => f.write_str(
                "the token is not the one issued for this device's current assignment to this domain",
            ),
            Refusal::PirqInUse { pirq } => write!(
                f,
                "pirq {pirq} is not free for an MSI-X vector: another interrupt of the domain holds it, or it is a GSI's"
            ),
            Refusal::Malformed { detail } => write!(f, "malformed request: {detail}"),
            Refusal::TooLong { limit } => write!(f, "request longer than {limit} bytes"),
        }
    }
}

/// The domains ptguard never touches: dom0, every reserved id (dom_io, dom_xen, ...), and
/// any the operator lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtectedDomains {
    extra: Vec<DomId>,
}

impl ProtectedDomains {
    pub fn new(extra: &[DomId]) -> ProtectedDomains {
        ProtectedDomains {
            extra: extra.to_vec(),
        }
    }

    pub fn contains(&self, domid: DomId) -> bool {
        domid == DomId::DOM0 || domid > DomId::MAX || self.extra.contains(&domid)
    }

    /// The operator-listed ones (dom0 and the reserved ids are always protected).
    pub fn extra(&self) -> &[DomId] {
        &self.extra
    }
}
