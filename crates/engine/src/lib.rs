//! ptguard's core: the IRQ binding ledger, the broker, the device lifecycle with its safe
//! teardown, crash recovery, and companion mode beside a stock toolstack.
//!
//! This crate owns the policy of `docs/design.md`: what is recorded in the ledger
//! ([`ledger`]), when, and in which order hypercalls, sysfs writes and Xenstore transactions
//! happen ([`Engine`]); the sweep of a finished domain's pirqs ([`sweep`]) and the adoption
//! of devices a toolstack gave ([`companion`]); a stock device model's four libxenctrl calls
//! brokered one at a time ([`stepwise`]); the release of what a dead device model left
//! bound while its guest runs ([`orphaned`]). It reaches the world only through the `xenstore` client, the `xen`
//! [`Hypervisor`] trait and the `pci` [`PciHost`] trait (bundled as a [`Platform`]), so the
//! same code runs on a real dom0 and on the simulated host, and a crash can be injected
//! before any step. It must not reach around those traits (no direct file, device or socket
//! I/O of its own).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bind;
mod calls;
pub mod companion;
pub mod crash;
pub mod credential;
pub mod doctor;
pub mod engine;
pub mod ledger;
mod lifecycle;
pub mod liveness;
pub mod notice;
pub mod orphaned;
pub mod plan;
pub mod quarantine;
pub mod reconcile;
pub mod refusal;
pub mod stepwise;
mod store;
pub mod sweep;
mod teardown;
pub mod xen_dump;

use pci::{PciError, PciHost, Sbdf};
use xen::{DomId, Hypervisor, XenError};
use xenstore::XenstoreError;

pub use crash::{CrashPoint, CrashPoints, CrashStep};
pub use credential::{AssignmentToken, Credential, TokenDigest};
pub use engine::{BindKind, BindRequest, Engine, Outcome};
pub use ledger::{Binding, BindingKey, BindingState, DeviceRecord, DeviceState, Step};
pub use liveness::Liveness;
pub use notice::{CureResult, Notice, NoticeKind, NoticeLevel, NoticeSink};
pub use quarantine::{QuarantineReason, VerifyProblem};
pub use reconcile::{Decision, Trigger};
pub use refusal::{ProtectedDomains, Refusal};
pub use stepwise::{Acting, DeviceModelCall};

/// The host ptguard manages: hypervisor and PCI devices (Xenstore is the engine's own
/// client). Nothing else: pciback reacts to the backend nodes the engine writes, on a real
/// host and on the simulated one alike.
pub trait Platform: Send + Sync {
    fn hypervisor(&self) -> &dyn Hypervisor;
    fn pci(&self) -> &dyn PciHost;
    /// The memory map a PV domain's builder gave it. Xen answers `XENMEM_memory_map` only
    /// for the calling domain, so this is the builder's own record (libxl's saved domain
    /// configuration); [`PvMemoryMap::Unknown`] where there is none.
    fn pv_memory_map(&self, _domain: &xen::DomainInfo) -> PvMemoryMap {
        PvMemoryMap::Unknown
    }
}

/// What a PV domain's memory map holds, as far as its guest's DMA is concerned. Linux 6.5
/// and later set up swiotlb-xen in a PV guest only when the map Xen gives it has a
/// reserved region (`xen_pv_pci_possible`, arch/x86/xen/setup.c); earlier kernels also set
/// it up when pcifront connected. Without it the guest hands devices pseudo-physical
/// addresses, and the IOMMU, which maps a PV domain by machine frame, refuses every DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvMemoryMap {
    /// The host's map, holes and reserved regions included (libxl's `e820_host`, which xl
    /// turns on for a PV guest with `pci=[...]`).
    HostRegions,
    /// RAM only: what libxl builds for a PV guest without `pci=[...]` or `e820_host=1`.
    RamOnly,
    /// No builder's record to read (another toolstack, or none kept).
    Unknown,
}

/// Everything that can go wrong in the engine; each names the device, domain and step.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Xenstore(#[from] XenstoreError),
    #[error(transparent)]
    Xen(#[from] XenError),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("{sbdf}: not managed by ptguard (add it with `ptguard assignable-add {sbdf}`)")]
    UnknownDevice { sbdf: Sbdf },
    #[error("{sbdf}: no such PCI device on this host (see `ptguard lspci`)")]
    NoSuchDevice { sbdf: Sbdf },
    #[error("{sbdf}: is {state}, not assignable{hint}")]
    NotAssignable {
        sbdf: Sbdf,
        state: DeviceState,
        hint: &'static str,
    },
    #[error("{sbdf}: already attached to {owner} (detach it first: `ptguard detach {sbdf}`)")]
    AttachedElsewhere { sbdf: Sbdf, owner: DomId },
    #[error("{domid}: no such domain")]
    UnknownDomain { domid: DomId },
    #[error("{domid} is {liveness} and will not run again; give the device to a domain that runs (or is paused or suspended)")]
    DomainFinished { domid: DomId, liveness: Liveness },
    #[error("{domid} is {liveness} and may still run: its pirqs are its own and are never swept; sweep only a domain that is dying or shut down for good")]
    SweepLiveDomain { domid: DomId, liveness: Liveness },
    #[error("{sbdf}: already managed by ptguard (state {state})")]
    AlreadyManaged { sbdf: Sbdf, state: DeviceState },
    #[error("ledger entry {path} is corrupt ({reason}): {value:?}; fix or remove it by hand (`xenstore-rm {path}`) after checking the device with `ptguard doctor`")]
    LedgerCorrupt {
        path: String,
        value: String,
        reason: String,
    },
    #[error("broker refused {domid}'s request for {sbdf}: {refusal} [{}]", refusal.code())]
    Refused {
        sbdf: Sbdf,
        domid: DomId,
        refusal: Refusal,
    },
    /// A device model named a pirq no device attached to its domain holds in the ledger.
    #[error("broker refused {domid}'s request for pirq {}: {refusal} [{}]", pirq.0, refusal.code())]
    RefusedPirq {
        domid: DomId,
        pirq: xen::Pirq,
        refusal: Refusal,
    },
    #[error("{sbdf}: pciback has not released {domid}'s PCI backend {waited:?} after its removal (/sys/bus/xen-backend/devices/pci-{}-0 is still there); the teardown stops before any reset and resumes from this step on the next `ptguard watch` round or command", domid.0)]
    PcibackHoldsBackend {
        sbdf: Sbdf,
        domid: DomId,
        waited: std::time::Duration,
    },
    #[error("{sbdf}: {domid}'s PCI backend also holds {others}, and {domid} has no pcifront connected to answer the Reconfiguring handshake (an HVM guest never has one; a PV guest only once its kernel has loaded it): pciback would keep exporting {sbdf} to it until the whole backend goes, and reset it then, under whichever guest has it next; nothing was changed. Shut {domid} down or destroy it: its teardown removes the whole backend, and pciback gives every device back at once")]
    SharedBackendNoFrontend {
        sbdf: Sbdf,
        domid: DomId,
        others: String,
    },
    #[error("{sbdf}: {domid} is a PV guest whose memory map has no reserved region (built without `pci=[...]` or `e820_host = 1`): Linux 6.5 and later then never set up swiotlb-xen, and every DMA of a device given to it misses the IOMMU (Xen logs `DMAR: ... PTE Read access is not set`); nothing was changed. Create the guest with `e820_host = 1` in its xl config (or list the device in `pci = [...]`)")]
    PvMemoryMapRamOnly { sbdf: Sbdf, domid: DomId },
    #[error("{sbdf}: {domid}'s PCI backend is already set up (state {state}) and {domid}'s pcifront has not connected: pciback would export {sbdf} to no one, and the Reconfiguring that adds a device to a running guest would leave pcifront unconnected; nothing was changed. Give a PV guest every device before it is created (xl's pci=[...]), or attach this one once the guest has booted")]
    PvBackendSetUp {
        sbdf: Sbdf,
        domid: DomId,
        state: String,
    },
    #[error("{sbdf}: pciback did not finish {domid}'s Reconfiguring handshake in {waited:?} (backend state {state}, the device's state-N Closing); it still exports {sbdf} to {domid}. The teardown stops before any reset and resumes from this step on the next `ptguard watch` round or command")]
    PcibackReconfigureStalled {
        sbdf: Sbdf,
        domid: DomId,
        state: String,
        waited: std::time::Duration,
    },
    #[error("{domid} is a protected domain (dom0, dom_io, dom_xen, a reserved id or one given with --protect): ptguard does not {action} it")]
    ProtectedDomain { domid: DomId, action: &'static str },
    #[error("{sbdf}: Xen says a guest still holds the device (test_assign_device: {errno}) although the ledger says {state}; nothing was changed. Detach it from that guest first (`xl pci-detach`, or `ptguard detach` if ptguard attached it); `ptguard doctor` shows who holds it")]
    HeldByGuest {
        sbdf: Sbdf,
        state: DeviceState,
        errno: xen::Errno,
    },
    #[error("{sbdf}: {domid} has no IOMMU context, so Xen cannot give it devices (XEN_DOMCTL_assign_device: -EOPNOTSUPP); create the domain with passthrough=\"enabled\" (or a pci=[...] list) in its xl config; nothing was granted")]
    NoIommuContext { sbdf: Sbdf, domid: DomId },
    #[error("{sbdf}: Xen says no guest holds it; give it to one with `ptguard assignable-add {sbdf}` and `ptguard attach {sbdf} DOMID` instead")]
    NotHeld { sbdf: Sbdf },
    #[error("{sbdf}: Xen says {holder} holds it, not {named} (its `Q` dump); nothing was recorded. Name the holder (`ptguard adopt {sbdf} {}`), and if a toolstack backend names {named}, it is stale: `ptguard doctor` shows both", holder.0)]
    HeldByAnother {
        sbdf: Sbdf,
        named: DomId,
        holder: DomId,
    },
    #[error("{sbdf}: Xen's `Q` dump does not name the device's holder (the console ring could not be read, or lost the dump), so {named} cannot be proven to hold it; nothing was recorded. Retry; `xl debug-keys Q; xl dmesg | tail` shows the dump")]
    HolderUnproven { sbdf: Sbdf, named: DomId },
    #[error("{sbdf}: bound to {}, not pciback: Xen's MSI-X state is pciback's to reset (`ptguard assignable-add {sbdf}` seizes it)", driver.as_deref().unwrap_or("no driver"))]
    NotInPciback { sbdf: Sbdf, driver: Option<String> },
    #[error("{sbdf}: prepare_msix answered -EBUSY: MSI-X vectors are still mapped to pirqs of some domain (a zombie domain, or a device model outside ptguard); they go only with that domain — see `xl list` and `ptguard doctor`")]
    VectorsStillMapped { sbdf: Sbdf },
    #[error("{sbdf}: MSI-X Function Mask is still set after {}; unbind it from pciback and bind it again (`ptguard assignable-remove {sbdf}` then `ptguard assignable-add {sbdf}`)", done.join(", "))]
    StillMasked { sbdf: Sbdf, done: Vec<String> },
    #[error("{sbdf}: {domid} has no pirq left for another MSI vector (PHYSDEVOP_map_pirq: -ENOSPC): a guest gets nr_irqs_gsi + extra_guest_irqs pirqs, 32 for MSI by default; raise `extra_guest_irqs=` on Xen's command line (Xen 4.19 and later bound it to 32768 pirqs in all), or enable fewer vectors")]
    PirqBudgetExhausted { sbdf: Sbdf, domid: DomId },
    #[error("{sbdf}: the epoch in the ledger ({epoch}) cannot grow any further; the entry was edited by hand — check it with `ptguard show {sbdf}`")]
    EpochExhausted { sbdf: Sbdf, epoch: u64 },
    /// Injected by the explorer: the process "died" here.
    #[error("crash injected at {at}")]
    Crashed { at: CrashPoint },
}

impl EngineError {
    pub fn is_crash(&self) -> bool {
        matches!(self, EngineError::Crashed { .. })
    }
}
