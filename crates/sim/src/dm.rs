//! Guests and their device models (qemu-xen, xen-semantics.md §3).
//!
//! A device model maps and binds the vectors its guest enables, either straight through the
//! hypervisor as qemu does today ([`DirectBroker`]) or through a broker (ptguard's, plugged in
//! by the binary through [`VectorBroker`]). Its behaviour decides what it leaves behind.

use crate::error::SimError;
use std::collections::BTreeMap;

use pci::config::regs::*;
use pci::host::PciHost;
use pci::Sbdf;
use serde::{Deserialize, Serialize};
use xen::{DomId, GuestIntx, Hypervisor, MapPirq, Pirq, PtIrq};

use crate::host::SimHost;

/// How a device model behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmBehaviour {
    /// Unmaps every vector when the guest disables MSI-X or the device is unplugged.
    WellBehaved,
    /// Crashes while the guest runs: nothing is ever unmapped by it.
    Crashes,
    /// Killed by the toolstack before the device is detached.
    KilledEarly,
    /// Compromised: bypasses the broker, maps extra vectors, never unmaps, tries to map a
    /// device of another domain, writes into the ledger's Xenstore path.
    Hostile,
}

impl DmBehaviour {
    pub const ALL: [DmBehaviour; 4] = [
        DmBehaviour::WellBehaved,
        DmBehaviour::Crashes,
        DmBehaviour::KilledEarly,
        DmBehaviour::Hostile,
    ];
    pub fn name(self) -> &'static str {
        match self {
            DmBehaviour::WellBehaved => "well-behaved",
            DmBehaviour::Crashes => "crashes",
            DmBehaviour::KilledEarly => "killed-early",
            DmBehaviour::Hostile => "hostile",
        }
    }
}

/// What a device model asks to be bound: its INTx line (qemu realize:
/// `xc_physdev_map_pirq` + `xc_domain_bind_pt_pci_irq`) or one MSI-X entry.
pub type VectorKind = xen::IrqSource;

/// A bind or unbind request from a device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorRequest {
    pub domid: DomId,
    pub sbdf: Sbdf,
    pub kind: VectorKind,
    pub gvec: u8,
    pub gflags: u32,
    pub gtable: u64,
}

impl VectorRequest {
    /// The `bind_pt_irq` argument for `pirq`.
    pub fn pt_irq(&self, pirq: Pirq) -> PtIrq {
        self.kind
            .pt_irq(self.sbdf, pirq, self.gvec, self.gflags, self.gtable)
    }
    /// The `map_pirq` argument (`pirq` chosen by Xen; INTx uses pirq == GSI as libxc does).
    pub fn map_request(&self) -> MapPirq {
        self.kind.map_request(self.domid, self.sbdf)
    }
}

/// Maps and binds on a device model's behalf.
pub trait VectorBroker {
    fn bind_vector(&self, req: &VectorRequest) -> Result<Pirq, SimError>;
    fn unbind_vector(&self, req: &VectorRequest, pirq: Pirq) -> Result<(), SimError>;
}

/// qemu's own path: `PHYSDEVOP_map_pirq` then `XEN_DOMCTL_bind_pt_irq`; unbind then unmap
/// (xen-semantics.md §3.1, §3.2). A failed bind unmaps at once.
pub struct DirectBroker<H>(pub H);

impl<H: Hypervisor> VectorBroker for DirectBroker<H> {
    fn bind_vector(&self, req: &VectorRequest) -> Result<Pirq, SimError> {
        let pirq = self.0.map_pirq(&req.map_request())?;
        if let Err(e) = self.0.bind_pt_irq(req.domid, &req.pt_irq(pirq)) {
            let _ = self.0.unmap_pirq(req.domid, pirq);
            return Err(e.into());
        }
        Ok(pirq)
    }
    fn unbind_vector(&self, req: &VectorRequest, pirq: Pirq) -> Result<(), SimError> {
        let unbind = self.0.unbind_pt_irq(req.domid, &req.pt_irq(pirq));
        let unmap = self.0.unmap_pirq(req.domid, pirq);
        Ok(unbind.and(unmap)?)
    }
}

/// Guest address of the emulated MSI-X table (any stable value; Xen only records it).
const GTABLE: u64 = 0xf100_0000;
/// Guest vectors start here (Linux's first external vector range).
const GVEC_BASE: u8 = 0x40;

/// The device model of one HVM guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceModel {
    pub domid: DomId,
    pub behaviour: DmBehaviour,
    pub alive: bool,
    /// Per device: INTx pirq and the pirq of each mapped entry, as qemu keeps them in memory.
    pub intx: BTreeMap<Sbdf, Pirq>,
    pub vectors: BTreeMap<Sbdf, BTreeMap<u16, Pirq>>,
    /// The guest's virtual slot of each plugged device (qemu gives slots from 4 up unless
    /// the config names one).
    #[serde(default)]
    pub slots: BTreeMap<Sbdf, u8>,
    /// What a hostile model tried, and what answered.
    pub hostile_log: Vec<String>,
}

impl DeviceModel {
    pub fn new(domid: DomId, behaviour: DmBehaviour) -> DeviceModel {
        DeviceModel {
            domid,
            behaviour,
            alive: true,
            intx: BTreeMap::new(),
            vectors: BTreeMap::new(),
            slots: BTreeMap::new(),
            hostile_log: Vec::new(),
        }
    }

    /// Where the guest sees `sbdf`'s INTx: its virtual slot (given at the first plug, from
    /// 4 up) and pin A, qemu's emulated Interrupt Pin for a single-function device.
    pub fn guest_intx(&mut self, sbdf: Sbdf) -> GuestIntx {
        let next = (4u8..32)
            .find(|s| !self.slots.values().any(|v| v == s))
            .unwrap_or(31);
        let device = *self.slots.entry(sbdf).or_insert(next);
        GuestIntx {
            bus: 0,
            device,
            intx: 0,
        }
    }

    fn req(&self, sbdf: Sbdf, kind: VectorKind, gvec: u8) -> VectorRequest {
        VectorRequest {
            domid: self.domid,
            sbdf,
            kind,
            gvec,
            gflags: xen::abi::XEN_DOMCTL_VMSI_X86_UNMASKED,
            gtable: GTABLE,
        }
    }

    /// `device_add` (qemu realize): map and bind the INTx pirq if the device has a pin.
    pub fn plug(
        &mut self,
        host: &SimHost,
        broker: &dyn VectorBroker,
        sbdf: Sbdf,
    ) -> Result<(), SimError> {
        if !self.alive {
            return Err(SimError::DeviceModelDead { domid: self.domid });
        }
        let gsi = host.irq(sbdf)?;
        if gsi > 0 && gsi < 0xff {
            let guest = Some(self.guest_intx(sbdf));
            let pirq = broker.bind_vector(&self.req(sbdf, VectorKind::Intx { gsi, guest }, 0))?;
            self.intx.insert(sbdf, pirq);
        }
        self.vectors.entry(sbdf).or_default();
        Ok(())
    }

    /// The guest's driver turns on decoding and enables MSI-X with `nvec` vectors; qemu
    /// passes the Command and Message Control writes to the device through dom0's sysfs
    /// `config` (so Xen's intercept applies) and maps and binds each entry.
    pub fn guest_enable_msix(
        &mut self,
        host: &SimHost,
        broker: &dyn VectorBroker,
        sbdf: Sbdf,
        nvec: u16,
    ) -> Result<Vec<Pirq>, SimError> {
        if !self.alive {
            return Err(SimError::DeviceModelDead { domid: self.domid });
        }
        let (off, table_base, size) = host
            .with_world(|w| {
                w.device(sbdf).and_then(|d| {
                    d.hw.msix
                        .map(|m| (m.offset, d.hw.table_base(), m.table_size))
                })
            })
            .ok_or(SimError::NoMsix { sbdf })?;
        host.write_config(
            sbdf,
            COMMAND,
            &(COMMAND_MEMORY | COMMAND_MASTER).to_le_bytes(),
        )?;
        host.write_config(sbdf, off + MSIX_FLAGS, &MSIX_FLAGS_ENABLE.to_le_bytes())?;
        let mut pirqs = Vec::new();
        for entry in 0..nvec.min(size) {
            let req = self.req(
                sbdf,
                VectorKind::Msix { entry, table_base },
                GVEC_BASE + entry as u8,
            );
            let pirq = broker.bind_vector(&req)?;
            self.vectors.entry(sbdf).or_default().insert(entry, pirq);
            pirqs.push(pirq);
        }
        if self.behaviour == DmBehaviour::Hostile {
            self.hostile_extra(host, sbdf, nvec, size, table_base);
        }
        Ok(pirqs)
    }

    /// A compromised model maps two more entries behind the broker's back and tries a device
    /// that belongs to someone else.
    fn hostile_extra(&mut self, host: &SimHost, sbdf: Sbdf, nvec: u16, size: u16, table_base: u64) {
        let direct = DirectBroker(host.clone());
        for entry in nvec..(nvec + 2).min(size) {
            let req = self.req(
                sbdf,
                VectorKind::Msix { entry, table_base },
                GVEC_BASE + entry as u8,
            );
            match direct.bind_vector(&req) {
                Ok(p) => {
                    self.hostile_log.push(format!(
                        "mapped {sbdf} entry {entry} as pirq {p} behind the broker"
                    ));
                    self.vectors.entry(sbdf).or_default().insert(entry, p);
                }
                Err(e) => self
                    .hostile_log
                    .push(format!("extra map of entry {entry} refused: {e}")),
            }
        }
        let others: Vec<Sbdf> = host.with_world(|w| {
            w.devices
                .iter()
                .filter(|(s, d)| **s != sbdf && d.xen.owner != self.domid && d.hw.msix.is_some())
                .map(|(s, _)| *s)
                .collect()
        });
        for other in others {
            let tb = host.with_world(|w| w.device(other).map_or(0, |d| d.hw.table_base()));
            let req = self.req(
                other,
                VectorKind::Msix {
                    entry: 0,
                    table_base: tb,
                },
                GVEC_BASE,
            );
            match direct.bind_vector(&req) {
                Ok(p) => self
                    .hostile_log
                    .push(format!("mapped foreign {other} as pirq {p}")),
                Err(e) => self
                    .hostile_log
                    .push(format!("map of foreign {other} refused: {e}")),
            }
        }
    }

    /// The guest driver disables MSI-X (e.g. at shutdown); qemu clears Enable and unbinds +
    /// unmaps each entry (`xen_pt_msix_disable`). A hostile model leaves them mapped.
    pub fn guest_disable_msix(&mut self, host: &SimHost, broker: &dyn VectorBroker, sbdf: Sbdf) {
        if !self.alive {
            return;
        }
        if let Some(off) =
            host.with_world(|w| w.device(sbdf).and_then(|d| d.hw.msix).map(|m| m.offset))
        {
            let _ = host.write_config(sbdf, off + MSIX_FLAGS, &0u16.to_le_bytes());
        }
        if self.behaviour == DmBehaviour::Hostile {
            return;
        }
        let table_base = host.with_world(|w| w.device(sbdf).map_or(0, |d| d.hw.table_base()));
        let vectors = self
            .vectors
            .get_mut(&sbdf)
            .map(std::mem::take)
            .unwrap_or_default();
        for (entry, pirq) in vectors {
            let req = self.req(
                sbdf,
                VectorKind::Msix { entry, table_base },
                GVEC_BASE + entry as u8,
            );
            let _ = broker.unbind_vector(&req, pirq);
        }
    }

    /// The guest shuts down: a well-behaved stack disables MSI-X first; a model that
    /// `Crashes` dies now; a `KilledEarly` one is killed before it can unmap.
    pub fn guest_shutdown(&mut self, host: &SimHost, broker: &dyn VectorBroker, sbdf: Sbdf) {
        match self.behaviour {
            DmBehaviour::WellBehaved | DmBehaviour::Hostile => {
                self.guest_disable_msix(host, broker, sbdf)
            }
            DmBehaviour::Crashes => self.crash(),
            // The toolstack kills the model as the domain goes down, before the guest's
            // driver disable reaches it.
            DmBehaviour::KilledEarly => self.kill(),
        }
    }

    /// QMP `device_del`: returns whether the device was unplugged (a dead guest cannot
    /// acknowledge the ACPI eject, so only a live guest + live model complete it).
    pub fn unplug(
        &mut self,
        host: &SimHost,
        broker: &dyn VectorBroker,
        sbdf: Sbdf,
        guest_alive: bool,
    ) -> bool {
        if !self.alive || !guest_alive {
            return false;
        }
        self.guest_disable_msix(host, broker, sbdf);
        if self.behaviour != DmBehaviour::Hostile {
            if let Some(pirq) = self.intx.remove(&sbdf) {
                let gsi = host.irq(sbdf).unwrap_or(0);
                let guest = Some(self.guest_intx(sbdf));
                let kind = VectorKind::Intx { gsi, guest };
                let _ = broker.unbind_vector(&self.req(sbdf, kind, 0), pirq);
            }
        }
        self.vectors.remove(&sbdf);
        true
    }

    pub fn crash(&mut self) {
        self.alive = false;
    }

    /// The toolstack kills the model (xl destroy step 3, or earlier for `KilledEarly`).
    pub fn kill(&mut self) {
        self.alive = false;
    }
}

/// What the guest driver saw when it checked its vectors. As JSON: `vectors` checked,
/// `delivered`, and `missing` — only the entries whose interrupt did not arrive, each with
/// why (an empty list when all arrived).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestReport {
    pub domid: DomId,
    pub sbdf: Sbdf,
    /// Per entry: `None` if the interrupt arrived, else why not.
    pub missing: Vec<Option<String>>,
}

impl Serialize for GuestReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Missing<'a> {
            entry: usize,
            why: &'a str,
        }
        #[derive(Serialize)]
        struct Report<'a> {
            domid: DomId,
            sbdf: Sbdf,
            vectors: usize,
            delivered: usize,
            missing: Vec<Missing<'a>>,
        }
        Report {
            domid: self.domid,
            sbdf: self.sbdf,
            vectors: self.missing.len(),
            delivered: self.delivered(),
            missing: self
                .missing
                .iter()
                .enumerate()
                .filter_map(|(entry, m)| m.as_deref().map(|why| Missing { entry, why }))
                .collect(),
        }
        .serialize(s)
    }
}

impl GuestReport {
    pub fn all_delivered(&self) -> bool {
        !self.missing.is_empty() && self.missing.iter().all(Option::is_none)
    }
    pub fn delivered(&self) -> usize {
        self.missing.iter().filter(|m| m.is_none()).count()
    }
}

/// The guest driver makes each of `nvec` vectors fire and checks that it arrives in `domid`.
pub fn check_interrupts(host: &SimHost, domid: DomId, sbdf: Sbdf, nvec: u16) -> GuestReport {
    let missing = (0..nvec)
        .map(|e| match host.raise(sbdf, e) {
            Ok((d, _)) if d == domid => None,
            Ok((d, _)) => Some(format!("delivered to {d}")),
            Err(why) => Some(why.to_string()),
        })
        .collect();
    GuestReport {
        domid,
        sbdf,
        missing,
    }
}

/// What stock qemu-xen does for each of the first `entries` MSI-X entries of a device its
/// guest already holds, with no broker and no record anywhere: memory decoding and bus
/// mastering on, then `map_pirq` (Xen chooses the pirq) and `bind_pt_irq` straight to Xen.
/// Returns the pirqs, in entry order.
pub fn bind_directly(
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    entries: u16,
) -> Result<Vec<Pirq>, SimError> {
    host.write_config(
        sbdf,
        COMMAND,
        &(COMMAND_MEMORY | COMMAND_MASTER).to_le_bytes(),
    )?;
    let tb = host.with_world(|w| w.device(sbdf).map_or(0, |d| d.hw.table_base()));
    let mut pirqs = Vec::new();
    for entry in 0..entries {
        let pirq = host.map_pirq(&MapPirq::msix(domid, sbdf, entry, tb))?;
        host.bind_pt_irq(
            domid,
            &PtIrq::Msi {
                pirq,
                gvec: GVEC_BASE,
                gflags: 0x10000,
                gtable: 0,
            },
        )?;
        pirqs.push(pirq);
    }
    Ok(pirqs)
}

/// What a device model that bypasses ptguard does for one MSI-X entry of a device its
/// guest holds: `map_pirq` (Xen chooses the pirq) and, unless `map_only`, `bind_pt_irq`,
/// each straight to Xen, the config space left as it is. The test bed's rogue_dm.py makes
/// the same two calls through libxenctrl on real Xen.
pub fn map_one_directly(
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    entry: u16,
    map_only: bool,
) -> Result<Pirq, SimError> {
    let tb = host.with_world(|w| w.device(sbdf).map_or(0, |d| d.hw.table_base()));
    let pirq = host.map_pirq(&MapPirq::msix(domid, sbdf, entry, tb))?;
    if !map_only {
        host.bind_pt_irq(
            domid,
            &PtIrq::Msi {
                pirq,
                gvec: 0x50,
                gflags: 0x10000,
                gtable: 0,
            },
        )?;
    }
    Ok(pirq)
}
