//! The teardown of docs/design.md ("The cure") (revoke, unbind, release, deassign, reset, prepare,
//! verify), each step journaled and idempotent, so that a crash resumes it from its step
//! (when is `reconcile.rs`'s to decide).

use pci::config::regs::{COMMAND, MSIX_FLAGS};
use pci::config::Command;
use pci::{ConfigSpace, Sbdf};
use xen::{DomId, Errno, Pirq, XenError};
use xenstore::TxId;

use crate::ledger::*;
use crate::xen_dump::DumpOwner;
use crate::{EngineError, Liveness, NoticeKind, QuarantineReason, VerifyProblem};

use crate::engine::*;
use crate::plan::{step_work, StepWork, TeardownFacts};
use crate::reconcile::{decide, Decision, Trigger};

/// How a release step ended.
enum Released {
    Yes,
    /// A finished owner's unknown pirqs were swept: release again.
    SweptRetry,
    /// The teardown ends here: quarantined, or handed over to the domain that holds the
    /// device now.
    Ended(Outcome),
}

type Result<T> = std::result::Result<T, EngineError>;

impl Engine<'_> {
    /// Starts (or resumes) the teardown of one device, recording `reason`: the record is
    /// read and, if attached, marked `tearing-down` in one transaction ([`decide`] for a
    /// named device).
    pub(crate) fn teardown(&mut self, sbdf: Sbdf, reason: &'static str) -> Result<Outcome> {
        let start = self.xs.transaction(
            |xs, tx| -> Result<std::result::Result<DeviceRecord, Outcome>> {
                let mut rec =
                    read_head(xs, tx, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
                match decide(&rec, None, &Trigger::Unplug(sbdf, reason)) {
                    Decision::Report(o) => Ok(Err(o)),
                    Decision::Start(reason) => {
                        rec.state = DeviceState::TearingDown;
                        rec.step = Some(Step::Revoke);
                        rec.reason = Some(reason.to_string());
                        write_head(xs, tx, &rec)?;
                        Ok(Ok(rec))
                    }
                    Decision::Resume | Decision::Leave => Ok(Ok(rec)),
                }
            },
        )?;
        match start {
            Err(o) => Ok(o),
            // The head as the transaction left it; the bindings read once, here (outside
            // the transaction: a device's thousands of bindings would make it one of
            // thousands of nodes).
            Ok(mut rec) => {
                read_bindings(self.xs, TxId::NONE, &mut rec)?;
                self.run_teardown(rec)
            }
        }
    }

    /// Journals the step the teardown resumes from.
    fn set_step(&mut self, rec: &mut DeviceRecord, step: Step) -> Result<()> {
        rec.step = Some(step);
        write_head(self.xs, TxId::NONE, rec)
    }

    /// Tears down `sbdf`'s INTx in `owner`: its own guest link always; the pirq (and the
    /// line's IRQ permission) only if no other device of `owner` shares the machine line,
    /// since unmapping a pirq force-unbinds every device bound to it (qemu refcounts the
    /// same way). The caller forgets the line's index node ([`forget_intx_line`]) in the
    /// transaction that forgets the binding, so a resumed teardown decides the same way.
    pub(crate) fn release_intx_line(
        &mut self,
        sbdf: Sbdf,
        owner: DomId,
        b: &Binding,
        pirq: Pirq,
    ) -> Result<()> {
        let hv = self.platform.hypervisor();
        if b.state != BindingState::Mapped {
            // Mapped only (attach's map, never bound by a device model): Xen 4.17.5
            // answers an unbind with -EINVAL; there is no link to remove.
            unless_gone(hv.unbind_pt_irq(owner, &b.pt_irq(pirq, sbdf)))?;
        }
        let own = sbdf.xs_key();
        let others: Vec<String> =
            children(self.xs, TxId::NONE, &intx_line_path(owner, b.gsi, None))?
                .into_iter()
                .filter(|n| *n != own)
                .collect();
        if others.is_empty() {
            unless_gone(hv.unmap_pirq(owner, pirq))?;
            unless_gone(hv.irq_permission(owner, Pirq(b.gsi as i32), false))?;
        } else {
            tracing::info!(%sbdf, %owner, gsi = b.gsi, shared_with = ?others, "INTx line shared with other devices of the guest: its pirq stays mapped for them");
        }
        Ok(())
    }

    /// Keeps the device from every guest, saying why; the teardown resumes from its step.
    pub(crate) fn quarantine(
        &mut self,
        rec: &mut DeviceRecord,
        reason: QuarantineReason,
    ) -> Result<Outcome> {
        rec.state = DeviceState::Quarantined;
        rec.reason = Some(reason.to_string());
        write_head(self.xs, TxId::NONE, rec)?;
        self.say(NoticeKind::Quarantined {
            sbdf: rec.sbdf,
            reason: reason.clone(),
        });
        Ok(Outcome::Quarantined { reason })
    }

    /// Turns memory decoding on so Xen masks vectors in the table instead of falling back
    /// to `host_maskall` (docs/design.md, "The cure", step 2, xen-semantics.md §1.3).
    /// Turns memory decoding on where Xen looks for it (`memory_decoded()`): the function
    /// itself, or for an SR-IOV virtual function its physical function (a VF's own Memory
    /// bit is hard-wired 0, so writing it would change nothing).
    /// Returns whether it was off.
    pub(crate) fn ensure_memory_decoding(&mut self, sbdf: Sbdf) -> Result<bool> {
        let pci = self.platform.pci();
        let sbdf = pci.physfn(sbdf)?.unwrap_or(sbdf);
        let cmd = ConfigSpace::new(pci.read_config(sbdf)?).map_or(Command(0), |c| c.command());
        if !cmd.memory() {
            pci.write_config(sbdf, COMMAND, &cmd.with_memory().0.to_le_bytes())?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs a teardown from its journaled step to the end: each step's work as planned
    /// ([`step_work`]), the next step journaled after it. `rec` is the record just read,
    /// bindings included.
    pub(crate) fn run_teardown(&mut self, mut rec: DeviceRecord) -> Result<Outcome> {
        // Read once; each step journals its successor and updates this copy (the broker
        // refuses a tearing-down device, so nobody else changes the record meanwhile).
        let sbdf = rec.sbdf;
        // A domain that reused the owner's domid is another guest: none of the owner-directed
        // calls (permissions, backend, unbind/unmap, deassign) may touch it. Xen already
        // freed everything of the owner when it destroyed it.
        let owner_life =
            Liveness::ask_owner(self.platform.hypervisor(), &rec)?.unwrap_or(Liveness::Gone);
        if owner_life == Liveness::Replaced {
            self.say(NoticeKind::DomidReused { sbdf });
        }
        let facts = TeardownFacts::of(&rec, owner_life);
        let mut swept = false;
        // The targeted unmap ran (once per pass): how many vectors it could not name.
        let mut targeted: Option<usize> = None;
        loop {
            let owner = rec
                .owner
                .ok_or_else(|| corrupt(device_path(sbdf), "", "no owner during teardown"))?;
            if self.protected.contains(owner) {
                // Only a hand-edited ledger (or a domain protected after the attach) gets
                // here: revoking or unbinding would strip a protected domain.
                return self.requarantine(&mut rec, QuarantineReason::ProtectedOwner { owner });
            }
            let step = rec.step.unwrap_or(Step::Revoke);
            self.checkpoint(sbdf, CrashStep::Teardown(step))?;
            match step_work(step, &facts) {
                StepWork::Skip { .. } => {}
                StepWork::Revoke => self.revoke(sbdf, owner)?,
                StepWork::ForceUnbind { unbind } => {
                    // Journals `release` with the forgotten bindings, in one transaction.
                    self.force_unbind(&mut rec, owner, unbind)?;
                    continue;
                }
                StepWork::ReleaseMsix => {
                    match self.release(&mut rec, owner, &mut swept, &mut targeted)? {
                        Released::Yes => {}
                        Released::SweptRetry => continue,
                        Released::Ended(o) => return Ok(o),
                    }
                }
                StepWork::Deassign => {
                    let hv = self.platform.hypervisor();
                    match hv.deassign_device(owner, sbdf) {
                        // A domain without an IOMMU context never had the device (an attach
                        // refused at assign, rolled back through here).
                        Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {}
                        r => unless_gone(r)?,
                    }
                    // Once the owner let go, no guest may hold the device: one that does is
                    // another domain (the ledger's owner never had it, or it was given on
                    // behind ptguard's back), and the reset and prepare that follow would
                    // act under it.
                    if let Some(errno) = held_by_guest(hv, sbdf)? {
                        let why = QuarantineReason::HeldAfterDeassign { owner, errno };
                        return self.requarantine(&mut rec, why);
                    }
                }
                StepWork::CheckHolder => {
                    if let Some(o) = self.check_holder(&mut rec, owner)? {
                        return Ok(o);
                    }
                }
                StepWork::Reset => {
                    self.pciback_give_back(&rec, owner)?;
                    let pci = self.platform.pci();
                    if pci.can_reset(sbdf)? {
                        pci.reset(sbdf)?;
                    } else {
                        self.say(NoticeKind::NoResetMethod { sbdf });
                    }
                }
                StepWork::PrepareMsix => {
                    if let Some(o) = self.prepare(&mut rec)? {
                        return Ok(o);
                    }
                }
                StepWork::Verify { forget } => return self.verify(&mut rec, forget),
            }
            match step.next() {
                Some(next) => self.set_step(&mut rec, next)?,
                None => return Err(corrupt(device_path(sbdf), "", "no step after verify")),
            }
        }
    }

    /// Revoke: the owner's BAR and IRQ permissions, the device's backend entry; when that
    /// was the backend's last device, pciback's give-back awaited.
    fn revoke(&mut self, sbdf: Sbdf, owner: DomId) -> Result<()> {
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        bar_permissions(hv, pci, owner, sbdf, false, unless_gone)?;
        // The INTx line's permission goes with its pirq (Unbind): another device of the
        // same guest may share the line.
        use crate::lifecycle::{BackendRemoval, SharedBackendExit};
        let whole = match self.remove_backend(sbdf, owner, false)? {
            BackendRemoval::Whole => true,
            BackendRemoval::Entry | BackendRemoval::NotListed => false,
            BackendRemoval::Shared(peers) => {
                let may_run = crate::lifecycle::owner_may_run(hv, owner)?;
                match self.shared_backend_exit(sbdf, owner, &peers, may_run)? {
                    SharedBackendExit::WholeBackend => {
                        self.remove_whole_backend(owner)?;
                        true
                    }
                    SharedBackendExit::Entry => {
                        self.remove_backend(sbdf, owner, true)?;
                        false
                    }
                    SharedBackendExit::Handshake => {
                        self.reconfigure_out(sbdf, owner)?;
                        self.remove_backend(sbdf, owner, true)?;
                        false
                    }
                }
            }
        };
        if whole {
            // pciback resets and gives the device back in its own worker, after the
            // Xenstore removal: everything from here on must come after that, or its reset
            // (and the old pciback's Command write) would undo ours.
            if !pci.wait_backend_released(owner.0, PCIBACK_RELEASE)? {
                return Err(EngineError::PcibackHoldsBackend {
                    sbdf,
                    domid: owner,
                    waited: PCIBACK_RELEASE,
                });
            }
        }
        Ok(())
    }

    /// Makes pciback let go of a device that left a running HVM guest whose PCI backend
    /// still lists other devices. libxl's unplug takes the device's nodes out without a
    /// handshake anyone answers (pciback reconfigures on the guest's pcifront, and an HVM
    /// guest has none), so pciback keeps it exported there until the whole backend goes,
    /// and then resets it under whoever has it by then; meanwhile no other guest's backend
    /// can export it. Unbinding it from pciback releases it from that backend (reset,
    /// restore: pcistub_remove → xen_pcibk_release_pci_dev), binding it again seizes it
    /// afresh. Runs after the holder check: Xen shows the device with no guest.
    /// Only a departure needs it: ptguard's own detach takes a device pciback exported out
    /// of a shared backend through the handshake, or refuses (revoke).
    fn pciback_give_back(&mut self, rec: &DeviceRecord, owner: DomId) -> Result<()> {
        let sbdf = rec.sbdf;
        if rec.reason.as_deref() != Some(crate::companion::DEPARTURE_REASON) {
            return Ok(());
        }
        if self.backend_peers(sbdf, owner)?.is_empty() {
            return Ok(());
        }
        let pci = self.platform.pci();
        if pci.driver(sbdf)?.as_deref() != Some(pci::host::PCIBACK) {
            return Ok(());
        }
        let info = self.platform.hypervisor().domain_info(owner)?;
        let life = Liveness::of_owner(rec, info.as_ref());
        if !info.is_some_and(|i| i.hvm) || !life.exists() || life.finished() {
            return Ok(());
        }
        pci.driver_unbind(pci::host::PCIBACK, sbdf)?;
        pci.driver_bind(pci::host::PCIBACK, sbdf)?;
        self.say(NoticeKind::PcibackGaveBack { sbdf, owner });
        Ok(())
    }

    /// Unbind: decoding on, each known binding unbound and unmapped (`unbind`), then all of
    /// them forgotten and `release` journaled in one transaction.
    fn force_unbind(&mut self, rec: &mut DeviceRecord, owner: DomId, unbind: bool) -> Result<()> {
        let sbdf = rec.sbdf;
        let hv = self.platform.hypervisor();
        self.ensure_memory_decoding(sbdf)?;
        let known: Vec<Binding> = rec
            .bindings
            .iter()
            .filter(|b| b.pirq.is_some())
            .copied()
            .collect();
        for b in known.iter().filter(|_| unbind) {
            let Some(pirq) = b.pirq else { continue };
            self.checkpoint(sbdf, CrashStep::ForceUnbind(b.key))?;
            if b.key == BindingKey::Intx {
                self.release_intx_line(sbdf, owner, b, pirq)?;
            } else {
                release_msix_pirq(hv, owner, sbdf, b, pirq)?;
            }
        }
        self.checkpoint(sbdf, CrashStep::ForgetBindings)?;
        // The lost-maps count stays until the teardown ends: Release needs it.
        let all_known = known.len() == rec.bindings.len() && rec.lost_maps == 0;
        let intx_gsi = known
            .iter()
            .find(|b| b.key == BindingKey::Intx)
            .map(|b| b.gsi);
        rec.bindings.retain(|b| b.pirq.is_none());
        rec.step = Some(Step::Release);
        let rec = &*rec;
        self.xs.transaction(|xs, tx| -> Result<()> {
            if let Some(gsi) = intx_gsi {
                forget_intx_line(xs, tx, owner, gsi, sbdf)?;
            }
            if all_known {
                // One recursive rm instead of one per binding.
                rm(xs, tx, &bindings_path(sbdf))?;
            } else {
                for b in &known {
                    rm(xs, tx, &binding_path(sbdf, &b.key))?;
                }
            }
            write_head(xs, tx, rec)
        })
    }

    /// Release: `PHYSDEVOP_release_msix`, with a finished owner's unknown pirqs swept once
    /// on `-EBUSY`; quarantined when something still maps a vector.
    fn release(
        &mut self,
        rec: &mut DeviceRecord,
        owner: DomId,
        swept: &mut bool,
        targeted: &mut Option<usize>,
    ) -> Result<Released> {
        let sbdf = rec.sbdf;
        let hv = self.platform.hypervisor();
        let mut released = hv.release_msix(sbdf);
        if released.as_ref().err().and_then(XenError::errno) == Some(Errno::EBUSY)
            && hv.prepare_msix(sbdf).is_ok()
        {
            // The count was 0: a crash hit after our release and before the step was
            // recorded. Prepare took it back to 1; release again.
            released = hv.release_msix(sbdf);
        }
        match released {
            // Deassign only once no stale binding is left: until then the device stays with
            // its (dying) owner, never with a new one.
            Ok(()) => Ok(Released::Yes),
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                // The toolstack may have given the device to another guest while this
                // teardown waited (a PV owner's pciback, a quarantine): the vectors mapped
                // now may be that guest's. The record follows the device; nothing of the
                // new holder is touched.
                if held_by_guest(hv, sbdf)?.is_some() {
                    if let Some(DumpOwner::Domain(h)) = xen_holder(hv, sbdf)? {
                        if h != owner && Liveness::ask(hv, h)?.may_run() {
                            return Ok(Released::Ended(self.hand_over(rec, owner, h)?));
                        }
                    }
                }
                // Asked again: the owner may have finished while the teardown waited.
                let info = hv.domain_info(owner)?;
                let life = Liveness::of_owner(rec, info.as_ref());
                let info = info.filter(|_| life.exists());
                // A PV guest's MSI/MSI-X vectors are mapped for it by dom0's kernel
                // (pciback's enable_msix), which unmaps them itself when pciback lets go
                // of the device: unmapping them here makes dom0's own unmap fail (-EINVAL)
                // and Linux then leaks the IRQs. Wait for pciback instead.
                if info.as_ref().is_some_and(|i| !i.hvm) {
                    let why = QuarantineReason::PvVectorsArePciback {
                        owner,
                        finished: life.finished(),
                    };
                    return Ok(Released::Ended(self.requarantine(rec, why)?));
                }
                // Bindings the ledger does not know (a stock device model's) of an owner
                // that will never run again: sweep them, with decoding on, and release
                // again. Idempotent, so a crash here resumes at this step and sweeps again.
                if !*swept && life.exists() && life.finished() {
                    *swept = true;
                    self.ensure_memory_decoding(sbdf)?;
                    self.checkpoint(sbdf, CrashStep::Sweep(owner))?;
                    if !self.sweep(owner)?.unmapped.is_empty() {
                        return Ok(Released::SweptRetry);
                    }
                }
                // An HVM owner that still runs (a hot-unplug whose device model died, or
                // bypassed the broker): unmap exactly the pirqs Xen shows bound to this
                // device's vectors for the owner, and nothing else of it.
                if targeted.is_none() && info.is_some() {
                    self.ensure_memory_decoding(sbdf)?;
                    self.checkpoint(sbdf, CrashStep::UnmapOwnerVectors(owner))?;
                    let (unmapped, left) = self.unmap_device_vectors(sbdf, owner)?;
                    *targeted = Some(left);
                    if unmapped > 0 {
                        return Ok(Released::SweptRetry);
                    }
                }
                // What the dump showed that no one can name: the same reason on every pass.
                let unnamed = targeted.unwrap_or(0);
                let unconfirmed = rec.bindings.len();
                let lost = rec.lost_maps as usize + unconfirmed;
                let why = match info {
                    Some(_) if life.may_run() && lost > 0 => {
                        QuarantineReason::LostMappings { owner, lost }
                    }
                    Some(_) if life.may_run() && unnamed > 0 => {
                        QuarantineReason::UnnamedVectors { owner, unnamed }
                    }
                    Some(_) if life.may_run() => QuarantineReason::UnknownBindings { owner },
                    Some(_) => QuarantineReason::FinishedOwnerBindings {
                        owner,
                        liveness: life,
                        unconfirmed,
                    },
                    None => QuarantineReason::MappedByAnotherDomain,
                };
                Ok(Released::Ended(self.requarantine(rec, why)?))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Quarantines with `why`, or only reports it when the record already says so (a
    /// retried round must not log the same quarantine again).
    fn requarantine(&mut self, rec: &mut DeviceRecord, why: QuarantineReason) -> Result<Outcome> {
        if rec.state == DeviceState::Quarantined
            && rec.reason.as_deref() == Some(why.to_string().as_str())
        {
            return Ok(Outcome::Quarantined { reason: why });
        }
        self.quarantine(rec, why)
    }

    /// Unbinds and unmaps the pirqs Xen shows `owner` has bound to `sbdf`'s vectors (its
    /// `Q` and `i` dumps), never another device's nor another domain's. Returns how many it unmapped
    /// and how many of the device's vectors are mapped but unnamed (bound to no guest).
    pub(crate) fn unmap_device_vectors(
        &mut self,
        sbdf: Sbdf,
        owner: DomId,
    ) -> Result<(usize, usize)> {
        let hv = self.platform.hypervisor();
        let Some(v) = device_vectors(hv, sbdf)? else {
            return Ok((0, 0));
        };
        let mut unmapped = Vec::new();
        for (_, d, pirq) in v.bound.iter().filter(|(_, d, _)| *d == owner) {
            // The dpci unbind first, as the device model would: an unmap of a pirq still
            // bound force-unbinds it, and Xen then keeps the domain's IRQ-to-pirq entry
            // (as -pirq) until the guest unbinds, so a later map in that running domain that
            // gets the same IRQ answers -EBUSY (seen on 4.17.5). An MSI unbind needs only
            // the pirq (`pt_irq_destroy_bind`).
            let bind = xen::PtIrq::Msi {
                pirq: *pirq,
                gvec: 0,
                gflags: 0,
                gtable: 0,
            };
            unless_gone(hv.unbind_pt_irq(*d, &bind))?;
            match hv.unmap_pirq(*d, *pirq) {
                Ok(()) => unmapped.push(*pirq),
                // Unmapped meanwhile (its device model after all), or the domain went.
                Err(e) if matches!(e.errno(), Some(Errno::EINVAL) | Some(Errno::ESRCH)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let others = v.bound.iter().filter(|(_, d, _)| *d != owner).count();
        if !unmapped.is_empty() {
            self.say(NoticeKind::OwnerVectorsUnmapped {
                sbdf,
                owner,
                pirqs: unmapped.clone(),
            });
        }
        if others > 0 {
            self.say(NoticeKind::ForeignVectorsLeft {
                sbdf,
                owner,
                count: others,
            });
        }
        Ok((unmapped.len(), v.unbound.len() + others))
    }

    /// Companion mode's guard before the reset: the toolstack deassigns, so Xen must show
    /// the device with dom_io or dom0, or with its owner while that owner is finished
    /// (the toolstack deassigns after ptguard's teardown). Another domain holding it got
    /// it from the toolstack already: the record follows it there, nothing is reset.
    fn check_holder(&mut self, rec: &mut DeviceRecord, owner: DomId) -> Result<Option<Outcome>> {
        let sbdf = rec.sbdf;
        let hv = self.platform.hypervisor();
        if held_by_guest(hv, sbdf)?.is_none() {
            return Ok(None);
        }
        let holder = xen_holder(hv, sbdf)?;
        match holder {
            Some(DumpOwner::Io | DumpOwner::Xen) => Ok(None),
            Some(DumpOwner::Domain(h)) if h == owner => {
                // Whichever incarnation the domid names now: one that may run holds it.
                if Liveness::ask(hv, owner)?.finished() {
                    return Ok(None);
                }
                let why = QuarantineReason::NotYetDeassigned { owner };
                self.requarantine(rec, why).map(Some)
            }
            Some(DumpOwner::Domain(h)) => self.hand_over(rec, owner, h).map(Some),
            None => self
                .requarantine(rec, QuarantineReason::HolderUnproven)
                .map(Some),
        }
    }

    /// Prepare: `PHYSDEVOP_prepare_msix`, then Enable and Function Mask cleared; `Some`
    /// when the device had to be quarantined instead.
    fn prepare(&mut self, rec: &mut DeviceRecord) -> Result<Option<Outcome>> {
        let sbdf = rec.sbdf;
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        let mut r = hv.prepare_msix(sbdf);
        if r.as_ref().err().and_then(XenError::errno) == Some(Errno::ENXIO) {
            self.ensure_memory_decoding(sbdf)?;
            r = hv.prepare_msix(sbdf);
        }
        match r {
            Ok(()) => {}
            // Already prepared: a resumed teardown that crashed after this call.
            Err(e) if e.errno() == Some(Errno::EBUSY) && self.prepared_by_us(sbdf)? => {}
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                return self
                    .quarantine(rec, QuarantineReason::PrepareBusy)
                    .map(Some);
            }
            Err(e) => return Err(e.into()),
        }
        // Enable and Function Mask off: some devices keep MASKALL across reset.
        let cfg = ConfigSpace::new(pci.read_config(sbdf)?).and_then(|c| c.parse());
        if let Ok(Some(m)) = cfg.map(|c| c.msix) {
            pci.write_config(sbdf, m.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
        }
        Ok(None)
    }

    /// Verify: only what a real host can read, the config space (Xen's own MSI-X state is
    /// the independent oracle's to check, `World::msix_clean`); then assignable with the
    /// next epoch, or forgotten.
    fn verify(&mut self, rec: &mut DeviceRecord, forget: bool) -> Result<Outcome> {
        let sbdf = rec.sbdf;
        let cfg = ConfigSpace::new(self.platform.pci().read_config(sbdf)?).and_then(|c| c.parse());
        let problem = match cfg {
            Ok(c) => match c.msix {
                Some(m) if m.function_mask => Some(VerifyProblem::FunctionMaskSet),
                Some(m) if m.enabled => Some(VerifyProblem::MsixStillEnabled),
                _ => None,
            },
            Err(e) => Some(VerifyProblem::ConfigUnreadable(e.to_string())),
        };
        if let Some(problem) = problem {
            return self.quarantine(rec, QuarantineReason::VerificationFailed { problem });
        }
        let epoch = next_epoch(sbdf, rec.epoch)?;
        if forget {
            // The toolstack owns the device between guests: ptguard keeps a record only
            // while a guest holds it (the next one is adopted anew).
            forget_record(
                self.xs,
                &DeviceRecord {
                    epoch,
                    ..rec.clone()
                },
            )?;
            return Ok(Outcome::Assignable { epoch });
        }
        let clean = DeviceRecord {
            driver: rec.driver.take(),
            msix_size: rec.msix_size,
            table_base: rec.table_base,
            ..DeviceRecord::new(sbdf, DeviceState::Assignable, epoch)
        };
        self.xs.transaction(|xs, tx| -> Result<()> {
            write_head(xs, tx, &clean)?;
            unindex_owner(xs, tx, rec)?;
            rm(xs, tx, &bindings_path(sbdf))
        })?;
        Ok(Outcome::Assignable { epoch })
    }

    /// Whether the device is prepared by pciback/us already (the step after a crash that
    /// happened between `prepare_msix` and recording it): a second release would say so.
    fn prepared_by_us(&mut self, sbdf: Sbdf) -> Result<bool> {
        // release_msix succeeds only with exactly prepare's reference; redo prepare at once.
        let hv = self.platform.hypervisor();
        match hv.release_msix(sbdf) {
            Ok(()) => {
                // Xen sets the table up only for a device that decodes memory (-ENXIO);
                // whoever prepared it first (pciback's bind) may have left decoding off.
                self.ensure_memory_decoding(sbdf)?;
                hv.prepare_msix(sbdf)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}
