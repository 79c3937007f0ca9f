//! dom0's Linux: the PCI core's sysfs reset and pciback (xen-semantics.md §2.2–2.4, §6).

use pci::config::regs::*;
use pci::Sbdf;
use xen::{DomId, Errno, HypercallOp, MapPirq, MapSource, Pirq};

use crate::profile::PcibackProfile;
use crate::world::World;

type R<T> = Result<T, Errno>;

impl World {
    pub(crate) fn dev_ref(&self, sbdf: Sbdf) -> R<&crate::world::DeviceState> {
        self.devices.get(&sbdf).ok_or(Errno::ENODEV)
    }

    /// Writing `1` to sysfs `reset`: `pci_reset_function` saves config, resets with the first
    /// working method and restores config. MSI-X is not restored for a device dom0 did not
    /// enable it on (§6), so Enable/Function Mask stay cleared and every vector masked.
    pub fn sysfs_reset(&mut self, sbdf: Sbdf) -> R<()> {
        let dev = self.devices.get_mut(&sbdf).ok_or(Errno::ENODEV)?;
        let Some(method) = dev.hw.spec.reset_methods.first().copied() else {
            return Err(Errno::ENOENT);
        };
        let saved_cmd = dev.hw.command();
        dev.hw.hardware_reset();
        dev.hw.set_command(saved_cmd);
        self.note(format!("linux: {sbdf} reset ({})", method.name()));
        Ok(())
    }

    /// `pcistub_reset_device_state` (`__pci_reset_function_locked`): reset, no restore.
    fn pcistub_reset(&mut self, sbdf: Sbdf) {
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            if !dev.hw.spec.reset_methods.is_empty() {
                dev.hw.hardware_reset();
            }
        }
    }

    /// `pci_restore_state` from the copy pciback saved at seize (Command included; MSI-X
    /// not, dom0 never enabled it).
    fn pciback_restore(&mut self, sbdf: Sbdf) {
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            if let Some(saved) = &dev.linux.saved_config {
                let cmd = saved.read16(COMMAND).unwrap_or(0);
                dev.hw.set_command(cmd);
            }
        }
    }

    /// `xen_pcibk_reset_device` (§2.3): disables MSI-X dom0 enabled for a PV guest (unmapping
    /// its pirqs), `pci_disable_device` (Bus Master off), and on old kernels Command := 0.
    fn xen_pcibk_reset_device(&mut self, sbdf: Sbdf) {
        let vectors = self
            .devices
            .get_mut(&sbdf)
            .map(|d| std::mem::take(&mut d.linux.pv_msix))
            .unwrap_or_default();
        if !vectors.is_empty() {
            for (_, domid, pirq) in vectors {
                self.count(HypercallOp::UnmapPirq);
                if let Err(e) = self.unmap_pirq(domid, pirq) {
                    self.log(format!(
                        "pciback {sbdf}: unmap of pirq {pirq} failed ({})",
                        -e.0
                    ));
                }
            }
            let ctrl = self
                .devices
                .get(&sbdf)
                .map_or(0, |d| d.hw.msix_ctrl() & !MSIX_FLAGS_ENABLE);
            if let Some(off) = self
                .devices
                .get(&sbdf)
                .and_then(|d| d.hw.msix)
                .map(|m| m.offset)
            {
                let _ = self.dom0_config_write(sbdf, off + MSIX_FLAGS, &ctrl.to_le_bytes());
            }
        }
        let old = self.profile.pciback == PcibackProfile::BeforeCommandFix;
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            let cmd = dev.hw.command() & !COMMAND_MASTER;
            dev.hw.set_command(if old { 0 } else { cmd });
            dev.linux.enable_cnt = 0;
        }
    }

    fn logged_hypercall(&mut self, sbdf: Sbdf, op: HypercallOp, what: &str) {
        self.count(op);
        let r = match op {
            HypercallOp::PrepareMsix => self.prepare_msix(sbdf),
            _ => self.release_msix(sbdf),
        };
        if let Err(e) = r {
            self.log(format!("pciback {sbdf}: MSI-X {what} failed ({})", -e.0));
        }
    }

    /// Binding a device to pciback (`pcistub_probe` → `pcistub_seize` → `pcistub_init_device`).
    pub fn pciback_seize(&mut self, sbdf: Sbdf) -> R<()> {
        let dev = self.dev_ref(sbdf)?;
        if dev.linux.driver.is_some() {
            return Err(Errno::EBUSY);
        }
        let wanted = self.pciback.slots.contains(&sbdf)
            || dev.linux.driver_override.as_deref() == Some(pci::host::PCIBACK);
        if !wanted {
            return Err(Errno::ENODEV);
        }
        let has_msix = dev.hw.msix.is_some();
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.linux.driver = Some(pci::host::PCIBACK.into());
            dev.linux.enable_cnt += 1;
            let cmd = dev.hw.command() | COMMAND_MEMORY;
            dev.hw.set_command(cmd);
        }
        if has_msix {
            self.logged_hypercall(sbdf, HypercallOp::PrepareMsix, "preparation");
        }
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.linux.saved_config = Some(dev.hw.config.clone());
        }
        self.pcistub_reset(sbdf);
        self.pciback_restore(sbdf);
        self.xen_pcibk_reset_device(sbdf);
        self.note(format!("pciback: seized {sbdf}"));
        Ok(())
    }

    /// Unbinding from pciback (`pcistub_remove` → `pcistub_device_release`).
    pub fn pciback_unseize(&mut self, sbdf: Sbdf) -> R<()> {
        let dev = self.dev_ref(sbdf)?;
        if dev.linux.driver.as_deref() != Some(pci::host::PCIBACK) {
            return Err(Errno::ENODEV);
        }
        let has_msix = dev.hw.msix.is_some();
        if let Some(d) = dev.linux.exported_to {
            self.log(format!(
                "pciback {sbdf}: ****** removing device while still in-use by domain {}! ******",
                d.0
            ));
        }
        self.pcistub_reset(sbdf);
        self.pciback_restore(sbdf);
        if has_msix {
            self.logged_hypercall(sbdf, HypercallOp::ReleaseMsix, "release");
        }
        self.xen_pcibk_reset_device(sbdf);
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.linux.driver = None;
            dev.linux.saved_config = None;
            dev.linux.exported_to = None;
        }
        // pcistub_remove of a device in use releases it from its backend
        // (xen_pcibk_release_pci_dev): that backend's later removal no longer gives it back.
        for exported in self.pciback.xenbus.values_mut() {
            exported.remove(&sbdf);
        }
        self.pciback
            .xenbus
            .retain(|_, exported| !exported.is_empty());
        self.pciback.pending_puts.remove(&sbdf);
        self.pciback.permissive.remove(&sbdf);
        self.pciback.allow_interrupt_control.remove(&sbdf);
        self.note(format!("pciback: released {sbdf}"));
        Ok(())
    }

    /// The domain pciback exports the device to, if any.
    pub fn exported_to(&self, sbdf: Sbdf) -> Option<DomId> {
        self.devices.get(&sbdf).and_then(|d| d.linux.exported_to)
    }

    /// Whether a backend could take the device: it is pciback's and exported nowhere.
    pub fn pciback_exportable(&self, sbdf: Sbdf) -> R<()> {
        let dev = self.devices.get(&sbdf).ok_or(Errno::ENODEV)?;
        if dev.linux.driver.as_deref() != Some(pci::host::PCIBACK) {
            return Err(Errno::ENODEV);
        }
        if dev.linux.exported_to.is_some() {
            return Err(Errno::EBUSY);
        }
        Ok(())
    }

    /// `xen_pcibk_export_device`: the backend for `domid` takes the device.
    pub fn pciback_export(&mut self, sbdf: Sbdf, domid: DomId) -> R<()> {
        if let Err(e) = self.pciback_exportable(sbdf) {
            if let Some(holder) = self.exported_to(sbdf).filter(|h| *h != domid) {
                self.log(format!(
                    "pciback {sbdf}: not exported to domain {}: still in use by domain {}'s backend",
                    domid.0, holder.0
                ));
            }
            return Err(e);
        }
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.linux.exported_to = Some(domid);
        }
        Ok(())
    }

    /// `pcistub_put_pci_dev`: a device comes back from a guest (§2.2 Give back).
    pub fn pciback_put(&mut self, sbdf: Sbdf) -> R<()> {
        let dev = self.dev_ref(sbdf)?;
        if dev.linux.exported_to.is_none() {
            return Ok(());
        }
        let has_msix = dev.hw.msix.is_some();
        self.pcistub_reset(sbdf);
        self.pciback_restore(sbdf);
        self.xen_pcibk_reset_device(sbdf);
        if has_msix && self.profile.pciback_release_prepare_on_put {
            self.pciback_restore(sbdf);
            self.logged_hypercall(sbdf, HypercallOp::ReleaseMsix, "release");
            self.logged_hypercall(sbdf, HypercallOp::PrepareMsix, "preparation");
            self.xen_pcibk_reset_device(sbdf);
        }
        self.pciback.allow_interrupt_control.remove(&sbdf);
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.linux.exported_to = None;
        }
        self.note(format!("pciback: {sbdf} returned"));
        Ok(())
    }

    /// `XEN_PCI_OP_enable_msix` from a PV guest's pcifront (§2.4): dom0 maps each vector for
    /// the owner and enables MSI-X.
    pub fn pv_enable_msix(&mut self, sbdf: Sbdf, nvec: u16) -> R<Vec<Pirq>> {
        let decoded = self.memory_decoded(sbdf);
        let dev = self.dev_ref(sbdf)?;
        let owner = dev.linux.exported_to.ok_or(Errno::ENODEV)?;
        if !dev.linux.pv_msix.is_empty() {
            return Err(Errno::EALREADY);
        }
        if !decoded {
            return Err(Errno::ENXIO);
        }
        if nvec == 0 || nvec > dev.hw.msix_table_size() {
            return Err(Errno::EINVAL);
        }
        let table_base = dev.hw.table_base();
        let off = dev.hw.msix.map(|m| m.offset).ok_or(Errno::ENODEV)?;
        // Linux enables the device and sets Bus Master for the dom0-side driver.
        if let Some(d) = self.devices.get_mut(&sbdf) {
            let cmd = d.hw.command() | COMMAND_MEMORY | COMMAND_MASTER;
            d.hw.set_command(cmd);
        }
        let mut pirqs = Vec::new();
        for entry in 0..nvec {
            self.count(HypercallOp::MapPirq);
            let pirq = self.map_pirq(&MapPirq {
                domid: owner,
                source: MapSource::Msi {
                    sbdf,
                    entry_nr: entry,
                    table_base,
                },
                pirq: None,
            })?;
            if let Some(d) = self.devices.get_mut(&sbdf) {
                d.linux.pv_msix.push((entry, owner, pirq));
            }
            pirqs.push(pirq);
        }
        self.dom0_config_write(sbdf, off + MSIX_FLAGS, &MSIX_FLAGS_ENABLE.to_le_bytes())?;
        Ok(pirqs)
    }
}
