//! Simulated PCI functions: config space, MSI-X table, reset methods.
//!
//! Hardware only; what Xen and Linux keep about a device lives elsewhere. Reset values follow
//! xen-semantics.md §6: after FLR, bus reset or D3hot→D0 (No_Soft_Reset clear) MSI-X Enable
//! and Function Mask are 0, every Vector Control mask bit is 1, and the Command register is 0.

use pci::builder::ConfigBuilder;
use pci::config::regs::*;
use pci::{ConfigSpace, MsixCap, Resource, Sbdf};
use serde::{Deserialize, Serialize};

/// A Linux reset method, by its `reset_method` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetMethod {
    Flr,
    Pm,
    Bus,
}

impl ResetMethod {
    pub fn name(self) -> &'static str {
        match self {
            ResetMethod::Flr => "flr",
            ResetMethod::Pm => "pm",
            ResetMethod::Bus => "bus",
        }
    }
}

/// One MSI-X table entry as the hardware holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MsixTableEntry {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

/// What a simulated device is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub sbdf: Sbdf,
    pub vendor: u16,
    pub device: u16,
    /// MSI-X table size (0: no MSI-X capability).
    pub msix_entries: u16,
    /// Reset methods the device supports, in Linux's order; empty: no `reset` file.
    pub reset_methods: Vec<ResetMethod>,
    /// INTx GSI (0: none).
    pub gsi: u32,
    /// The native dom0 driver it starts bound to.
    pub driver: Option<String>,
    /// Firmware left Function Mask set (xen-semantics.md scenario 13).
    pub firmware_maskall: bool,
    /// An SR-IOV virtual function of this physical function: its own Command Memory bit is
    /// hard-wired 0 and its BARs decode with the PF's (Linux: the `physfn` link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physfn: Option<Sbdf>,
}

impl DeviceSpec {
    /// A PCIe NIC-like function with FLR and an MSI-X table of `entries` in BAR 3.
    pub fn nic(sbdf: Sbdf, entries: u16) -> DeviceSpec {
        DeviceSpec {
            sbdf,
            vendor: 0x8086,
            device: 0x1533,
            msix_entries: entries,
            reset_methods: vec![ResetMethod::Flr, ResetMethod::Bus],
            gsi: 16 + u32::from(sbdf.devfn() % 8),
            driver: Some("igb".into()),
            firmware_maskall: false,
            physfn: None,
        }
    }

    /// A virtual function of `pf` (no INTx, no reset but FLR, no driver: VFs are given to
    /// guests), as `sriov_numvfs` creates it.
    pub fn virtual_function(sbdf: Sbdf, pf: Sbdf, entries: u16) -> DeviceSpec {
        DeviceSpec {
            device: 0x1520,
            gsi: 0,
            reset_methods: vec![ResetMethod::Flr],
            driver: None,
            physfn: Some(pf),
            ..DeviceSpec::nic(sbdf, entries)
        }
    }
}

/// A simulated PCI function.
#[derive(Clone, Debug)]
pub struct SimDevice {
    pub spec: DeviceSpec,
    pub config: ConfigSpace,
    pub resources: Vec<Resource>,
    pub msix: Option<MsixCap>,
    pub table: Vec<MsixTableEntry>,
    pub pending: Vec<bool>,
    /// Resets performed, by method.
    pub resets: u32,
}

const TABLE_BAR: u8 = 3;
const PBA_OFFSET: u32 = 0x8000;

impl SimDevice {
    pub fn new(spec: DeviceSpec) -> SimDevice {
        let i = u64::from(spec.sbdf.machine_sbdf());
        let mut b = ConfigBuilder::endpoint(spec.vendor, spec.device)
            .bar32(
                0,
                0xc000_0000 + ((i as u32 >> 3) & 0x1ff) * 0x10_0000,
                0x2_0000,
            )
            .bar64(TABLE_BAR, 0x40_0000_0000 + i * 0x10_0000, 0x1_0000)
            .pcie(spec.reset_methods.contains(&ResetMethod::Flr))
            .pm(!spec.reset_methods.contains(&ResetMethod::Pm))
            .interrupt_pin(if spec.gsi > 0 { 1 } else { 0 });
        if spec.msix_entries > 0 {
            b = b.msix(spec.msix_entries, TABLE_BAR, 0, TABLE_BAR, PBA_OFFSET);
        }
        let config = b.build();
        let resources = b.resources();
        let msix = config.parse().ok().and_then(|c| c.msix);
        let n = usize::from(spec.msix_entries);
        let mut d = SimDevice {
            config,
            resources,
            msix,
            table: vec![
                MsixTableEntry {
                    masked: true,
                    ..Default::default()
                };
                n
            ],
            pending: vec![false; n],
            resets: 0,
            spec,
        };
        if d.spec.firmware_maskall {
            d.set_msix_ctrl_bits(false, true);
        }
        let cmd = d.command();
        d.set_command(cmd);
        d
    }

    pub fn sbdf(&self) -> Sbdf {
        self.spec.sbdf
    }

    pub fn command(&self) -> u16 {
        self.config.read16(COMMAND).unwrap_or(0)
    }
    pub fn set_command(&mut self, v: u16) {
        // A VF's Memory Space Enable is read-only 0 (PCIe SR-IOV 1.1 §3.4.1.3).
        let v = if self.spec.physfn.is_some() {
            v & !COMMAND_MEMORY
        } else {
            v
        };
        let _ = self.config.write16(COMMAND, v);
    }
    /// `memory_decoded()`.
    pub fn memory_decoding(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_MASTER != 0
    }

    /// MSI-X Message Control, or 0 without the capability.
    pub fn msix_ctrl(&self) -> u16 {
        self.msix
            .and_then(|m| self.config.read16(m.offset + MSIX_FLAGS).ok())
            .unwrap_or(0)
    }
    /// Writes Message Control (only Enable and Function Mask are writable).
    pub fn write_msix_ctrl(&mut self, v: u16) {
        if let Some(m) = self.msix {
            let ro = self.msix_ctrl() & MSIX_FLAGS_QSIZE;
            let _ = self.config.write16(
                m.offset + MSIX_FLAGS,
                ro | (v & (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL)),
            );
        }
    }
    pub fn set_msix_ctrl_bits(&mut self, enable: bool, maskall: bool) {
        let mut v = 0;
        if enable {
            v |= MSIX_FLAGS_ENABLE;
        }
        if maskall {
            v |= MSIX_FLAGS_MASKALL;
        }
        self.write_msix_ctrl(v);
    }
    pub fn msix_enabled(&self) -> bool {
        self.msix_ctrl() & MSIX_FLAGS_ENABLE != 0
    }
    pub fn function_mask(&self) -> bool {
        self.msix_ctrl() & MSIX_FLAGS_MASKALL != 0
    }
    pub fn msix_table_size(&self) -> u16 {
        self.msix.map_or(0, |m| m.table_size)
    }
    /// Host address of the BAR holding the MSI-X table (qemu's `table_base`).
    pub fn table_base(&self) -> u64 {
        self.msix
            .and_then(|m| self.resources.get(usize::from(m.table_bir)))
            .map_or(0, |r| r.start)
    }

    /// A conventional reset or FLR: Enable, Function Mask and Command cleared, every vector
    /// masked (xen-semantics.md §6).
    pub fn hardware_reset(&mut self) {
        self.set_command(0);
        if self.msix.is_some() {
            self.set_msix_ctrl_bits(false, false);
        }
        for e in &mut self.table {
            e.masked = true;
        }
        for p in &mut self.pending {
            *p = false;
        }
        self.resets += 1;
    }

    /// Which hardware condition blocks entry `i` from signalling, if any
    /// (xen-semantics.md §6: Enable, Function Mask, vector mask, memory decoding, Bus Master).
    /// `memory_decoded`: the function's BARs decode (for a VF, its PF's say so).
    pub fn entry_blocked(&self, i: u16, memory_decoded: bool) -> Option<&'static str> {
        let e = self.table.get(usize::from(i))?;
        if !self.msix_enabled() {
            Some("MSI-X Enable is clear")
        } else if self.function_mask() {
            Some("Function Mask is set")
        } else if e.masked {
            Some("the vector's mask bit is set")
        } else if !memory_decoded {
            Some("memory decoding is off")
        } else if !self.bus_master() {
            Some("Bus Master is off")
        } else {
            None
        }
    }
}
