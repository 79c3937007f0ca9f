//! The legacy toolstack: libxl's passthrough order (xen-semantics.md §4), over the same
//! traits ptguard uses. It is the baseline the seed failure needs and the "legacy" policy of
//! `ptguard scenario`.

use pci::host::PciHost;
use pci::{pciback, Sbdf};
use xen::abi::XEN_DOMCTL_DEV_RDM_RELAXED;
use xen::{DomId, Hypervisor, MapPirq, Pirq};

use crate::dm::{DeviceModel, VectorBroker};
use crate::error::SimError;
use crate::host::SimHost;

/// What went wrong, as libxl logs it.
pub type LibxlError = SimError;

/// `xl pci-assignable-add` (§4.1): seize into pciback, then quarantine to `dom_io` (the
/// libxl of 4.11.3/4.12.2/4.13.0 onwards; 4.11.0's leaves the device in pciback).
pub fn assignable_add(host: &SimHost, sbdf: Sbdf) -> Result<(), LibxlError> {
    pciback::seize(host, sbdf)?;
    if !host.profile().xen.has_quarantine() {
        return Ok(());
    }
    Ok(host.assign_device(DomId::IO, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)?)
}

/// `libxl__device_pci_reset` (§4.2 step 3): sysfs `reset`, or a log line if there is none.
pub fn pci_reset(host: &SimHost, sbdf: Sbdf) -> Result<(), LibxlError> {
    if host.can_reset(sbdf)? {
        Ok(host.reset(sbdf)?)
    } else {
        tracing::warn!("The kernel doesn't support reset from sysfs for PCI device {sbdf}");
        Ok(())
    }
}

fn bar_permissions(
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    allow: bool,
) -> Result<(), LibxlError> {
    for r in host.resources(sbdf)?.iter().take(6) {
        if r.is_empty() {
            continue;
        }
        let res = if r.is_io() {
            host.ioport_permission(domid, r.start as u32, r.len() as u32, allow)
        } else {
            host.iomem_permission(domid, r.start >> 12, r.len().div_ceil(4096), allow)
        };
        res?;
    }
    Ok(())
}

/// `libxl__device_pci_add` for an HVM guest (§4.2): test, reset, qemu `device_add`, BAR and
/// IRQ permissions, INTx pirq, assign, backend (pciback export).
pub fn attach(
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    dm: &mut DeviceModel,
    broker: &dyn VectorBroker,
) -> Result<(), LibxlError> {
    host.test_assign_device(sbdf)?;
    pci_reset(host, sbdf)?;
    dm.plug(host, broker, sbdf)?;
    bar_permissions(host, domid, sbdf, true)?;
    let irq = host.irq(sbdf)?;
    if irq > 0 && irq < 0xff {
        host.map_pirq(&MapPirq::gsi(domid, irq))?;
        host.irq_permission(domid, Pirq(irq as i32), true)?;
    }
    host.assign_device(domid, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)?;
    host.pciback_export(sbdf, domid)
        .map_err(SimError::refused("pciback export"))
}

/// `do_pci_remove` (§4.3): `device_del` (aborts without `force` if qemu does not finish),
/// revoke permissions, unmap the INTx pirq only, reset, deassign, remove the backend.
pub fn detach(
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    dm: &mut DeviceModel,
    broker: &dyn VectorBroker,
    force: bool,
) -> Result<(), LibxlError> {
    let guest_alive = host.domain_alive(domid)
        && host.with_world(|w| {
            w.domains
                .get(&domid)
                .is_some_and(|d| d.state == crate::world::DomainState::Running)
        });
    if !dm.unplug(host, broker, sbdf, guest_alive) && !force {
        return Err(SimError::DeviceDelTimedOut { sbdf });
    }
    let _ = bar_permissions(host, domid, sbdf, false);
    let irq = host.irq(sbdf).unwrap_or(0);
    if irq > 0 && irq < 0xff {
        // "QEMU may have already unmapped the IRQ": errors logged and ignored.
        if let Err(e) = host.unmap_pirq(domid, Pirq(irq as i32)) {
            tracing::info!("xc_physdev_unmap_pirq irq={irq}: {e}");
        }
        let _ = host.irq_permission(domid, Pirq(irq as i32), false);
    }
    pci_reset(host, sbdf)?;
    if let Err(e) = host.deassign_device(domid, sbdf) {
        tracing::warn!("xc_deassign_device failed: {e}");
    }
    host.pciback_put(sbdf)
        .map_err(SimError::refused("pciback give-back"))
}

/// `libxl__destroy_domid` (§4.4): forced detach of every device, pause, kill the device
/// model, destroy the domain.
pub fn destroy(
    host: &SimHost,
    domid: DomId,
    devices: &[Sbdf],
    dm: &mut DeviceModel,
    broker: &dyn VectorBroker,
) -> Result<(), LibxlError> {
    for sbdf in devices {
        detach(host, domid, *sbdf, dm, broker, true)?;
    }
    let _ = host.pause(domid);
    dm.kill();
    host.destroy_domain(domid)
        .map_err(SimError::refused("destroy domain"))
}
