//! The Xen hypercall interface.
//!
//! This crate owns the [`Hypervisor`] trait (the physdev and domctl operations ptguard
//! needs), the Xen public ABI those operations use ([`abi`]: Xen 4.17 checked against Xen's
//! headers by `tests/layout.rs`, and what differs from 4.11 to 4.22 in
//! [`abi::ReleaseAbi`]), the real implementation over `/dev/xen/privcmd`
//! ([`privcmd::Privcmd`], the only `unsafe` code of the project), a [`record::Recorder`] that
//! counts calls and can turn mutating ones into a dry run, and errno results mapped to typed
//! errors naming the operation, the domain and the device. It holds no policy: it makes
//! exactly the calls it is asked to make.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod abi;
pub mod hypervisor;
pub mod privcmd;
pub mod record;

use std::fmt;
use std::path::PathBuf;

pub use hypervisor::{
    CallTarget, DomId, DomainHandle, DomainInfo, GuestIntx, HypercallOp, Hypervisor, IrqSource,
    MapPirq, MapSource, Pirq, PtIrq, XenVersion,
};

/// A positive errno value, named as Linux and Xen name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const ESRCH: Errno = Errno(3);
    pub const EIO: Errno = Errno(5);
    pub const ENXIO: Errno = Errno(6);
    pub const E2BIG: Errno = Errno(7);
    pub const EBADF: Errno = Errno(9);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EACCES: Errno = Errno(13);
    pub const EFAULT: Errno = Errno(14);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const EXDEV: Errno = Errno(18);
    pub const ENODEV: Errno = Errno(19);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOSPC: Errno = Errno(28);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENODATA: Errno = Errno(61);
    pub const EOPNOTSUPP: Errno = Errno(95);
    pub const EALREADY: Errno = Errno(114);

    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            5 => "EIO",
            6 => "ENXIO",
            7 => "E2BIG",
            9 => "EBADF",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            18 => "EXDEV",
            19 => "ENODEV",
            22 => "EINVAL",
            28 => "ENOSPC",
            38 => "ENOSYS",
            61 => "ENODATA",
            95 => "EOPNOTSUPP",
            114 => "EALREADY",
            _ => "errno",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-{} ({})", self.name(), self.0)
    }
}

/// Errors of the hypercall layer.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// Xen answered a hypercall with a negative errno.
    #[error("{op} ({target}) failed: {errno}")]
    Hypercall {
        op: HypercallOp,
        /// Domain, device and pirq the call was about, e.g. `d5 0000:03:00.0 pirq 1023`.
        target: String,
        errno: Errno,
    },
    /// This machine does not run on Xen (or privcmd is not available to us).
    #[error("{path} is not available ({source}): this command needs a Xen dom0 with the xen-privcmd driver loaded; run it as root on dom0, or use --host sim:DIR")]
    NoXen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The running hypervisor's domctl interface is not the one this build speaks.
    #[error(
        "Xen {found} is not supported: ptguard speaks the domctl and sysctl interfaces of Xen 4.{oldest} to 4.{newest} (the newest it knows is 4.{newest})",
        oldest = abi::ReleaseAbi::oldest().minor,
        newest = abi::ReleaseAbi::newest().minor
    )]
    Unsupported { found: XenVersion },
}

impl XenError {
    /// The errno of a failed hypercall.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XenError::Hypercall { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn hypercall(op: HypercallOp, target: impl Into<String>, errno: Errno) -> XenError {
        XenError::Hypercall {
            op,
            target: target.into(),
            errno,
        }
    }
}
