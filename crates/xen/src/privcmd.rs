//! The real hypervisor: hypercalls through Linux's `/dev/xen/privcmd`.
//!
//! Arguments are copied into one page of hypercall-safe memory — mapped from
//! `/dev/xen/hypercall` where the kernel offers it (Linux ≥ 4.18), otherwise an anonymous
//! page locked with `mlock` as libxencall does — and the call is made with
//! `IOCTL_PRIVCMD_HYPERCALL`. This module holds all of the project's `unsafe` code.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use pci::Sbdf;

use crate::abi::{self, payload};
use crate::hypervisor::*;
use crate::{Errno, XenError};

pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
pub const HYPERCALL_BUF_PATH: &str = "/dev/xen/hypercall";
const PAGE: usize = 4096;

/// One page of memory the hypervisor may read and write during a hypercall.
struct HypercallPage {
    ptr: *mut u8,
    locked: bool,
}

// SAFETY: the page is plain memory owned by this struct; it is only accessed while the
// `Mutex` in `Privcmd` is held, so moving or sharing the owner between threads is sound.
unsafe impl Send for HypercallPage {}

impl HypercallPage {
    fn new(bufdev: Option<&File>) -> std::io::Result<HypercallPage> {
        if let Some(dev) = bufdev {
            // SAFETY: a fresh shared mapping of one page of /dev/xen/hypercall; the kernel
            // returns MAP_FAILED or a valid page-aligned mapping we own until munmap.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    dev.as_raw_fd(),
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                return Ok(HypercallPage {
                    ptr: p.cast(),
                    locked: false,
                });
            }
        }
        // SAFETY: an anonymous private mapping of one page; same contract as above.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `p` is the page we just mapped; locking keeps it resident so Xen never
        // faults on it.
        if unsafe { libc::mlock(p, PAGE) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the page we mapped above, not used afterwards.
            unsafe { libc::munmap(p, PAGE) };
            return Err(e);
        }
        Ok(HypercallPage {
            ptr: p.cast(),
            locked: true,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(PAGE);
        // SAFETY: `ptr` points to PAGE writable bytes we own; `n <= PAGE`; the source is a
        // distinct Rust slice so the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, n) };
    }

    fn read(&self, out: &mut [u8]) {
        let n = out.len().min(PAGE);
        // SAFETY: as in `write`, reading `n <= PAGE` initialised bytes of our page.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, out.as_mut_ptr(), n) };
    }
}

impl Drop for HypercallPage {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the page mapped in `new`, unmapped exactly once here.
        unsafe {
            if self.locked {
                libc::munlock(self.ptr.cast(), PAGE);
            }
            libc::munmap(self.ptr.cast(), PAGE);
        }
    }
}

/// The hypervisor reached through `/dev/xen/privcmd`.
pub struct Privcmd {
    fd: File,
    page: Mutex<HypercallPage>,
    version: XenVersion,
    abi: abi::ReleaseAbi,
}

impl Privcmd {
    /// Opens privcmd, asks Xen its version and picks that release's domctl/sysctl interface
    /// (Xen 4.11 to 4.22); any other release is refused before a single domctl is made.
    pub fn open() -> Result<Privcmd, XenError> {
        Privcmd::open_at(Path::new(PRIVCMD_PATH), Path::new(HYPERCALL_BUF_PATH))
    }

    pub fn open_at(privcmd: &Path, hypercall_buf: &Path) -> Result<Privcmd, XenError> {
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(privcmd)
            .map_err(|source| XenError::NoXen {
                path: privcmd.to_path_buf(),
                source,
            })?;
        let bufdev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(hypercall_buf)
            .ok();
        let page = HypercallPage::new(bufdev.as_ref()).map_err(|source| XenError::NoXen {
            path: hypercall_buf.to_path_buf(),
            source,
        })?;
        let mut p = Privcmd {
            fd,
            page: Mutex::new(page),
            version: XenVersion { major: 0, minor: 0 },
            abi: abi::ReleaseAbi::xen_4_17(),
        };
        let v = p
            .raw(
                abi::HYPERVISOR_XEN_VERSION,
                [abi::XENVER_VERSION, 0, 0, 0, 0],
            )
            .map_err(|errno| {
                XenError::hypercall(HypercallOp::XenVersion, "XENVER_version", errno)
            })?;
        p.version = XenVersion {
            major: (v >> 16) as u16,
            minor: v as u16,
        };
        p.abi = abi::ReleaseAbi::of(p.version.major, p.version.minor)
            .ok_or(XenError::Unsupported { found: p.version })?;
        Ok(p)
    }

    fn raw(&self, op: u64, arg: [u64; 5]) -> Result<i64, Errno> {
        let mut call = abi::privcmd_hypercall { op, arg };
        // SAFETY: IOCTL_PRIVCMD_HYPERCALL takes a pointer to a `privcmd_hypercall` that lives
        // for the duration of the call; any pointer arguments inside point to our locked page.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                abi::IOCTL_PRIVCMD_HYPERCALL as libc::c_ulong,
                &mut call as *mut abi::privcmd_hypercall,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(Errno(e));
        }
        Ok(i64::from(r))
    }

    /// Copies `arg` to the hypercall page, makes the call with the page as argument `arg_index`
    /// and copies the page back into `arg`.
    fn with_page(&self, op: u64, first: u64, arg: &mut [u8]) -> Result<i64, Errno> {
        let mut page = self.page.lock().map_err(|_| Errno::EIO)?;
        page.write(arg);
        let ptr = page.ptr as u64;
        let r = self.raw(op, [first, ptr, 0, 0, 0]);
        page.read(arg);
        r
    }

    fn physdev(&self, cmd: u32, arg: &mut [u8]) -> Result<(), Errno> {
        self.with_page(abi::HYPERVISOR_PHYSDEV_OP, u64::from(cmd), arg)
            .map(|_| ())
    }

    fn domctl(&self, d: &mut abi::xen_domctl) -> Result<(), Errno> {
        let mut bytes = d.to_bytes();
        let mut page = self.page.lock().map_err(|_| Errno::EIO)?;
        page.write(&bytes);
        let r = self.raw(abi::HYPERVISOR_DOMCTL, [page.ptr as u64, 0, 0, 0, 0]);
        page.read(&mut bytes);
        d.read_back(&bytes);
        r.map(|_| ())
    }

    fn domctl_op(
        &self,
        op: HypercallOp,
        cmd: u32,
        domid: DomId,
        target: String,
        fill: impl FnOnce(&mut abi::xen_domctl),
    ) -> Result<abi::xen_domctl, XenError> {
        let mut d = abi::xen_domctl::new(cmd, domid.0);
        d.interface_version = self.abi.domctl_version;
        fill(&mut d);
        self.domctl(&mut d)
            .map_err(|errno| XenError::hypercall(op, target, errno))?;
        Ok(d)
    }
}

impl Privcmd {
    /// Xen 4.21+'s unique id of `domid` (`XEN_DOMCTL_get_domain_state`, a stable domctl:
    /// interface version 0). `None` before 4.21, for a domain gone between the two calls,
    /// or where XSM refuses it: the caller falls back to the handle.
    fn unique_id(&self, domid: DomId) -> Option<u64> {
        if !self.abi.get_domain_state {
            return None;
        }
        let mut d = get_domain_state_domctl(domid);
        self.domctl(&mut d).ok()?;
        let state = d.get_u16(payload::DOMSTATE_STATE);
        (d.domain == domid.0 && state & abi::XEN_DOMCTL_GETDOMSTATE_STATE_EXIST != 0)
            .then(|| d.get_u64(payload::DOMSTATE_UNIQUE_ID))
    }
}

/// `XEN_DOMCTL_get_domain_state` of `domid`: a stable domctl, so `interface_version` is 0
/// (Xen 4.21 `do_domctl` answers `-EACCES` to any other), `pad0` 0 (else `-EINVAL`).
pub fn get_domain_state_domctl(domid: DomId) -> abi::xen_domctl {
    let mut d = abi::xen_domctl::new(abi::XEN_DOMCTL_GET_DOMAIN_STATE, domid.0);
    d.interface_version = 0;
    d
}

/// `XEN_DOMCTL_test_assign_device` for `sbdf`: asks whether the device is free (owned by
/// dom0 or dom_io). The domain field must be `DOMID_INVALID` (see [`abi::DOMID_INVALID`]).
pub fn test_assign_domctl(sbdf: Sbdf) -> abi::xen_domctl {
    let mut d = abi::xen_domctl::new(abi::XEN_DOMCTL_TEST_ASSIGN_DEVICE, abi::DOMID_INVALID);
    d.put_u32(payload::ASSIGN_DEV, abi::XEN_DOMCTL_DEV_PCI)
        .put_u32(payload::ASSIGN_MACHINE_SBDF, sbdf.machine_sbdf());
    d
}

fn pci_device(sbdf: Sbdf) -> [u8; 4] {
    abi::physdev_pci_device {
        seg: sbdf.seg(),
        bus: sbdf.bus(),
        devfn: sbdf.devfn(),
    }
    .to_bytes()
}

impl Hypervisor for Privcmd {
    fn version(&self) -> Result<XenVersion, XenError> {
        Ok(self.version)
    }

    fn map_pirq(&self, req: &MapPirq) -> Result<Pirq, XenError> {
        let mut m = abi::physdev_map_pirq {
            domid: req.domid.0,
            pirq: req.pirq.map_or(-1, |p| p.0),
            ..Default::default()
        };
        let target = match req.source {
            MapSource::Gsi { gsi } => {
                m.type_ = abi::MAP_PIRQ_TYPE_GSI;
                m.index = gsi as i32;
                CallTarget::Map(req).to_string()
            }
            MapSource::Msi {
                sbdf,
                entry_nr,
                table_base,
            } => {
                m.type_ = abi::MAP_PIRQ_TYPE_MSI_SEG;
                m.index = -1;
                m.bus = sbdf.map_pirq_bus();
                m.devfn = i32::from(sbdf.devfn());
                m.entry_nr = i32::from(entry_nr);
                m.table_base = table_base;
                CallTarget::Map(req).to_string()
            }
        };
        let mut bytes = m.to_bytes();
        self.physdev(abi::PHYSDEVOP_MAP_PIRQ, &mut bytes)
            .map_err(|errno| XenError::hypercall(HypercallOp::MapPirq, target, errno))?;
        m.read_out(&bytes);
        Ok(Pirq(m.pirq))
    }

    fn unmap_pirq(&self, domid: DomId, pirq: Pirq) -> Result<(), XenError> {
        let mut bytes = abi::physdev_unmap_pirq {
            domid: domid.0,
            pirq: pirq.0,
        }
        .to_bytes();
        self.physdev(abi::PHYSDEVOP_UNMAP_PIRQ, &mut bytes)
            .map_err(|errno| {
                XenError::hypercall(
                    HypercallOp::UnmapPirq,
                    CallTarget::Pirq(domid, pirq).to_string(),
                    errno,
                )
            })
    }

    fn prepare_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.physdev(abi::PHYSDEVOP_PREPARE_MSIX, &mut pci_device(sbdf))
            .map_err(|errno| XenError::hypercall(HypercallOp::PrepareMsix, sbdf.to_string(), errno))
    }

    fn release_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.physdev(abi::PHYSDEVOP_RELEASE_MSIX, &mut pci_device(sbdf))
            .map_err(|errno| XenError::hypercall(HypercallOp::ReleaseMsix, sbdf.to_string(), errno))
    }

    fn bind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        let target = CallTarget::Pirq(domid, bind.pirq()).to_string();
        self.domctl_op(
            HypercallOp::BindPtIrq,
            abi::XEN_DOMCTL_BIND_PT_IRQ,
            domid,
            target,
            |d| fill_bind(d, bind),
        )
        .map(|_| ())
    }

    fn unbind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        let target = CallTarget::Pirq(domid, bind.pirq()).to_string();
        self.domctl_op(
            HypercallOp::UnbindPtIrq,
            abi::XEN_DOMCTL_UNBIND_PT_IRQ,
            domid,
            target,
            |d| fill_bind(d, bind),
        )
        .map(|_| ())
    }

    fn assign_device(&self, domid: DomId, sbdf: Sbdf, flags: u32) -> Result<(), XenError> {
        self.domctl_op(
            HypercallOp::AssignDevice,
            abi::XEN_DOMCTL_ASSIGN_DEVICE,
            domid,
            CallTarget::DomainDevice(domid, sbdf).to_string(),
            |d| {
                d.put_u32(payload::ASSIGN_DEV, abi::XEN_DOMCTL_DEV_PCI)
                    .put_u32(payload::ASSIGN_FLAGS, flags)
                    .put_u32(payload::ASSIGN_MACHINE_SBDF, sbdf.machine_sbdf());
            },
        )
        .map(|_| ())
    }

    fn test_assign_device(&self, sbdf: Sbdf) -> Result<(), XenError> {
        let mut d = test_assign_domctl(sbdf);
        d.interface_version = self.abi.domctl_version;
        self.domctl(&mut d).map_err(|errno| {
            XenError::hypercall(HypercallOp::TestAssignDevice, sbdf.to_string(), errno)
        })
    }

    fn deassign_device(&self, domid: DomId, sbdf: Sbdf) -> Result<(), XenError> {
        self.domctl_op(
            HypercallOp::DeassignDevice,
            abi::XEN_DOMCTL_DEASSIGN_DEVICE,
            domid,
            CallTarget::DomainDevice(domid, sbdf).to_string(),
            |d| {
                d.put_u32(payload::ASSIGN_DEV, abi::XEN_DOMCTL_DEV_PCI)
                    .put_u32(payload::ASSIGN_MACHINE_SBDF, sbdf.machine_sbdf());
            },
        )
        .map(|_| ())
    }

    fn iomem_permission(
        &self,
        domid: DomId,
        first_mfn: u64,
        nr_mfns: u64,
        allow: bool,
    ) -> Result<(), XenError> {
        self.domctl_op(
            HypercallOp::IomemPermission,
            abi::XEN_DOMCTL_IOMEM_PERMISSION,
            domid,
            CallTarget::Iomem {
                domid,
                first: first_mfn,
                nr: nr_mfns,
            }
            .to_string(),
            |d| {
                d.put_u64(payload::IOMEM_FIRST_MFN, first_mfn)
                    .put_u64(payload::IOMEM_NR_MFNS, nr_mfns)
                    .put_u8(payload::IOMEM_ALLOW, u8::from(allow));
            },
        )
        .map(|_| ())
    }

    fn ioport_permission(
        &self,
        domid: DomId,
        first_port: u32,
        nr_ports: u32,
        allow: bool,
    ) -> Result<(), XenError> {
        self.domctl_op(
            HypercallOp::IoportPermission,
            abi::XEN_DOMCTL_IOPORT_PERMISSION,
            domid,
            CallTarget::Ioport {
                domid,
                first: first_port,
                nr: nr_ports,
            }
            .to_string(),
            |d| {
                d.put_u32(payload::IOPORT_FIRST_PORT, first_port)
                    .put_u32(payload::IOPORT_NR_PORTS, nr_ports)
                    .put_u8(payload::IOPORT_ALLOW, u8::from(allow));
            },
        )
        .map(|_| ())
    }

    fn irq_permission(&self, domid: DomId, pirq: Pirq, allow: bool) -> Result<(), XenError> {
        if self.abi.irq_permission_pirq_is_u8 && !(0..=255).contains(&pirq.0) {
            // The field cannot carry it on this release; never send a truncated pirq.
            return Err(XenError::hypercall(
                HypercallOp::IrqPermission,
                format!(
                    "{} (Xen {} carries only pirqs 0-255 here)",
                    CallTarget::Pirq(domid, pirq),
                    self.version
                ),
                Errno::EINVAL,
            ));
        }
        self.domctl_op(
            HypercallOp::IrqPermission,
            abi::XEN_DOMCTL_IRQ_PERMISSION,
            domid,
            CallTarget::Pirq(domid, pirq).to_string(),
            |d| {
                if self.abi.irq_permission_pirq_is_u8 {
                    d.put_u8(payload::IRQ_PERM_PIRQ_U8, pirq.0 as u8)
                        .put_u8(payload::IRQ_PERM_ALLOW_U8, u8::from(allow));
                } else {
                    d.put_u32(payload::IRQ_PERM_PIRQ, pirq.0 as u32)
                        .put_u8(payload::IRQ_PERM_ALLOW, u8::from(allow));
                }
            },
        )
        .map(|_| ())
    }

    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, XenError> {
        let r = self.domctl_op(
            HypercallOp::GetDomainInfo,
            abi::XEN_DOMCTL_GETDOMAININFO,
            domid,
            domid.to_string(),
            |_| {},
        );
        let d = match r {
            Ok(d) => d,
            Err(e) if e.errno() == Some(Errno::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        // getdomaininfo answers the next existing domain at or above `domid`.
        if d.get_u16(payload::DOMINFO_DOMAIN) != domid.0 {
            return Ok(None);
        }
        let flags = d.get_u32(payload::DOMINFO_FLAGS);
        Ok(Some(DomainInfo {
            domid,
            dying: flags & abi::XEN_DOMINF_DYING != 0,
            shutdown: flags & abi::XEN_DOMINF_SHUTDOWN != 0,
            hvm: flags & abi::XEN_DOMINF_HVM_GUEST != 0,
            paused: flags & abi::XEN_DOMINF_PAUSED != 0,
            shutdown_reason: ((flags >> abi::XEN_DOMINF_SHUTDOWNSHIFT)
                & abi::XEN_DOMINF_SHUTDOWNMASK) as u8,
            handle: DomainHandle(d.get_bytes::<16>(payload::DOMINFO_HANDLE)),
            unique_id: self.unique_id(domid),
        }))
    }

    fn debug_keys(&self, keys: &str) -> Result<(), XenError> {
        let keys = keys.as_bytes();
        if keys.len() > CONSOLE_CHUNK {
            return Err(XenError::hypercall(
                HypercallOp::DebugKeys,
                "too many keys",
                Errno::E2BIG,
            ));
        }
        self.sysctl(
            HypercallOp::DebugKeys,
            self.sysctl_head(abi::XEN_SYSCTL_DEBUG_KEYS),
            keys,
            |s, addr| {
                s.put(payload::DEBUG_KEYS_KEYS, &addr.to_ne_bytes())
                    .put(payload::DEBUG_KEYS_NR, &(keys.len() as u32).to_ne_bytes());
            },
        )
        .map(|_| ())
    }

    fn read_console(&self) -> Result<String, XenError> {
        let mut text = Vec::new();
        let mut index: Option<u32> = None;
        while text.len() < CONSOLE_MAX {
            let (s, data) = self.sysctl(
                HypercallOp::ReadConsole,
                self.sysctl_head(abi::XEN_SYSCTL_READCONSOLE),
                &[],
                |s, addr| {
                    s.put(payload::CONSOLE_CLEAR, &[0])
                        .put(payload::CONSOLE_INCREMENTAL, &[u8::from(index.is_some())])
                        .put(payload::CONSOLE_INDEX, &index.unwrap_or(0).to_ne_bytes())
                        .put(payload::CONSOLE_BUFFER, &addr.to_ne_bytes())
                        .put(
                            payload::CONSOLE_COUNT,
                            &(CONSOLE_CHUNK as u32).to_ne_bytes(),
                        );
                },
            )?;
            let count = (s.get_u32(payload::CONSOLE_COUNT) as usize).min(data.len());
            text.extend_from_slice(&data[..count]);
            if count < CONSOLE_CHUNK {
                break;
            }
            index = Some(s.get_u32(payload::CONSOLE_INDEX));
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    fn command_line(&self) -> Result<String, XenError> {
        let mut buf = vec![0u8; abi::XEN_COMMANDLINE_LEN];
        self.with_page(
            abi::HYPERVISOR_XEN_VERSION,
            abi::XENVER_COMMANDLINE,
            &mut buf,
        )
        .map_err(|errno| XenError::hypercall(HypercallOp::CommandLine, String::new(), errno))?;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

/// Where, in the hypercall page, a sysctl's own buffer starts (after the struct).
const SYSCTL_DATA: usize = 512;
/// The console is read in pieces of this size.
const CONSOLE_CHUNK: usize = PAGE - SYSCTL_DATA;
/// Never read more than this from the console ring (Xen's ring is 16 KiB to a few MiB).
const CONSOLE_MAX: usize = 8 << 20;

impl Privcmd {
    fn sysctl_head(&self, cmd: u32) -> abi::xen_sysctl {
        let mut s = abi::xen_sysctl::new(cmd);
        s.interface_version = self.abi.sysctl_version;
        s
    }

    /// One sysctl with `data` placed in the page after the struct (its guest address is
    /// given to `fill`); returns the struct and the page's data area after the call.
    fn sysctl(
        &self,
        op: HypercallOp,
        mut s: abi::xen_sysctl,
        data: &[u8],
        fill: impl FnOnce(&mut abi::xen_sysctl, u64),
    ) -> Result<(abi::xen_sysctl, Vec<u8>), XenError> {
        let mut page = self
            .page
            .lock()
            .map_err(|_| XenError::hypercall(op, "the hypercall page", Errno::EIO))?;
        let base = page.ptr as u64;
        fill(&mut s, base + SYSCTL_DATA as u64);
        let mut buf = vec![0u8; PAGE];
        let head = s.to_bytes();
        buf[..head.len()].copy_from_slice(&head);
        let n = data.len().min(CONSOLE_CHUNK);
        buf[SYSCTL_DATA..SYSCTL_DATA + n].copy_from_slice(&data[..n]);
        page.write(&buf);
        let r = self.raw(abi::HYPERVISOR_SYSCTL, [base, 0, 0, 0, 0]);
        page.read(&mut buf);
        r.map_err(|errno| XenError::hypercall(op, String::new(), errno))?;
        s.read_back(&buf[..head.len()]);
        Ok((s, buf[SYSCTL_DATA..].to_vec()))
    }
}

fn fill_bind(d: &mut abi::xen_domctl, bind: &PtIrq) {
    match *bind {
        PtIrq::Msi {
            pirq,
            gvec,
            gflags,
            gtable,
        } => {
            d.put_u32(payload::BIND_MACHINE_IRQ, pirq.0 as u32)
                .put_u32(payload::BIND_IRQ_TYPE, abi::PT_IRQ_TYPE_MSI)
                .put_u8(payload::BIND_MSI_GVEC, gvec)
                .put_u32(payload::BIND_MSI_GFLAGS, gflags)
                .put_u64(payload::BIND_MSI_GTABLE, gtable);
        }
        PtIrq::Pci {
            pirq,
            bus,
            device,
            intx,
        } => {
            d.put_u32(payload::BIND_MACHINE_IRQ, pirq.0 as u32)
                .put_u32(payload::BIND_IRQ_TYPE, abi::PT_IRQ_TYPE_PCI)
                .put_u8(payload::BIND_PCI_BUS, bus)
                .put_u8(payload::BIND_PCI_DEVICE, device)
                .put_u8(payload::BIND_PCI_INTX, intx);
        }
    }
}
