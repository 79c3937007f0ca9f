//! Config space: the header, BARs, and the capability lists with typed MSI, MSI-X, PCI
//! Express and power-management capabilities.
//!
//! Register offsets and bits are those of Linux's `include/uapi/linux/pci_regs.h` (Xen's
//! `xen/include/xen/pci_regs.h` uses the same names). The parser never trusts a pointer: the
//! capability walks stop with an error on a loop, on a pointer into the header or outside the
//! space, and on a capability that does not fit.

use serde::Serialize;

use crate::ConfigError;

/// Register offsets and bits.
pub mod regs {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION: u16 = 0x08;
    pub const CLASS_PROG: u16 = 0x09;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const CAPABILITY_LIST: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// First byte after the type 0/1 header; capabilities live at or above it.
    pub const HEADER_END: u16 = 0x40;
    /// Start of PCI Express extended configuration space.
    pub const EXT_START: u16 = 0x100;
    /// Size of conventional config space.
    pub const CONVENTIONAL_SIZE: usize = 256;
    /// Size of PCI Express config space.
    pub const EXTENDED_SIZE: usize = 4096;

    pub const COMMAND_IO: u16 = 0x1;
    pub const COMMAND_MEMORY: u16 = 0x2;
    pub const COMMAND_MASTER: u16 = 0x4;
    pub const COMMAND_INTX_DISABLE: u16 = 0x400;
    pub const STATUS_CAP_LIST: u16 = 0x10;

    pub const CAP_ID_PM: u8 = 0x01;
    pub const CAP_ID_MSI: u8 = 0x05;
    pub const CAP_ID_EXP: u8 = 0x10;
    pub const CAP_ID_MSIX: u8 = 0x11;
    pub const CAP_ID_AF: u8 = 0x13;

    pub const MSI_FLAGS: u16 = 2;
    pub const MSI_FLAGS_ENABLE: u16 = 0x1;
    pub const MSI_FLAGS_QMASK: u16 = 0xe;
    pub const MSI_FLAGS_QSIZE: u16 = 0x70;
    pub const MSI_FLAGS_64BIT: u16 = 0x80;
    pub const MSI_FLAGS_MASKBIT: u16 = 0x100;

    pub const MSIX_FLAGS: u16 = 2;
    pub const MSIX_TABLE: u16 = 4;
    pub const MSIX_PBA: u16 = 8;
    pub const MSIX_FLAGS_QSIZE: u16 = 0x7ff;
    pub const MSIX_FLAGS_MASKALL: u16 = 0x4000;
    pub const MSIX_FLAGS_ENABLE: u16 = 0x8000;
    pub const MSIX_BIRMASK: u32 = 0x7;
    pub const MSIX_ENTRY_SIZE: u64 = 16;
    pub const MSIX_ENTRY_VECTOR_CTRL: u64 = 12;
    pub const MSIX_VECTOR_MASKBIT: u32 = 0x1;

    pub const EXP_DEVCAP: u16 = 4;
    pub const EXP_DEVCAP_FLR: u32 = 0x1000_0000;
    pub const EXP_DEVCTL: u16 = 8;
    pub const EXP_DEVCTL_BCR_FLR: u16 = 0x8000;
    pub const AF_CAP: u16 = 3;
    pub const AF_CAP_FLR: u8 = 0x02;
    pub const PM_CTRL: u16 = 4;
    pub const PM_CTRL_NO_SOFT_RESET: u16 = 0x0008;
    pub const PM_CTRL_STATE_MASK: u16 = 0x0003;
}

use regs::*;

/// Raw config-space bytes as read from sysfs `config` (64, 256 or 4096 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    pub(crate) bytes: Vec<u8>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigSpace({} bytes)", self.bytes.len())
    }
}

impl ConfigSpace {
    /// Wraps raw bytes; at least the 64-byte header is required.
    pub fn new(bytes: Vec<u8>) -> Result<ConfigSpace, ConfigError> {
        if bytes.len() < usize::from(HEADER_END) {
            return Err(ConfigError::Truncated {
                len: bytes.len(),
                needed: usize::from(HEADER_END),
            });
        }
        Ok(ConfigSpace { bytes })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn range(&self, off: u16, width: usize) -> Result<std::ops::Range<usize>, ConfigError> {
        let start = usize::from(off);
        let end = start + width;
        if end > self.bytes.len() {
            return Err(ConfigError::Truncated {
                len: self.bytes.len(),
                needed: end,
            });
        }
        Ok(start..end)
    }

    pub fn read8(&self, off: u16) -> Result<u8, ConfigError> {
        Ok(self.bytes[self.range(off, 1)?][0])
    }
    pub fn read16(&self, off: u16) -> Result<u16, ConfigError> {
        let r = self.range(off, 2)?;
        Ok(u16::from_le_bytes([
            self.bytes[r.start],
            self.bytes[r.start + 1],
        ]))
    }
    pub fn read32(&self, off: u16) -> Result<u32, ConfigError> {
        let r = self.range(off, 4)?;
        let b = &self.bytes[r];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Writes little-endian bytes at `off` (the simulated device and tests use this).
    pub fn write(&mut self, off: u16, data: &[u8]) -> Result<(), ConfigError> {
        let r = self.range(off, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    pub fn write16(&mut self, off: u16, v: u16) -> Result<(), ConfigError> {
        self.write(off, &v.to_le_bytes())
    }
    pub fn write32(&mut self, off: u16, v: u32) -> Result<(), ConfigError> {
        self.write(off, &v.to_le_bytes())
    }

    pub fn command(&self) -> Command {
        Command(self.read16(COMMAND).unwrap_or(0))
    }

    /// Parses everything this crate understands.
    pub fn parse(&self) -> Result<DeviceConfig, ConfigError> {
        let header_type = self.read8(HEADER_TYPE)?;
        let kind = header_type & 0x7f;
        let class = self.read32(REVISION)? >> 8;
        let status = self.read16(STATUS)?;
        let caps = self.capabilities()?;
        let ext_caps = self.extended_capabilities()?;
        let mut msi = None;
        let mut msix = None;
        let mut pcie = None;
        let mut pm = None;
        let mut af_flr = false;
        for cap in &caps {
            match cap.id {
                CAP_ID_MSI if msi.is_none() => msi = Some(MsiCap::parse(self, cap.offset)?),
                CAP_ID_MSIX if msix.is_none() => msix = Some(MsixCap::parse(self, cap.offset)?),
                CAP_ID_EXP if pcie.is_none() => {
                    let devcap = self.cap_read32(cap, EXP_DEVCAP)?;
                    pcie = Some(PcieCap {
                        offset: cap.offset,
                        flr: devcap & EXP_DEVCAP_FLR != 0,
                    })
                }
                CAP_ID_PM if pm.is_none() => {
                    let ctrl = self.cap_read16(cap, PM_CTRL)?;
                    pm = Some(PmCap {
                        offset: cap.offset,
                        no_soft_reset: ctrl & PM_CTRL_NO_SOFT_RESET != 0,
                        power_state: (ctrl & PM_CTRL_STATE_MASK) as u8,
                    })
                }
                CAP_ID_AF => af_flr |= self.cap_read8(cap, AF_CAP)? & AF_CAP_FLR != 0,
                _ => {}
            }
        }
        Ok(DeviceConfig {
            vendor_id: self.read16(VENDOR_ID)?,
            device_id: self.read16(DEVICE_ID)?,
            revision: self.read8(REVISION)?,
            class,
            header_type: kind,
            multifunction: header_type & 0x80 != 0,
            command: Command(self.read16(COMMAND)?),
            status,
            interrupt_pin: self.read8(INTERRUPT_PIN)?,
            bars: self.bars(kind)?,
            capabilities: caps,
            extended_capabilities: ext_caps,
            msi,
            msix,
            pcie,
            pm,
            af_flr,
        })
    }

    fn cap_read8(&self, cap: &Capability, rel: u16) -> Result<u8, ConfigError> {
        self.read8(cap.offset + rel).map_err(|_| cap.overflow())
    }
    fn cap_read16(&self, cap: &Capability, rel: u16) -> Result<u16, ConfigError> {
        self.read16(cap.offset + rel).map_err(|_| cap.overflow())
    }
    fn cap_read32(&self, cap: &Capability, rel: u16) -> Result<u32, ConfigError> {
        self.read32(cap.offset + rel).map_err(|_| cap.overflow())
    }

    /// Walks the conventional capability list from 0x34.
    pub fn capabilities(&self) -> Result<Vec<Capability>, ConfigError> {
        let mut out = Vec::new();
        if self.read16(STATUS)? & STATUS_CAP_LIST == 0 {
            return Ok(out);
        }
        let mut from = CAPABILITY_LIST;
        let mut ptr = self.read8(CAPABILITY_LIST)? & 0xfc;
        let mut seen = [false; 256];
        while ptr != 0 {
            let off = u16::from(ptr);
            if off < HEADER_END {
                return Err(ConfigError::CapabilityIntoHeader { at: from, ptr: off });
            }
            if usize::from(off) + 2 > self.bytes.len().min(CONVENTIONAL_SIZE) {
                return Err(ConfigError::CapabilityOutOfRange {
                    at: from,
                    ptr: off,
                    len: self.bytes.len(),
                });
            }
            if std::mem::replace(&mut seen[usize::from(ptr)], true) {
                return Err(ConfigError::CapabilityLoop { at: from, ptr: off });
            }
            out.push(Capability {
                id: self.read8(off)?,
                offset: off,
            });
            from = off + 1;
            ptr = self.read8(off + 1)? & 0xfc;
        }
        Ok(out)
    }

    /// Walks the PCI Express extended capability list from 0x100 (empty for a 256-byte
    /// space or a device without one).
    pub fn extended_capabilities(&self) -> Result<Vec<ExtCapability>, ConfigError> {
        let mut out = Vec::new();
        if self.bytes.len() < EXTENDED_SIZE {
            return Ok(out);
        }
        let mut off = EXT_START;
        let mut from = EXT_START;
        let mut seen = [false; EXTENDED_SIZE / 4];
        loop {
            let header = self.read32(off)?;
            if header == 0 || header == 0xffff_ffff {
                break;
            }
            if std::mem::replace(&mut seen[usize::from(off / 4)], true) {
                return Err(ConfigError::CapabilityLoop { at: from, ptr: off });
            }
            out.push(ExtCapability {
                id: header as u16,
                version: ((header >> 16) & 0xf) as u8,
                offset: off,
            });
            let next = ((header >> 20) & 0xffc) as u16;
            if next == 0 {
                break;
            }
            if next < EXT_START {
                return Err(ConfigError::CapabilityIntoHeader { at: off, ptr: next });
            }
            from = off;
            off = next;
        }
        Ok(out)
    }

    fn bars(&self, header_kind: u8) -> Result<Vec<Bar>, ConfigError> {
        let count = match header_kind {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut i = 0u8;
        while i < count {
            let off = BAR0 + 4 * u16::from(i);
            let v = self.read32(off)?;
            if v == 0 {
                // Unimplemented (or unprogrammed) BAR.
                i += 1;
                continue;
            }
            if v & 1 == 1 {
                out.push(Bar {
                    index: i,
                    kind: BarKind::Io,
                    address: u64::from(v & !0x3),
                    prefetchable: false,
                });
                i += 1;
                continue;
            }
            let prefetchable = v & 0x8 != 0;
            match (v >> 1) & 0x3 {
                0b10 => {
                    if i + 1 >= count {
                        return Err(ConfigError::Bar64AtEnd { index: i });
                    }
                    let hi = self.read32(off + 4)?;
                    out.push(Bar {
                        index: i,
                        kind: BarKind::Memory64,
                        address: (u64::from(hi) << 32) | u64::from(v & !0xf),
                        prefetchable,
                    });
                    i += 2;
                }
                _ => {
                    out.push(Bar {
                        index: i,
                        kind: BarKind::Memory32,
                        address: u64::from(v & !0xf),
                        prefetchable,
                    });
                    i += 1;
                }
            }
        }
        Ok(out)
    }
}

/// The Command register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Command(pub u16);

impl Command {
    pub fn io(self) -> bool {
        self.0 & COMMAND_IO != 0
    }
    /// Memory Space decoding: Xen's `memory_decoded()` and the condition for masking a single
    /// MSI-X vector (xen-semantics.md §1.3).
    pub fn memory(self) -> bool {
        self.0 & COMMAND_MEMORY != 0
    }
    /// The same register with Memory Space decoding on.
    pub fn with_memory(self) -> Command {
        Command(self.0 | COMMAND_MEMORY)
    }
    pub fn bus_master(self) -> bool {
        self.0 & COMMAND_MASTER != 0
    }
    pub fn intx_disabled(self) -> bool {
        self.0 & COMMAND_INTX_DISABLE != 0
    }
}

/// One entry of the conventional capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capability {
    pub id: u8,
    pub offset: u16,
}

impl Capability {
    fn overflow(&self) -> ConfigError {
        ConfigError::CapabilityTruncated {
            id: self.id,
            offset: self.offset,
        }
    }
}

/// One entry of the extended capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExtCapability {
    pub id: u16,
    pub version: u8,
    pub offset: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BarKind {
    Io,
    Memory32,
    Memory64,
}

/// A Base Address Register as programmed (sizes come from sysfs `resource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub address: u64,
    pub prefetchable: bool,
}

/// MSI capability (ID 0x05).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MsiCap {
    pub offset: u16,
    pub enabled: bool,
    /// Vectors the function can request (Multiple Message Capable, decoded).
    pub vectors_capable: u8,
    /// Vectors enabled (Multiple Message Enable, decoded).
    pub vectors_enabled: u8,
    pub is_64bit: bool,
    pub per_vector_masking: bool,
    /// Offset of the Mask Bits register when per-vector masking is supported.
    pub mask_bits_offset: Option<u16>,
}

impl MsiCap {
    fn parse(cs: &ConfigSpace, offset: u16) -> Result<MsiCap, ConfigError> {
        let cap = Capability {
            id: CAP_ID_MSI,
            offset,
        };
        let ctrl = cs.cap_read16(&cap, MSI_FLAGS)?;
        let is_64bit = ctrl & MSI_FLAGS_64BIT != 0;
        let per_vector_masking = ctrl & MSI_FLAGS_MASKBIT != 0;
        let len = match (is_64bit, per_vector_masking) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        };
        cs.cap_read8(&cap, len - 1)?;
        let mmc = (ctrl & MSI_FLAGS_QMASK) >> 1;
        let mme = (ctrl & MSI_FLAGS_QSIZE) >> 4;
        Ok(MsiCap {
            offset,
            enabled: ctrl & MSI_FLAGS_ENABLE != 0,
            // 0b110 and 0b111 are reserved; Linux clamps to 32 as well.
            vectors_capable: 1 << mmc.min(5),
            vectors_enabled: 1 << mme.min(5),
            is_64bit,
            per_vector_masking,
            mask_bits_offset: per_vector_masking
                .then_some(offset + if is_64bit { 0x10 } else { 0xc }),
        })
    }
}

/// MSI-X capability (ID 0x11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MsixCap {
    pub offset: u16,
    /// Table size N (Message Control bits 10:0 plus one): 1..=2048.
    pub table_size: u16,
    pub function_mask: bool,
    pub enabled: bool,
    pub table_bir: u8,
    pub table_offset: u32,
    pub pba_bir: u8,
    pub pba_offset: u32,
}

impl MsixCap {
    fn parse(cs: &ConfigSpace, offset: u16) -> Result<MsixCap, ConfigError> {
        let cap = Capability {
            id: CAP_ID_MSIX,
            offset,
        };
        let ctrl = cs.cap_read16(&cap, MSIX_FLAGS)?;
        let table = cs.cap_read32(&cap, MSIX_TABLE)?;
        let pba = cs.cap_read32(&cap, MSIX_PBA)?;
        let cap = MsixCap {
            offset,
            table_size: (ctrl & MSIX_FLAGS_QSIZE) + 1,
            function_mask: ctrl & MSIX_FLAGS_MASKALL != 0,
            enabled: ctrl & MSIX_FLAGS_ENABLE != 0,
            table_bir: (table & MSIX_BIRMASK) as u8,
            table_offset: table & !MSIX_BIRMASK,
            pba_bir: (pba & MSIX_BIRMASK) as u8,
            pba_offset: pba & !MSIX_BIRMASK,
        };
        for (what, bir) in [("table", cap.table_bir), ("PBA", cap.pba_bir)] {
            if bir > 5 {
                return Err(ConfigError::MsixBadBir { what, bir, offset });
            }
        }
        Ok(cap)
    }

    /// Bytes the vector table occupies.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Bytes the Pending Bit Array occupies (one bit per entry, in 64-bit words).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }

    /// Checks that the table and PBA lie inside the BARs they name, given each BAR's size
    /// (indexed by BAR number, 0 when unimplemented), as sysfs `resource` reports them.
    pub fn check_against_bars(&self, bar_sizes: &[u64]) -> Result<(), ConfigError> {
        for (what, bir, off, len) in [
            ("table", self.table_bir, self.table_offset, self.table_len()),
            ("PBA", self.pba_bir, self.pba_offset, self.pba_len()),
        ] {
            let size = bar_sizes.get(usize::from(bir)).copied().unwrap_or(0);
            if u64::from(off) + len > size {
                return Err(ConfigError::MsixBeyondBar {
                    what,
                    bir,
                    offset: off,
                    len,
                    bar_size: size,
                });
            }
        }
        Ok(())
    }
}

/// PCI Express capability (ID 0x10): what reset needs from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PcieCap {
    pub offset: u16,
    /// Device Capabilities bit 28: Function Level Reset supported.
    pub flr: bool,
}

/// Power-management capability (ID 0x01).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PmCap {
    pub offset: u16,
    /// PMCSR bit 3: a D3hot→D0 transition does not reset the function, so Linux's `pm` reset
    /// method is unavailable.
    pub no_soft_reset: bool,
    /// Current D-state (0 = D0 .. 3 = D3hot).
    pub power_state: u8,
}

/// Everything parsed from one function's config space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceConfig {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// Class code, sub-class and programming interface (24 bits).
    pub class: u32,
    /// 0 = endpoint, 1 = PCI-to-PCI bridge, 2 = CardBus bridge.
    pub header_type: u8,
    pub multifunction: bool,
    pub command: Command,
    pub status: u16,
    pub interrupt_pin: u8,
    pub bars: Vec<Bar>,
    pub capabilities: Vec<Capability>,
    pub extended_capabilities: Vec<ExtCapability>,
    pub msi: Option<MsiCap>,
    pub msix: Option<MsixCap>,
    pub pcie: Option<PcieCap>,
    pub pm: Option<PmCap>,
    /// Advanced Features capability advertises FLR.
    pub af_flr: bool,
}

impl DeviceConfig {
    /// The reset methods Linux's `pci_reset_fn_methods` would find from config space alone,
    /// in its order (`device_specific` and `acpi` cannot be seen here).
    pub fn config_reset_methods(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.pcie.is_some_and(|p| p.flr) {
            m.push("flr");
        }
        if self.af_flr {
            m.push("af_flr");
        }
        if self.pm.is_some_and(|p| !p.no_soft_reset) {
            m.push("pm");
        }
        m
    }
}
