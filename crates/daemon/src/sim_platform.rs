//! The simulated host as the engine sees it: the [`Platform`] a `--host sim:` command or
//! daemon runs on, with pciback watching dom0's PCI backends in Xenstore as the real one
//! does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::Platform;
use pci::host::Resource;
use pci::{PciError, PciHost, Sbdf};
use sim::xenbus::PcibackXenbus;
use sim::SimHost;
use xen::Hypervisor;
use xenstore::{XenstoreError, XsClient};

/// The simulated host as the engine sees it: Xen and dom0's PCI devices, with pciback
/// watching dom0's PCI backends in Xenstore as the real one does.
#[derive(Clone)]
pub struct SimPlatform {
    pub host: SimHost,
    pciback: Arc<Mutex<PcibackXenbus>>,
}

impl SimPlatform {
    /// The host, with pciback's xenbus watch over `xs` (its own dom0 connection to the
    /// Xenstore ptguard writes).
    pub fn new(host: SimHost, xs: XsClient) -> Result<SimPlatform, XenstoreError> {
        Ok(SimPlatform {
            host,
            pciback: Arc::new(Mutex::new(PcibackXenbus::new(xs)?)),
        })
    }

    /// dom0's pending work runs: pciback reacts to the backends written since it last ran.
    /// Every call into dom0's kernel (sysfs) does this first.
    pub fn dom0_runs(&self) {
        let mut pciback = self.pciback.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = pciback.run(&self.host) {
            tracing::warn!("simulated pciback's xenbus watch: {e}");
        }
    }

    /// Time passes in dom0: pciback's reactions, then its worker's give-backs; true when
    /// the worker gave any device back.
    pub fn settle(&self) -> bool {
        self.dom0_runs();
        self.host.settle()
    }

    fn kernel(&self) -> &SimHost {
        self.dom0_runs();
        &self.host
    }
}

impl Platform for SimPlatform {
    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.host
    }
    fn pci(&self) -> &dyn PciHost {
        self
    }
    fn pv_memory_map(&self, domain: &xen::DomainInfo) -> engine::PvMemoryMap {
        match self.host.host_memory_map(domain.domid) {
            Some(true) => engine::PvMemoryMap::HostRegions,
            Some(false) => engine::PvMemoryMap::RamOnly,
            None => engine::PvMemoryMap::Unknown,
        }
    }
}

impl PciHost for SimPlatform {
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError> {
        self.kernel().list_devices()
    }
    fn exists(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().exists(sbdf)
    }
    fn read_config(&self, sbdf: Sbdf) -> Result<Vec<u8>, PciError> {
        self.kernel().read_config(sbdf)
    }
    fn write_config(&self, sbdf: Sbdf, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.kernel().write_config(sbdf, offset, data)
    }
    fn resources(&self, sbdf: Sbdf) -> Result<Vec<Resource>, PciError> {
        self.kernel().resources(sbdf)
    }
    fn irq(&self, sbdf: Sbdf) -> Result<u32, PciError> {
        self.kernel().irq(sbdf)
    }
    fn msi_irqs(&self, sbdf: Sbdf) -> Result<Vec<u32>, PciError> {
        self.kernel().msi_irqs(sbdf)
    }
    fn enabled(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().enabled(sbdf)
    }
    fn driver(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.kernel().driver(sbdf)
    }
    fn physfn(&self, sbdf: Sbdf) -> Result<Option<Sbdf>, PciError> {
        self.kernel().physfn(sbdf)
    }
    fn driver_override(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.kernel().driver_override(sbdf)
    }
    fn set_driver_override(&self, sbdf: Sbdf, driver: Option<&str>) -> Result<(), PciError> {
        self.kernel().set_driver_override(sbdf, driver)
    }
    fn reset_methods(&self, sbdf: Sbdf) -> Result<Option<Vec<String>>, PciError> {
        self.kernel().reset_methods(sbdf)
    }
    fn can_reset(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().can_reset(sbdf)
    }
    fn reset(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().reset(sbdf)
    }
    fn driver_bind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().driver_bind(driver, sbdf)
    }
    fn yield_to_dom0(&self, _wait: std::time::Duration) {
        self.dom0_runs();
    }
    fn driver_unbind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().driver_unbind(driver, sbdf)
    }
    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError> {
        self.kernel().pciback_slots()
    }
    fn pciback_new_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_new_slot(sbdf)
    }
    fn pciback_remove_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_remove_slot(sbdf)
    }
    fn pciback_permissive(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_permissive(sbdf)
    }
    fn pciback_allow_interrupt_control(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_allow_interrupt_control(sbdf)
    }
    fn wait_backend_released(&self, domid: u16, timeout: Duration) -> Result<bool, PciError> {
        self.kernel().wait_backend_released(domid, timeout)
    }
}
