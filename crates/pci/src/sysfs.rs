//! [`PciHost`] over a Linux sysfs tree (`/sys` or a fixture directory).
//!
//! Every write is one `write(2)` of exactly the bytes Linux's store functions parse (an
//! address `SSSS:BB:DD.F` without newline as libxl writes it, `1` for `reset`), is recorded in
//! a write log, and in dry-run mode is only recorded.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::host::{PciHost, Resource, PCIBACK};
use crate::{PciError, Sbdf};

/// One write performed (or, in dry-run mode, planned) on sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsWrite {
    pub path: PathBuf,
    /// Byte offset (non-zero only for `config`).
    pub offset: u64,
    pub data: Vec<u8>,
}

impl std::fmt::Display for SysfsWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.ends_with("config") {
            write!(f, "write {} @{:#x}: ", self.path.display(), self.offset)?;
            for b in &self.data {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        } else {
            write!(
                f,
                "write {}: {:?}",
                self.path.display(),
                String::from_utf8_lossy(&self.data)
            )
        }
    }
}

/// The sysfs implementation of [`PciHost`].
#[derive(Debug)]
pub struct SysfsHost {
    root: PathBuf,
    dry_run: bool,
    log: Mutex<Vec<SysfsWrite>>,
}

impl SysfsHost {
    /// A host rooted at `root` (`/sys` on a real machine).
    pub fn new(root: impl Into<PathBuf>) -> SysfsHost {
        SysfsHost {
            root: root.into(),
            dry_run: false,
            log: Mutex::new(Vec::new()),
        }
    }

    /// Records writes without performing them (reads still happen).
    pub fn dry_run(mut self, on: bool) -> SysfsHost {
        self.dry_run = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The writes performed (or planned) so far.
    pub fn writes(&self) -> Vec<SysfsWrite> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Drains the write log.
    pub fn take_writes(&self) -> Vec<SysfsWrite> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }
    pub fn drivers_dir(&self) -> PathBuf {
        self.root.join("bus/pci/drivers")
    }
    fn device_file(&self, sbdf: Sbdf, file: &str) -> PathBuf {
        self.devices_dir().join(sbdf.to_string()).join(file)
    }
    fn pciback_file(&self, file: &str) -> PathBuf {
        self.drivers_dir().join(PCIBACK).join(file)
    }

    /// Maps an I/O error on a device file: a missing file in a vanished device directory is
    /// reported as the device vanishing.
    fn device_error(
        &self,
        sbdf: Sbdf,
        file: PathBuf,
        op: &'static str,
        e: std::io::Error,
    ) -> PciError {
        if e.kind() == ErrorKind::NotFound {
            let dir = self.devices_dir().join(sbdf.to_string());
            if !dir.exists() {
                return PciError::Vanished { sbdf, file };
            }
            return PciError::Missing {
                sbdf,
                file,
                what: "the kernel does not provide it for this device",
            };
        }
        PciError::Io {
            file,
            op,
            source: e,
        }
    }

    fn read_device_text(&self, sbdf: Sbdf, name: &str) -> Result<String, PciError> {
        let file = self.device_file(sbdf, name);
        fs::read_to_string(&file).map_err(|e| self.device_error(sbdf, file, "read", e))
    }

    fn record(&self, path: PathBuf, offset: u64, data: &[u8]) {
        if let Ok(mut l) = self.log.lock() {
            l.push(SysfsWrite {
                path,
                offset,
                data: data.to_vec(),
            });
        }
    }

    /// One `write(2)` of `data` to an existing sysfs attribute.
    fn write_attr(&self, sbdf: Option<Sbdf>, path: PathBuf, data: &[u8]) -> Result<(), PciError> {
        self.record(path.clone(), 0, data);
        if self.dry_run {
            return Ok(());
        }
        let result = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| {
                let n = f.write(data)?;
                if n != data.len() {
                    return Err(std::io::Error::new(ErrorKind::WriteZero, "short write"));
                }
                Ok(())
            });
        result.map_err(|e| match sbdf {
            Some(s) => self.device_error(s, path, "write", e),
            None => PciError::Io {
                file: path,
                op: "write",
                source: e,
            },
        })
    }

    fn require_device(&self, sbdf: Sbdf) -> Result<(), PciError> {
        if self.exists(sbdf)? {
            Ok(())
        } else {
            Err(PciError::NoSuchDevice {
                sbdf,
                dir: self.devices_dir().join(sbdf.to_string()),
            })
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// Parses sysfs `resource` text.
pub fn parse_resources(file: &Path, text: &str) -> Result<Vec<Resource>, PciError> {
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [s, e, fl] => match (parse_hex(s), parse_hex(e), parse_hex(fl)) {
                    (Some(start), Some(end), Some(flags)) => Some(Resource { start, end, flags }),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| PciError::Malformed {
                file: file.to_path_buf(),
                what: "a resource line (start end flags)",
                text: line.to_string(),
            })
        })
        .collect()
}

/// Parses pciback `slots` text (`%04x:%02x:%02x.%d` per line).
pub fn parse_slots(file: &Path, text: &str) -> Result<Vec<Sbdf>, PciError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| PciError::Malformed {
                file: file.to_path_buf(),
                what: "a pciback slot",
                text: l.to_string(),
            })
        })
        .collect()
}

impl PciHost for SysfsHost {
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError> {
        let dir = self.devices_dir();
        let entries = fs::read_dir(&dir).map_err(|e| PciError::Io {
            file: dir.clone(),
            op: "list",
            source: e,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PciError::Io {
                file: dir.clone(),
                op: "list",
                source: e,
            })?;
            // Entries that are not addresses (there are none on Linux) are skipped, not fatal.
            if let Some(sbdf) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(sbdf);
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        Ok(self.devices_dir().join(sbdf.to_string()).exists())
    }

    fn read_config(&self, sbdf: Sbdf) -> Result<Vec<u8>, PciError> {
        self.require_device(sbdf)?;
        let file = self.device_file(sbdf, "config");
        fs::read(&file).map_err(|e| self.device_error(sbdf, file, "read", e))
    }

    fn write_config(&self, sbdf: Sbdf, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.require_device(sbdf)?;
        let file = self.device_file(sbdf, "config");
        self.record(file.clone(), u64::from(offset), data);
        if self.dry_run {
            return Ok(());
        }
        OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|f| {
                let n = f.write_at(data, u64::from(offset))?;
                if n != data.len() {
                    return Err(std::io::Error::new(ErrorKind::WriteZero, "short write"));
                }
                Ok(())
            })
            .map_err(|e| self.device_error(sbdf, file, "write", e))
    }

    fn resources(&self, sbdf: Sbdf) -> Result<Vec<Resource>, PciError> {
        self.require_device(sbdf)?;
        let text = self.read_device_text(sbdf, "resource")?;
        parse_resources(&self.device_file(sbdf, "resource"), &text)
    }

    fn irq(&self, sbdf: Sbdf) -> Result<u32, PciError> {
        self.require_device(sbdf)?;
        let text = self.read_device_text(sbdf, "irq")?;
        text.trim().parse().map_err(|_| PciError::Malformed {
            file: self.device_file(sbdf, "irq"),
            what: "an IRQ number",
            text,
        })
    }

    fn msi_irqs(&self, sbdf: Sbdf) -> Result<Vec<u32>, PciError> {
        self.require_device(sbdf)?;
        let dir = self.device_file(sbdf, "msi_irqs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // Linux removes the directory when no vector is enabled.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.device_error(sbdf, dir, "list", e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.device_error(sbdf, dir.clone(), "list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push(name.parse().map_err(|_| PciError::Malformed {
                file: dir.clone(),
                what: "an IRQ number",
                text: name,
            })?);
        }
        out.sort_unstable();
        Ok(out)
    }

    fn enabled(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.require_device(sbdf)?;
        let text = self.read_device_text(sbdf, "enable")?;
        match text.trim() {
            "0" => Ok(false),
            "" => Err(PciError::Malformed {
                file: self.device_file(sbdf, "enable"),
                what: "an enable count",
                text,
            }),
            t => t
                .parse::<u32>()
                .map(|n| n > 0)
                .map_err(|_| PciError::Malformed {
                    file: self.device_file(sbdf, "enable"),
                    what: "an enable count",
                    text: text.clone(),
                }),
        }
    }

    fn physfn(&self, sbdf: Sbdf) -> Result<Option<Sbdf>, PciError> {
        self.require_device(sbdf)?;
        let link = self.device_file(sbdf, "physfn");
        match fs::read_link(&link) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.parse().map(Some).map_err(|_| PciError::Malformed {
                    file: link,
                    what: "a link to a PCI function",
                    text: name,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.device_error(sbdf, link, "readlink", e)),
        }
    }

    fn driver(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.require_device(sbdf)?;
        let link = self.device_file(sbdf, "driver");
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.require_device(sbdf)?;
                Ok(None)
            }
            Err(e) => Err(self.device_error(sbdf, link, "readlink", e)),
        }
    }

    fn driver_override(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.require_device(sbdf)?;
        let text = self.read_device_text(sbdf, "driver_override")?;
        let t = text.trim();
        Ok((!t.is_empty() && t != "(null)").then(|| t.to_string()))
    }

    fn set_driver_override(&self, sbdf: Sbdf, driver: Option<&str>) -> Result<(), PciError> {
        self.require_device(sbdf)?;
        // Linux clears the override on an empty write; `echo > driver_override` sends "\n".
        let data = driver.map_or_else(|| b"\n".to_vec(), |d| d.as_bytes().to_vec());
        self.write_attr(Some(sbdf), self.device_file(sbdf, "driver_override"), &data)
    }

    fn reset_methods(&self, sbdf: Sbdf) -> Result<Option<Vec<String>>, PciError> {
        self.require_device(sbdf)?;
        let file = self.device_file(sbdf, "reset_method");
        match fs::read_to_string(&file) {
            Ok(t) => Ok(Some(t.split_whitespace().map(str::to_string).collect())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.require_device(sbdf)?;
                Ok(None)
            }
            Err(e) => Err(self.device_error(sbdf, file, "read", e)),
        }
    }

    fn can_reset(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.require_device(sbdf)?;
        Ok(self.device_file(sbdf, "reset").exists())
    }

    fn reset(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.require_device(sbdf)?;
        self.write_attr(Some(sbdf), self.device_file(sbdf, "reset"), b"1")
    }

    fn driver_bind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.require_device(sbdf)?;
        let path = self.drivers_dir().join(driver).join("bind");
        self.write_attr(None, path, sbdf.to_string().as_bytes())
    }

    fn driver_unbind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.require_device(sbdf)?;
        let path = self.drivers_dir().join(driver).join("unbind");
        self.write_attr(None, path, sbdf.to_string().as_bytes())
    }

    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError> {
        let file = self.pciback_file("slots");
        let text = fs::read_to_string(&file).map_err(|e| PciError::Io {
            file: file.clone(),
            op: "read",
            source: e,
        })?;
        parse_slots(&file, &text)
    }

    fn pciback_new_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.write_attr(
            None,
            self.pciback_file("new_slot"),
            sbdf.to_string().as_bytes(),
        )
    }

    fn pciback_remove_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.write_attr(
            None,
            self.pciback_file("remove_slot"),
            sbdf.to_string().as_bytes(),
        )
    }

    fn pciback_permissive(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.write_attr(
            None,
            self.pciback_file("permissive"),
            sbdf.to_string().as_bytes(),
        )
    }

    fn pciback_allow_interrupt_control(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.write_attr(
            None,
            self.pciback_file("allow_interrupt_control"),
            sbdf.to_string().as_bytes(),
        )
    }
    fn wait_backend_released(
        &self,
        domid: u16,
        timeout: std::time::Duration,
    ) -> Result<bool, PciError> {
        // The bus's link goes first: Linux's device_del removes it (bus_remove_device)
        // *before* it runs the driver's remove — pciback's give-back — and removes the
        // device's own directory (kobject_del) only after. Waiting on the link alone let a
        // release_msix race pciback's unmapping of a PV guest's vectors (seen on real Xen
        // 4.17.5 as an -EBUSY quarantine after a hot-unplug).
        let link = self
            .root
            .join(format!("bus/xen-backend/devices/pci-{domid}-0"));
        let device = std::fs::canonicalize(&link)
            .unwrap_or_else(|_| self.root.join(format!("devices/xen-backend/pci-{domid}-0")));
        let start = std::time::Instant::now();
        // pciback's worker runs within milliseconds of the Xenstore removal; polling is all
        // sysfs offers (no uevent reaches a process without netlink).
        loop {
            if !link.exists() && !device.exists() {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
