//! [`SimHost`]: the simulated host behind the `Hypervisor` and `PciHost` traits.
//!
//! Every mutation is a [`SimOp`] applied to the [`World`] under one lock and appended to a
//! journal, so a profile plus a journal replays a host exactly (`--host sim:DIR` keeps its
//! state that way) and every operation is counted and, when tracing, printed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use pci::host::{PciHost, Resource, PCIBACK};
use pci::{PciError, Sbdf};
use serde::{Deserialize, Serialize};
use xen::{
    DomId, DomainHandle, DomainInfo, Errno, HypercallOp, Hypervisor, MapPirq, Pirq, PtIrq,
    XenError, XenVersion,
};

use crate::device::DeviceSpec;
use crate::profile::Profile;
use crate::world::{DomainEvent, DomainState, World};

/// Receives `@introduceDomain` / `@releaseDomain` as the simulated hypervisor fires them.
pub trait DomainEventSink: Send + Sync {
    fn introduced(&self, domid: DomId);
    fn released(&self, domid: DomId);
}

impl DomainEventSink for xenstore::server::ServerHandle {
    fn introduced(&self, domid: DomId) {
        let _ = self.introduce_domain(u32::from(domid.0));
    }
    fn released(&self, domid: DomId) {
        let _ = self.release_domain(u32::from(domid.0));
    }
}

/// One mutation of the simulated host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SimOp {
    AddDevice {
        spec: DeviceSpec,
    },
    CreateDomain {
        name: String,
        hvm: bool,
        /// Created with an IOMMU context (xl's `passthrough=` or `pci=`); without one Xen
        /// refuses to assign it devices.
        #[serde(default = "yes")]
        passthrough: bool,
        /// A PV domain's memory map carries the host's reserved regions (libxl's
        /// `e820_host`, on for a PV guest xl creates with `pci=[...]`).
        #[serde(default = "yes")]
        host_memory_map: bool,
        /// A chosen domid (Xen reuses ids); none: the next free one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domid: Option<DomId>,
        /// A handle the toolstack chose (xl's `uuid=`; xenopsd gives every boot of a VM
        /// the VM's UUID); none: a fresh one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handle: Option<DomainHandle>,
    },
    Unpause {
        domid: DomId,
    },
    Pause {
        domid: DomId,
    },
    Shutdown {
        domid: DomId,
        /// `SHUTDOWN_*` (default 1, reboot).
        #[serde(default = "reboot")]
        reason: u8,
    },
    Destroy {
        domid: DomId,
    },
    HoldReference {
        domid: DomId,
    },
    DropReference {
        domid: DomId,
    },
    MapPirq {
        req: MapPirq,
    },
    UnmapPirq {
        domid: DomId,
        pirq: Pirq,
    },
    PrepareMsix {
        sbdf: Sbdf,
    },
    ReleaseMsix {
        sbdf: Sbdf,
    },
    BindPtIrq {
        domid: DomId,
        bind: PtIrq,
    },
    UnbindPtIrq {
        domid: DomId,
        bind: PtIrq,
    },
    AssignDevice {
        domid: DomId,
        sbdf: Sbdf,
        flags: u32,
    },
    DeassignDevice {
        domid: DomId,
        sbdf: Sbdf,
    },
    IomemPermission {
        domid: DomId,
        first: u64,
        nr: u64,
        allow: bool,
    },
    IoportPermission {
        domid: DomId,
        first: u32,
        nr: u32,
        allow: bool,
    },
    IrqPermission {
        domid: DomId,
        pirq: Pirq,
        allow: bool,
    },
    ConfigWrite {
        sbdf: Sbdf,
        offset: u16,
        data: Vec<u8>,
    },
    Reset {
        sbdf: Sbdf,
    },
    DriverBind {
        driver: String,
        sbdf: Sbdf,
    },
    DriverUnbind {
        driver: String,
        sbdf: Sbdf,
    },
    DriverOverride {
        sbdf: Sbdf,
        driver: Option<String>,
    },
    NewSlot {
        sbdf: Sbdf,
    },
    RemoveSlot {
        sbdf: Sbdf,
    },
    Permissive {
        sbdf: Sbdf,
    },
    AllowInterruptControl {
        sbdf: Sbdf,
    },
    PcibackExport {
        sbdf: Sbdf,
        domid: DomId,
    },
    PcibackPut {
        sbdf: Sbdf,
    },
    /// The backend nodes went away; pciback's xenbus watch will put the device back when
    /// its worker next runs ([`SimHost::settle`]), not inside the caller's step.
    PcibackPutLater {
        sbdf: Sbdf,
    },
    /// Time passes in dom0: pciback's pending puts run.
    Settle,
    /// pciback's xenbus watch read domain `domid`'s PCI backend from Xenstore: the devices
    /// it lists (`dev-N`), and whether the backend exists at all. Devices newly listed are
    /// exported; a device it exported and no longer lists is put back at once (the backend
    /// stays), or later by pciback's worker (the whole backend went). The journal keeps
    /// what was read, so a replay does not need Xenstore.
    XenbusBackend {
        domid: DomId,
        listed: Vec<Sbdf>,
        present: bool,
        /// Listed devices leaving through the Reconfiguring handshake, which the guest's
        /// pcifront answered: pciback gives them back now.
        #[serde(default)]
        closing: Vec<Sbdf>,
        /// Listed devices a hot-add brings in through the same handshake (`state-N`
        /// Initialising): pciback exports them now. Other devices listed after the
        /// backend was set up are exported to no one.
        #[serde(default)]
        adding: Vec<Sbdf>,
    },
    PvEnableMsix {
        sbdf: Sbdf,
        nvec: u16,
    },
    PvBindEvtchn {
        domid: DomId,
        pirq: Pirq,
    },
    GuestTableWrite {
        domid: DomId,
        sbdf: Sbdf,
        entry: u16,
        masked: bool,
    },
}

impl SimOp {
    fn hypercall(&self) -> Option<HypercallOp> {
        Some(match self {
            SimOp::MapPirq { .. } => HypercallOp::MapPirq,
            SimOp::UnmapPirq { .. } => HypercallOp::UnmapPirq,
            SimOp::PrepareMsix { .. } => HypercallOp::PrepareMsix,
            SimOp::ReleaseMsix { .. } => HypercallOp::ReleaseMsix,
            SimOp::BindPtIrq { .. } => HypercallOp::BindPtIrq,
            SimOp::UnbindPtIrq { .. } => HypercallOp::UnbindPtIrq,
            SimOp::AssignDevice { .. } => HypercallOp::AssignDevice,
            SimOp::DeassignDevice { .. } => HypercallOp::DeassignDevice,
            SimOp::IomemPermission { .. } => HypercallOp::IomemPermission,
            SimOp::IoportPermission { .. } => HypercallOp::IoportPermission,
            SimOp::IrqPermission { .. } => HypercallOp::IrqPermission,
            _ => return None,
        })
    }
    fn is_sysfs_write(&self) -> bool {
        matches!(
            self,
            SimOp::ConfigWrite { .. }
                | SimOp::Reset { .. }
                | SimOp::DriverBind { .. }
                | SimOp::DriverUnbind { .. }
                | SimOp::DriverOverride { .. }
                | SimOp::NewSlot { .. }
                | SimOp::RemoveSlot { .. }
                | SimOp::Permissive { .. }
                | SimOp::AllowInterruptControl { .. }
        )
    }
}

/// What an applied op returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimValue {
    Unit,
    Pirq(Pirq),
    Pirqs(Vec<Pirq>),
    Domain(DomId),
}

struct Inner {
    world: World,
    journal: Vec<SimOp>,
}

/// The simulated host. Cloning shares it.
#[derive(Clone)]
pub struct SimHost {
    inner: Arc<Mutex<Inner>>,
    sink: Option<Arc<dyn DomainEventSink>>,
}

impl SimHost {
    pub fn new(profile: Profile) -> SimHost {
        SimHost {
            inner: Arc::new(Mutex::new(Inner {
                world: World::new(profile),
                journal: Vec::new(),
            })),
            sink: None,
        }
    }

    /// Rebuilds a host by replaying a journal (events are not re-fired).
    pub fn replay(profile: Profile, journal: &[SimOp]) -> SimHost {
        let host = SimHost::new(profile);
        for op in journal {
            let _ = host.apply(op.clone());
        }
        host
    }

    /// Sends domain events to `sink` from now on.
    pub fn with_sink(mut self, sink: Arc<dyn DomainEventSink>) -> SimHost {
        self.sink = Some(sink);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a simulator bug; the state is still usable for
        // reporting, so take it over rather than propagate the poison.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the world.
    pub fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&self.lock().world)
    }

    /// A copy of the world.
    pub fn snapshot(&self) -> World {
        self.lock().world.clone()
    }

    pub fn journal(&self) -> Vec<SimOp> {
        self.lock().journal.clone()
    }

    pub fn profile(&self) -> Profile {
        self.lock().world.profile
    }

    /// Starts (or stops) keeping a trace of every operation.
    pub fn set_tracing(&self, on: bool) {
        self.lock().world.trace = on.then(Vec::new);
    }

    pub fn take_trace(&self) -> Vec<String> {
        self.lock()
            .world
            .trace
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn counters(&self) -> crate::world::Counters {
        self.lock().world.counters.clone()
    }

    pub fn console(&self) -> Vec<String> {
        self.lock().world.console.clone()
    }

    /// Applies one mutation.
    pub fn apply(&self, op: SimOp) -> Result<SimValue, Errno> {
        let (result, events) = {
            let mut g = self.lock();
            g.journal.push(op.clone());
            let w = &mut g.world;
            if let Some(h) = op.hypercall() {
                w.count(h);
            }
            if op.is_sysfs_write() {
                w.counters.sysfs_writes += 1;
            }
            if w.trace.is_some() {
                w.note(format!("{op:?}"));
            }
            let result = apply_to(w, op);
            if let Err(e) = &result {
                w.note(format!("  -> {e}"));
            }
            (result, std::mem::take(&mut w.events))
        };
        if let Some(sink) = &self.sink {
            for e in events {
                match e {
                    DomainEvent::Introduced(d) => sink.introduced(d),
                    DomainEvent::Released(d) => sink.released(d),
                }
            }
        }
        result
    }

    fn unit(&self, op: SimOp) -> Result<(), Errno> {
        self.apply(op).map(|_| ())
    }

    pub fn add_device(&self, spec: DeviceSpec) {
        let _ = self.apply(SimOp::AddDevice { spec });
    }

    pub fn create_domain(&self, name: &str, hvm: bool) -> DomId {
        self.create_domain_with(name, hvm, true)
    }

    /// A domain created with (`passthrough`) or without an IOMMU context; a PV one with
    /// the host's memory map, as xl builds a PV guest given devices in `pci=[...]`.
    pub fn create_domain_with(&self, name: &str, hvm: bool, passthrough: bool) -> DomId {
        self.create_domain_mapped(name, hvm, passthrough, true)
    }

    /// As [`SimHost::create_domain_with`], choosing whether a PV domain's memory map has
    /// the host's reserved regions (`host_memory_map`, libxl's `e820_host`): xl without
    /// `pci=[...]` or `e820_host=1` builds it with RAM only.
    pub fn create_domain_mapped(
        &self,
        name: &str,
        hvm: bool,
        passthrough: bool,
        host_memory_map: bool,
    ) -> DomId {
        match self.apply(SimOp::CreateDomain {
            name: name.into(),
            hvm,
            passthrough,
            host_memory_map,
            domid: None,
            handle: None,
        }) {
            Ok(SimValue::Domain(d)) => d,
            _ => DomId::DOM0,
        }
    }

    /// A domain created with a chosen domid, e.g. one a destroyed domain had (Xen reuses
    /// ids): `-EEXIST` while that id is in use.
    pub fn create_domain_at(&self, name: &str, hvm: bool, domid: DomId) -> Result<DomId, Errno> {
        self.create_domain_as(name, hvm, domid, None)
    }

    /// As [`SimHost::create_domain_at`], with the handle the toolstack chose (`None`: a
    /// fresh one): a toolstack that boots the same VM again under its UUID repeats it.
    pub fn create_domain_as(
        &self,
        name: &str,
        hvm: bool,
        domid: DomId,
        handle: Option<DomainHandle>,
    ) -> Result<DomId, Errno> {
        match self.apply(SimOp::CreateDomain {
            name: name.into(),
            hvm,
            passthrough: true,
            host_memory_map: true,
            domid: Some(domid),
            handle,
        })? {
            SimValue::Domain(d) => Ok(d),
            _ => Err(Errno::EINVAL),
        }
    }
    pub fn unpause(&self, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::Unpause { domid })
    }
    pub fn pause(&self, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::Pause { domid })
    }
    /// The guest shuts down to be rebooted (`SHUTDOWN_reboot`).
    pub fn shutdown(&self, domid: DomId) -> Result<(), Errno> {
        self.shutdown_for(domid, 1)
    }
    /// The guest shuts down with `SHUTDOWN_*` code `reason` (2: suspend, it may resume).
    pub fn shutdown_for(&self, domid: DomId, reason: u8) -> Result<(), Errno> {
        self.unit(SimOp::Shutdown { domid, reason })
    }
    pub fn destroy_domain(&self, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::Destroy { domid })
    }
    pub fn hold_reference(&self, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::HoldReference { domid })
    }
    pub fn drop_reference(&self, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::DropReference { domid })
    }
    pub fn pciback_export(&self, sbdf: Sbdf, domid: DomId) -> Result<(), Errno> {
        self.unit(SimOp::PcibackExport { sbdf, domid })
    }
    pub fn pciback_put(&self, sbdf: Sbdf) -> Result<(), Errno> {
        self.unit(SimOp::PcibackPut { sbdf })
    }
    /// pciback will give `sbdf` back asynchronously (its reaction to a removed backend).
    pub fn pciback_put_later(&self, sbdf: Sbdf) -> Result<(), Errno> {
        self.unit(SimOp::PcibackPutLater { sbdf })
    }
    /// pciback's reaction to domain `domid`'s PCI backend as Xenstore holds it now
    /// ([`SimOp::XenbusBackend`]); journaled only when it changes something.
    pub fn xenbus_backend(
        &self,
        domid: DomId,
        listed: Vec<Sbdf>,
        present: bool,
        closing: Vec<Sbdf>,
        adding: Vec<Sbdf>,
    ) -> Result<(), Errno> {
        let unchanged = self.with_world(|w| match w.pciback.xenbus.get(&domid) {
            Some(h) => {
                present
                    && !adding
                        .iter()
                        .any(|s| !h.contains(s) && w.pciback_exportable(*s).is_ok())
                    && !closing.iter().any(|s| h.contains(s))
            }
            // Nothing exported yet: a change only if some listed device can be, or is
            // exported to this domain already (libxl's attach exported it).
            None => listed
                .iter()
                .all(|s| w.pciback_exportable(*s).is_err() && w.exported_to(*s) != Some(domid)),
        });
        if unchanged {
            return Ok(());
        }
        self.unit(SimOp::XenbusBackend {
            domid,
            listed,
            present,
            closing,
            adding,
        })
    }
    /// Lets dom0's asynchronous work (pciback's pending puts) run; true if any did.
    pub fn settle(&self) -> bool {
        if self.with_world(|w| w.pciback.pending_puts.is_empty()) {
            return false;
        }
        self.unit(SimOp::Settle).is_ok()
    }
    pub fn pv_enable_msix(&self, sbdf: Sbdf, nvec: u16) -> Result<Vec<Pirq>, Errno> {
        match self.apply(SimOp::PvEnableMsix { sbdf, nvec })? {
            SimValue::Pirqs(p) => Ok(p),
            _ => Ok(Vec::new()),
        }
    }
    pub fn pv_bind_evtchn(&self, domid: DomId, pirq: Pirq) -> Result<(), Errno> {
        self.unit(SimOp::PvBindEvtchn { domid, pirq })
    }

    /// The guest writes a table entry's mask bit through its BAR mapping.
    pub fn guest_table_write(
        &self,
        domid: DomId,
        sbdf: Sbdf,
        entry: u16,
        masked: bool,
    ) -> Result<(), Errno> {
        self.unit(SimOp::GuestTableWrite {
            domid,
            sbdf,
            entry,
            masked,
        })
    }

    /// The device signals MSI-X entry `entry`.
    pub fn raise(&self, sbdf: Sbdf, entry: u16) -> Result<(DomId, Pirq), crate::Undelivered> {
        self.lock().world.raise(sbdf, entry)
    }

    /// Whether a domain's memory map carries the host's reserved regions (`None`: no such
    /// domain); an HVM domain's firmware always lays out its own.
    pub fn host_memory_map(&self, domid: DomId) -> Option<bool> {
        self.with_world(|w| w.domains.get(&domid).map(|d| d.host_memory_map))
    }

    /// Whether `domid` exists and is not dying.
    pub fn domain_alive(&self, domid: DomId) -> bool {
        self.with_world(|w| w.domains.get(&domid).is_some_and(|d| !d.dying))
    }
}

fn reboot() -> u8 {
    1
}

fn apply_to(w: &mut World, op: SimOp) -> Result<SimValue, Errno> {
    use SimValue::Unit;
    match op {
        SimOp::AddDevice { spec } => {
            w.add_device(spec);
            Ok(Unit)
        }
        SimOp::CreateDomain {
            name,
            hvm,
            passthrough,
            host_memory_map,
            domid,
            handle,
        } => w
            .create_domain(&name, hvm, passthrough, domid, handle)
            .inspect(|d| {
                if let Some(dom) = w.domains.get_mut(d) {
                    dom.host_memory_map = host_memory_map || hvm;
                }
            })
            .map(SimValue::Domain),
        SimOp::Unpause { domid } => w.unpause(domid).map(|_| Unit),
        SimOp::Pause { domid } => w.pause(domid).map(|_| Unit),
        SimOp::Shutdown { domid, reason } => w.shutdown(domid, reason).map(|_| Unit),
        SimOp::Destroy { domid } => w.destroy_domain(domid).map(|_| Unit),
        SimOp::HoldReference { domid } => w.hold_reference(domid).map(|_| Unit),
        SimOp::DropReference { domid } => w.drop_reference(domid).map(|_| Unit),
        SimOp::MapPirq { req } => w.map_pirq(&req).map(SimValue::Pirq),
        SimOp::UnmapPirq { domid, pirq } => w.unmap_pirq(domid, pirq).map(|_| Unit),
        SimOp::PrepareMsix { sbdf } => w.prepare_msix(sbdf).map(|_| Unit),
        SimOp::ReleaseMsix { sbdf } => w.release_msix(sbdf).map(|_| Unit),
        SimOp::BindPtIrq { domid, bind } => w.bind_pt_irq(domid, &bind).map(|_| Unit),
        SimOp::UnbindPtIrq { domid, bind } => w.unbind_pt_irq(domid, &bind).map(|_| Unit),
        SimOp::AssignDevice { domid, sbdf, flags } => {
            w.assign_device(domid, sbdf, flags).map(|_| Unit)
        }
        SimOp::DeassignDevice { domid, sbdf } => w.deassign_device(domid, sbdf).map(|_| Unit),
        SimOp::IomemPermission {
            domid,
            first,
            nr,
            allow,
        } => w.iomem_permission(domid, first, nr, allow).map(|_| Unit),
        SimOp::IoportPermission {
            domid,
            first,
            nr,
            allow,
        } => w.ioport_permission(domid, first, nr, allow).map(|_| Unit),
        SimOp::IrqPermission { domid, pirq, allow } => {
            w.irq_permission(domid, pirq, allow).map(|_| Unit)
        }
        SimOp::ConfigWrite { sbdf, offset, data } => {
            w.dom0_config_write(sbdf, offset, &data).map(|_| Unit)
        }
        SimOp::Reset { sbdf } => w.sysfs_reset(sbdf).map(|_| Unit),
        SimOp::DriverBind { driver, sbdf } => {
            if driver == PCIBACK {
                w.pciback_seize(sbdf).map(|_| Unit)
            } else {
                let dev = w.devices.get_mut(&sbdf).ok_or(Errno::ENODEV)?;
                if dev.linux.driver.is_some() {
                    return Err(Errno::EBUSY);
                }
                dev.linux.driver = Some(driver);
                dev.linux.enable_cnt = 1;
                let cmd = dev.hw.command() | pci::config::regs::COMMAND_MEMORY;
                dev.hw.set_command(cmd);
                Ok(Unit)
            }
        }
        SimOp::DriverUnbind { driver, sbdf } => {
            let current = w
                .devices
                .get(&sbdf)
                .ok_or(Errno::ENODEV)?
                .linux
                .driver
                .clone();
            if current.as_deref() != Some(driver.as_str()) {
                return Err(Errno::ENODEV);
            }
            if driver == PCIBACK {
                w.pciback_unseize(sbdf).map(|_| Unit)
            } else {
                if let Some(dev) = w.devices.get_mut(&sbdf) {
                    dev.linux.driver = None;
                    dev.linux.enable_cnt = 0;
                }
                Ok(Unit)
            }
        }
        SimOp::DriverOverride { sbdf, driver } => {
            let dev = w.devices.get_mut(&sbdf).ok_or(Errno::ENODEV)?;
            dev.linux.driver_override = driver;
            Ok(Unit)
        }
        SimOp::NewSlot { sbdf } => {
            w.pciback.slots.push(sbdf);
            Ok(Unit)
        }
        SimOp::RemoveSlot { sbdf } => {
            w.pciback.slots.retain(|s| *s != sbdf);
            Ok(Unit)
        }
        SimOp::Permissive { sbdf } => {
            if w.devices.get(&sbdf).and_then(|d| d.linux.driver.as_deref()) != Some(PCIBACK) {
                return Err(Errno::ENODEV);
            }
            w.pciback.permissive.insert(sbdf);
            Ok(Unit)
        }
        SimOp::AllowInterruptControl { sbdf } => {
            if w.devices.get(&sbdf).and_then(|d| d.linux.driver.as_deref()) != Some(PCIBACK) {
                return Err(Errno::ENODEV);
            }
            w.pciback.allow_interrupt_control.insert(sbdf);
            Ok(Unit)
        }
        SimOp::PcibackExport { sbdf, domid } => w.pciback_export(sbdf, domid).map(|_| Unit),
        SimOp::PcibackPut { sbdf } => w.pciback_put(sbdf).map(|_| Unit),
        SimOp::PcibackPutLater { sbdf } => {
            w.dev_ref(sbdf)?;
            w.pciback.pending_puts.insert(sbdf);
            Ok(Unit)
        }
        SimOp::Settle => {
            for sbdf in std::mem::take(&mut w.pciback.pending_puts) {
                w.pciback_put(sbdf)?;
            }
            Ok(Unit)
        }
        SimOp::XenbusBackend {
            domid,
            listed,
            present,
            closing,
            adding,
        } => {
            let first = !w.pciback.xenbus.contains_key(&domid);
            let had = w.pciback.xenbus.remove(&domid).unwrap_or_default();
            let mut now = BTreeSet::new();
            for sbdf in listed {
                if had.contains(&sbdf) {
                    now.insert(sbdf);
                } else if (first || adding.contains(&sbdf))
                    && (w.exported_to(sbdf) == Some(domid) || w.pciback_export(sbdf, domid).is_ok())
                {
                    // xen_pcibk_setup_backend exports what the backend lists when it is
                    // set up; later, only a hot-add's handshake does (xen_pcibk_reconfigure).
                    // A device not in pciback, or exported elsewhere, is refused
                    // (xen_pcibk_export_device's pcistub_get_pci_dev_by_slot fails).
                    now.insert(sbdf);
                }
            }
            for sbdf in had.difference(&now).copied().collect::<Vec<_>>() {
                if present {
                    // Nodes gone without the handshake: pciback's backend watch reacts only
                    // to InitWait, so the device stays exported until the backend goes.
                    now.insert(sbdf);
                } else {
                    w.pciback.pending_puts.insert(sbdf);
                }
            }
            for sbdf in closing {
                // xen_pcibk_reconfigure: a Closing device is removed and given back.
                if now.remove(&sbdf) {
                    w.pciback_put(sbdf)?;
                }
            }
            if !now.is_empty() {
                w.pciback.xenbus.insert(domid, now);
            }
            Ok(Unit)
        }
        SimOp::PvEnableMsix { sbdf, nvec } => w.pv_enable_msix(sbdf, nvec).map(SimValue::Pirqs),
        SimOp::PvBindEvtchn { domid, pirq } => w.pv_bind_evtchn(domid, pirq).map(|_| Unit),
        SimOp::GuestTableWrite {
            domid,
            sbdf,
            entry,
            masked,
        } => w
            .guest_table_write(domid, sbdf, entry, masked)
            .map(|_| Unit),
    }
}

fn target_of(op: &SimOp) -> String {
    use xen::CallTarget as T;
    match op {
        SimOp::MapPirq { req } => T::Map(req).to_string(),
        SimOp::UnmapPirq { domid, pirq } | SimOp::IrqPermission { domid, pirq, .. } => {
            T::Pirq(*domid, *pirq).to_string()
        }
        SimOp::PrepareMsix { sbdf } | SimOp::ReleaseMsix { sbdf } => T::Device(*sbdf).to_string(),
        SimOp::BindPtIrq { domid, bind } | SimOp::UnbindPtIrq { domid, bind } => {
            T::Pirq(*domid, bind.pirq()).to_string()
        }
        SimOp::AssignDevice { domid, sbdf, .. } | SimOp::DeassignDevice { domid, sbdf } => {
            T::DomainDevice(*domid, *sbdf).to_string()
        }
        SimOp::IomemPermission {
            domid, first, nr, ..
        } => T::Iomem {
            domid: *domid,
            first: *first,
            nr: *nr,
        }
        .to_string(),
        SimOp::IoportPermission {
            domid, first, nr, ..
        } => T::Ioport {
            domid: *domid,
            first: *first,
            nr: *nr,
        }
        .to_string(),
        other => format!("{other:?}"),
    }
}

impl SimHost {
    fn hypercall(&self, op: SimOp) -> Result<SimValue, XenError> {
        let h = op.hypercall().unwrap_or(HypercallOp::XenVersion);
        let target = target_of(&op);
        self.apply(op)
            .map_err(|errno| XenError::hypercall(h, target, errno))
    }
    fn hypercall_unit(&self, op: SimOp) -> Result<(), XenError> {
        self.hypercall(op).map(|_| ())
    }
}

impl Hypervisor for SimHost {
    fn version(&self) -> Result<XenVersion, XenError> {
        Ok(self.profile().xen.version())
    }
    fn map_pirq(&self, req: &MapPirq) -> Result<Pirq, XenError> {
        match self.hypercall(SimOp::MapPirq { req: *req })? {
            SimValue::Pirq(p) => Ok(p),
            _ => Ok(Pirq(-1)),
        }
    }
    fn unmap_pirq(&self, domid: DomId, pirq: Pirq) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::UnmapPirq { domid, pirq })
    }
    fn prepare_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::PrepareMsix { sbdf })
    }
    fn release_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::ReleaseMsix { sbdf })
    }
    fn bind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::BindPtIrq { domid, bind: *bind })
    }
    fn unbind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::UnbindPtIrq { domid, bind: *bind })
    }
    fn assign_device(&self, domid: DomId, sbdf: Sbdf, flags: u32) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::AssignDevice { domid, sbdf, flags })
    }
    fn test_assign_device(&self, sbdf: Sbdf) -> Result<(), XenError> {
        let mut g = self.lock();
        g.world.count(HypercallOp::TestAssignDevice);
        g.world.test_assign_device(sbdf).map_err(|errno| {
            XenError::hypercall(HypercallOp::TestAssignDevice, sbdf.to_string(), errno)
        })
    }
    fn deassign_device(&self, domid: DomId, sbdf: Sbdf) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::DeassignDevice { domid, sbdf })
    }
    fn iomem_permission(
        &self,
        domid: DomId,
        first: u64,
        nr: u64,
        allow: bool,
    ) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::IomemPermission {
            domid,
            first,
            nr,
            allow,
        })
    }
    fn ioport_permission(
        &self,
        domid: DomId,
        first: u32,
        nr: u32,
        allow: bool,
    ) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::IoportPermission {
            domid,
            first,
            nr,
            allow,
        })
    }
    fn irq_permission(&self, domid: DomId, pirq: Pirq, allow: bool) -> Result<(), XenError> {
        self.hypercall_unit(SimOp::IrqPermission { domid, pirq, allow })
    }
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, XenError> {
        let mut g = self.lock();
        g.world.count(HypercallOp::GetDomainInfo);
        // The real backend asks 4.21+ for the unique id too: one more domctl.
        let unique = g.world.profile.xen.has_unique_domain_ids();
        if unique && g.world.domains.contains_key(&domid) {
            g.world.count(HypercallOp::GetDomainState);
        }
        Ok(g.world.domains.get(&domid).map(|d| DomainInfo {
            domid,
            dying: d.dying,
            shutdown: d.state == DomainState::Shutdown,
            hvm: d.hvm,
            paused: d.paused,
            shutdown_reason: d.shutdown_reason,
            handle: d.handle,
            unique_id: unique.then_some(d.unique_id),
        }))
    }
    /// The dumps go to the console ring only (not the journal): they change no state.
    fn debug_keys(&self, keys: &str) -> Result<(), XenError> {
        let mut g = self.lock();
        g.world.count(HypercallOp::DebugKeys);
        let lines = g.world.debug_dump(keys);
        g.world.console.extend(lines);
        Ok(())
    }
    fn read_console(&self) -> Result<String, XenError> {
        let mut g = self.lock();
        g.world.count(HypercallOp::ReadConsole);
        Ok(g.world
            .console
            .iter()
            .map(|l| format!("(XEN) {l}\n"))
            .collect())
    }
    fn command_line(&self) -> Result<String, XenError> {
        let mut g = self.lock();
        g.world.count(HypercallOp::CommandLine);
        let mut line = "console=com1 dom0_mem=1024M,max:1024M loglvl=all".to_string();
        if let Some(n) = g.world.profile.nr_pirqs {
            let gsis = crate::world::NR_IRQS_GSI as u32;
            line.push_str(&format!(" extra_guest_irqs={}", n.saturating_sub(gsis)));
        }
        Ok(line)
    }
}

fn sysfs_error(sbdf: Sbdf, file: &str, errno: Errno) -> PciError {
    if errno == Errno::ENOENT {
        return PciError::Missing {
            sbdf,
            file: file.into(),
            what: "the kernel does not provide it for this device",
        };
    }
    PciError::Refused {
        sbdf,
        what: format!("write to {file} failed: {errno}"),
    }
}

fn dev_file(sbdf: Sbdf, f: &str) -> String {
    format!("/sys/bus/pci/devices/{sbdf}/{f}")
}

impl SimHost {
    fn sysfs(&self, sbdf: Sbdf, file: String, op: SimOp) -> Result<(), PciError> {
        self.apply(op)
            .map(|_| ())
            .map_err(|e| sysfs_error(sbdf, &file, e))
    }

    fn read_dev<T>(
        &self,
        sbdf: Sbdf,
        f: impl FnOnce(&crate::world::DeviceState) -> T,
    ) -> Result<T, PciError> {
        let g = self.lock();
        g.world
            .devices
            .get(&sbdf)
            .map(f)
            .ok_or_else(|| PciError::NoSuchDevice {
                sbdf,
                dir: dev_file(sbdf, "").into(),
            })
    }
}

impl PciHost for SimHost {
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError> {
        Ok(self.lock().world.devices.keys().copied().collect())
    }
    fn exists(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        Ok(self.lock().world.devices.contains_key(&sbdf))
    }
    fn read_config(&self, sbdf: Sbdf) -> Result<Vec<u8>, PciError> {
        self.read_dev(sbdf, |d| d.hw.config.bytes().to_vec())
    }
    fn write_config(&self, sbdf: Sbdf, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            dev_file(sbdf, "config"),
            SimOp::ConfigWrite {
                sbdf,
                offset,
                data: data.to_vec(),
            },
        )
    }
    fn resources(&self, sbdf: Sbdf) -> Result<Vec<Resource>, PciError> {
        self.read_dev(sbdf, |d| d.hw.resources.clone())
    }
    fn irq(&self, sbdf: Sbdf) -> Result<u32, PciError> {
        self.read_dev(sbdf, |d| d.hw.spec.gsi)
    }
    fn msi_irqs(&self, sbdf: Sbdf) -> Result<Vec<u32>, PciError> {
        self.read_dev(sbdf, |d| {
            d.linux
                .pv_msix
                .iter()
                .map(|(e, _, _)| 200 + u32::from(*e))
                .collect()
        })
    }
    fn enabled(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.read_dev(sbdf, |d| d.linux.enable_cnt > 0)
    }
    fn physfn(&self, sbdf: Sbdf) -> Result<Option<Sbdf>, PciError> {
        self.read_dev(sbdf, |d| d.hw.spec.physfn)
    }
    fn driver(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.read_dev(sbdf, |d| d.linux.driver.clone())
    }
    fn driver_override(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.read_dev(sbdf, |d| d.linux.driver_override.clone())
    }
    fn set_driver_override(&self, sbdf: Sbdf, driver: Option<&str>) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            dev_file(sbdf, "driver_override"),
            SimOp::DriverOverride {
                sbdf,
                driver: driver.map(str::to_string),
            },
        )
    }
    fn reset_methods(&self, sbdf: Sbdf) -> Result<Option<Vec<String>>, PciError> {
        self.read_dev(sbdf, |d| {
            Some(
                d.hw.spec
                    .reset_methods
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect(),
            )
        })
    }
    fn can_reset(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.read_dev(sbdf, |d| !d.hw.spec.reset_methods.is_empty())
    }
    fn reset(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(sbdf, dev_file(sbdf, "reset"), SimOp::Reset { sbdf })
    }
    fn yield_to_dom0(&self, _wait: std::time::Duration) {
        // No xenbus watcher here (the daemon's simulated platform has one): time is the
        // simulation's, nothing to wait for.
    }
    fn driver_bind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            format!("/sys/bus/pci/drivers/{driver}/bind"),
            SimOp::DriverBind {
                driver: driver.into(),
                sbdf,
            },
        )
    }
    fn driver_unbind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            format!("/sys/bus/pci/drivers/{driver}/unbind"),
            SimOp::DriverUnbind {
                driver: driver.into(),
                sbdf,
            },
        )
    }
    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError> {
        Ok(self.lock().world.pciback.slots.clone())
    }
    fn pciback_new_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            "/sys/bus/pci/drivers/pciback/new_slot".into(),
            SimOp::NewSlot { sbdf },
        )
    }
    fn pciback_remove_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            "/sys/bus/pci/drivers/pciback/remove_slot".into(),
            SimOp::RemoveSlot { sbdf },
        )
    }
    fn pciback_permissive(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            "/sys/bus/pci/drivers/pciback/permissive".into(),
            SimOp::Permissive { sbdf },
        )
    }
    fn pciback_allow_interrupt_control(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.sysfs(
            sbdf,
            "/sys/bus/pci/drivers/pciback/allow_interrupt_control".into(),
            SimOp::AllowInterruptControl { sbdf },
        )
    }
    fn wait_backend_released(
        &self,
        domid: u16,
        _timeout: std::time::Duration,
    ) -> Result<bool, PciError> {
        // Waiting is what lets pciback's worker run: its pending puts happen now.
        self.settle();
        Ok(self.with_world(|w| {
            !w.devices
                .values()
                .any(|d| d.linux.exported_to == Some(DomId(domid)))
        }))
    }
}

impl DomainEventSink for xenstore::local::LocalXenstore {
    fn introduced(&self, domid: DomId) {
        self.introduce_domain(u32::from(domid.0));
    }
    fn released(&self, domid: DomId) {
        self.release_domain(u32::from(domid.0));
    }
}

fn yes() -> bool {
    true
}
