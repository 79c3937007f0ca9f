//! `ptguard doctor`'s checks: what is wrong with a passthrough device, why it breaks the
//! next start or reset, and the exact fix — from four views: the ledger, sysfs and config
//! space (or a pasted `lspci -vvv`), Xen's own dumps (debug keys `Q`, `i`, `M`) and the
//! toolstack's Xenstore nodes. Pure over its inputs, so fixture trees, captured real-Xen
//! dumps and reports test every check; every finding has a stable code ([`CODES`]).

use pci::host::{PciHost, PCIBACK};
use pci::{ConfigSpace, Sbdf};
use serde::Serialize;

use crate::ledger::{DeviceRecord, DeviceState};
use crate::Liveness;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Every finding doctor can report: its code (stable: scripts and alerts match on it), how
/// bad it is, and why it breaks the next start or reset.
pub const CODES: &[(&str, Severity, &str)] = &[
    ("not-on-bus", Severity::Error, "ptguard cannot reset or hand on a device the bus no longer shows"),
    ("teardown-half-done", Severity::Error, "the device is neither with its guest nor clean: no one may use it until the teardown ends"),
    ("quarantined", Severity::Error, "a device that could not be proven clean is kept from every guest"),
    ("owner-gone", Severity::Error, "its owner is gone but its bindings, permissions and assignment are not: the device cannot be given again"),
    ("unconfirmed-intents", Severity::Warning, "a bind was interrupted: if it reached Xen, its pirq is unknown and the next teardown waits for the owner to go"),
    ("driver-mismatch", Severity::Error, "the ledger and the kernel disagree about who drives the device: a teardown would act on the wrong driver"),
    ("mask-while-enabled", Severity::Error, "with Function Mask set no vector of the device can interrupt: its driver hangs or falls back to polling"),
    ("msi-irqs-left", Severity::Warning, "vectors a PV guest enabled are still set up in dom0: the next owner's maps may conflict"),
    ("function-mask-forced", Severity::Error, "Xen 4.13+ refuses to assign a device whose Function Mask is set (-EBUSY); older Xen hands it over masked and no interrupt arrives"),
    ("zombie-owner", Severity::Error, "a dying domain that never finished dying holds the device: it cannot be deassigned, and the next guest's pciback finds no device"),
    ("leftover-pirqs", Severity::Error, "vectors still mapped to a domain's pirqs make release_msix answer -EBUSY, so no reset or prepare can run, and the next owner's maps conflict"),
    ("dying-domain", Severity::Warning, "a domain that started dying and never finished (a zombie) keeps whatever it held — pirqs, devices, memory — until it is gone"),
    ("pirq-budget", Severity::Warning, "a guest gets only extra_guest_irqs pirqs for MSI: enabling more vectors than that fails (map_pirq -ENOSPC)"),
    ("bus-reset-blocked", Severity::Warning, "its only reset is a secondary bus reset, which Linux refuses while other devices share the bus: the device goes from guest to guest unreset"),
    ("decoding-off", Severity::Warning, "if its vectors are unmapped now, Xen cannot mask them in the table and forces the Function Mask instead (the seed's failure); ptguard turns decoding on first, stock toolstacks do not"),
    ("unplug-stalled", Severity::Error, "the toolstack announced an unplug (hook pre-unplug) that never finished: the guest keeps the device, and a toolstack that thinks it gone may give it to another guest, whose start then fails (-EBUSY)"),
    ("no-reset-method", Severity::Warning, "without a reset, state the last guest left in the device reaches the next one"),
    ("ledger-corrupt", Severity::Error, "ptguard cannot tell what the device holds from a corrupt entry; it skips the device"),
    ("held-unknown-to-ledger", Severity::Error, "a guest holds the device but its bindings are recorded nowhere: no teardown of ptguard's protects it"),
    ("ledger-assignable-xen-held", Severity::Error, "the device was given away behind ptguard's back: the ledger would hand it to a second guest"),
    ("ledger-attached-xen-free", Severity::Warning, "the ledger keeps an owner Xen no longer knows: the device stays away from guests for nothing"),
    ("pciback-unmanaged", Severity::Info, "nothing guards this device's teardown"),
    ("backend-owner-mismatch", Severity::Warning, "two toolstacks think different domains own the device: a teardown of one may strip the other"),
    ("ledger-owner-not-holder", Severity::Error, "when the recorded owner ends, its teardown would reset the device under the domain that really holds it"),
    ("backend-not-holder", Severity::Warning, "a stale backend node names a domain that does not hold the device: a tool that trusts it gives the device's teardown to the wrong domain"),
    ("view-missing", Severity::Info, "part of the picture is unknown, so problems it would show are not ruled out"),
    ("not-assignable", Severity::Error, "a guest can only be given a device pciback holds (and, on Xen 4.13+, dom_io): the start fails"),
    ("held-by-guest", Severity::Error, "Xen gives a device to one domain at a time: assigning it again fails (-EBUSY)"),
    ("no-passthrough", Severity::Error, "a domain created without passthrough= has no IOMMU context: assigning it a device answers -EOPNOTSUPP"),
    ("pv-memory-map", Severity::Error, "a PV guest whose memory map has no reserved region (no e820_host): Linux 6.5+ sets up no swiotlb-xen, and its devices' DMA misses the IOMMU"),
    ("pvh-guest", Severity::Error, "PVH guests cannot take PCI devices (libxl refuses: passthrough not yet supported for PVH)"),
    ("guest-missing", Severity::Error, "there is no live domain to give the device to"),
    ("toolstack-pci-add-failed", Severity::Error, "the toolstack could not give the device to the guest: the guest started without it, or did not start"),
    ("toolstack-map-failed", Severity::Error, "the device's legacy interrupt is not routed to the guest: a driver that uses INTx gets none"),
    ("assign-refused", Severity::Error, "Xen would not assign the device to the guest: the guest's start failed"),
    ("mask-forced-logged", Severity::Error, "Xen set the device's MSI-X Function Mask: until it is cleared no vector interrupts, and Xen 4.13+ refuses to assign the device (-EBUSY)"),
    ("dm-map-failed", Severity::Error, "a vector the guest enabled was never mapped: the guest's driver waits for interrupts that do not come"),
    ("dm-unmap-failed", Severity::Error, "a pirq the device model could not unmap keeps the device's MSI-X state busy: release_msix answers -EBUSY until the domain is gone"),
    ("dm-bind-failed", Severity::Error, "a vector mapped but not bound delivers nothing to the guest, and one bound and never unbound stays so until the domain is destroyed"),
];

/// One problem: what, the evidence (which view said what), why it matters, the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub sbdf: Option<Sbdf>,
    pub severity: Severity,
    pub problem: String,
    pub evidence: Vec<String>,
    pub why: &'static str,
    pub fix: String,
}

impl Finding {
    /// A finding of `code` (severity and why from [`CODES`]).
    pub fn new(
        code: &'static str,
        sbdf: Option<Sbdf>,
        problem: String,
        evidence: Vec<String>,
        fix: String,
    ) -> Finding {
        let (severity, why) = CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or((Severity::Error, "unknown finding"), |(_, s, w)| (*s, *w));
        Finding {
            code,
            sbdf,
            severity,
            problem,
            evidence,
            why,
            fix,
        }
    }
}

/// What Xen says of a record's owner ([`Liveness::of_owner`]); `None` where it could not be
/// asked, or the record has no owner.
pub type OwnerLife<'a> = &'a dyn Fn(&DeviceRecord) -> Option<Liveness>;

fn msix_line(m: &pci::MsixCap) -> String {
    format!(
        "config space: MSI-X Enable{} Count={} Masked{}",
        if m.enabled { '+' } else { '-' },
        m.table_size,
        if m.function_mask { '+' } else { '-' }
    )
}

/// The ledger against sysfs: every ledger record and every device with MSI-X.
pub fn diagnose(pci: &dyn PciHost, ledger: &[DeviceRecord], owner_life: OwnerLife) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in ledger {
        let s = r.sbdf;
        let f = |code, problem: String, evidence: Vec<String>, fix: String| {
            Finding::new(code, Some(s), problem, evidence, fix)
        };
        let state = format!(
            "ledger: {} (owner {}, step {})",
            r.state,
            r.owner.map_or("none".into(), |d| d.to_string()),
            r.step.map_or("none", |s| s.as_str())
        );
        if !pci.exists(s).unwrap_or(false) {
            out.push(f(
                "not-on-bus",
                "in the ledger but not on the PCI bus (hot-removed?)".into(),
                vec![state, "sysfs: no such device".into()],
                format!(
                    "check the hardware; then `xenstore-rm {}`",
                    crate::ledger::device_path(s)
                ),
            ));
            continue;
        }
        match r.state {
            DeviceState::TearingDown => out.push(f(
                "teardown-half-done",
                format!(
                    "teardown left half done at step {}",
                    r.step.map_or("?", |st| st.as_str())
                ),
                vec![state.clone()],
                "ptguard watch --once".into(),
            )),
            DeviceState::Quarantined => {
                let fix = match (r.owner, owner_life(r)) {
                    (Some(d), Some(l)) if l.may_run() => {
                        format!("{d} is {l}: shut down or destroy {d}; then `ptguard watch --once`")
                    }
                    _ => "ptguard watch --once".into(),
                };
                out.push(f(
                    "quarantined",
                    format!("quarantined: {}", r.reason.as_deref().unwrap_or("?")),
                    vec![state.clone()],
                    fix,
                ));
            }
            DeviceState::Attached => {
                let gone = owner_life(r).filter(|l| l.finished());
                if let (Some(d), Some(l)) = (r.owner, gone) {
                    out.push(f(
                        "owner-gone",
                        format!("attached to {d}, which is {l}"),
                        vec![state.clone(), format!("Xen: {d} is {l}")],
                        format!("ptguard release-domain {}", d.0),
                    ));
                }
                let unconfirmed =
                    r.bindings.iter().filter(|b| b.pirq.is_none()).count() + r.lost_maps as usize;
                if unconfirmed > 0 {
                    out.push(f(
                        "unconfirmed-intents",
                        format!("{unconfirmed} binding intents without a pirq (a crash during a bind): teardown will wait for the owner to go"),
                        vec![state.clone()],
                        "none needed; expect a quarantine at the next teardown".into(),
                    ));
                }
            }
            DeviceState::Assignable => {}
        }
        let driver = pci.driver(s).ok().flatten();
        if driver.as_deref() != Some(PCIBACK) {
            out.push(f(
                "driver-mismatch",
                format!(
                    "the ledger says {} but the device is bound to {}",
                    r.state,
                    driver.as_deref().unwrap_or("no driver")
                ),
                vec![
                    state,
                    format!("sysfs: driver {}", driver.as_deref().unwrap_or("none")),
                ],
                format!("ptguard assignable-remove {s} && ptguard assignable-add {s}"),
            ));
        }
    }
    let by_sbdf: std::collections::BTreeMap<Sbdf, &DeviceRecord> =
        ledger.iter().map(|r| (r.sbdf, r)).collect();
    for s in pci.list_devices().unwrap_or_default() {
        let Some(msix) = pci
            .read_config(s)
            .ok()
            .and_then(|b| ConfigSpace::new(b).ok())
            .and_then(|c| c.parse().ok())
            .and_then(|c| c.msix)
        else {
            continue;
        };
        let driver = pci.driver(s).ok().flatten();
        let msi_irqs = pci.msi_irqs(s).unwrap_or_default();
        let managed = by_sbdf.get(&s).copied();
        let drv = format!("sysfs: driver {}", driver.as_deref().unwrap_or("none"));
        if msix.enabled && msix.function_mask && !msi_irqs.is_empty() {
            out.push(Finding::new(
                "mask-while-enabled",
                Some(s),
                format!(
                    "MSI-X Function Mask is set while {} has {} vectors enabled: no interrupt can arrive (Xen's host_maskall?)",
                    driver.as_deref().unwrap_or("the driver"),
                    msi_irqs.len()
                ),
                vec![msix_line(&msix), drv.clone(), format!("sysfs: {} msi_irqs", msi_irqs.len())],
                if managed.is_some() {
                    format!("ptguard detach {s}")
                } else {
                    format!("ptguard assignable-add {s} (its release+prepare clears Xen's state), then give it back")
                },
            ));
        }
        if driver.as_deref() == Some(PCIBACK)
            && !msi_irqs.is_empty()
            && managed.is_none_or(|r| r.state == DeviceState::Assignable)
        {
            out.push(Finding::new(
                "msi-irqs-left",
                Some(s),
                format!("msi_irqs/ lists {} vectors on a pciback device no guest holds: left behind by a PV guest", msi_irqs.len()),
                vec![drv.clone(), format!("sysfs: {} msi_irqs", msi_irqs.len())],
                format!("ptguard detach {s} (or unbind and rebind pciback)"),
            ));
        }
        if !msix.enabled && msix.function_mask && driver.as_deref() == Some(PCIBACK) {
            out.push(forced_mask(s, vec![msix_line(&msix), drv.clone()]));
        }
        if driver.as_deref() == Some(PCIBACK) {
            let command = pci
                .read_config(s)
                .ok()
                .and_then(|b| ConfigSpace::new(b).ok())
                .map(|c| c.command());
            // A PV guest's vectors show in dom0's msi_irqs; an HVM guest's (mapped by its
            // device model) only as MSI-X Enable in the hardware's Message Control.
            if command.is_some_and(|c| !c.memory()) && (!msi_irqs.is_empty() || msix.enabled) {
                out.push(Finding::new(
                    "decoding-off",
                    Some(s),
                    if msi_irqs.is_empty() {
                        "memory decoding is off while MSI-X is enabled (a guest's device model set it up)".to_string()
                    } else {
                        format!("memory decoding is off while {} vectors are set up", msi_irqs.len())
                    },
                    vec![format!("config space: Command {:#06x} (Memory-)", command.map_or(0, |c| c.0)), format!("sysfs: {} msi_irqs", msi_irqs.len()), msix_line(&msix)],
                    format!("before the toolstack unplugs or destroys its guest, `ptguard hook pre-unplug {s}` (memory decoding on); an `xl pci-detach` from an HVM guest in this state times out waiting for qemu and leaves the device with the guest: run the hook, then detach again. ptguard's own teardowns (`ptguard detach {s}`, `ptguard watch`) turn decoding on first"),
                ));
            }
            if let Ok(Some(methods)) = pci.reset_methods(s) {
                let siblings = pci
                    .list_devices()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| *o != s && o.seg() == s.seg() && o.bus() == s.bus())
                    .count();
                if methods == ["bus"] && siblings > 0 {
                    out.push(Finding::new(
                        "bus-reset-blocked",
                        Some(s),
                        format!("only a bus reset is offered, and {siblings} other devices share bus {:02x}", s.bus()),
                        vec!["sysfs: reset_method bus".into(), format!("sysfs: {siblings} other functions on the bus")],
                        "give the guest every function of the bus, or move the device to a slot of its own".into(),
                    ));
                }
                if methods.is_empty() {
                    out.push(Finding::new(
                        "no-reset-method",
                        Some(s),
                        "the kernel offers no reset for it (reset_method is empty)".into(),
                        vec!["sysfs: reset_method empty".into()],
                        "prefer a device with FLR or a bus of its own; ptguard clears MSI-X state with release/prepare, but nothing else".into(),
                    ));
                }
            }
        }
    }
    out
}

/// Unplugs a toolstack's hook announced that did not finish in time
/// ([`crate::companion::UNPLUG_STALL_SECS`]).
pub fn unplug_findings(pending: &[crate::companion::PendingUnplug]) -> Vec<Finding> {
    pending
        .iter()
        .filter(|p| p.stalled)
        .map(|p| {
            Finding::new(
                "unplug-stalled",
                Some(p.sbdf),
                format!("its unplug from {} was announced {} s ago and has not finished: {} still has it", p.owner, p.waited, p.owner),
                vec![
                    format!("ledger: /ptguard/unplug names {} since {} s", p.owner, p.waited),
                    format!("toolstack: the backend of {} still lists it", p.owner),
                ],
                format!("libxl gives an HVM guest's device model 10 s and then leaves the device with the guest (xl: 'timed out waiting for DM to remove'); with memory decoding on (`ptguard hook pre-unplug {s}`) retry `xl pci-detach {d} {s}`, or force it: `xl pci-detach -f {d} {s}` (ptguard cleans the device once it leaves), or shut {owner} down", s = p.sbdf, d = p.owner.0, owner = p.owner),
            )
        })
        .collect()
}

fn forced_mask(s: Sbdf, evidence: Vec<String>) -> Finding {
    Finding::new(
        "function-mask-forced",
        Some(s),
        "MSI-X Function Mask is set on a device no driver uses (Enable-, Masked+): Xen forced it"
            .into(),
        evidence,
        format!("ptguard repair {s}"),
    )
}

mod cross;
pub mod logs;
pub use cross::{dying_domains, extra_guest_irqs, holder_checks, reconcile, xen_view, HeldByGuest};
