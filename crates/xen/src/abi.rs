//! Xen 4.17 public ABI: hypercall numbers, sub-op codes and structures laid out exactly as
//! `xen/include/public/{xen,physdev,domctl,version}.h` (x86_64). `tests/layout.rs` compiles
//! Debian's headers and checks every size, offset and constant here against them.

#![allow(non_camel_case_types)]

pub const HYPERVISOR_XEN_VERSION: u64 = 17;
pub const HYPERVISOR_PHYSDEV_OP: u64 = 33;
pub const HYPERVISOR_SYSCTL: u64 = 35;
pub const HYPERVISOR_DOMCTL: u64 = 36;

pub const XENVER_VERSION: u64 = 0;
/// `XENVER_commandline`: Xen's boot command line into a `char[1024]`.
pub const XENVER_COMMANDLINE: u64 = 9;
pub const XEN_COMMANDLINE_LEN: usize = 1024;

/// `XEN_SYSCTL_INTERFACE_VERSION` of Xen 4.17.
pub const XEN_SYSCTL_INTERFACE_VERSION: u32 = 0x15;
pub const XEN_SYSCTL_READCONSOLE: u32 = 1;
pub const XEN_SYSCTL_DEBUG_KEYS: u32 = 7;

pub const PHYSDEVOP_MAP_PIRQ: u32 = 13;
pub const PHYSDEVOP_UNMAP_PIRQ: u32 = 14;
pub const PHYSDEVOP_PREPARE_MSIX: u32 = 30;
pub const PHYSDEVOP_RELEASE_MSIX: u32 = 31;

pub const MAP_PIRQ_TYPE_MSI: i32 = 0;
pub const MAP_PIRQ_TYPE_GSI: i32 = 1;
pub const MAP_PIRQ_TYPE_UNKNOWN: i32 = 2;
pub const MAP_PIRQ_TYPE_MSI_SEG: i32 = 3;
pub const MAP_PIRQ_TYPE_MULTI_MSI: i32 = 4;

/// `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.17.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;

/// What differs, for the calls ptguard makes, between the Xen releases it speaks: the
/// interface versions each release's domctl/sysctl handlers insist on, the
/// `xen_domctl_irq_permission` layout (a `uint8_t pirq` until 4.15, `uint32_t` from 4.16),
/// and whether `XEN_DOMCTL_get_domain_state` exists (4.21+). Every other structure ptguard
/// passes is laid out identically from 4.11 to 4.22: `tests/layout.rs` checks this table
/// against the facts `tests/abi/derive.sh` derived from each release tag's public headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseAbi {
    pub minor: u16,
    pub domctl_version: u32,
    pub sysctl_version: u32,
    pub irq_permission_pirq_is_u8: bool,
    /// `XEN_DOMCTL_get_domain_state`: a domain's unique id, never reused while Xen runs.
    pub get_domain_state: bool,
}

/// The releases ptguard speaks: Xen 4.11 to 4.22, from each release tag's public headers.
pub const RELEASE_ABIS: [ReleaseAbi; 12] = [
    ReleaseAbi::new(11, 0x10, 0x11, true),
    ReleaseAbi::new(12, 0x11, 0x12, true),
    ReleaseAbi::new(13, 0x12, 0x12, true),
    ReleaseAbi::new(14, 0x12, 0x13, true),
    ReleaseAbi::new(15, 0x13, 0x13, true),
    ReleaseAbi::new(16, 0x14, 0x14, false),
    ReleaseAbi::new(
        17,
        XEN_DOMCTL_INTERFACE_VERSION,
        XEN_SYSCTL_INTERFACE_VERSION,
        false,
    ),
    ReleaseAbi::new(18, 0x16, 0x15, false),
    ReleaseAbi::new(19, 0x17, 0x15, false),
    ReleaseAbi::new(20, 0x17, 0x15, false),
    // 4.21: the sysctl interface moved (power-management structures ptguard never
    // passes); get_domain_state arrived, a stable domctl (interface_version 0).
    ReleaseAbi::new(21, 0x17, 0x16, false),
    // 4.22: the domctl interface moved (createdomain's altp2m settings, not passed).
    ReleaseAbi::new(22, 0x18, 0x16, false),
];

impl ReleaseAbi {
    const fn new(minor: u16, domctl: u32, sysctl: u32, u8_pirq: bool) -> ReleaseAbi {
        ReleaseAbi {
            minor,
            domctl_version: domctl,
            sysctl_version: sysctl,
            irq_permission_pirq_is_u8: u8_pirq,
            get_domain_state: minor >= 21,
        }
    }
    /// The ABI of Xen `major.minor`, if ptguard speaks it.
    pub fn of(major: u16, minor: u16) -> Option<ReleaseAbi> {
        if major != 4 {
            return None;
        }
        RELEASE_ABIS.iter().copied().find(|a| a.minor == minor)
    }
    /// Xen 4.17, the release Debian 12's headers (and `tests/layout.rs`) describe.
    pub fn xen_4_17() -> ReleaseAbi {
        RELEASE_ABIS[6]
    }
    /// The oldest and the newest release ptguard speaks.
    pub fn oldest() -> ReleaseAbi {
        RELEASE_ABIS[0]
    }
    pub fn newest() -> ReleaseAbi {
        RELEASE_ABIS[RELEASE_ABIS.len() - 1]
    }
}
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
pub const XEN_DOMCTL_IRQ_PERMISSION: u32 = 19;
pub const XEN_DOMCTL_IOMEM_PERMISSION: u32 = 20;
pub const XEN_DOMCTL_IOPORT_PERMISSION: u32 = 21;
pub const XEN_DOMCTL_ASSIGN_DEVICE: u32 = 37;
pub const XEN_DOMCTL_BIND_PT_IRQ: u32 = 38;
pub const XEN_DOMCTL_TEST_ASSIGN_DEVICE: u32 = 45;
pub const XEN_DOMCTL_DEASSIGN_DEVICE: u32 = 47;
pub const XEN_DOMCTL_UNBIND_PT_IRQ: u32 = 48;
/// Xen 4.21+: a stable domctl, so its `interface_version` must be 0.
pub const XEN_DOMCTL_GET_DOMAIN_STATE: u32 = 90;
pub const XEN_DOMCTL_GETDOMSTATE_STATE_EXIST: u16 = 0x1;
pub const XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN: u16 = 0x2;
pub const XEN_DOMCTL_GETDOMSTATE_STATE_DYING: u16 = 0x4;
pub const XEN_DOMCTL_GETDOMSTATE_STATE_DEAD: u16 = 0x8;

/// `struct xen_domctl_get_domain_state` (Xen 4.21+).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_get_domain_state {
    pub state: u16,
    pub caps: u16,
    pub pad0: u32,
    pub unique_id: u64,
}

pub const XEN_DOMCTL_DEV_PCI: u32 = 0;
pub const XEN_DOMCTL_DEV_RDM_RELAXED: u32 = 1;

pub const PT_IRQ_TYPE_PCI: u32 = 0;
pub const PT_IRQ_TYPE_ISA: u32 = 1;
pub const PT_IRQ_TYPE_MSI: u32 = 2;
pub const PT_IRQ_TYPE_MSI_TRANSLATE: u32 = 3;
pub const XEN_DOMCTL_VMSI_X86_UNMASKED: u32 = 0x10000;

pub const XEN_DOMINF_DYING: u32 = 1 << 0;
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
pub const XEN_DOMINF_PAUSED: u32 = 1 << 3;
/// The guest's `SHUTDOWN_*` code sits in bits 16-23 of the flags.
pub const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;
pub const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;

pub const DOMID_SELF: u16 = 0x7ff0;
pub const DOMID_IO: u16 = 0x7ff1;
pub const DOMID_XEN: u16 = 0x7ff2;
/// "No domain": the only id `XEN_DOMCTL_test_assign_device` accepts without looking a
/// domain up (Xen 4.17 `do_domctl`; any other id goes through `rcu_lock_domain_by_id`,
/// which does not resolve `DOMID_SELF`, and the call fails with `-ESRCH`).
pub const DOMID_INVALID: u16 = 0x7ff4;

/// `struct physdev_map_pirq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct physdev_map_pirq {
    pub domid: u16,
    pub type_: i32,
    pub index: i32,
    pub pirq: i32,
    pub bus: i32,
    pub devfn: i32,
    pub entry_nr: i32,
    pub table_base: u64,
}

/// `struct physdev_unmap_pirq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct physdev_unmap_pirq {
    pub domid: u16,
    pub pirq: i32,
}

/// `struct physdev_pci_device` (argument of prepare_msix / release_msix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct physdev_pci_device {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
}

/// `struct xen_domctl_assign_device` (PCI member of the union).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_assign_device {
    pub dev: u32,
    pub flags: u32,
    pub machine_sbdf: u32,
    pub _pad: [u32; 3],
}

/// `struct xen_domctl_bind_pt_irq`; `u` holds `u.pci {bus, device, intx}` or
/// `u.msi {gvec @8, gflags @12, gtable @16}` (offsets from the start of the struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_bind_pt_irq {
    pub machine_irq: u32,
    pub irq_type: u32,
    pub u: [u8; 16],
}

impl xen_domctl_bind_pt_irq {
    pub fn msi(pirq: u32, gvec: u8, gflags: u32, gtable: u64) -> Self {
        let mut u = [0u8; 16];
        u[0] = gvec;
        u[4..8].copy_from_slice(&gflags.to_ne_bytes());
        u[8..16].copy_from_slice(&gtable.to_ne_bytes());
        xen_domctl_bind_pt_irq {
            machine_irq: pirq,
            irq_type: PT_IRQ_TYPE_MSI,
            u,
        }
    }
    pub fn pci(pirq: u32, bus: u8, device: u8, intx: u8) -> Self {
        let mut u = [0u8; 16];
        u[0] = bus;
        u[1] = device;
        u[2] = intx;
        xen_domctl_bind_pt_irq {
            machine_irq: pirq,
            irq_type: PT_IRQ_TYPE_PCI,
            u,
        }
    }
}

/// `struct xen_domctl_irq_permission`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_irq_permission {
    pub pirq: u32,
    pub allow_access: u8,
    pub pad: [u8; 3],
}

/// `struct xen_domctl_iomem_permission`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_iomem_permission {
    pub first_mfn: u64,
    pub nr_mfns: u64,
    pub allow_access: u8,
}

/// `struct xen_domctl_ioport_permission`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_ioport_permission {
    pub first_port: u32,
    pub nr_ports: u32,
    pub allow_access: u8,
}

/// The leading fields of `struct xen_domctl_getdomaininfo` that ptguard reads, through
/// `handle` (the same offsets in every release from 4.11 to 4.22; 4.16 made `pad1`
/// explicit and later fields were added after `handle`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_domctl_getdomaininfo_head {
    pub domain: u16,
    pub pad1: u16,
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub outstanding_pages: u64,
    pub shr_pages: u64,
    pub paged_pages: u64,
    pub shared_info_frame: u64,
    pub cpu_time: u64,
    pub nr_online_vcpus: u32,
    pub max_vcpu_id: u32,
    pub ssidref: u32,
    /// `xen_domain_handle_t`: the 16-byte handle the toolstack gives a domain at creation
    /// (xl and libvirt put the domain's UUID there).
    pub handle: [u8; 16],
}

/// `struct xen_domctl`: 16-byte header and a 128-byte union (8-byte aligned).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct xen_domctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub domain: u16,
    pub _pad: [u16; 3],
    pub u: [u8; 128],
}

impl xen_domctl {
    pub fn new(cmd: u32, domain: u16) -> xen_domctl {
        xen_domctl {
            cmd,
            interface_version: XEN_DOMCTL_INTERFACE_VERSION,
            domain,
            _pad: [0; 3],
            u: [0; 128],
        }
    }

    /// Writes `bytes` into the union at `offset` (payloads are encoded field by field, at
    /// the offsets the layout test checks, so no padding byte is ever read).
    pub fn put(&mut self, offset: usize, bytes: &[u8]) -> &mut xen_domctl {
        self.u[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
    pub fn put_u8(&mut self, offset: usize, v: u8) -> &mut xen_domctl {
        self.put(offset, &[v])
    }
    pub fn put_u32(&mut self, offset: usize, v: u32) -> &mut xen_domctl {
        self.put(offset, &v.to_ne_bytes())
    }
    pub fn put_u64(&mut self, offset: usize, v: u64) -> &mut xen_domctl {
        self.put(offset, &v.to_ne_bytes())
    }
    pub fn get_u16(&self, offset: usize) -> u16 {
        u16::from_ne_bytes([self.u[offset], self.u[offset + 1]])
    }
    pub fn get_u32(&self, offset: usize) -> u32 {
        let b = &self.u[offset..offset + 4];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn get_u64(&self, offset: usize) -> u64 {
        u64::from_ne_bytes(self.get_bytes::<8>(offset))
    }
    pub fn get_bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.u[offset..offset + N]);
        out
    }
}

/// `struct xen_sysctl_readconsole`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_sysctl_readconsole {
    pub clear: u8,
    pub incremental: u8,
    pub pad0: u8,
    pub pad1: u8,
    pub index: u32,
    pub buffer: u64,
    pub count: u32,
}

/// `struct xen_sysctl_debug_keys`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_sysctl_debug_keys {
    pub keys: u64,
    pub nr_keys: u32,
}

/// `struct xen_sysctl`: an 8-byte header and a 128-byte union (8-byte aligned).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct xen_sysctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub u: [u8; 128],
}

impl xen_sysctl {
    pub fn new(cmd: u32) -> xen_sysctl {
        xen_sysctl {
            cmd,
            interface_version: XEN_SYSCTL_INTERFACE_VERSION,
            u: [0; 128],
        }
    }
    pub fn put(&mut self, offset: usize, bytes: &[u8]) -> &mut xen_sysctl {
        self.u[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
    pub fn get_u32(&self, offset: usize) -> u32 {
        let b = &self.u[offset..offset + 4];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<xen_sysctl>()] {
        let mut b = [0u8; std::mem::size_of::<xen_sysctl>()];
        b[0..4].copy_from_slice(&self.cmd.to_ne_bytes());
        b[4..8].copy_from_slice(&self.interface_version.to_ne_bytes());
        let off = std::mem::offset_of!(xen_sysctl, u);
        b[off..off + self.u.len()].copy_from_slice(&self.u);
        b
    }
    pub fn read_back(&mut self, b: &[u8]) {
        let off = std::mem::offset_of!(xen_sysctl, u);
        let n = self.u.len();
        self.u.copy_from_slice(&b[off..off + n]);
    }
}

/// `struct privcmd_hypercall` of Linux's `xen/privcmd.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct privcmd_hypercall {
    pub op: u64,
    pub arg: [u64; 5],
}

/// `IOCTL_PRIVCMD_HYPERCALL` = `_IOC(_IOC_NONE, 'P', 0, sizeof(privcmd_hypercall_t))`.
pub const IOCTL_PRIVCMD_HYPERCALL: u64 =
    ((std::mem::size_of::<privcmd_hypercall>() as u64) << 16) | ((b'P' as u64) << 8);

/// Byte encodings of the physdev arguments, field by field at their `repr(C)` offsets.
macro_rules! put {
    ($buf:expr, $ty:ty, $field:ident, $v:expr) => {{
        let off = std::mem::offset_of!($ty, $field);
        let bytes = $v.to_ne_bytes();
        $buf[off..off + bytes.len()].copy_from_slice(&bytes);
    }};
}
macro_rules! get {
    ($buf:expr, $ty:ty, $field:ident, $t:ty) => {{
        let off = std::mem::offset_of!($ty, $field);
        let mut b = [0u8; std::mem::size_of::<$t>()];
        b.copy_from_slice(&$buf[off..off + std::mem::size_of::<$t>()]);
        <$t>::from_ne_bytes(b)
    }};
}

impl physdev_map_pirq {
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<physdev_map_pirq>()] {
        let mut b = [0u8; std::mem::size_of::<physdev_map_pirq>()];
        put!(b, physdev_map_pirq, domid, self.domid);
        put!(b, physdev_map_pirq, type_, self.type_);
        put!(b, physdev_map_pirq, index, self.index);
        put!(b, physdev_map_pirq, pirq, self.pirq);
        put!(b, physdev_map_pirq, bus, self.bus);
        put!(b, physdev_map_pirq, devfn, self.devfn);
        put!(b, physdev_map_pirq, entry_nr, self.entry_nr);
        put!(b, physdev_map_pirq, table_base, self.table_base);
        b
    }
    /// Reads back the OUT fields (`pirq`, and `entry_nr` for MULTI_MSI).
    pub fn read_out(&mut self, b: &[u8]) {
        self.pirq = get!(b, physdev_map_pirq, pirq, i32);
        self.entry_nr = get!(b, physdev_map_pirq, entry_nr, i32);
    }
}

impl physdev_unmap_pirq {
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<physdev_unmap_pirq>()] {
        let mut b = [0u8; std::mem::size_of::<physdev_unmap_pirq>()];
        put!(b, physdev_unmap_pirq, domid, self.domid);
        put!(b, physdev_unmap_pirq, pirq, self.pirq);
        b
    }
}

impl physdev_pci_device {
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<physdev_pci_device>()] {
        let mut b = [0u8; std::mem::size_of::<physdev_pci_device>()];
        put!(b, physdev_pci_device, seg, self.seg);
        put!(b, physdev_pci_device, bus, self.bus);
        put!(b, physdev_pci_device, devfn, self.devfn);
        b
    }
}

impl xen_domctl {
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<xen_domctl>()] {
        let mut b = [0u8; std::mem::size_of::<xen_domctl>()];
        put!(b, xen_domctl, cmd, self.cmd);
        put!(b, xen_domctl, interface_version, self.interface_version);
        put!(b, xen_domctl, domain, self.domain);
        let off = std::mem::offset_of!(xen_domctl, u);
        b[off..off + self.u.len()].copy_from_slice(&self.u);
        b
    }
    pub fn read_back(&mut self, b: &[u8]) {
        let off = std::mem::offset_of!(xen_domctl, u);
        let n = self.u.len();
        self.u.copy_from_slice(&b[off..off + n]);
        self.domain = get!(b, xen_domctl, domain, u16);
    }
}

/// Offsets inside `xen_domctl.u` of the payload fields ptguard writes.
pub mod payload {
    use super::*;
    use std::mem::offset_of;

    pub const ASSIGN_DEV: usize = offset_of!(xen_domctl_assign_device, dev);
    pub const ASSIGN_FLAGS: usize = offset_of!(xen_domctl_assign_device, flags);
    pub const ASSIGN_MACHINE_SBDF: usize = offset_of!(xen_domctl_assign_device, machine_sbdf);
    pub const BIND_MACHINE_IRQ: usize = offset_of!(xen_domctl_bind_pt_irq, machine_irq);
    pub const BIND_IRQ_TYPE: usize = offset_of!(xen_domctl_bind_pt_irq, irq_type);
    pub const BIND_U: usize = offset_of!(xen_domctl_bind_pt_irq, u);
    pub const BIND_MSI_GVEC: usize = BIND_U;
    pub const BIND_MSI_GFLAGS: usize = BIND_U + 4;
    pub const BIND_MSI_GTABLE: usize = BIND_U + 8;
    pub const BIND_PCI_BUS: usize = BIND_U;
    pub const BIND_PCI_DEVICE: usize = BIND_U + 1;
    pub const BIND_PCI_INTX: usize = BIND_U + 2;
    pub const IRQ_PERM_PIRQ: usize = offset_of!(xen_domctl_irq_permission, pirq);
    pub const IRQ_PERM_ALLOW: usize = offset_of!(xen_domctl_irq_permission, allow_access);
    pub const IOMEM_FIRST_MFN: usize = offset_of!(xen_domctl_iomem_permission, first_mfn);
    pub const IOMEM_NR_MFNS: usize = offset_of!(xen_domctl_iomem_permission, nr_mfns);
    pub const IOMEM_ALLOW: usize = offset_of!(xen_domctl_iomem_permission, allow_access);
    pub const IOPORT_FIRST_PORT: usize = offset_of!(xen_domctl_ioport_permission, first_port);
    pub const IOPORT_NR_PORTS: usize = offset_of!(xen_domctl_ioport_permission, nr_ports);
    pub const IOPORT_ALLOW: usize = offset_of!(xen_domctl_ioport_permission, allow_access);
    pub const DOMINFO_DOMAIN: usize = offset_of!(xen_domctl_getdomaininfo_head, domain);
    pub const DOMINFO_FLAGS: usize = offset_of!(xen_domctl_getdomaininfo_head, flags);
    pub const DOMINFO_HANDLE: usize = offset_of!(xen_domctl_getdomaininfo_head, handle);
    pub const DOMSTATE_STATE: usize = offset_of!(xen_domctl_get_domain_state, state);
    pub const DOMSTATE_CAPS: usize = offset_of!(xen_domctl_get_domain_state, caps);
    pub const DOMSTATE_PAD0: usize = offset_of!(xen_domctl_get_domain_state, pad0);
    pub const DOMSTATE_UNIQUE_ID: usize = offset_of!(xen_domctl_get_domain_state, unique_id);
    /// `xen_domctl_irq_permission` before Xen 4.16: `uint8_t pirq; uint8_t allow_access;`.
    pub const IRQ_PERM_PIRQ_U8: usize = 0;
    pub const IRQ_PERM_ALLOW_U8: usize = 1;
    pub const CONSOLE_CLEAR: usize = offset_of!(xen_sysctl_readconsole, clear);
    pub const CONSOLE_INCREMENTAL: usize = offset_of!(xen_sysctl_readconsole, incremental);
    pub const CONSOLE_INDEX: usize = offset_of!(xen_sysctl_readconsole, index);
    pub const CONSOLE_BUFFER: usize = offset_of!(xen_sysctl_readconsole, buffer);
    pub const CONSOLE_COUNT: usize = offset_of!(xen_sysctl_readconsole, count);
    pub const DEBUG_KEYS_KEYS: usize = offset_of!(xen_sysctl_debug_keys, keys);
    pub const DEBUG_KEYS_NR: usize = offset_of!(xen_sysctl_debug_keys, nr_keys);
}
