//! `ptguard doctor`'s checks: stuck or dirty devices, from the ledger and what the PCI host
//! shows, each with the command that fixes it. Pure over [`PciHost`] so fixture sysfs trees
//! test every check.

use pci::host::{PciHost, PCIBACK};
use pci::{ConfigSpace, Sbdf};
use serde::Serialize;
use xen::DomId;

use crate::ledger::{DeviceRecord, DeviceState};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One problem and its cure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub sbdf: Option<Sbdf>,
    pub severity: Severity,
    pub problem: String,
    pub fix: String,
}

/// Whether a domain is alive (`Some(true)`), dying or gone (`Some(false)`), or unknown.
pub type Liveness<'a> = &'a dyn Fn(DomId) -> Option<bool>;

/// Diagnoses every device of `pci` (and every ledger record).
pub fn diagnose(pci: &dyn PciHost, ledger: &[DeviceRecord], alive: Liveness) -> Vec<Finding> {
    let mut out = Vec::new();
    let f = |sbdf: Sbdf, severity, problem: String, fix: String| Finding {
        sbdf: Some(sbdf),
        severity,
        problem,
        fix,
    };
    for r in ledger {
        let s = r.sbdf;
        if !pci.exists(s).unwrap_or(false) {
            out.push(f(
                s,
                Severity::Error,
                "in the ledger but not on the PCI bus (hot-removed?)".into(),
                format!(
                    "check the hardware; then `xenstore-rm {}`",
                    crate::ledger::device_path(s)
                ),
            ));
            continue;
        }
        match r.state {
            DeviceState::TearingDown => out.push(f(
                s,
                Severity::Error,
                format!(
                    "teardown left half done at step {}",
                    r.step.map_or("?", |st| st.as_str())
                ),
                "ptguard watch --once".into(),
            )),
            DeviceState::Quarantined => {
                let owner_alive = r.owner.and_then(alive);
                let fix = match (r.owner, owner_alive) {
                    (Some(d), Some(true)) => {
                        format!("shut down or destroy {d}; then `ptguard watch --once`")
                    }
                    _ => "ptguard watch --once".into(),
                };
                out.push(f(
                    s,
                    Severity::Error,
                    format!("quarantined: {}", r.reason.as_deref().unwrap_or("?")),
                    fix,
                ));
            }
            DeviceState::Failed => out.push(f(
                s,
                Severity::Error,
                format!("teardown failed: {}", r.reason.as_deref().unwrap_or("?")),
                format!("ptguard show {s}"),
            )),
            DeviceState::Attached => {
                if let Some(d) = r.owner {
                    if alive(d) == Some(false) {
                        out.push(f(
                            s,
                            Severity::Error,
                            format!("attached to {d}, which is gone or dying"),
                            format!("ptguard release-domain {}", d.0),
                        ));
                    }
                }
                let unconfirmed = r.bindings.iter().filter(|b| b.pirq.is_none()).count();
                if unconfirmed > 0 {
                    out.push(f(s, Severity::Warning,
                        format!("{unconfirmed} binding intents without a pirq (a crash during a bind): teardown will wait for the owner to go"),
                        "none needed; expect a quarantine at the next teardown".into()));
                }
            }
            DeviceState::Assignable => {}
        }
        let driver = pci.driver(s).ok().flatten();
        if r.state != DeviceState::Failed && driver.as_deref() != Some(PCIBACK) {
            out.push(f(
                s,
                Severity::Error,
                format!(
                    "the ledger says {} but the device is bound to {}",
                    r.state,
                    driver.as_deref().unwrap_or("no driver")
                ),
                format!("ptguard assignable-remove {s} && ptguard assignable-add {s}"),
            ));
        }
    }
    let devices = pci.list_devices().unwrap_or_default();
    for s in devices {
        let Ok(bytes) = pci.read_config(s) else {
            continue;
        };
        let Some(msix) = ConfigSpace::new(bytes)
            .ok()
            .and_then(|c| c.parse().ok())
            .and_then(|c| c.msix)
        else {
            continue;
        };
        let driver = pci.driver(s).ok().flatten();
        let msi_irqs = pci.msi_irqs(s).unwrap_or_default();
        let managed = ledger.iter().find(|r| r.sbdf == s);
        if msix.enabled && msix.function_mask && !msi_irqs.is_empty() {
            out.push(f(s, Severity::Error,
                format!("MSI-X Function Mask is set while {} has {} vectors enabled: no interrupt can arrive (Xen's host_maskall?)",
                    driver.as_deref().unwrap_or("the driver"), msi_irqs.len()),
                if managed.is_some() { format!("ptguard detach {s}") } else { format!("ptguard assignable-add {s} (its release+prepare clears Xen's state), then give it back") }));
        }
        if driver.as_deref() == Some(PCIBACK)
            && !msi_irqs.is_empty()
            && managed.is_none_or(|r| r.state == DeviceState::Assignable)
        {
            out.push(f(s, Severity::Warning,
                format!("msi_irqs/ lists {} vectors on a pciback device no guest holds: left behind by a PV guest", msi_irqs.len()),
                format!("ptguard detach {s} (or unbind and rebind pciback)")));
        }
        if managed.is_some_and(|r| r.state == DeviceState::Assignable) && msix.function_mask {
            out.push(f(s, Severity::Error,
                "assignable but the hardware Function Mask is set: Xen ≥ 4.13 refuses to assign it (-EBUSY)".into(),
                format!("ptguard assignable-remove {s} && ptguard assignable-add {s}")));
        }
    }
    out
}

/// What Xen says of a device: `Some(true)` a guest holds it (`test_assign_device` answered
/// `-EBUSY`), `Some(false)` it is dom0's or dom_io's, `None` unknown.
pub type HeldByGuest<'a> = &'a dyn Fn(Sbdf) -> Option<bool>;

/// Compares the three views of every device any of them knows — the ledger, Xen
/// (`held_by_guest`) with the toolstack's PCI backends in Xenstore (`backends`: domain,
/// device), and sysfs/pciback (`pci`) — and reports each device one view knows and another
/// does not, with the fix. A device the ledger has lost is found here.
pub fn reconcile(
    pci: &dyn PciHost,
    ledger: &[DeviceRecord],
    held_by_guest: HeldByGuest,
    backends: &[(DomId, Sbdf)],
) -> Vec<Finding> {
    let mut candidates: Vec<Sbdf> = ledger.iter().map(|r| r.sbdf).collect();
    candidates.extend(backends.iter().map(|(_, s)| *s));
    candidates.extend(pci.pciback_slots().unwrap_or_default());
    for s in pci.list_devices().unwrap_or_default() {
        if pci.driver(s).ok().flatten().as_deref() == Some(PCIBACK) {
            candidates.push(s);
        }
    }
    candidates.sort();
    candidates.dedup();
    let mut out = Vec::new();
    for s in candidates {
        let rec = ledger.iter().find(|r| r.sbdf == s);
        let held = held_by_guest(s);
        let toolstack_owner = backends.iter().find(|(_, b)| *b == s).map(|(d, _)| *d);
        let holder = toolstack_owner.map_or("a guest".to_string(), |d| d.to_string());
        let adopt = match toolstack_owner {
            Some(d) => format!("`ptguard adopt {s} {}`: the ledger records it again (its bindings unknown, so its teardown waits for the owner to be gone)", d.0),
            None => format!("find the holder (`xl pci-list DOMAIN`), then `ptguard adopt {s} DOMID`"),
        };
        let finding = |severity, problem: String, fix: String| Finding {
            sbdf: Some(s),
            severity,
            problem,
            fix,
        };
        match (rec.map(|r| r.state), held) {
            (None, Some(true)) => out.push(finding(
                Severity::Error,
                format!("{holder} holds it (Xen: assigned to a guest; toolstack backend: {}), but the ledger does not know it: its interrupt bindings are unrecorded, so no teardown of ptguard's protects it",
                    toolstack_owner.map_or("none".into(), |d| d.to_string())),
                adopt,
            )),
            (Some(DeviceState::Assignable), Some(true)) => out.push(finding(
                Severity::Error,
                format!("the ledger says assignable, but Xen says {holder} holds it: it was given away behind ptguard's back"),
                adopt,
            )),
            (Some(DeviceState::Attached), Some(false)) => out.push(finding(
                Severity::Warning,
                format!(
                    "the ledger says attached to {}, but Xen says no guest holds it (deassigned behind ptguard's back?)",
                    rec.and_then(|r| r.owner).map_or("?".into(), |d| d.to_string())
                ),
                format!("ptguard detach {s}"),
            )),
            (None, Some(false)) => out.push(finding(
                Severity::Info,
                "pciback holds it and no guest does, but ptguard does not manage it".into(),
                format!("ptguard assignable-add {s} (to have ptguard guard it)"),
            )),
            _ => {}
        }
        if let (Some(r), Some(d)) = (rec, toolstack_owner) {
            if r.owner.is_some_and(|o| o != d) {
                out.push(finding(
                    Severity::Warning,
                    format!(
                        "the toolstack's backend nodes give it to {d}, the ledger to {}",
                        r.owner.map_or("nobody".into(), |o| o.to_string())
                    ),
                    format!(
                        "check `xl pci-list {}`; stale backend nodes go with `xl pci-detach`",
                        d.0
                    ),
                ));
            }
        }
    }
    out
}
