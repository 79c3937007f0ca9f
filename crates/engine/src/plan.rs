//! The teardown's plan: for each journaled step, the work it does for this device, decided
//! from facts known before any of it runs (whether the owner's domid now names another
//! domain, whether a toolstack gave the device, whether it has MSI-X). Pure; `teardown.rs`
//! executes it step by step, and what a step's hypercalls answer (`-EBUSY` at release)
//! decides only within that step.

use serde::Serialize;

use crate::ledger::{CompanionMode, DeviceRecord, Step};
use crate::Liveness;

/// What a teardown knows before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeardownFacts {
    /// What Xen said of the owner when the teardown started ([`Liveness::Replaced`]: its
    /// domid names another domain now, and nothing may be directed at that one).
    pub owner: Liveness,
    /// Adopted from a toolstack, which revokes, removes the backend and deassigns itself.
    pub companion: Option<CompanionMode>,
    /// The device has an MSI-X capability (Xen keeps MSI-X state for it).
    pub msix: bool,
}

impl TeardownFacts {
    pub fn of(rec: &DeviceRecord, owner: Liveness) -> TeardownFacts {
        TeardownFacts {
            owner,
            companion: rec.mode,
            msix: rec.msix_size > 0,
        }
    }

    /// The owner's domid names another domain now.
    pub fn replaced(&self) -> bool {
        self.owner == Liveness::Replaced
    }
}

/// The work of one journaled step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "work", rename_all = "kebab-case")]
pub enum StepWork {
    /// Revoke the owner's BAR and IRQ permissions, take the device out of its PCI backend
    /// and, if that was the backend's last device, wait for pciback to give it back.
    Revoke,
    /// Memory decoding on; unbind and unmap every binding the ledger knows (`unbind`:
    /// false when the owner's domid was reused, whose pirqs are the newcomer's), then
    /// forget them.
    ForceUnbind { unbind: bool },
    /// `PHYSDEVOP_release_msix`; on `-EBUSY`, sweep an owner that will never run again.
    ReleaseMsix,
    /// `XEN_DOMCTL_deassign_device` back to `dom_io`.
    Deassign,
    /// The toolstack deassigns (companion mode): check that no other guest holds the
    /// device before anything resets it; one that does has it handed over (the ledger
    /// follows the device, nothing is reset under it).
    CheckHolder,
    /// The sysfs reset.
    Reset,
    /// `PHYSDEVOP_prepare_msix`, then MSI-X Enable and Function Mask cleared.
    PrepareMsix,
    /// Check the config space; assignable with the next epoch, or forgotten (`forget`:
    /// a device the toolstack owns between guests).
    Verify { forget: bool },
    /// Nothing for this device: `why`.
    Skip { why: &'static str },
}

/// The work of `step` for a device with `facts`.
pub fn step_work(step: Step, facts: &TeardownFacts) -> StepWork {
    let toolstacks = "the toolstack's (companion mode)";
    let reused = "the owner's domid names another domain now";
    match step {
        Step::Attach | Step::Revoke if facts.replaced() => StepWork::Skip { why: reused },
        Step::Attach | Step::Revoke if facts.companion.is_some() => {
            StepWork::Skip { why: toolstacks }
        }
        Step::Attach | Step::Revoke => StepWork::Revoke,
        Step::Unbind => StepWork::ForceUnbind {
            unbind: !facts.replaced(),
        },
        Step::Release if !facts.msix => StepWork::Skip { why: "no MSI-X" },
        Step::Release => StepWork::ReleaseMsix,
        Step::Deassign if facts.replaced() => StepWork::Skip { why: reused },
        Step::Deassign if facts.companion.is_some() => StepWork::CheckHolder,
        Step::Deassign => StepWork::Deassign,
        Step::Reset => StepWork::Reset,
        Step::Prepare if !facts.msix => StepWork::Skip { why: "no MSI-X" },
        Step::Prepare => StepWork::PrepareMsix,
        Step::Verify => StepWork::Verify {
            forget: facts.companion == Some(CompanionMode::Companion),
        },
    }
}

/// The whole plan from `from` (the journaled step a teardown starts or resumes at) to the
/// end: what `ptguard` will do, in order.
pub fn plan_teardown(from: Step, facts: &TeardownFacts) -> Vec<(Step, StepWork)> {
    let mut out = Vec::new();
    let mut step = Some(from);
    while let Some(s) = step {
        out.push((s, step_work(s, facts)));
        step = s.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(replaced: bool, companion: Option<CompanionMode>, msix: bool) -> TeardownFacts {
        TeardownFacts {
            owner: if replaced {
                Liveness::Replaced
            } else {
                Liveness::Gone
            },
            companion,
            msix,
        }
    }

    fn works(from: Step, f: TeardownFacts) -> Vec<StepWork> {
        plan_teardown(from, &f)
            .into_iter()
            .map(|(_, w)| w)
            .collect()
    }

    #[test]
    fn a_plain_teardown_does_every_step_in_order() {
        let plan = plan_teardown(Step::Revoke, &facts(false, None, true));
        let steps: Vec<Step> = plan.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, Step::TEARDOWN.to_vec());
        assert!(plan
            .iter()
            .all(|(_, w)| !matches!(w, StepWork::Skip { .. })));
        assert_eq!(plan[6].1, StepWork::Verify { forget: false });
    }

    #[test]
    fn an_interrupted_attach_is_torn_down_from_revoke() {
        assert_eq!(
            plan_teardown(Step::Attach, &facts(false, None, true))[1].0,
            Step::Unbind
        );
    }

    /// A domain that reused the owner's domid gets no permission change, no backend
    /// removal, no unbind and no deassign.
    #[test]
    fn nothing_is_directed_at_a_domain_that_reused_the_owners_domid() {
        for w in works(Step::Revoke, facts(true, None, true)) {
            assert!(
                !matches!(
                    w,
                    StepWork::Revoke | StepWork::Deassign | StepWork::ForceUnbind { unbind: true }
                ),
                "{w:?}"
            );
        }
    }

    #[test]
    fn a_toolstacks_device_keeps_its_toolstacks_steps() {
        for (mode, forget) in [
            (CompanionMode::Companion, true),
            (CompanionMode::CompanionKeep, false),
        ] {
            let w = works(Step::Revoke, facts(false, Some(mode), true));
            assert!(!w.contains(&StepWork::Revoke) && !w.contains(&StepWork::Deassign));
            assert!(w.contains(&StepWork::ReleaseMsix));
            assert_eq!(w.last(), Some(&StepWork::Verify { forget }));
        }
    }

    /// A device without MSI-X never gets an MSI-X hypercall (Xen 4.17 dereferences a NULL
    /// `pdev->msix` for one).
    #[test]
    fn a_device_without_msix_gets_no_msix_work() {
        let w = works(Step::Revoke, facts(false, None, false));
        assert!(!w.contains(&StepWork::ReleaseMsix) && !w.contains(&StepWork::PrepareMsix));
    }

    #[test]
    fn a_resumed_teardown_plans_only_what_is_left() {
        let w = works(Step::Prepare, facts(false, None, true));
        assert_eq!(
            w,
            vec![StepWork::PrepareMsix, StepWork::Verify { forget: false }]
        );
    }
}
