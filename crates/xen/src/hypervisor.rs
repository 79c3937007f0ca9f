//! The hypercalls ptguard makes, as a trait: implemented over `/dev/xen/privcmd`
//! ([`crate::privcmd`]), by the simulated host, and by [`crate::record::Recorder`] (counting
//! and dry-run).

use std::fmt;

use pci::Sbdf;
use serde::{Deserialize, Serialize};

use crate::XenError;

/// A domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DomId(pub u16);

impl DomId {
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_IO`: the owner of quarantined devices.
    pub const IO: DomId = DomId(crate::abi::DOMID_IO);
    /// Highest id of a real domain (`DOMID_FIRST_RESERVED - 1`).
    pub const MAX: DomId = DomId(0x7fef);
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == DomId::IO {
            f.write_str("dom_io")
        } else {
            write!(f, "d{}", self.0)
        }
    }
}

/// A physical IRQ number in one domain's pirq space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pirq(pub i32);

impl fmt::Display for Pirq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a pirq is mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MapSource {
    /// A GSI (INTx); `MAP_PIRQ_TYPE_GSI` with `index` = GSI.
    Gsi { gsi: u32 },
    /// An MSI or MSI-X vector; `MAP_PIRQ_TYPE_MSI_SEG`, `index` = -1. MSI-X when
    /// `table_base` (the host address of the BAR holding the table) is non-zero.
    Msi {
        sbdf: Sbdf,
        entry_nr: u16,
        table_base: u64,
    },
}

/// `PHYSDEVOP_map_pirq` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPirq {
    pub domid: DomId,
    pub source: MapSource,
    /// The pirq to use, or `None` to let Xen choose.
    pub pirq: Option<Pirq>,
}

impl MapPirq {
    /// A GSI mapped with pirq == GSI, as libxc's `xc_physdev_map_pirq` makes libxl and qemu
    /// request it.
    pub fn gsi(domid: DomId, gsi: u32) -> MapPirq {
        MapPirq {
            domid,
            source: MapSource::Gsi { gsi },
            pirq: Some(Pirq(gsi as i32)),
        }
    }

    /// An MSI-X entry, the pirq left to Xen (qemu's `XEN_PT_AUTO_ASSIGN`).
    pub fn msix(domid: DomId, sbdf: Sbdf, entry_nr: u16, table_base: u64) -> MapPirq {
        MapPirq {
            domid,
            source: MapSource::Msi {
                sbdf,
                entry_nr,
                table_base,
            },
            pirq: None,
        }
    }
}

/// `XEN_DOMCTL_bind_pt_irq` / `unbind_pt_irq` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtIrq {
    /// `PT_IRQ_TYPE_MSI`: guest vector, flags (`XEN_DOMCTL_VMSI_X86_*`), guest address of
    /// the emulated MSI-X table.
    Msi {
        pirq: Pirq,
        gvec: u8,
        gflags: u32,
        gtable: u64,
    },
    /// `PT_IRQ_TYPE_PCI`: INTx of a virtual device.
    Pci {
        pirq: Pirq,
        bus: u8,
        device: u8,
        intx: u8,
    },
}

/// Where a guest sees a passed-through INTx line: the emulated bus, device (slot) and pin
/// (0 = INTA) the device model binds it at (`XEN_DOMCTL_bind_pt_irq`'s `u.pci`). qemu uses
/// the guest's virtual slot, not the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuestIntx {
    pub bus: u8,
    pub device: u8,
    pub intx: u8,
}

impl GuestIntx {
    /// Where a binding recorded before the guest's slot was known is taken to be: the
    /// host slot, pin A.
    pub fn at_host_slot(sbdf: pci::Sbdf) -> GuestIntx {
        GuestIntx {
            bus: 0,
            device: sbdf.dev(),
            intx: 0,
        }
    }
    /// The `XEN_DOMCTL_bind_pt_irq`/`unbind_pt_irq` argument binding `pirq` here.
    pub fn pt_irq(self, pirq: Pirq) -> PtIrq {
        PtIrq::Pci {
            pirq,
            bus: self.bus,
            device: self.device,
            intx: self.intx,
        }
    }
    /// Whether Xen can route it: slot 0-31, pin A-D.
    pub fn is_valid(&self) -> bool {
        self.device < 32 && self.intx < 4
    }
}

impl fmt::Display for GuestIntx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x} INT{}",
            self.bus,
            self.device,
            char::from(b'A' + self.intx.min(3))
        )
    }
}

impl PtIrq {
    pub fn pirq(&self) -> Pirq {
        match *self {
            PtIrq::Msi { pirq, .. } | PtIrq::Pci { pirq, .. } => pirq,
        }
    }
}

/// What `XEN_DOMCTL_getdomaininfo` says about a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub domid: DomId,
    pub dying: bool,
    pub shutdown: bool,
    pub hvm: bool,
    pub paused: bool,
    /// `SHUTDOWN_*` code the guest gave (meaningful when `shutdown`): 0 poweroff, 1 reboot,
    /// 2 suspend, 3 crash, 4 watchdog, 5 soft reset.
    #[serde(default)]
    pub shutdown_reason: u8,
    /// The domain's handle (its UUID under xl and libvirt). With the domid it names one
    /// incarnation of a domain: Xen reuses domids, a toolstack gives each new domain a new
    /// handle (docs/xen-semantics.md, "Domain incarnations").
    #[serde(default)]
    pub handle: DomainHandle,
    /// The unique id Xen 4.21+ gives every domain it creates (`XEN_DOMCTL_get_domain_state`),
    /// never reused while Xen runs: a stronger name for the incarnation than the handle,
    /// which a toolstack may repeat. `None` on older Xen, or where the call is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<u64>,
}

impl DomainInfo {
    /// `SHUTDOWN_suspend`: the domain may be resumed (save, migration).
    pub const SHUTDOWN_SUSPEND: u8 = 2;
    /// `SHUTDOWN_soft_reset`: the toolstack resets and resumes the same domain.
    pub const SHUTDOWN_SOFT_RESET: u8 = 5;
}

/// `xen_domain_handle_t`: 16 bytes the toolstack chooses at domain creation. Serialized in
/// its UUID form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainHandle(pub [u8; 16]);

impl Serialize for DomainHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainHandle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DomainHandle, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl DomainHandle {
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for DomainHandle {
    /// The UUID form xl prints (8-4-4-4-12 hex digits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DomainHandle {
    type Err = String;
    fn from_str(s: &str) -> Result<DomainHandle, String> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return Err(format!(
                "{s:?} is not a domain handle (8-4-4-4-12 hex digits)"
            ));
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{s:?} is not a domain handle (8-4-4-4-12 hex digits)"))?;
        }
        Ok(DomainHandle(out))
    }
}

/// `XENVER_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct XenVersion {
    pub major: u16,
    pub minor: u16,
}

impl fmt::Display for XenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An interrupt of a passed-through device that a device model maps and binds: its INTx
/// line (by host GSI, bound where the guest sees it) or one MSI-X entry. The broker
/// protocol's `kind`; the engine's and the simulated device models' one vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IrqSource {
    /// The device's INTx line (`gsi`, the host's), bound at `guest` (the guest's virtual
    /// slot and pin; absent from older clients: the host slot, pin A).
    Intx {
        gsi: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest: Option<GuestIntx>,
    },
    /// One MSI-X entry of the table in the BAR at host address `table_base`.
    Msix { entry: u16, table_base: u64 },
}

impl IrqSource {
    /// `PHYSDEVOP_map_pirq`'s argument: INTx with pirq == GSI as libxc does, MSI-X with the
    /// pirq left to Xen (qemu's `XEN_PT_AUTO_ASSIGN`).
    pub fn map_request(self, domid: DomId, sbdf: Sbdf) -> MapPirq {
        match self {
            IrqSource::Intx { gsi, .. } => MapPirq::gsi(domid, gsi),
            IrqSource::Msix { entry, table_base } => MapPirq::msix(domid, sbdf, entry, table_base),
        }
    }

    /// `XEN_DOMCTL_bind_pt_irq`'s argument for `pirq`: INTx at the guest's slot and pin
    /// (the host slot, pin A when unknown), MSI-X with the guest's vector, flags and table.
    pub fn pt_irq(self, sbdf: Sbdf, pirq: Pirq, gvec: u8, gflags: u32, gtable: u64) -> PtIrq {
        match self {
            IrqSource::Intx { guest, .. } => {
                guest.unwrap_or(GuestIntx::at_host_slot(sbdf)).pt_irq(pirq)
            }
            IrqSource::Msix { .. } => PtIrq::Msi {
                pirq,
                gvec,
                gflags,
                gtable,
            },
        }
    }
}

/// What a hypercall acts on, in the one textual form traces, errors and the simulator's
/// journal all use (`d1 pirq 79`, `d1 0000:03:00.0 entry 0`, `d1 mfn 0xfeb80+32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallTarget<'a> {
    /// `PHYSDEVOP_map_pirq`: the domain and the GSI or the device's MSI-X entry.
    Map(&'a MapPirq),
    /// A pirq of a domain (unmap, bind, unbind, IRQ permission).
    Pirq(DomId, Pirq),
    /// A device (`prepare_msix`, `release_msix`, `test_assign_device`).
    Device(Sbdf),
    /// A device of a domain (assign, deassign).
    DomainDevice(DomId, Sbdf),
    /// A range of machine frames.
    Iomem { domid: DomId, first: u64, nr: u64 },
    /// A range of I/O ports.
    Ioport { domid: DomId, first: u32, nr: u32 },
}

impl fmt::Display for CallTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CallTarget::Map(req) => match req.source {
                MapSource::Gsi { gsi } => write!(f, "{} gsi {gsi}", req.domid),
                MapSource::Msi { sbdf, entry_nr, .. } => {
                    write!(f, "{} {sbdf} entry {entry_nr}", req.domid)
                }
            },
            CallTarget::Pirq(domid, pirq) => write!(f, "{domid} pirq {pirq}"),
            CallTarget::Device(sbdf) => write!(f, "{sbdf}"),
            CallTarget::DomainDevice(domid, sbdf) => write!(f, "{domid} {sbdf}"),
            CallTarget::Iomem { domid, first, nr } => write!(f, "{domid} mfn {first:#x}+{nr}"),
            CallTarget::Ioport { domid, first, nr } => write!(f, "{domid} port {first:#x}+{nr}"),
        }
    }
}

/// The hypercalls, by the names Xen's headers give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum HypercallOp {
    XenVersion,
    MapPirq,
    UnmapPirq,
    PrepareMsix,
    ReleaseMsix,
    BindPtIrq,
    UnbindPtIrq,
    AssignDevice,
    TestAssignDevice,
    DeassignDevice,
    IomemPermission,
    IoportPermission,
    IrqPermission,
    GetDomainInfo,
    GetDomainState,
    DebugKeys,
    ReadConsole,
    CommandLine,
}

impl HypercallOp {
    pub const ALL: [HypercallOp; 18] = [
        HypercallOp::XenVersion,
        HypercallOp::MapPirq,
        HypercallOp::UnmapPirq,
        HypercallOp::PrepareMsix,
        HypercallOp::ReleaseMsix,
        HypercallOp::BindPtIrq,
        HypercallOp::UnbindPtIrq,
        HypercallOp::AssignDevice,
        HypercallOp::TestAssignDevice,
        HypercallOp::DeassignDevice,
        HypercallOp::IomemPermission,
        HypercallOp::IoportPermission,
        HypercallOp::IrqPermission,
        HypercallOp::GetDomainInfo,
        HypercallOp::GetDomainState,
        HypercallOp::DebugKeys,
        HypercallOp::ReadConsole,
        HypercallOp::CommandLine,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HypercallOp::XenVersion => "XENVER_version",
            HypercallOp::MapPirq => "PHYSDEVOP_map_pirq",
            HypercallOp::UnmapPirq => "PHYSDEVOP_unmap_pirq",
            HypercallOp::PrepareMsix => "PHYSDEVOP_prepare_msix",
            HypercallOp::ReleaseMsix => "PHYSDEVOP_release_msix",
            HypercallOp::BindPtIrq => "XEN_DOMCTL_bind_pt_irq",
            HypercallOp::UnbindPtIrq => "XEN_DOMCTL_unbind_pt_irq",
            HypercallOp::AssignDevice => "XEN_DOMCTL_assign_device",
            HypercallOp::TestAssignDevice => "XEN_DOMCTL_test_assign_device",
            HypercallOp::DeassignDevice => "XEN_DOMCTL_deassign_device",
            HypercallOp::IomemPermission => "XEN_DOMCTL_iomem_permission",
            HypercallOp::IoportPermission => "XEN_DOMCTL_ioport_permission",
            HypercallOp::IrqPermission => "XEN_DOMCTL_irq_permission",
            HypercallOp::GetDomainInfo => "XEN_DOMCTL_getdomaininfo",
            HypercallOp::GetDomainState => "XEN_DOMCTL_get_domain_state",
            HypercallOp::DebugKeys => "XEN_SYSCTL_debug_keys",
            HypercallOp::ReadConsole => "XEN_SYSCTL_readconsole",
            HypercallOp::CommandLine => "XENVER_commandline",
        }
    }

    /// Whether the call changes hypervisor state (a dry run must not make it).
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            HypercallOp::XenVersion
                | HypercallOp::GetDomainInfo
                | HypercallOp::GetDomainState
                | HypercallOp::TestAssignDevice
                // Dumps to Xen's console; changes no state doctor or a dry run cares for.
                | HypercallOp::DebugKeys
                | HypercallOp::ReadConsole
                | HypercallOp::CommandLine
        )
    }
}

impl fmt::Display for HypercallOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hypervisor as ptguard uses it. Methods take `&self`; implementations synchronise.
pub trait Hypervisor: Send + Sync {
    fn version(&self) -> Result<XenVersion, XenError>;
    /// `PHYSDEVOP_map_pirq`; returns the pirq Xen chose (or was given).
    fn map_pirq(&self, req: &MapPirq) -> Result<Pirq, XenError>;
    /// `PHYSDEVOP_unmap_pirq`.
    fn unmap_pirq(&self, domid: DomId, pirq: Pirq) -> Result<(), XenError>;
    /// `PHYSDEVOP_prepare_msix`.
    fn prepare_msix(&self, sbdf: Sbdf) -> Result<(), XenError>;
    /// `PHYSDEVOP_release_msix`.
    fn release_msix(&self, sbdf: Sbdf) -> Result<(), XenError>;
    /// `XEN_DOMCTL_bind_pt_irq`.
    fn bind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError>;
    /// `XEN_DOMCTL_unbind_pt_irq`.
    fn unbind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError>;
    /// `XEN_DOMCTL_assign_device` (PCI; `flags` = `XEN_DOMCTL_DEV_RDM_RELAXED` or 0).
    fn assign_device(&self, domid: DomId, sbdf: Sbdf, flags: u32) -> Result<(), XenError>;
    /// `XEN_DOMCTL_test_assign_device`.
    fn test_assign_device(&self, sbdf: Sbdf) -> Result<(), XenError>;
    /// `XEN_DOMCTL_deassign_device`.
    fn deassign_device(&self, domid: DomId, sbdf: Sbdf) -> Result<(), XenError>;
    /// `XEN_DOMCTL_iomem_permission`.
    fn iomem_permission(
        &self,
        domid: DomId,
        first_mfn: u64,
        nr_mfns: u64,
        allow: bool,
    ) -> Result<(), XenError>;
    /// `XEN_DOMCTL_ioport_permission`.
    fn ioport_permission(
        &self,
        domid: DomId,
        first_port: u32,
        nr_ports: u32,
        allow: bool,
    ) -> Result<(), XenError>;
    /// `XEN_DOMCTL_irq_permission`; `pirq` is in the caller's (dom0's) space.
    fn irq_permission(&self, domid: DomId, pirq: Pirq, allow: bool) -> Result<(), XenError>;
    /// `XEN_DOMCTL_getdomaininfo` for exactly `domid` (`None`: no such domain).
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, XenError>;
    /// `XEN_SYSCTL_debug_keys`: as if `keys` were typed on Xen's serial console (`Q` PCI
    /// devices, `i` IRQ bindings, `M` MSI state); the dumps go to the console ring.
    fn debug_keys(&self, keys: &str) -> Result<(), XenError>;
    /// `XEN_SYSCTL_readconsole`: Xen's console ring as it stands, oldest line first.
    fn read_console(&self) -> Result<String, XenError>;
    /// `XENVER_commandline`: the hypervisor's boot command line.
    fn command_line(&self) -> Result<String, XenError>;
}
