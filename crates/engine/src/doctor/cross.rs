//! The doctor's cross-checks: the ledger against Xen (`test_assign_device`, its `Q` and `i`
//! dumps) and the toolstack's backends in Xenstore, and Xen's command line.

use std::collections::BTreeMap;

use pci::host::{PciHost, PCIBACK};
use pci::Sbdf;
use xen::DomId;

use super::Finding;
use crate::ledger::{DeviceRecord, DeviceState};
use crate::xen_dump::{DumpOwner, IrqBinding, PciDumpEntry};
use crate::Liveness;

/// What Xen says of a device: `Some(true)` a guest holds it (`test_assign_device` answered
/// `-EINVAL`, "already assigned"), `Some(false)` it is dom0's or dom_io's, `None` unknown.
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
    // Looked up per candidate: maps, not scans (a host with hundreds of devices).
    let by_sbdf: BTreeMap<Sbdf, &DeviceRecord> = ledger.iter().map(|r| (r.sbdf, r)).collect();
    let mut backend_of: BTreeMap<Sbdf, DomId> = BTreeMap::new();
    for (d, b) in backends {
        backend_of.entry(*b).or_insert(*d);
    }
    let mut out = Vec::new();
    for s in candidates {
        let rec = by_sbdf.get(&s).copied();
        let held = held_by_guest(s);
        let toolstack_owner = backend_of.get(&s).copied();
        let holder = toolstack_owner.map_or("a guest".to_string(), |d| d.to_string());
        let adopt = match toolstack_owner {
            Some(d) => format!("`ptguard adopt {s} {}`: the ledger records it again (its bindings unknown, so its teardown waits for the owner to be gone)", d.0),
            None => format!("find the holder (`xl pci-list DOMAIN`), then `ptguard adopt {s} DOMID`"),
        };
        let mut evidence = vec![
            format!(
                "ledger: {}",
                rec.map_or("no entry".into(), |r| format!(
                    "{} owner {}",
                    r.state,
                    r.owner.map_or("none".into(), |d| d.to_string())
                ))
            ),
            format!(
                "Xen: {}",
                match held {
                    Some(true) => "a guest holds it (test_assign_device -EINVAL: already assigned)",
                    Some(false) => "dom0 or dom_io holds it",
                    None => "unknown",
                }
            ),
        ];
        evidence.push(format!(
            "toolstack: {}",
            toolstack_owner.map_or("no PCI backend names it".into(), |d| format!(
                "backend of {d}"
            ))
        ));
        let f = |code, problem: String, fix: String| {
            Finding::new(code, Some(s), problem, evidence.clone(), fix)
        };
        match (rec.map(|r| r.state), held) {
            (None, Some(true)) => out.push(f(
                "held-unknown-to-ledger",
                format!("{holder} holds it, but the ledger does not know it: its interrupt bindings are unrecorded"),
                adopt,
            )),
            (Some(DeviceState::Assignable), Some(true)) => out.push(f(
                "ledger-assignable-xen-held",
                format!("the ledger says assignable, but Xen says {holder} holds it"),
                adopt,
            )),
            (Some(DeviceState::Attached), Some(false)) => out.push(f(
                "ledger-attached-xen-free",
                format!(
                    "the ledger says attached to {}, but Xen says no guest holds it (deassigned behind ptguard's back?)",
                    rec.and_then(|r| r.owner).map_or("?".into(), |d| d.to_string())
                ),
                format!("ptguard detach {s}"),
            )),
            (None, Some(false)) => out.push(f(
                "pciback-unmanaged",
                "pciback holds it and no guest does, but ptguard does not manage it".into(),
                format!("ptguard assignable-add {s} (to have ptguard guard it)"),
            )),
            _ => {}
        }
        if let (Some(r), Some(d)) = (rec, toolstack_owner) {
            if r.owner.is_some_and(|o| o != d) {
                out.push(f(
                    "backend-owner-mismatch",
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

/// Who holds each device per Xen's `Q` dump against who the ledger and the toolstack's
/// backend nodes say: a ledger owner that is not the holder would have the holder's device
/// torn down (reset) when that other domain ends; a backend node naming another domain is
/// stale, and adoption passes over it.
pub fn holder_checks(
    pci_dump: &[PciDumpEntry],
    ledger: &[DeviceRecord],
    backends: &[(DomId, Sbdf)],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in pci_dump {
        let DumpOwner::Domain(holder) = e.owner else {
            continue;
        };
        if holder == DomId::DOM0 {
            continue;
        }
        let s = e.sbdf;
        let evidence = |other: String| vec![format!("Xen (Q dump): {s} - {holder}"), other];
        if let Some(owner) = ledger
            .iter()
            .find(|r| r.sbdf == s)
            .filter(|r| matches!(r.state, DeviceState::Attached | DeviceState::TearingDown))
            .and_then(|r| r.owner)
            .filter(|o| *o != holder)
        {
            out.push(Finding::new(
                "ledger-owner-not-holder",
                Some(s),
                format!("the ledger says {owner} owns it, but Xen says {holder} holds it"),
                evidence(format!("ledger: attached to {owner}")),
                format!(
                    "do not detach it (that would reset {holder}'s device): remove the wrong record by hand (`xenstore-rm {}`), then `ptguard adopt {s} {}`",
                    crate::ledger::device_path(s),
                    holder.0
                ),
            ));
        }
        for (named, _) in backends.iter().filter(|(d, b)| *b == s && *d != holder) {
            out.push(Finding::new(
                "backend-not-holder",
                Some(s),
                format!("a PCI backend node of {named} names it, but Xen says {holder} holds it"),
                evidence(format!(
                    "toolstack: /local/domain/0/backend/pci/{}/0 names {s}",
                    named.0
                )),
                format!(
                    "the node is stale: `xl pci-detach {} {s}` (or remove the backend node) — ptguard adopts only the holder",
                    named.0
                ),
            ));
        }
    }
    out
}

/// Xen's own view, from its `Q` and `i` dumps: devices held by dying domains, vectors
/// still bound to pirqs of a domain that does not own the device (or is going), and — with
/// the devices' MSI-X table sizes — guests' pirq budget. `life` answers for each domain
/// the dumps name (absent: gone).
pub fn xen_view(
    pci_dump: &[PciDumpEntry],
    irq_dump: &[IrqBinding],
    life: &BTreeMap<DomId, Liveness>,
    table_sizes: &[(Sbdf, u16)],
    pirqs: &crate::sweep::PirqBudget,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let state = |d: DomId| life.get(&d).copied().unwrap_or(Liveness::Gone);
    // Still itself, not on its way out: what it maps is its own business.
    let holds_on = |d: &DomId| life.get(d).is_some_and(|l| *l != Liveness::Dying);
    let mut irq_by_number: BTreeMap<u32, &IrqBinding> = BTreeMap::new();
    for b in irq_dump {
        irq_by_number.entry(b.irq).or_insert(b);
    }
    for e in pci_dump {
        let s = e.sbdf;
        let owner_line = format!(
            "Xen (Q): owner {}, MSIs <{}>",
            match e.owner {
                DumpOwner::Io => "dom_io".to_string(),
                DumpOwner::Xen => "dom_xen".to_string(),
                DumpOwner::Domain(d) => d.to_string(),
            },
            e.msi_irqs
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let DumpOwner::Domain(d) = e.owner {
            if d != DomId::DOM0 && !holds_on(&d) {
                out.push(Finding::new(
                    "zombie-owner",
                    Some(s),
                    format!("{d} owns it, but {d} is {}", state(d)),
                    vec![owner_line.clone(), format!("Xen: {d} {}", state(d))],
                    format!("find what keeps {d} from dying (`xl list` shows it with state d: a device model, a backend or a foreign mapping still holding it) and release it; `xl destroy {}`", d.0),
                ));
            }
        }
        let owner = match e.owner {
            DumpOwner::Domain(d) => Some(d),
            _ => None,
        };
        // Quarantined, yet Xen still has vectors of it mapped (real Xen 4.17.5 after a
        // guest was destroyed behind the toolstack's back: `mapped, unbound`).
        if owner.is_none() && !e.msi_irqs.is_empty() {
            let unbound: Vec<String> = e.msi_irqs.iter().map(u32::to_string).collect();
            out.push(Finding::new(
                "leftover-pirqs",
                Some(s),
                format!(
                    "dom_io holds it, yet Xen still maps its IRQs {} to some domain's pirqs (a domain that is dying and never finished)",
                    unbound.join(" ")
                ),
                vec![owner_line.clone(), "Xen (i): those IRQs mapped, bound to no guest".into()],
                format!("find the dying domain (`xl list`, state d; `ptguard doctor` names it as dying-domain) and let it finish; until then release_msix answers -EBUSY and `ptguard repair {s}` refuses"),
            ));
        }
        for irq in &e.msi_irqs {
            let Some(b) = irq_by_number.get(irq) else {
                continue;
            };
            for (d, pirq) in &b.guests {
                if Some(*d) == owner && holds_on(d) {
                    continue;
                }
                // dom0's own driver binds its vectors to dom0's pirqs: that is its use.
                if *d == DomId::DOM0 && owner == Some(DomId::DOM0) {
                    continue;
                }
                let fix = if holds_on(d) {
                    format!("{d} mapped them while not owning the device (its device model went around ptguard): destroy {d}, or unplug the device from it")
                } else {
                    format!(
                        "let {d} finish dying (`xl destroy {}`); then `ptguard repair {s}`",
                        d.0
                    )
                };
                out.push(Finding::new(
                    "leftover-pirqs",
                    Some(s),
                    format!(
                        "IRQ {irq} of the device is still bound to {d}'s pirq {pirq} ({d} is {})",
                        state(*d)
                    ),
                    vec![
                        owner_line.clone(),
                        format!("Xen (i): IRQ {irq} -> {d} pirq {pirq}"),
                    ],
                    fix,
                ));
            }
        }
    }
    let budget = pirqs.budget();
    for (s, n) in table_sizes {
        if u32::from(*n) > budget {
            let mut evidence = vec![
                format!("config space: MSI-X Count={n}"),
                format!(
                    "Xen: extra_guest_irqs {}",
                    pirqs.extra_guest_irqs.map_or(
                        format!("not set (default {DEFAULT_EXTRA_GUEST_IRQS})"),
                        |v| v.to_string()
                    )
                ),
            ];
            if let Some(v) = pirqs.xen {
                evidence.push(format!("Xen {v}"));
            }
            out.push(Finding::new(
                "pirq-budget",
                Some(*s),
                format!("its MSI-X table has {n} entries, more than a guest's {budget} MSI pirqs"),
                evidence,
                pirqs.advice(u32::from(*n)),
            ));
        }
    }
    out
}

/// Domains that are dying and have not finished, named by id.
pub fn dying_domains(life: &BTreeMap<DomId, Liveness>) -> Vec<Finding> {
    life.iter()
        .filter(|(d, l)| **l == Liveness::Dying && **d != DomId::DOM0)
        .map(|(d, _)| {
            Finding::new(
                "dying-domain",
                None,
                format!("{d} is dying and has not finished"),
                vec![format!("Xen: getdomaininfo {d}: dying")],
                format!("see what still holds {d} (`xl list`; its device model, a backend, a foreign mapping); `xl destroy {}`", d.0),
            )
        })
        .collect()
}

pub use crate::sweep::DEFAULT_EXTRA_GUEST_IRQS;

/// `extra_guest_irqs=[DOMU],[DOM0]` from Xen's command line: the domU value.
pub fn extra_guest_irqs(command_line: &str) -> Option<u32> {
    command_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("extra_guest_irqs="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
}
