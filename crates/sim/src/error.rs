//! What a simulated toolstack or device model step fails with, and why an interrupt does not
//! reach its guest.

use pci::{PciError, Sbdf};
use xen::{DomId, Errno, XenError};

/// A step of the simulated libxl or device model that failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Xen(#[from] XenError),
    #[error(transparent)]
    Pci(#[from] PciError),
    /// pciback or the domain builder refused (`what` names the call).
    #[error("{what}: {errno}")]
    Refused { what: &'static str, errno: Errno },
    /// The broker (ptguard, or another) refused a device model's request, in its words.
    #[error("{0}")]
    Broker(String),
    #[error("{sbdf} has no MSI-X")]
    NoMsix { sbdf: Sbdf },
    #[error("device model of {domid} is not running")]
    DeviceModelDead { domid: DomId },
    /// qemu did not finish `device_del` and libxl was not told to force.
    #[error("{sbdf}: QMP device_del timed out after 10 s; detach aborted")]
    DeviceDelTimedOut { sbdf: Sbdf },
}

impl SimError {
    /// A refusal of `what` with `errno`.
    pub fn refused(what: &'static str) -> impl FnOnce(Errno) -> SimError {
        move |errno| SimError::Refused { what, errno }
    }
}

/// Why a device's interrupt does not reach the guest that owns it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    #[error("no such device")]
    NoDevice,
    #[error("the device has no INTx line")]
    NoIntxLine,
    #[error("owner domain is gone")]
    OwnerGone,
    #[error("GSI {gsi} is not mapped in {owner}")]
    GsiNotMapped { gsi: u32, owner: DomId },
    #[error("GSI {gsi} (pirq {pirq} of {owner}) is not bound to guest device {bus:02x}:{device:02x} INT{}", (b'A' + intx) as char)]
    IntxNotBound {
        gsi: u32,
        pirq: i32,
        owner: DomId,
        bus: u8,
        device: u8,
        intx: u8,
    },
    /// The device itself does not signal it (Enable clear, a mask set, decoding off...).
    #[error("{0}")]
    Blocked(&'static str),
    #[error("no pirq of {owner} is mapped to entry {entry}")]
    EntryNotMapped { owner: DomId, entry: u16 },
    #[error("pirq vanished")]
    PirqVanished,
    #[error("pirq {pirq} is not bound in {owner}")]
    PirqNotBound { pirq: i32, owner: DomId },
    #[error("{owner} is not running")]
    OwnerNotRunning { owner: DomId },
}
