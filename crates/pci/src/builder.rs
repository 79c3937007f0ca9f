//! Builds config spaces for fixtures and the simulated host: an endpoint header, BARs and a
//! capability chain laid out as real devices lay them out.

use crate::config::regs::*;
use crate::config::ConfigSpace;
use crate::host::Resource;

/// One BAR of a built device.
#[derive(Clone, Copy, Debug)]
pub struct BarSpec {
    pub index: u8,
    pub address: u64,
    pub size: u64,
    pub is_64bit: bool,
    pub io: bool,
}

/// A builder of type-0 (endpoint) config spaces.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    vendor: u16,
    device: u16,
    class: u32,
    command: u16,
    interrupt_pin: u8,
    bars: Vec<BarSpec>,
    msi: Option<(u8, bool, bool)>,
    msix: Option<(u16, u8, u32, u8, u32)>,
    pcie_flr: Option<bool>,
    pm_no_soft_reset: Option<bool>,
}

impl ConfigBuilder {
    pub fn endpoint(vendor: u16, device: u16) -> ConfigBuilder {
        ConfigBuilder {
            vendor,
            device,
            class: 0x02_00_00,
            command: COMMAND_MEMORY | COMMAND_MASTER,
            interrupt_pin: 1,
            bars: Vec::new(),
            msi: None,
            msix: None,
            pcie_flr: None,
            pm_no_soft_reset: None,
        }
    }
    pub fn class(mut self, class: u32) -> Self {
        self.class = class;
        self
    }
    pub fn command(mut self, command: u16) -> Self {
        self.command = command;
        self
    }
    pub fn interrupt_pin(mut self, pin: u8) -> Self {
        self.interrupt_pin = pin;
        self
    }
    /// A 64-bit memory BAR at `index` (which also takes `index + 1`).
    pub fn bar64(mut self, index: u8, address: u64, size: u64) -> Self {
        self.bars.push(BarSpec {
            index,
            address,
            size,
            is_64bit: true,
            io: false,
        });
        self
    }
    pub fn bar32(mut self, index: u8, address: u32, size: u64) -> Self {
        self.bars.push(BarSpec {
            index,
            address: u64::from(address),
            size,
            is_64bit: false,
            io: false,
        });
        self
    }
    pub fn io_bar(mut self, index: u8, port: u16, size: u64) -> Self {
        self.bars.push(BarSpec {
            index,
            address: u64::from(port),
            size,
            is_64bit: false,
            io: true,
        });
        self
    }
    /// MSI with `log2_vectors` Multiple Message Capable, 64-bit and masking flags.
    pub fn msi(mut self, log2_vectors: u8, is_64bit: bool, per_vector_masking: bool) -> Self {
        self.msi = Some((log2_vectors, is_64bit, per_vector_masking));
        self
    }
    /// MSI-X with `table_size` entries, table at BAR `table_bir` + `table_offset`, PBA at
    /// BAR `pba_bir` + `pba_offset`.
    pub fn msix(
        mut self,
        table_size: u16,
        table_bir: u8,
        table_offset: u32,
        pba_bir: u8,
        pba_offset: u32,
    ) -> Self {
        self.msix = Some((table_size, table_bir, table_offset, pba_bir, pba_offset));
        self
    }
    /// A PCI Express capability, advertising FLR or not (makes the space 4 KiB).
    pub fn pcie(mut self, flr: bool) -> Self {
        self.pcie_flr = Some(flr);
        self
    }
    /// A power-management capability with the given No_Soft_Reset bit.
    pub fn pm(mut self, no_soft_reset: bool) -> Self {
        self.pm_no_soft_reset = Some(no_soft_reset);
        self
    }

    /// sysfs `resource` lines for the BARs (7 lines: BAR0-5 and the ROM).
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = vec![Resource::default(); 7];
        for b in &self.bars {
            out[usize::from(b.index)] = Resource {
                start: b.address,
                end: b.address + b.size - 1,
                flags: if b.io {
                    Resource::IO | 0x101
                } else {
                    Resource::MEM | if b.is_64bit { 0x140204 } else { 0x40200 }
                },
            };
        }
        out
    }

    /// Lays the capabilities out from 0x40 upward, 16-byte aligned, in the order PM, MSI,
    /// PCIe, MSI-X, and returns the config space.
    pub fn build(&self) -> ConfigSpace {
        let size = if self.pcie_flr.is_some() {
            EXTENDED_SIZE
        } else {
            CONVENTIONAL_SIZE
        };
        let mut b = vec![0u8; size];
        let put16 =
            |b: &mut Vec<u8>, off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut b, 0, self.vendor);
        put16(&mut b, 2, self.device);
        put16(&mut b, 4, self.command);
        put32(&mut b, 8, (self.class << 8) | 1);
        b[usize::from(INTERRUPT_PIN)] = self.interrupt_pin;
        for bar in &self.bars {
            let off = usize::from(BAR0) + 4 * usize::from(bar.index);
            if bar.io {
                put32(&mut b, off, (bar.address as u32 & !3) | 1);
            } else if bar.is_64bit {
                put32(&mut b, off, (bar.address as u32 & !0xf) | 0x4);
                put32(&mut b, off + 4, (bar.address >> 32) as u32);
            } else {
                put32(&mut b, off, bar.address as u32 & !0xf);
            }
        }
        let mut caps: Vec<(u8, usize)> = Vec::new();
        let mut next = usize::from(HEADER_END);
        let mut alloc = |len: usize| {
            let at = next;
            next += len.div_ceil(16) * 16;
            at
        };
        if let Some(nsr) = self.pm_no_soft_reset {
            let at = alloc(8);
            b[at] = CAP_ID_PM;
            put16(&mut b, at + 2, 0x0003);
            put16(&mut b, at + 4, if nsr { PM_CTRL_NO_SOFT_RESET } else { 0 });
            caps.push((CAP_ID_PM, at));
        }
        if let Some((log2, is64, pvm)) = self.msi {
            let at = alloc(24);
            b[at] = CAP_ID_MSI;
            let mut ctrl = u16::from(log2.min(5)) << 1;
            if is64 {
                ctrl |= MSI_FLAGS_64BIT;
            }
            if pvm {
                ctrl |= MSI_FLAGS_MASKBIT;
            }
            put16(&mut b, at + 2, ctrl);
            caps.push((CAP_ID_MSI, at));
        }
        if let Some(flr) = self.pcie_flr {
            let at = alloc(0x3c);
            b[at] = CAP_ID_EXP;
            put16(&mut b, at + 2, 0x0002);
            put32(&mut b, at + 4, if flr { EXP_DEVCAP_FLR } else { 0 });
            caps.push((CAP_ID_EXP, at));
        }
        if let Some((n, tbir, toff, pbir, poff)) = self.msix {
            let at = alloc(12);
            b[at] = CAP_ID_MSIX;
            put16(&mut b, at + 2, (n.clamp(1, 2048) - 1) & MSIX_FLAGS_QSIZE);
            put32(&mut b, at + 4, (toff & !7) | u32::from(tbir & 7));
            put32(&mut b, at + 8, (poff & !7) | u32::from(pbir & 7));
            caps.push((CAP_ID_MSIX, at));
        }
        if let Some(&(_, first)) = caps.first() {
            put16(&mut b, usize::from(STATUS), STATUS_CAP_LIST);
            b[usize::from(CAPABILITY_LIST)] = first as u8;
            for w in caps.windows(2) {
                b[w[0].1 + 1] = w[1].1 as u8;
            }
        }
        ConfigSpace { bytes: b }
    }
}
