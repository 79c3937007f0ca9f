//! The pciback seize and release sequences, as libxl's `pci-assignable-add` and
//! `pci-assignable-remove` perform them (xen-semantics.md §4.1).

use crate::host::{PciHost, PCIBACK};
use crate::{PciError, Sbdf};

/// What seizing a device found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seizure {
    /// The driver the device was bound to before (to rebind on release).
    pub original_driver: Option<String>,
    /// The device was already bound to pciback; nothing was written.
    pub already_seized: bool,
}

/// Binds `sbdf` to pciback: unbind from its driver, add a slot if pciback does not list it
/// (`new_slot` is not idempotent: duplicates accumulate), then `bind`.
pub fn seize(host: &dyn PciHost, sbdf: Sbdf) -> Result<Seizure, PciError> {
    if !host.exists(sbdf)? {
        return Err(PciError::Refused {
            sbdf,
            what: "no such PCI device on this host".into(),
        });
    }
    let original = host.driver(sbdf)?;
    if original.as_deref() == Some(PCIBACK) {
        return Ok(Seizure {
            original_driver: None,
            already_seized: true,
        });
    }
    if let Some(drv) = &original {
        host.driver_unbind(drv, sbdf)?;
    }
    if !host.pciback_slots()?.contains(&sbdf) {
        host.pciback_new_slot(sbdf)?;
    }
    // Linux probes a virtual function only when its PF's sriov_drivers_autoprobe is on or
    // the VF names a driver_override (pci_device_can_probe); operators turn autoprobe off
    // so that no dom0 driver takes the VFs, and pciback's bind then fails -ENODEV (seen on
    // the test bed with QEMU's NVMe VF).
    if host.physfn(sbdf)?.is_some() && host.driver_override(sbdf)?.as_deref() != Some(PCIBACK) {
        host.set_driver_override(sbdf, Some(PCIBACK))?;
    }
    host.driver_bind(PCIBACK, sbdf)?;
    Ok(Seizure {
        original_driver: original,
        already_seized: false,
    })
}

/// Unbinds `sbdf` from pciback, removes its slot and rebinds `original_driver` if given.
pub fn release(
    host: &dyn PciHost,
    sbdf: Sbdf,
    original_driver: Option<&str>,
) -> Result<(), PciError> {
    if host.driver(sbdf)?.as_deref() == Some(PCIBACK) {
        host.driver_unbind(PCIBACK, sbdf)?;
    }
    host.pciback_remove_slot(sbdf)?;
    if host.driver_override(sbdf)?.as_deref() == Some(PCIBACK) {
        host.set_driver_override(sbdf, None)?;
    }
    if let Some(drv) = original_driver.filter(|d| *d != PCIBACK) {
        host.driver_bind(drv, sbdf)?;
    }
    Ok(())
}
