//! The legacy toolstack: libxl's passthrough order (xen-semantics.md §4), over the same
//! traits ptguard uses. It is the baseline the seed failure needs and the "legacy" policy of
//! `ptguard scenario`.

use pci::host::PciHost;
use pci::{pciback, Sbdf};
use xen::abi::XEN_DOMCTL_DEV_RDM_RELAXED;
use xen::{DomId, Errno, Hypervisor, MapPirq, Pirq};

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
    // pciback exports the device when it reads the backend's nodes; one that another
    // backend still exports is refused there (xen_pcibk_export_device), which only dom0's
    // log shows: the attach succeeds, and qemu passes the device through regardless.
    match host.pciback_export(sbdf, domid) {
        Err(Errno::EBUSY) => Ok(()),
        r => r.map_err(SimError::refused("pciback export")),
    }
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
    // A device exported through the guest's xenbus backend is pciback's to give back, when
    // it reacts to the backend's nodes (the handshake, or the whole backend going): an HVM
    // guest's backend that lists other devices keeps it exported until it goes.
    if host.with_world(|w| {
        w.pciback
            .xenbus
            .get(&domid)
            .is_some_and(|e| e.contains(&sbdf))
    }) {
        return Ok(());
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

/// libxl's PCI backend directory of a guest (`libxl__domain_device_backend_path`).
fn backend_dir(domid: DomId) -> String {
    format!("/local/domain/0/backend/pci/{}/0", domid.0)
}

/// `libxl__device_pci_add_xenstore`: the next `dev-N` (with `state-N` Initialising and
/// `num_devs`) of the guest's PCI backend, in one transaction.
pub fn backend_add(
    xs: &mut xenstore::XsClient,
    domid: DomId,
    sbdf: Sbdf,
) -> Result<(), xenstore::XenstoreError> {
    let be = backend_dir(domid);
    xs.transaction(|xs, tx| {
        let n: u32 = xs
            .read_optional(tx, &format!("{be}/num_devs"))?
            .and_then(|v| String::from_utf8_lossy(&v).trim().parse().ok())
            .unwrap_or(0);
        xs.write(tx, &format!("{be}/dev-{n}"), sbdf.to_string().as_bytes())?;
        xs.write(tx, &format!("{be}/state-{n}"), b"1")?;
        xs.write(
            tx,
            &format!("{be}/num_devs"),
            (n + 1).to_string().as_bytes(),
        )?;
        if xs.read_optional(tx, &format!("{be}/state"))?.is_none() {
            xs.write(tx, &format!("{be}/state"), b"1")?;
        }
        Ok(())
    })
}

/// `libxl__device_pci_remove_xenstore`, the last step of `xl pci-detach` (after the
/// reset and the deassign): `state-N` Closing and the backend Reconfiguring, then the
/// device's nodes removed and the later ones moved down.
pub fn backend_remove(
    xs: &mut xenstore::XsClient,
    domid: DomId,
    sbdf: Sbdf,
) -> Result<(), xenstore::XenstoreError> {
    backend_remove_with(xs, domid, sbdf, &mut || {})
}

/// [`backend_remove`], with `dom0_runs` called between the handshake's first write and the
/// removal of the nodes: libxl waits there, for a PV guest, until the backend is Connected
/// again (pcifront and pciback have let the device go); for an HVM guest it does not wait.
pub fn backend_remove_with(
    xs: &mut xenstore::XsClient,
    domid: DomId,
    sbdf: Sbdf,
    dom0_runs: &mut dyn FnMut(),
) -> Result<(), xenstore::XenstoreError> {
    let be = backend_dir(domid);
    let read =
        |xs: &mut xenstore::XsClient, p: &str| -> Result<Option<String>, xenstore::XenstoreError> {
            Ok(xs
                .read_optional(xenstore::TxId::NONE, p)?
                .map(|v| String::from_utf8_lossy(&v).trim().to_string()))
        };
    let num: u32 = read(xs, &format!("{be}/num_devs"))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let Some(i) = (0..num).find(|i| {
        read(xs, &format!("{be}/dev-{i}"))
            .ok()
            .flatten()
            .and_then(|v| v.parse::<Sbdf>().ok())
            == Some(sbdf)
    }) else {
        return Ok(());
    };
    xs.transaction(|xs, tx| {
        xs.write(tx, &format!("{be}/state-{i}"), b"5")?;
        xs.write(tx, &format!("{be}/state"), b"7")
    })?;
    dom0_runs();
    xs.transaction(|xs, tx| {
        for node in ["state", "dev", "vdev", "opts", "vdevfn", "key", "name"] {
            match xs.rm(tx, &format!("{be}/{node}-{i}")) {
                Err(e) if e.code() != Some(xenstore::ErrorCode::Enoent) => return Err(e),
                _ => {}
            }
        }
        for j in i + 1..num {
            for node in ["state", "dev"] {
                if let Some(v) = xs.read_optional(tx, &format!("{be}/{node}-{j}"))? {
                    xs.write(tx, &format!("{be}/{node}-{}", j - 1), &v)?;
                    xs.rm(tx, &format!("{be}/{node}-{j}"))?;
                }
            }
        }
        xs.write(
            tx,
            &format!("{be}/num_devs"),
            (num - 1).to_string().as_bytes(),
        )?;
        xs.write(tx, &format!("{be}/state"), b"4")
    })?;
    if num == 1 {
        // The last device: libxl__device_destroy removes the whole backend and frontend,
        // and pciback then gives every device it exported back.
        xs.transaction(|xs, tx| {
            for path in [
                format!("/local/domain/0/backend/pci/{}", domid.0),
                format!("/local/domain/{}/device/pci", domid.0),
            ] {
                match xs.rm(tx, &path) {
                    Err(e) if e.code() != Some(xenstore::ErrorCode::Enoent) => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
