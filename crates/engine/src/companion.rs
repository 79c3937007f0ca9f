//! Companion mode: ptguard beside a toolstack that gives devices itself (xl/libxl's
//! `pci=`, xenopsd, libvirt) and a stock device model that binds by direct hypercalls.
//!
//! The toolstack's PCI backend nodes say which guest holds which device; ptguard adopts
//! those devices into the ledger (`mode = companion`), and when their guest goes, its
//! teardown is the MSI-X part only — sweep the finished domain's pirqs, release, reset,
//! prepare, verify — leaving permissions, backend and deassign to the toolstack.

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, Errno};
use xenstore::{TxId, XsClient};

use crate::engine::*;
use crate::ledger::*;
use crate::sweep::SweepReport;
use crate::xen_dump::DumpOwner;
use crate::{CureResult, EngineError, Liveness, NoticeKind};

type Result<T> = std::result::Result<T, EngineError>;

/// Where libxl (and xenopsd, which writes the same nodes) lists a guest's PCI devices.
pub const TOOLSTACK_BACKENDS: &str = "/local/domain/0/backend/pci";

/// One device of a toolstack's PCI backend: `dev-N` (and its `state-N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendDevice {
    /// The guest the device is given to.
    pub domid: DomId,
    pub sbdf: Sbdf,
    /// The stubdomain whose backend this is, when the guest's device model runs in one:
    /// libxl then writes the PCI backend for the stubdomain (its pcifront serves the
    /// model) and none for the guest, and assigns the device to the guest
    /// (tools/libs/light/libxl_pci.c, `do_pci_add` and `pci_add_dm_done`, 4.17 to 4.22).
    pub stubdomain: Option<DomId>,
    /// `state-N` is Closing (5) or Closed (6): the toolstack is taking it away (libxl's
    /// `libxl__device_pci_remove_xenstore` writes Closing, then removes the nodes).
    pub leaving: bool,
}

/// The reason the ledger records for the teardown of a device that left a guest that
/// still runs (`follow_departures`).
pub(crate) const DEPARTURE_REASON: &str = "hot-unplug";

/// `XenbusStateClosing` and `XenbusStateClosed`.
const LEAVING_STATES: [&str; 2] = ["5", "6"];

/// Every `dev-N` of the toolstack's PCI backends:
/// `/local/domain/0/backend/pci/<domid>/0/dev-<n>` = `SSSS:BB:DD.F`, with `state-<n>`.
/// Unreadable or malformed nodes are skipped (a guest cannot write dom0's backend, but a
/// half-written one may be seen).
pub fn toolstack_backend_devices(xs: &mut XsClient) -> Vec<BackendDevice> {
    let mut out = Vec::new();
    for dom in xs
        .directory(TxId::NONE, TOOLSTACK_BACKENDS)
        .unwrap_or_default()
    {
        let Ok(domid) = dom.parse::<u16>() else {
            continue;
        };
        // A stubdomain names its guest in `/local/domain/<stubdom>/target`
        // (`libxl_is_stubdom`): its backend gives the device to that guest.
        let target = xs
            .read_optional(TxId::NONE, &format!("/local/domain/{domid}/target"))
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8_lossy(&v).trim().parse::<u16>().ok());
        let (guest, stubdomain) = match target {
            Some(t) => (DomId(t), Some(DomId(domid))),
            None => (DomId(domid), None),
        };
        let be = format!("{TOOLSTACK_BACKENDS}/{dom}/0");
        for node in xs.directory(TxId::NONE, &be).unwrap_or_default() {
            let Some(n) = node.strip_prefix("dev-") else {
                continue;
            };
            let Ok(Some(v)) = xs.read_optional(TxId::NONE, &format!("{be}/{node}")) else {
                continue;
            };
            let Ok(sbdf) = String::from_utf8_lossy(&v).trim().parse::<Sbdf>() else {
                continue;
            };
            let state = xs
                .read_optional(TxId::NONE, &format!("{be}/state-{n}"))
                .ok()
                .flatten();
            let leaving =
                state.is_some_and(|s| LEAVING_STATES.contains(&String::from_utf8_lossy(&s).trim()));
            out.push(BackendDevice {
                domid: guest,
                sbdf,
                stubdomain,
                leaving,
            });
        }
    }
    out
}

/// The `(guest, device)` pairs the toolstack's backends give and are not taking away.
pub fn toolstack_backends(xs: &mut XsClient) -> Vec<(DomId, Sbdf)> {
    toolstack_backend_devices(xs)
        .into_iter()
        .filter(|b| !b.leaving)
        .map(|b| (b.domid, b.sbdf))
        .collect()
}

/// The guest the toolstack's backends give `sbdf` to (not taking it away), if any.
fn toolstack_owner(xs: &mut XsClient, sbdf: Sbdf) -> Option<DomId> {
    toolstack_backends(xs)
        .into_iter()
        .find(|(_, s)| *s == sbdf)
        .map(|(d, _)| d)
}

/// What `follow_departures` found for one device that left a running guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Departure {
    pub sbdf: Sbdf,
    /// The guest the ledger had it attached to, still running.
    pub from: DomId,
    /// How it ended (`None`: report-only, nothing done).
    pub outcome: Option<Outcome>,
}

/// What `ptguard hook pre-unplug` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PreUnplug {
    pub sbdf: Sbdf,
    /// Memory decoding was off and is on now.
    pub turned_on: bool,
    /// The guest it is leaving (the ledger's owner, else the toolstack's backend): the
    /// daemon watches that the unplug finishes. `None`: no guest holds it.
    pub watched_for: Option<DomId>,
}

/// How long after `hook pre-unplug` an unplug counts as stalled: libxl gives an HVM
/// guest's device model 10 s (`LIBXL_QMP_CMD_TIMEOUT`, 4.17 to 4.22), then gives up.
pub const UNPLUG_STALL_SECS: u64 = 15;

/// An unplug announced by `hook pre-unplug` whose device the guest still has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingUnplug {
    pub sbdf: Sbdf,
    pub owner: DomId,
    /// Seconds since the hook ran.
    pub waited: u64,
    /// Longer than [`UNPLUG_STALL_SECS`]: the toolstack's unplug failed or hangs.
    pub stalled: bool,
}

/// A device no guest held that `cure_unrecorded` found unclean.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cure {
    pub sbdf: Sbdf,
    pub found: &'static str,
    /// What the cure did, in order (`None`: report-only, or it failed).
    pub done: Option<Vec<String>>,
}

/// One device `adopt_from_toolstack` took on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adopted {
    pub sbdf: Sbdf,
    pub domid: DomId,
    pub epoch: u64,
}

/// What `ptguard hook pre-reset` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum PreReset {
    /// No guest holds the device (per the ledger and the toolstack): nothing to do.
    NoOwner,
    /// The owner may still run (a hot-unplug): its pirqs are its own; nothing swept.
    OwnerRunning { domid: DomId },
    /// The device is in the ledger: its teardown ran (sweeping as needed).
    TornDown { domid: DomId, outcome: Outcome },
    /// Not in the ledger: the finished owner's pirqs were swept.
    Swept { report: SweepReport },
}

fn pending_of(m: &UnplugMarker, now: u64) -> PendingUnplug {
    let waited = now.saturating_sub(m.since);
    PendingUnplug {
        sbdf: m.sbdf,
        owner: m.owner,
        waited,
        stalled: waited >= UNPLUG_STALL_SECS,
    }
}

impl Engine<'_> {
    /// Adopts every device the toolstack's backends give a live guest that the ledger does
    /// not hold for it already (absent, or assignable from an earlier guest). Xen must
    /// agree that a guest holds the device; anything refused is logged and left.
    pub fn adopt_from_toolstack(&mut self) -> Result<Vec<Adopted>> {
        let mut done = Vec::new();
        let backends: Vec<BackendDevice> = toolstack_backend_devices(self.xs)
            .into_iter()
            .filter(|b| !b.leaving)
            .collect();
        for BackendDevice {
            domid,
            sbdf,
            stubdomain,
            ..
        } in backends
        {
            if self.protected_domain(domid) {
                continue;
            }
            match read_head(self.xs, TxId::NONE, sbdf)? {
                None => {}
                Some(r) if r.state == DeviceState::Assignable => {}
                Some(_) => continue,
            }
            match self.adopt_with_model(sbdf, domid, stubdomain) {
                Ok(epoch) => {
                    self.say(NoticeKind::Adopted {
                        sbdf,
                        domid,
                        stubdomain,
                    });
                    done.push(Adopted { sbdf, domid, epoch });
                }
                // A domain that is going or gone, or a device Xen says nobody holds (the
                // toolstack is still assigning it, or already took it back): next round.
                Err(
                    e @ (EngineError::DomainFinished { .. }
                    | EngineError::UnknownDomain { .. }
                    | EngineError::NotHeld { .. }),
                ) => tracing::debug!(%sbdf, %domid, "not adopted: {e}"),
                Err(e @ EngineError::HolderUnproven { .. }) => {
                    tracing::info!(%sbdf, %domid, "not adopted yet: {e}")
                }
                Err(e) => tracing::warn!(%sbdf, %domid, "not adopted: {e}"),
            }
        }
        Ok(done)
    }

    /// Finds the devices that left a guest that still runs (`xl pci-detach`, a xenopsd
    /// or libvirt unplug, a device given back any other way): the ledger has them
    /// attached to a live owner, the owner's backend no longer lists them (or says they
    /// are leaving), and Xen no longer shows them with the owner. Each one's teardown
    /// runs (companion mode: unmap what the owner's device model left, release, reset,
    /// prepare, verify), so it is clean before any guest gets it; a device the toolstack
    /// already gave to another guest is handed over to that guest's record instead.
    /// `report_only`: say what was found, change nothing.
    pub fn follow_departures(&mut self, report_only: bool) -> Result<Vec<Departure>> {
        let candidates: Vec<DeviceRecord> = heads(self.xs)?
            .into_iter()
            .filter(|r| r.state == DeviceState::Attached && r.step.is_none() && r.owner.is_some())
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let backends = toolstack_backend_devices(self.xs);
        let mut out = Vec::new();
        for rec in candidates {
            let (sbdf, Some(owner)) = (rec.sbdf, rec.owner) else {
                continue;
            };
            if self.protected_domain(owner) {
                continue;
            }
            let entry = backends.iter().find(|b| b.domid == owner && b.sbdf == sbdf);
            if entry.is_some_and(|b| !b.leaving) {
                continue;
            }
            // The toolstack is taking it away (Closing): pciback tears a PV guest's
            // vectors down when it reacts; with decoding on, Xen masks them in the table
            // instead of forcing the Function Mask.
            if entry.is_some() && !report_only && self.ensure_memory_decoding(sbdf)? {
                self.say(NoticeKind::UnplugDecodingOn { sbdf, owner });
            }
            let hv = self.platform.hypervisor();
            // A gone owner is the recovery round's (its @releaseDomain teardown).
            if Liveness::of_owner(&rec, hv.domain_info(owner)?.as_ref()).finished() {
                continue;
            }
            let holder = if held_by_guest(hv, sbdf)?.is_none() {
                Some(DumpOwner::Io)
            } else {
                xen_holder(hv, sbdf)?
            };
            // A destroy in progress also removes the backend, and Xen gives the devices
            // back to dom_io when it kills the domain: asked again, that owner is going,
            // and its teardown is the recovery round's (reason `destroy`).
            if Liveness::of_owner(&rec, hv.domain_info(owner)?.as_ref()).finished() {
                continue;
            }
            let outcome = match holder {
                // Still the owner's (the toolstack is mid-way, or its unplug failed), or
                // unproven: nothing yet.
                Some(DumpOwner::Domain(d)) if d == owner => continue,
                None => continue,
                _ if report_only => {
                    self.say(NoticeKind::LeftRunningOwnerNotCleaned { sbdf, owner });
                    None
                }
                Some(DumpOwner::Domain(to)) => Some(self.hand_over(&rec, owner, to)?),
                Some(DumpOwner::Io | DumpOwner::Xen) => {
                    self.say(NoticeKind::LeftOwnerCleaning { sbdf, owner });
                    Some(self.teardown(sbdf, DEPARTURE_REASON)?)
                }
            };
            out.push(Departure {
                sbdf,
                from: owner,
                outcome,
            });
        }
        Ok(out)
    }

    /// The toolstack gave `rec`'s device from `from` (still running) straight to `to`:
    /// `from`'s pirqs of the device go, `from`'s record ends, `to`'s begins (adoption
    /// proves it from Xen's dump). Nothing is reset: `to` holds the device.
    pub(crate) fn hand_over(
        &mut self,
        rec: &DeviceRecord,
        from: DomId,
        to: DomId,
    ) -> Result<Outcome> {
        let sbdf = rec.sbdf;
        // Only the recorded incarnation's pirqs, and only an HVM guest's (a PV guest's are
        // pciback's); a domain that reused the domid is another guest.
        let info = self.platform.hypervisor().domain_info(from)?;
        if info.as_ref().is_some_and(|i| i.hvm) && Liveness::of_owner(rec, info.as_ref()).exists() {
            self.unmap_device_vectors(sbdf, from)?;
        }
        self.say(NoticeKind::HandedOver { sbdf, from, to });
        forget_record(self.xs, rec)?;
        let epoch = self.adopt(sbdf, to)?;
        Ok(Outcome::HandedOver { to, epoch })
    }

    /// Every device bound to pciback that no guest holds and no record keeps, whose MSI-X
    /// shows what Xen leaves behind (Function Mask forced, or Enable still set): cured in
    /// place as `repair` does (release, prepare, Message Control cleared), so the next
    /// guest the toolstack gives it to gets its interrupts. Devices a record holds are
    /// their teardown's. `report_only`: say what was found, change nothing.
    pub fn cure_unrecorded(&mut self, report_only: bool) -> Result<Vec<Cure>> {
        let pci = self.platform.pci();
        let mut out = Vec::new();
        for sbdf in pci.list_devices()? {
            if pci.driver(sbdf)?.as_deref() != Some(pci::host::PCIBACK) {
                continue;
            }
            let Ok(Some(cap)) = msix_cap(pci, sbdf) else {
                continue;
            };
            if !cap.function_mask && !cap.enabled {
                continue;
            }
            if read_head(self.xs, TxId::NONE, sbdf)?
                .is_some_and(|r| r.state != DeviceState::Assignable)
            {
                continue;
            }
            if held_by_guest(self.platform.hypervisor(), sbdf)?.is_some() {
                continue;
            }
            let found = match (cap.function_mask, cap.enabled) {
                (true, true) => "MSI-X enabled with its Function Mask set",
                (true, false) => "MSI-X Function Mask set (Xen forced it)",
                _ => "MSI-X still enabled",
            };
            if report_only {
                self.say(NoticeKind::Dirty {
                    sbdf,
                    found,
                    cure: CureResult::NotTried,
                });
                out.push(Cure {
                    sbdf,
                    found,
                    done: None,
                });
                continue;
            }
            match self.repair(sbdf) {
                Ok(done) => {
                    self.say(NoticeKind::Dirty {
                        sbdf,
                        found,
                        cure: CureResult::Cured { done: done.clone() },
                    });
                    out.push(Cure {
                        sbdf,
                        found,
                        done: Some(done),
                    });
                }
                Err(e) => {
                    self.say(NoticeKind::Dirty {
                        sbdf,
                        found,
                        cure: CureResult::Failed {
                            error: e.to_string(),
                        },
                    });
                    out.push(Cure {
                        sbdf,
                        found,
                        done: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// For a toolstack's hook that runs before it unplugs a device from a guest: memory
    /// decoding on where Xen looks for it, so the vectors' teardown masks them in the
    /// table and Xen never falls back to forcing the Function Mask.
    ///
    /// The unplug is remembered (`/ptguard/unplug/<device>`, `now` in Unix seconds): a
    /// toolstack whose unplug fails leaves no other trace (libxl's HVM unplug times out
    /// waiting for qemu and writes nothing), and [`Engine::check_unplugs`] reports it.
    pub fn pre_unplug(&mut self, sbdf: Sbdf, now: u64) -> Result<PreUnplug> {
        if !self.platform.pci().exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        let turned_on = self.ensure_memory_decoding(sbdf)?;
        let from_ledger = self.record(sbdf)?.and_then(|r| match r.state {
            DeviceState::Attached => r.owner,
            _ => None,
        });
        let watched_for = from_ledger.or_else(|| toolstack_owner(self.xs, sbdf));
        if let Some(owner) = watched_for {
            let marker = UnplugMarker {
                sbdf,
                owner,
                since: now,
                reported: false,
            };
            write(self.xs, TxId::NONE, &unplug_path(sbdf), &marker.encode())?;
        }
        Ok(PreUnplug {
            sbdf,
            turned_on,
            watched_for,
        })
    }

    /// The unplugs `hook pre-unplug` announced whose guest, alive, still has the device
    /// in its backend, each with how long it has waited. Read only.
    pub fn pending_unplugs(&mut self, now: u64) -> Result<Vec<PendingUnplug>> {
        Ok(self
            .unplug_markers()?
            .into_iter()
            .filter(|(_, pending)| *pending)
            .map(|(m, _)| pending_of(&m, now))
            .collect())
    }

    /// The daemon's part: forgets the announced unplugs that finished (the device left
    /// the guest's backend, or the guest is gone), and logs once, as a warning with the
    /// fix, each one that has not finished after [`UNPLUG_STALL_SECS`].
    pub fn check_unplugs(&mut self, now: u64) -> Result<Vec<PendingUnplug>> {
        let mut out = Vec::new();
        for (mut m, pending) in self.unplug_markers()? {
            if !pending {
                rm(self.xs, TxId::NONE, &unplug_path(m.sbdf))?;
                continue;
            }
            let p = pending_of(&m, now);
            if p.stalled && !m.reported {
                let (s, d) = (m.sbdf, m.owner);
                self.say(NoticeKind::UnplugStalled {
                    sbdf: s,
                    owner: d,
                    waited: p.waited,
                });
                m.reported = true;
                write(self.xs, TxId::NONE, &unplug_path(s), &m.encode())?;
            }
            out.push(p);
        }
        Ok(out)
    }

    /// The devices' keys under [`UNPLUGS`] (none when the directory was never made).
    pub(crate) fn unplug_names(&mut self) -> Result<Vec<String>> {
        children(self.xs, TxId::NONE, UNPLUGS)
    }

    /// Every marker, with whether its unplug is still pending: the guest lives and its
    /// backend still lists the device as not leaving. A malformed marker is dropped with
    /// a warning.
    fn unplug_markers(&mut self) -> Result<Vec<(UnplugMarker, bool)>> {
        let names = self.unplug_names()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let backends = toolstack_backends(self.xs);
        let mut out = Vec::new();
        for name in names {
            let path = format!("{UNPLUGS}/{name}");
            let Ok(sbdf) = Sbdf::from_xs_key(&name) else {
                self.say(NoticeKind::MalformedDropped {
                    path: path.clone(),
                    why: "not a device's key".into(),
                });
                rm(self.xs, TxId::NONE, &path)?;
                continue;
            };
            let text = read_opt(self.xs, TxId::NONE, &path)?.unwrap_or_default();
            let m = match UnplugMarker::decode(sbdf, &text) {
                Ok(m) => m,
                Err(why) => {
                    self.say(NoticeKind::MalformedDropped {
                        path: format!("{path} = {text:?}"),
                        why: why.to_string(),
                    });
                    rm(self.xs, TxId::NONE, &path)?;
                    continue;
                }
            };
            let alive = Liveness::ask(self.platform.hypervisor(), m.owner)?.may_run();
            let listed = backends.contains(&(m.owner, sbdf));
            out.push((m, alive && listed));
        }
        Ok(out)
    }

    /// For a toolstack's hook that runs before it resets a device (xenopsd's
    /// `pci-flr-script` `flr-pre`, libvirt's hooks, a wrapper around `xl`): make sure no
    /// pirq of a finished owner is left on the device. Idempotent, and safe beside the
    /// daemon (every step is a transaction or an idempotent hypercall).
    pub fn pre_reset(&mut self, sbdf: Sbdf) -> Result<PreReset> {
        let rec = self.record(sbdf)?;
        let from_ledger = rec.as_ref().and_then(|r| match r.state {
            DeviceState::Attached | DeviceState::TearingDown | DeviceState::Quarantined => r.owner,
            DeviceState::Assignable => None,
        });
        let owner = from_ledger.or_else(|| toolstack_owner(self.xs, sbdf));
        let Some(domid) = owner else {
            return Ok(PreReset::NoOwner);
        };
        // The ledger's owner by its incarnation; the toolstack's by its domid.
        let hv = self.platform.hypervisor();
        let life = match rec.as_ref().filter(|_| from_ledger.is_some()) {
            Some(r) => Liveness::of_owner(r, hv.domain_info(domid)?.as_ref()),
            None => Liveness::ask(hv, domid)?,
        };
        if life.may_run() {
            return Ok(PreReset::OwnerRunning { domid });
        }
        if from_ledger.is_some() {
            let outcome = self.teardown(sbdf, "pre-reset")?;
            return Ok(PreReset::TornDown { domid, outcome });
        }
        match self.sweep(domid) {
            Ok(report) => Ok(PreReset::Swept { report }),
            // It finished dying between the two calls: Xen freed everything.
            Err(EngineError::Xen(e)) if e.errno() == Some(Errno::ESRCH) => Ok(PreReset::NoOwner),
            Err(e) => Err(e),
        }
    }
}
