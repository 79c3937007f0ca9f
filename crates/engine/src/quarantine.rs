//! Why a device is kept from every guest: one variant per cause the teardown can find, each
//! with the facts it was found from. The ledger keeps the reason's text (`reason=`, for the
//! operator who reads the record, docs/ledger.md); callers that decide on a quarantine — the
//! daemon, the explorer, tests — match on the variant, never on the words.

use std::fmt;

use serde::{Serialize, Serializer};
use xen::{DomId, Errno};

use crate::liveness::Liveness;

/// Why a teardown quarantined a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuarantineReason {
    /// The ledger names a protected domain (dom0, a reserved id, `--protect`) as the
    /// owner: nothing of it is revoked, unbound or reset.
    ProtectedOwner { owner: DomId },
    /// After the owner's deassign, `test_assign_device` still says a guest holds the
    /// device: another domain has it.
    HeldAfterDeassign { owner: DomId, errno: Errno },
    /// The toolstack has not taken the device from its (running) owner yet.
    NotYetDeassigned { owner: DomId },
    /// Xen says a guest holds the device, but its `Q` dump has no line for it.
    HolderUnproven,
    /// `release_msix` answered `-EBUSY` for a PV owner, whose vectors dom0's pciback
    /// mapped and unmaps when it lets go of the device.
    PvVectorsArePciback { owner: DomId, finished: bool },
    /// `release_msix` answered `-EBUSY` while the owner runs, and `lost` binds were
    /// interrupted between `map_pirq` and recording the pirq Xen chose (docs/ledger.md,
    /// "The map→record window").
    LostMappings { owner: DomId, lost: usize },
    /// `release_msix` answered `-EBUSY` while the owner runs; Xen shows `unnamed` vectors
    /// mapped but bound to no guest, and does not name their pirqs.
    UnnamedVectors { owner: DomId, unnamed: usize },
    /// `release_msix` answered `-EBUSY` while the owner runs, for bindings the ledger does
    /// not know: its device model bypassed the broker.
    UnknownBindings { owner: DomId },
    /// `release_msix` answered `-EBUSY` for a finished owner not yet destroyed.
    FinishedOwnerBindings {
        owner: DomId,
        liveness: Liveness,
        unconfirmed: usize,
    },
    /// `release_msix` answered `-EBUSY` although the owner is gone.
    MappedByAnotherDomain,
    /// `prepare_msix` answered `-EBUSY`: a vector was mapped after release.
    PrepareBusy,
    /// The config space after prepare is not clean.
    VerificationFailed { problem: VerifyProblem },
    /// A step of the teardown failed; the round retries it.
    StepFailed { step: &'static str, error: String },
}

/// What verification found wrong in the config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyProblem {
    FunctionMaskSet,
    MsixStillEnabled,
    ConfigUnreadable(String),
}

impl QuarantineReason {
    /// A stable name for the cause: metrics labels, `--json` and matching.
    pub fn code(&self) -> &'static str {
        match self {
            QuarantineReason::ProtectedOwner { .. } => "protected-owner",
            QuarantineReason::HeldAfterDeassign { .. } => "held-after-deassign",
            QuarantineReason::NotYetDeassigned { .. } => "not-yet-deassigned",
            QuarantineReason::HolderUnproven => "holder-unproven",
            QuarantineReason::PvVectorsArePciback { .. } => "pv-vectors-are-pcibacks",
            QuarantineReason::LostMappings { .. } => "lost-mappings",
            QuarantineReason::UnnamedVectors { .. } => "unnamed-vectors",
            QuarantineReason::UnknownBindings { .. } => "unknown-bindings",
            QuarantineReason::FinishedOwnerBindings { .. } => "finished-owner-bindings",
            QuarantineReason::MappedByAnotherDomain => "mapped-by-another-domain",
            QuarantineReason::PrepareBusy => "prepare-busy",
            QuarantineReason::VerificationFailed { .. } => "verification-failed",
            QuarantineReason::StepFailed { .. } => "step-failed",
        }
    }

    /// Whether the quarantine lifts by itself once the owner is destroyed (Xen frees its
    /// pirqs then): the reasons a round retries against the owner's life.
    pub fn waits_for_owner(&self) -> bool {
        matches!(
            self,
            QuarantineReason::PvVectorsArePciback { .. }
                | QuarantineReason::LostMappings { .. }
                | QuarantineReason::UnnamedVectors { .. }
                | QuarantineReason::UnknownBindings { .. }
                | QuarantineReason::FinishedOwnerBindings { .. }
                | QuarantineReason::NotYetDeassigned { .. }
        )
    }
}

/// As the ledger and the operator read it.
impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuarantineReason::ProtectedOwner { owner } => write!(f, "the ledger names protected domain {owner} as the owner; nothing was revoked, unbound or reset (check the ledger by hand)"),
            QuarantineReason::HeldAfterDeassign { owner, errno } => write!(f, "after deassigning it from {owner}, Xen says a guest still holds it (test_assign_device -{}): another domain has it, and nothing is reset under it; `ptguard doctor` names the holder", errno.name()),
            QuarantineReason::NotYetDeassigned { owner } => write!(f, "the toolstack has not taken the device from {owner} yet (Xen still shows it assigned there); nothing is reset under a running guest; retried on the next round"),
            QuarantineReason::HolderUnproven => f.write_str("Xen says a guest holds it but its Q dump has no line for it: the holder is unproven, so nothing is reset; retried on the next round"),
            QuarantineReason::PvVectorsArePciback { owner, finished } => write!(f, "release_msix answered -EBUSY: {owner} is a PV guest, whose vectors are dom0's pciback's; pciback unmaps them when it lets go of the device ({}); retried on the next round", if *finished { "its domain is being torn down" } else { "the backend is closing" }),
            QuarantineReason::LostMappings { owner, lost } => write!(f, "release_msix answered -EBUSY while {owner} still runs: {lost} bind(s) were interrupted by a crash between map_pirq and recording the pirq Xen chose, so a mapping nobody can name may remain; kept from every guest until {owner} is gone (Xen then frees its pirqs)"),
            QuarantineReason::UnnamedVectors { owner, unnamed } => write!(f, "release_msix answered -EBUSY while {owner} still runs: Xen shows {unnamed} vector(s) of the device mapped but bound to no guest, and does not name their pirqs; kept from every guest until {owner} is gone (Xen then frees its pirqs)"),
            QuarantineReason::UnknownBindings { owner } => write!(f, "release_msix answered -EBUSY while {owner} still runs: it holds bindings the ledger does not know — its device model bypassed the broker; kept from every guest until {owner} is gone"),
            QuarantineReason::FinishedOwnerBindings { owner, liveness, unconfirmed } => write!(f, "release_msix answered -EBUSY: {owner} ({liveness}) holds bindings the ledger does not know ({unconfirmed} unconfirmed intents); waiting for {owner} to be destroyed"),
            QuarantineReason::MappedByAnotherDomain => f.write_str("release_msix answered -EBUSY although the owner is gone: another domain still maps the device"),
            QuarantineReason::PrepareBusy => f.write_str("prepare_msix answered -EBUSY: a vector was mapped after release"),
            QuarantineReason::VerificationFailed { problem } => write!(f, "verification failed: {problem}"),
            QuarantineReason::StepFailed { step, error } => write!(f, "teardown stopped at {step}: {error}; retried on the next domain event or command"),
        }
    }
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyProblem::FunctionMaskSet => f.write_str("MSI-X Function Mask still set"),
            VerifyProblem::MsixStillEnabled => f.write_str("MSI-X still enabled"),
            VerifyProblem::ConfigUnreadable(e) => write!(f, "config space unreadable: {e}"),
        }
    }
}

/// As its text: `--json` readers of an outcome's `reason` see what the ledger says; the
/// outcome carries the cause's code beside it.
impl Serialize for QuarantineReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_kebab_case() {
        let all = [
            QuarantineReason::ProtectedOwner { owner: DomId(0) },
            QuarantineReason::HeldAfterDeassign {
                owner: DomId(1),
                errno: Errno::EBUSY,
            },
            QuarantineReason::NotYetDeassigned { owner: DomId(1) },
            QuarantineReason::HolderUnproven,
            QuarantineReason::PvVectorsArePciback {
                owner: DomId(1),
                finished: true,
            },
            QuarantineReason::LostMappings {
                owner: DomId(1),
                lost: 1,
            },
            QuarantineReason::UnnamedVectors {
                owner: DomId(1),
                unnamed: 2,
            },
            QuarantineReason::UnknownBindings { owner: DomId(1) },
            QuarantineReason::FinishedOwnerBindings {
                owner: DomId(1),
                liveness: Liveness::Dying,
                unconfirmed: 0,
            },
            QuarantineReason::MappedByAnotherDomain,
            QuarantineReason::PrepareBusy,
            QuarantineReason::VerificationFailed {
                problem: VerifyProblem::FunctionMaskSet,
            },
            QuarantineReason::StepFailed {
                step: "reset",
                error: "x".into(),
            },
        ];
        let mut codes: Vec<_> = all.iter().map(QuarantineReason::code).collect();
        assert!(codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        // The ledger's `reason=` runs to the end of the value: one line, never empty.
        assert!(all.iter().all(|r| {
            let t = r.to_string();
            !t.is_empty() && !t.contains('\n')
        }));
    }
}
