//! The engine's crash points, typed: every place a real ptguard may die between two effects
//! (a hypercall, a sysfs write, a Xenstore request) is a [`CrashPoint`] — the device and the
//! step — and the explorer counts them and plans a crash at one through [`CrashPoints`]. A
//! real ptguard has no counter, and the points cost nothing there.

use std::cell::Cell;
use std::fmt;

use pci::Sbdf;
use serde::{Serialize, Serializer};
use xen::{DomId, Pirq};

use crate::ledger::{BindingKey, Step};

/// The step of a crash point, in the order its operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStep {
    /// assignable-add, before pciback seizes the device.
    AddSeize,
    /// assignable-add, before the device is assigned to dom_io.
    AddAssignDomIo,
    /// assignable-add, before the record is written.
    AddRecord,
    /// assignable-remove, before the device goes back to its driver.
    RemoveRelease,
    /// attach, before each of its steps.
    AttachTestAssign,
    AttachReset,
    AttachAssignDevice,
    AttachPermissions,
    AttachMapIntx,
    AttachIrqPermission,
    AttachBackend,
    AttachDone,
    /// The broker's bind: after its intent is recorded, before `map_pirq`.
    BindMapPirq(BindingKey),
    /// A device model's separate map: after `map_pirq`, before its pirq is recorded.
    MapRecordPirq(BindingKey),
    /// The broker's bind: after `map_pirq`, before `bind_pt_irq`.
    BindPtIrq(BindingKey),
    /// The broker's bind: after `bind_pt_irq`, before the binding is confirmed.
    BindConfirm(BindingKey),
    /// The broker's unbind, before the hypercalls.
    Unbind(BindingKey),
    /// The broker's unbind, before the binding is forgotten.
    UnbindForget(BindingKey),
    /// A device model's rebind (a new guest vector), before `bind_pt_irq`.
    Rebind(BindingKey),
    /// A stock device model's brokered `xc_domain_unbind_msi_irq`.
    DmUnbindMsi(Pirq),
    /// A stock device model's brokered `xc_physdev_unmap_pirq`, before the hypercall.
    DmUnmapPirq(Pirq),
    /// ... and before the ledger forgets the pirq.
    DmUnmapForget(Pirq),
    /// The release of a dead device model's binding, before unbind and unmap.
    OrphanedUnbind(BindingKey),
    /// ... and before the binding is forgotten.
    OrphanedForget(BindingKey),
    /// The teardown, before each journaled step.
    Teardown(Step),
    /// The teardown's force-unbind of one binding.
    ForceUnbind(BindingKey),
    /// The teardown, before it forgets the bindings it unbound.
    ForgetBindings,
    /// The teardown's sweep of a finished owner.
    Sweep(DomId),
    /// The teardown's unmap of what a running owner still has bound to the device.
    UnmapOwnerVectors(DomId),
}

/// Where a run stopped: the device and the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    pub sbdf: Sbdf,
    pub step: CrashStep,
}

impl CrashPoint {
    /// Whether the point lies between a bind's `map_pirq` and the write that records the
    /// pirq Xen chose: a crash there leaves a mapping nobody can name (docs/ledger.md,
    /// "The map→record window").
    pub fn in_map_record_window(&self) -> bool {
        matches!(
            self.step,
            CrashStep::BindPtIrq(_) | CrashStep::BindConfirm(_) | CrashStep::MapRecordPirq(_)
        )
    }
}

/// As the explorer's replay and the logs print it.
impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sbdf;
        match self.step {
            CrashStep::AddSeize => write!(f, "{s} assignable-add: seize"),
            CrashStep::AddAssignDomIo => write!(f, "{s} assignable-add: assign dom_io"),
            CrashStep::AddRecord => write!(f, "{s} assignable-add: record"),
            CrashStep::RemoveRelease => write!(f, "{s} assignable-remove: release"),
            CrashStep::AttachTestAssign => write!(f, "{s} attach: test_assign"),
            CrashStep::AttachReset => write!(f, "{s} attach: reset"),
            CrashStep::AttachAssignDevice => write!(f, "{s} attach: assign_device"),
            CrashStep::AttachPermissions => write!(f, "{s} attach: permissions"),
            CrashStep::AttachMapIntx => write!(f, "{s} attach: map INTx"),
            CrashStep::AttachIrqPermission => write!(f, "{s} attach: irq_permission"),
            CrashStep::AttachBackend => write!(f, "{s} attach: backend"),
            CrashStep::AttachDone => write!(f, "{s} attach: done"),
            CrashStep::BindMapPirq(k) => write!(f, "{s} bind {k}: map_pirq"),
            CrashStep::MapRecordPirq(k) => write!(f, "{s} map {k}: record pirq"),
            CrashStep::BindPtIrq(k) => write!(f, "{s} bind {k}: bind_pt_irq"),
            CrashStep::BindConfirm(k) => write!(f, "{s} bind {k}: confirm"),
            CrashStep::Unbind(k) => write!(f, "{s} unbind {k}"),
            CrashStep::UnbindForget(k) => write!(f, "{s} unbind {k}: forget"),
            CrashStep::Rebind(k) => write!(f, "{s} rebind {k}: bind_pt_irq"),
            CrashStep::DmUnbindMsi(p) => write!(f, "{s} unbind_msi_irq pirq {}", p.0),
            CrashStep::DmUnmapPirq(p) => write!(f, "{s} unmap_pirq pirq {}", p.0),
            CrashStep::DmUnmapForget(p) => write!(f, "{s} unmap_pirq pirq {}: forget", p.0),
            CrashStep::OrphanedUnbind(k) => write!(f, "{s} orphaned {k}: unbind and unmap"),
            CrashStep::OrphanedForget(k) => write!(f, "{s} orphaned {k}: forget"),
            CrashStep::Teardown(step) => write!(f, "{s} teardown: {}", step.as_str()),
            CrashStep::ForceUnbind(k) => write!(f, "{s} teardown: force-unbind {k}"),
            CrashStep::ForgetBindings => write!(f, "{s} teardown: forget bindings"),
            CrashStep::Sweep(d) => write!(f, "{s} teardown: sweep {d}"),
            CrashStep::UnmapOwnerVectors(d) => write!(f, "{s} teardown: unmap {d}'s vectors"),
        }
    }
}

impl Serialize for CrashPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The crash points a run passes, counted across every engine of the run, with an
/// injected crash at one of them: the explorer's one counter. The engine consults it only
/// when given one ([`crate::Engine::counting`]); a real ptguard has none.
#[derive(Debug, Default)]
pub struct CrashPoints {
    passed: Cell<u64>,
    crash_at: Cell<Option<u64>>,
}

impl CrashPoints {
    /// Counts without crashing.
    pub fn new() -> CrashPoints {
        CrashPoints::default()
    }

    /// Crashes at crash point `n` (0: the first), once.
    pub fn crashing_at(n: u64) -> CrashPoints {
        let c = CrashPoints::default();
        c.crash_at.set(Some(n));
        c
    }

    /// Crash points passed so far.
    pub fn passed(&self) -> u64 {
        self.passed.get()
    }

    /// Passes one crash point: true if this is the planned crash.
    pub(crate) fn pass(&self) -> bool {
        let n = self.passed.get();
        self.passed.set(n + 1);
        if self.crash_at.get() == Some(n) {
            self.crash_at.set(None);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planned_point_crashes_once_and_counting_goes_on() {
        let c = CrashPoints::crashing_at(1);
        assert!(!c.pass());
        assert!(c.pass());
        assert!(!c.pass());
        assert_eq!(c.passed(), 3);
    }

    #[test]
    fn the_map_record_window_is_the_binds_after_map_pirq() {
        let sbdf = Sbdf::new(0, 3, 0, 0).unwrap();
        let at = |step| CrashPoint { sbdf, step };
        let k = BindingKey::Msix(2);
        assert!(at(CrashStep::BindPtIrq(k)).in_map_record_window());
        assert!(at(CrashStep::BindConfirm(k)).in_map_record_window());
        assert!(at(CrashStep::MapRecordPirq(k)).in_map_record_window());
        assert!(!at(CrashStep::BindMapPirq(k)).in_map_record_window());
        assert!(!at(CrashStep::Rebind(k)).in_map_record_window());
        assert!(!at(CrashStep::Unbind(k)).in_map_record_window());
        assert_eq!(
            at(CrashStep::BindConfirm(k)).to_string(),
            "0000:03:00.0 bind msix-2: confirm"
        );
    }
}
