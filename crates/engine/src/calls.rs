//! The engine's hypervisor and PCI helpers: "already gone" answers, the BAR permissions
//! of an assignment, the device's MSI-X layout, whether a guest holds a device, and where a
//! domain's PCI backend lives.

use pci::{ConfigSpace, Sbdf};
use xen::{DomId, Errno, Hypervisor, Pirq, PtIrq, XenError};

use crate::ledger::{Binding, BindingState};
use crate::EngineError;

type Result<T> = std::result::Result<T, EngineError>;

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

/// Releases the pirq of one MSI-X binding: a pirq mapped but never bound (a device model's
/// separate map, or a bind a crash cut short) is only unmapped — Xen answers an unbind of
/// it with `-EINVAL` and logs `pt_irq_destroy_bind failed` — any other is unbound then
/// unmapped. "Already gone" is success.
pub(crate) fn release_msix_pirq(
    hv: &dyn Hypervisor,
    domid: DomId,
    sbdf: Sbdf,
    b: &Binding,
    pirq: Pirq,
) -> Result<()> {
    if b.state == BindingState::Mapped {
        unless_gone(hv.unmap_pirq(domid, pirq))
    } else {
        unbind_and_unmap(hv, domid, &b.pt_irq(pirq, sbdf))
    }
}

/// Grants or revokes `domid`'s access to every implemented BAR of the device (I/O ports or
/// memory pages), passing each call's result through `check`.
pub(crate) fn bar_permissions(
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

/// The device's MSI-X capability as its config space shows it now.
pub(crate) fn msix_cap(pci: &dyn pci::PciHost, sbdf: Sbdf) -> Result<Option<pci::MsixCap>> {
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
pub(crate) fn msix_layout(pci: &dyn pci::PciHost, sbdf: Sbdf) -> Result<(u16, u64)> {
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

/// Whether Xen says a guest holds `sbdf` (a device sysfs shows): `XEN_DOMCTL_test_assign_device`
/// answers 0 when dom0 or dom_io owns it and `-EINVAL` ("already assigned, or non-existent")
/// otherwise, on every release from 4.11 to 4.22 (test_assign unchanged in 4.21 and 4.22). `Some(errno)`: held.
pub fn held_by_guest(hv: &dyn Hypervisor, sbdf: Sbdf) -> Result<Option<Errno>> {
    match hv.test_assign_device(sbdf) {
        Ok(()) => Ok(None),
        Err(e) => match e.errno() {
            Some(errno @ (Errno::EINVAL | Errno::EBUSY)) => Ok(Some(errno)),
            _ => Err(e.into()),
        },
    }
}

/// Which domain Xen says holds `sbdf`, from a fresh `Q` dump (`dump_pci_devices`: each
/// device with the domain it is assigned to): the only place Xen names the holder, since
/// `test_assign_device` says only *whether* some guest holds it. `None` when the dump has
/// no line for the device (the console ring could not be read, or lost it).
pub fn xen_holder(hv: &dyn Hypervisor, sbdf: Sbdf) -> Result<Option<crate::xen_dump::DumpOwner>> {
    hv.debug_keys("Q")?;
    let console = hv.read_console()?;
    Ok(crate::xen_dump::pci_devices(&console)
        .into_iter()
        .find(|e| e.sbdf == sbdf)
        .map(|e| e.owner))
}

pub(crate) fn backend_dir(domid: DomId) -> String {
    format!("/local/domain/0/backend/pci/{}/0", domid.0)
}

/// A device's MSI/MSI-X vectors as Xen shows them: which domain holds the device and, for
/// each of its vectors, the guest pirq bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceVectors {
    pub holder: crate::xen_dump::DumpOwner,
    /// (Xen IRQ, domain, pirq) of each vector some guest has bound (an HVM dpci bind or a
    /// PV event channel).
    pub bound: Vec<(u32, DomId, Pirq)>,
    /// Xen IRQs of vectors mapped but bound to no guest: Xen's `i` dump says only
    /// `mapped, unbound` and does not name their pirq.
    pub unbound: Vec<u32>,
}

/// `sbdf`'s vectors from fresh `Q` and `i` dumps (one debug-keys call): the `Q` line lists
/// the device's Xen IRQs, the `i` lines name the (domain, pirq) each is bound to. The only
/// source that ties a pirq to a device: Xen has no call that lists a domain's pirqs.
/// `None` when the dump has no line for the device.
pub fn device_vectors(hv: &dyn Hypervisor, sbdf: Sbdf) -> Result<Option<DeviceVectors>> {
    hv.debug_keys("Qi")?;
    let console = hv.read_console()?;
    let Some(dev) = crate::xen_dump::pci_devices(&console)
        .into_iter()
        .find(|e| e.sbdf == sbdf)
    else {
        return Ok(None);
    };
    let bindings = crate::xen_dump::irq_bindings(&console);
    let mut bound = Vec::new();
    let mut unbound = Vec::new();
    for irq in &dev.msi_irqs {
        match bindings.iter().find(|b| b.irq == *irq && b.msi) {
            Some(b) => bound.extend(b.guests.iter().map(|(d, p)| (*irq, *d, Pirq(*p)))),
            None => unbound.push(*irq),
        }
    }
    Ok(Some(DeviceVectors {
        holder: dev.owner,
        bound,
        unbound,
    }))
}
