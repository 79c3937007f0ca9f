//! What the engine tells the operator, typed: each [`NoticeKind`] carries the device, the
//! domain and the facts it speaks of, so the daemon's log, its metrics and the explorer read
//! the same event without parsing prose. The engine does not print: it hands each notice to
//! the [`NoticeSink`] its caller provides (by default the engine's own list), once.

use std::fmt;

use pci::Sbdf;
use serde::{Serialize, Serializer};
use xen::{DomId, Pirq};

use crate::quarantine::QuarantineReason;

/// How loud a notice is: routine, or something an operator should look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeLevel {
    Info,
    Warn,
}

/// One thing the engine found or did that the operator must hear of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The device is kept from every guest.
    Quarantined {
        sbdf: Sbdf,
        reason: QuarantineReason,
    },
    /// A finished domain's pirqs that its device model left mapped, unmapped.
    Swept { domid: DomId, pirqs: Vec<Pirq> },
    /// A PV guest's sweep: its pirqs are pciback's, none touched.
    SweepSkippedPv { domid: DomId },
    /// A dead device model's bindings released while its guest runs.
    OrphansReleased {
        sbdf: Sbdf,
        domid: DomId,
        pirqs: Vec<Pirq>,
    },
    /// The recorded owner was destroyed and its domid now names another domain.
    DomidReused { sbdf: Sbdf },
    /// No reset method: the teardown relies on prepare and a cleared Message Control.
    NoResetMethod { sbdf: Sbdf },
    /// Pirqs the owner still had bound to the device's vectors, unmapped by the teardown.
    OwnerVectorsUnmapped {
        sbdf: Sbdf,
        owner: DomId,
        pirqs: Vec<Pirq>,
    },
    /// Vectors of the device bound to a domain other than its owner; left alone.
    ForeignVectorsLeft {
        sbdf: Sbdf,
        owner: DomId,
        count: usize,
    },
    /// An attach failed and was rolled back by a teardown.
    AttachRolledBack {
        sbdf: Sbdf,
        domid: DomId,
        error: String,
    },
    /// Companion mode recorded a device the toolstack gave (through the guest's
    /// device-model stubdomain, when it has one).
    Adopted {
        sbdf: Sbdf,
        domid: DomId,
        stubdomain: Option<DomId>,
    },
    /// The toolstack is unplugging the device: decoding turned on before its vectors go.
    UnplugDecodingOn { sbdf: Sbdf, owner: DomId },
    /// The device left a running owner; report-only mode did not clean it.
    LeftRunningOwnerNotCleaned { sbdf: Sbdf, owner: DomId },
    /// The device left its owner before the owner was gone; it is cleaned now.
    LeftOwnerCleaning { sbdf: Sbdf, owner: DomId },
    /// The toolstack gave the device on before ptguard could clean it.
    HandedOver { sbdf: Sbdf, from: DomId, to: DomId },
    /// pciback still exported a device that left a running HVM guest whose backend lists
    /// others; unbound from pciback and bound again, so that pciback gave it back now.
    PcibackGaveBack { sbdf: Sbdf, owner: DomId },
    /// No guest holds the device but its MSI-X state is dirty.
    Dirty {
        sbdf: Sbdf,
        found: &'static str,
        cure: CureResult,
    },
    /// A `hook pre-unplug` whose unplug has not finished.
    UnplugStalled {
        sbdf: Sbdf,
        owner: DomId,
        waited: u64,
    },
    /// A malformed ledger node dropped (an unplug marker edited by hand).
    MalformedDropped { path: String, why: String },
    /// A corrupt ledger entry skipped by recovery.
    CorruptEntrySkipped { error: String },
}

/// What became of a dirty, unheld device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CureResult {
    /// Report-only mode: not cured.
    NotTried,
    Cured {
        done: Vec<String>,
    },
    Failed {
        error: String,
    },
}

impl NoticeKind {
    /// A quarantine, a cure, a sweep or anything else done behind someone's back warns;
    /// the rest is routine.
    pub fn level(&self) -> NoticeLevel {
        match self {
            NoticeKind::SweepSkippedPv { .. }
            | NoticeKind::OrphansReleased { .. }
            | NoticeKind::DomidReused { .. }
            | NoticeKind::NoResetMethod { .. }
            | NoticeKind::AttachRolledBack { .. }
            | NoticeKind::Adopted { .. }
            | NoticeKind::UnplugDecodingOn { .. }
            | NoticeKind::LeftOwnerCleaning { .. }
            | NoticeKind::PcibackGaveBack { .. }
            | NoticeKind::CorruptEntrySkipped { .. } => NoticeLevel::Info,
            NoticeKind::Quarantined { .. }
            | NoticeKind::Swept { .. }
            | NoticeKind::OwnerVectorsUnmapped { .. }
            | NoticeKind::ForeignVectorsLeft { .. }
            | NoticeKind::LeftRunningOwnerNotCleaned { .. }
            | NoticeKind::HandedOver { .. }
            | NoticeKind::Dirty { .. }
            | NoticeKind::UnplugStalled { .. }
            | NoticeKind::MalformedDropped { .. } => NoticeLevel::Warn,
        }
    }

    /// A stable name for the kind: metrics labels and `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            NoticeKind::Quarantined { .. } => "quarantined",
            NoticeKind::Swept { .. } => "swept",
            NoticeKind::SweepSkippedPv { .. } => "sweep-skipped-pv",
            NoticeKind::OrphansReleased { .. } => "orphans-released",
            NoticeKind::DomidReused { .. } => "domid-reused",
            NoticeKind::NoResetMethod { .. } => "no-reset-method",
            NoticeKind::OwnerVectorsUnmapped { .. } => "owner-vectors-unmapped",
            NoticeKind::ForeignVectorsLeft { .. } => "foreign-vectors-left",
            NoticeKind::AttachRolledBack { .. } => "attach-rolled-back",
            NoticeKind::Adopted { .. } => "adopted",
            NoticeKind::UnplugDecodingOn { .. } => "unplug-decoding-on",
            NoticeKind::LeftRunningOwnerNotCleaned { .. } => "left-running-owner",
            NoticeKind::LeftOwnerCleaning { .. } => "left-owner-cleaning",
            NoticeKind::HandedOver { .. } => "handed-over",
            NoticeKind::PcibackGaveBack { .. } => "pciback-gave-back",
            NoticeKind::Dirty {
                cure: CureResult::NotTried,
                ..
            } => "dirty-not-cured",
            NoticeKind::Dirty {
                cure: CureResult::Cured { .. },
                ..
            } => "cured",
            NoticeKind::Dirty {
                cure: CureResult::Failed { .. },
                ..
            } => "cure-failed",
            NoticeKind::UnplugStalled { .. } => "unplug-stalled",
            NoticeKind::MalformedDropped { .. } => "malformed-dropped",
            NoticeKind::CorruptEntrySkipped { .. } => "corrupt-entry-skipped",
        }
    }
}

fn pirq_list(pirqs: &[Pirq]) -> String {
    pirqs
        .iter()
        .map(|p| p.0.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoticeKind::Quarantined { sbdf, reason } => write!(f, "{sbdf}: QUARANTINED: {reason}"),
            NoticeKind::Swept { domid, pirqs } => write!(f, "{domid}: swept {} pirq(s) its device model left mapped: {}", pirqs.len(), pirq_list(pirqs)),
            NoticeKind::SweepSkippedPv { domid } => write!(f, "{domid}: a PV guest: its pirqs are dom0's pciback's, nothing swept"),
            NoticeKind::OrphansReleased { sbdf, domid, pirqs } => write!(f, "{sbdf}: the device model of {domid} is gone; unbound and unmapped its {} vector(s) (pirqs {}) so that the domain's end finds nothing mapped", pirqs.len(), pirq_list(pirqs)),
            NoticeKind::DomidReused { sbdf } => write!(f, "{sbdf}: its owner was destroyed and its domid reused by another domain; nothing of that domain is touched"),
            NoticeKind::NoResetMethod { sbdf } => write!(f, "{sbdf}: no reset method; relying on prepare and a cleared Message Control"),
            NoticeKind::OwnerVectorsUnmapped { sbdf, owner, pirqs } => write!(f, "{sbdf}: unmapped pirq(s) {} that {owner} still had bound to the device's vectors (its device model left them; Xen's Q and i dumps name them)", pirq_list(pirqs)),
            NoticeKind::ForeignVectorsLeft { sbdf, owner, count } => write!(f, "{sbdf}: {count} of the device's vectors are bound to a domain other than its owner {owner}; left alone"),
            NoticeKind::AttachRolledBack { sbdf, domid, error } => write!(f, "{sbdf}: attach to {domid} failed ({error}); rolling back"),
            NoticeKind::Adopted { sbdf, domid, stubdomain: None } => write!(f, "{sbdf}: adopted from the toolstack as attached to {domid} (companion mode)"),
            NoticeKind::Adopted { sbdf, domid, stubdomain: Some(s) } => write!(f, "{sbdf}: adopted from the toolstack as attached to {domid}, its device model in stubdomain {s} (companion mode)"),
            NoticeKind::UnplugDecodingOn { sbdf, owner } => write!(f, "{sbdf}: the toolstack is unplugging it from {owner}; memory decoding turned on before its vectors are torn down"),
            NoticeKind::LeftRunningOwnerNotCleaned { sbdf, owner } => write!(f, "{sbdf}: left {owner} while {owner} runs; report-only: not cleaned (`ptguard detach {sbdf}` cleans it)"),
            NoticeKind::LeftOwnerCleaning { sbdf, owner } => write!(f, "{sbdf}: left {owner} before {owner} was gone (an unplug, or a destroy that takes the devices first); cleaning it before any guest gets it"),
            NoticeKind::HandedOver { sbdf, from, to } => write!(f, "{sbdf}: the toolstack moved it from {from} to {to} before ptguard could clean it; {to} may have received {from}'s MSI-X state; nothing is reset under {to}"),
            NoticeKind::PcibackGaveBack { sbdf, owner } => write!(f, "{sbdf}: left {owner}, an HVM guest that runs on with other devices in its PCI backend: pciback still exported it there (it gives an HVM guest's device back only when the whole backend goes, and would reset it then, under whoever has it); unbound from pciback and bound again, so pciback gave it back now"),
            NoticeKind::Dirty { sbdf, found, cure: CureResult::NotTried } => write!(f, "{sbdf}: no guest holds it but {found}; report-only: not cured (`ptguard repair {sbdf}` cures it)"),
            NoticeKind::Dirty { sbdf, found, cure: CureResult::Cured { done } } => write!(f, "{sbdf}: no guest held it but {found}; cured: {}", done.join(", ")),
            NoticeKind::Dirty { sbdf, found, cure: CureResult::Failed { error } } => write!(f, "{sbdf}: no guest holds it but {found}, and the cure failed: {error}"),
            NoticeKind::UnplugStalled { sbdf, owner, waited } => write!(f, "{sbdf}: the toolstack's unplug from {owner} has not finished {waited} s after `hook pre-unplug`: {owner} still has it (libxl gives an HVM guest's device model 10 s, then gives up and leaves the device with the guest; a guest that does not eject it, e.g. with memory decoding off, does this). Nothing is torn down while {owner} holds it; to finish: `xl pci-detach -f {} {sbdf}`, or shut {owner} down", owner.0),
            NoticeKind::MalformedDropped { path, why } => write!(f, "{path}: {why}; dropped"),
            NoticeKind::CorruptEntrySkipped { error } => write!(f, "recover: skipping a corrupt ledger entry: {error}"),
        }
    }
}

/// One thing the engine tells the operator: its kind with the facts, its level, and its
/// text as the log prints it. Reads as its text (`Deref<Target = str>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    pub kind: NoticeKind,
    pub text: String,
}

impl Notice {
    pub fn new(kind: NoticeKind) -> Notice {
        Notice {
            level: kind.level(),
            text: kind.to_string(),
            kind,
        }
    }
}

impl std::ops::Deref for Notice {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// As its text: JSON readers of `notices` see strings.
impl Serialize for Notice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Where the engine's notices go, given by the caller ([`crate::Engine::reporting_to`]):
/// the daemon logs each at once and counts it; a command prints them after its result.
pub trait NoticeSink {
    fn notice(&mut self, notice: Notice);
}

impl NoticeSink for Vec<Notice> {
    fn notice(&mut self, notice: Notice) {
        self.push(notice);
    }
}
