//! The [`PciHost`] trait: the sysfs and pciback operations ptguard performs on devices.
//!
//! Each method is one read or one write of one sysfs file, named after the file, so that an
//! implementation can be checked write for write against Linux and the simulated host can
//! give each write the kernel's semantics.

use serde::Serialize;

use crate::{PciError, Sbdf};

/// One line of sysfs `resource`: `start end flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

impl Resource {
    /// Linux `IORESOURCE_IO`.
    pub const IO: u64 = 0x100;
    /// Linux `IORESOURCE_MEM`.
    pub const MEM: u64 = 0x200;

    /// Size in bytes; 0 for an unimplemented BAR (Linux prints all zeros).
    pub fn len(&self) -> u64 {
        if self.start == 0 && self.end == 0 {
            0
        } else {
            self.end.wrapping_sub(self.start).wrapping_add(1)
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_io(&self) -> bool {
        self.flags & Self::IO != 0
    }
    pub fn is_mem(&self) -> bool {
        self.flags & Self::MEM != 0
    }
}

/// The host's PCI devices as sysfs and pciback expose them.
///
/// Methods take `&self`: implementations synchronise internally, so one host can serve the
/// engine and a broker thread.
pub trait PciHost: Send + Sync {
    /// Every function under `bus/pci/devices`, in address order.
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError>;
    /// Whether `bus/pci/devices/SBDF` exists.
    fn exists(&self, sbdf: Sbdf) -> Result<bool, PciError>;
    /// The `config` file (64 bytes unprivileged, 256 or 4096 for root).
    fn read_config(&self, sbdf: Sbdf) -> Result<Vec<u8>, PciError>;
    /// `pwrite` of `data` at `offset` into `config`; Linux turns a 2- or 4-byte aligned write
    /// into one config access of that width.
    fn write_config(&self, sbdf: Sbdf, offset: u16, data: &[u8]) -> Result<(), PciError>;
    /// `resource`: one line per BAR, then the ROM and bridge windows.
    fn resources(&self, sbdf: Sbdf) -> Result<Vec<Resource>, PciError>;
    /// `irq`: the INTx line Linux assigned (0 when none).
    fn irq(&self, sbdf: Sbdf) -> Result<u32, PciError>;
    /// `msi_irqs/`: Linux IRQs of vectors dom0's own driver enabled.
    fn msi_irqs(&self, sbdf: Sbdf) -> Result<Vec<u32>, PciError>;
    /// `enable`: whether Linux considers the device enabled.
    fn enabled(&self, sbdf: Sbdf) -> Result<bool, PciError>;
    /// The name of the driver the `driver` link points to.
    fn driver(&self, sbdf: Sbdf) -> Result<Option<String>, PciError>;
    /// For an SR-IOV virtual function, its physical function (the `physfn` link).
    fn physfn(&self, sbdf: Sbdf) -> Result<Option<Sbdf>, PciError>;
    /// `driver_override` (`None` when it reads `(null)`).
    fn driver_override(&self, sbdf: Sbdf) -> Result<Option<String>, PciError>;
    /// Writes `driver_override`; `None` clears it.
    fn set_driver_override(&self, sbdf: Sbdf, driver: Option<&str>) -> Result<(), PciError>;
    /// `reset_method` (`None` when the kernel has no such file).
    fn reset_methods(&self, sbdf: Sbdf) -> Result<Option<Vec<String>>, PciError>;
    /// Whether the `reset` file exists (Linux creates it only if some method works).
    fn can_reset(&self, sbdf: Sbdf) -> Result<bool, PciError>;
    /// Writes `1` to `reset`.
    fn reset(&self, sbdf: Sbdf) -> Result<(), PciError>;
    /// Writes the address to `bus/pci/drivers/DRIVER/bind`.
    fn driver_bind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError>;
    /// Writes the address to `bus/pci/drivers/DRIVER/unbind`.
    fn driver_unbind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError>;
    /// Reads pciback's `slots`.
    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError>;
    /// Writes the address to pciback's `new_slot`.
    fn pciback_new_slot(&self, sbdf: Sbdf) -> Result<(), PciError>;
    /// Writes the address to pciback's `remove_slot`.
    fn pciback_remove_slot(&self, sbdf: Sbdf) -> Result<(), PciError>;
    /// Writes the address to pciback's `permissive`.
    fn pciback_permissive(&self, sbdf: Sbdf) -> Result<(), PciError>;
    /// Writes the address to pciback's `allow_interrupt_control`.
    fn pciback_allow_interrupt_control(&self, sbdf: Sbdf) -> Result<(), PciError>;
    /// Waits, at most `timeout`, until pciback has let go of domain `domid`'s PCI backend
    /// after the toolstack removed it from Xenstore: pciback reacts in its xenbus worker
    /// (reset, restore, give back each device), and the xen-backend device's directory
    /// (`devices/xen-backend/pci-<domid>-0`, linked from `bus/xen-backend/devices`)
    /// leaves sysfs once that is done — the link alone goes before pciback's remove runs.
    /// `Ok(false)`: still there at the timeout.
    fn wait_backend_released(
        &self,
        domid: u16,
        timeout: std::time::Duration,
    ) -> Result<bool, PciError>;

    /// Lets dom0's own work (pciback's xenbus worker, a guest's pcifront answering it) run
    /// for about `wait` while ptguard waits for it in Xenstore. A real host sleeps; a
    /// simulated one runs that work at once.
    fn yield_to_dom0(&self, wait: std::time::Duration) {
        std::thread::sleep(wait);
    }
}

/// The pciback driver's name in sysfs.
pub const PCIBACK: &str = "pciback";
