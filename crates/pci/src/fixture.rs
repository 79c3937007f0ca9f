//! Fixture sysfs trees: a directory laid out as Linux's `/sys/bus/pci`, so [`SysfsHost`]
//! runs unchanged in tests.
//!
//! Files are plain files: a write to `bind` does not move the `driver` link. Tests check the
//! host's write log and the last bytes written to each attribute.
//!
//! [`SysfsHost`]: crate::sysfs::SysfsHost

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::ConfigSpace;
use crate::host::{Resource, PCIBACK};
use crate::Sbdf;

/// The pciback driver's attribute files, as `pci_stub.c` names them.
pub const PCIBACK_FILES: &[&str] = &[
    "new_slot",
    "remove_slot",
    "slots",
    "bind",
    "unbind",
    "permissive",
    "allow_interrupt_control",
    "quirks",
    "irq_handlers",
    "irq_handler_state",
];

/// One device of a fixture tree.
#[derive(Clone, Debug)]
pub struct FixtureDevice {
    pub sbdf: Sbdf,
    pub config: ConfigSpace,
    pub resources: Vec<Resource>,
    pub irq: u32,
    pub msi_irqs: Vec<u32>,
    pub driver: Option<String>,
    /// `None`: no `reset_method` file (kernels before 5.15).
    pub reset_methods: Option<Vec<String>>,
    /// Whether the `reset` file exists.
    pub resettable: bool,
    pub enabled: bool,
}

impl FixtureDevice {
    pub fn new(sbdf: Sbdf, config: ConfigSpace, resources: Vec<Resource>) -> FixtureDevice {
        FixtureDevice {
            sbdf,
            config,
            resources,
            irq: 0,
            msi_irqs: Vec::new(),
            driver: None,
            reset_methods: Some(vec!["flr".into(), "bus".into()]),
            resettable: true,
            enabled: true,
        }
    }
}

/// A sysfs tree rooted at a directory the caller owns.
#[derive(Clone, Debug)]
pub struct FixtureTree {
    root: PathBuf,
}

impl FixtureTree {
    /// Creates `bus/pci/{devices,drivers/pciback}` under `root`.
    pub fn create(root: &Path) -> io::Result<FixtureTree> {
        let t = FixtureTree {
            root: root.to_path_buf(),
        };
        fs::create_dir_all(t.devices_dir())?;
        t.add_driver(PCIBACK)?;
        for f in PCIBACK_FILES {
            fs::write(t.driver_dir(PCIBACK).join(f), b"")?;
        }
        Ok(t)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }
    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver)
    }
    pub fn device_dir(&self, sbdf: Sbdf) -> PathBuf {
        self.devices_dir().join(sbdf.to_string())
    }

    /// Creates `drivers/NAME/{bind,unbind}`.
    pub fn add_driver(&self, name: &str) -> io::Result<()> {
        let d = self.driver_dir(name);
        fs::create_dir_all(&d)?;
        for f in ["bind", "unbind", "new_id", "remove_id"] {
            fs::write(d.join(f), b"")?;
        }
        Ok(())
    }

    /// Creates the device directory with every file ptguard reads.
    pub fn add_device(&self, dev: &FixtureDevice) -> io::Result<PathBuf> {
        let d = self.device_dir(dev.sbdf);
        fs::create_dir_all(&d)?;
        fs::write(d.join("config"), dev.config.bytes())?;
        let cfg = dev.config.parse().ok();
        let (vendor, device, class) = cfg
            .as_ref()
            .map_or((0, 0, 0), |c| (c.vendor_id, c.device_id, c.class));
        fs::write(d.join("vendor"), format!("0x{vendor:04x}\n"))?;
        fs::write(d.join("device"), format!("0x{device:04x}\n"))?;
        fs::write(d.join("class"), format!("0x{class:06x}\n"))?;
        let mut res = String::new();
        for r in &dev.resources {
            res.push_str(&format!(
                "0x{:016x} 0x{:016x} 0x{:016x}\n",
                r.start, r.end, r.flags
            ));
        }
        fs::write(d.join("resource"), res)?;
        fs::write(d.join("irq"), format!("{}\n", dev.irq))?;
        fs::write(d.join("enable"), if dev.enabled { "1\n" } else { "0\n" })?;
        fs::write(d.join("driver_override"), "(null)\n")?;
        if !dev.msi_irqs.is_empty() {
            fs::create_dir_all(d.join("msi_irqs"))?;
            for irq in &dev.msi_irqs {
                fs::write(d.join("msi_irqs").join(irq.to_string()), "msix\n")?;
            }
        }
        if let Some(m) = &dev.reset_methods {
            fs::write(d.join("reset_method"), format!("{}\n", m.join(" ")))?;
        }
        if dev.resettable {
            fs::write(d.join("reset"), b"")?;
        }
        if let Some(drv) = &dev.driver {
            self.add_driver(drv)?;
            self.set_driver_link(dev.sbdf, Some(drv))?;
        }
        Ok(d)
    }

    /// Points (or removes) the device's `driver` link, as the kernel does on bind/unbind.
    pub fn set_driver_link(&self, sbdf: Sbdf, driver: Option<&str>) -> io::Result<()> {
        let link = self.device_dir(sbdf).join("driver");
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link)?;
        }
        if let Some(drv) = driver {
            std::os::unix::fs::symlink(format!("../../../../bus/pci/drivers/{drv}"), &link)?;
        }
        Ok(())
    }

    /// Writes pciback's `slots` as the kernel would list them.
    pub fn set_pciback_slots(&self, slots: &[Sbdf]) -> io::Result<()> {
        let text: String = slots.iter().map(|s| format!("{s}\n")).collect();
        fs::write(self.driver_dir(PCIBACK).join("slots"), text)
    }

    /// The last bytes written to `FILE` of a driver.
    pub fn driver_file(&self, driver: &str, file: &str) -> io::Result<Vec<u8>> {
        fs::read(self.driver_dir(driver).join(file))
    }

    /// The current contents of a device file.
    pub fn device_file(&self, sbdf: Sbdf, file: &str) -> io::Result<Vec<u8>> {
        fs::read(self.device_dir(sbdf).join(file))
    }

    /// Removes the device directory, as a hot-removed device disappears.
    pub fn remove_device(&self, sbdf: Sbdf) -> io::Result<()> {
        fs::remove_dir_all(self.device_dir(sbdf))
    }
}
