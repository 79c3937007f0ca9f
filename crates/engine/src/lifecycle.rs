//! assignable-add/-remove, adoption, repair and attach: how a device enters the ledger and
//! is given to a guest (every multi-node change one Xenstore transaction).

use pci::config::regs::MSIX_FLAGS;
use pci::{pciback, Sbdf};
use xen::abi::XEN_DOMCTL_DEV_RDM_RELAXED;
use xen::{DomId, Errno, Pirq};
use xenstore::{Access, TxId};

use crate::ledger::*;
use crate::xen_dump::DumpOwner;
use crate::{EngineError, Liveness, NoticeKind};

use crate::engine::*;

type Result<T> = std::result::Result<T, EngineError>;

impl Engine<'_> {
    /// Seizes the device into pciback, quarantines it in `dom_io` and records it.
    pub fn assignable_add(&mut self, sbdf: Sbdf) -> Result<DeviceRecord> {
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        if let Some(r) = self.record(sbdf)? {
            return Err(EngineError::AlreadyManaged {
                sbdf,
                state: r.state,
            });
        }
        self.init_ledger()?;
        let (msix_size, table_base) = msix_layout(pci, sbdf)?;
        self.checkpoint(sbdf, CrashStep::AddSeize)?;
        let seized = pciback::seize(pci, sbdf)?;
        self.checkpoint(sbdf, CrashStep::AddAssignDomIo)?;
        match self
            .platform
            .hypervisor()
            .assign_device(DomId::IO, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)
        {
            // Xen before 4.11.3/4.12.2/4.13.0 has no dom_io to assign to: keep the device in
            // pciback, unassigned, as the toolstacks of that time did.
            Err(e) if e.errno() == Some(Errno::ESRCH) => {
                tracing::info!(%sbdf, "Xen has no quarantine (assign to dom_io: -ESRCH); the device stays in pciback, owned by dom0");
            }
            r => r?,
        }
        self.checkpoint(sbdf, CrashStep::AddRecord)?;
        let floor = epoch_floor(self.xs, TxId::NONE, sbdf)?;
        let rec = DeviceRecord {
            driver: seized.original_driver,
            msix_size,
            table_base: Some(table_base),
            ..DeviceRecord::new(sbdf, DeviceState::Assignable, floor)
        };
        write_head(self.xs, TxId::NONE, &rec)?;
        Ok(rec)
    }

    /// Returns an assignable device to dom0 and its original driver, and forgets it.
    pub fn assignable_remove(&mut self, sbdf: Sbdf) -> Result<()> {
        let rec = self.require(sbdf)?;
        if rec.state != DeviceState::Assignable {
            return Err(EngineError::NotAssignable {
                sbdf,
                state: rec.state,
                hint: " (detach it first)",
            });
        }
        let hv = self.platform.hypervisor();
        // The ledger may be wrong (edited by hand, or a toolstack gave the device away
        // behind ptguard's back): ask Xen whether a guest holds it before handing it to
        // dom0's driver.
        if let Some(errno) = held_by_guest(hv, sbdf)? {
            return Err(EngineError::HeldByGuest {
                sbdf,
                state: rec.state,
                errno,
            });
        }
        // -ENODEV here: not in dom_io, i.e. already dom0's (test_assign said it is free).
        unless_gone(hv.deassign_device(DomId::IO, sbdf))?;
        self.checkpoint(sbdf, CrashStep::RemoveRelease)?;
        pciback::release(self.platform.pci(), sbdf, rec.driver.as_deref())?;
        forget_record(self.xs, &rec)
    }

    /// Records a device some guest already holds (the toolstack gave it, or its ledger entry
    /// was lost) as attached to `domid`, so that its teardown is ptguard's. Its bindings are
    /// unknown: that teardown keeps it quarantined until `domid` is gone.
    pub fn adopt(&mut self, sbdf: Sbdf, domid: DomId) -> Result<u64> {
        self.adopt_with_model(sbdf, domid, None)
    }

    /// [`Engine::adopt`], recording the stubdomain that runs the guest's device model.
    pub fn adopt_with_model(
        &mut self,
        sbdf: Sbdf,
        domid: DomId,
        dm_domain: Option<DomId>,
    ) -> Result<u64> {
        self.refuse_protected(domid, "adopt a device of")?;
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        let info = may_run(hv, domid)?;
        // Only what Xen says a guest holds: anything else is assignable-add/attach's.
        if held_by_guest(hv, sbdf)?.is_none() {
            return Err(EngineError::NotHeld { sbdf });
        }
        // And only the guest Xen says holds it: a typo or a stale backend node naming
        // another live domain would make that domain's end tear down (reset) a device
        // the real holder uses.
        match xen_holder(hv, sbdf)? {
            Some(DumpOwner::Domain(d)) if d == domid => {}
            Some(DumpOwner::Domain(holder)) => {
                return Err(EngineError::HeldByAnother {
                    sbdf,
                    named: domid,
                    holder,
                })
            }
            Some(DumpOwner::Io | DumpOwner::Xen) => return Err(EngineError::NotHeld { sbdf }),
            None => return Err(EngineError::HolderUnproven { sbdf, named: domid }),
        }
        let (msix_size, table_base) = msix_layout(pci, sbdf)?;
        self.init_ledger()?;
        self.xs.transaction(|xs, tx| -> Result<u64> {
            let old = read_head(xs, tx, sbdf)?;
            if let Some(r) = old.as_ref().filter(|r| r.state != DeviceState::Assignable) {
                return Err(EngineError::AlreadyManaged {
                    sbdf,
                    state: r.state,
                });
            }
            let epoch = match &old {
                Some(r) => next_epoch(sbdf, r.epoch)?,
                None => next_epoch(sbdf, epoch_floor(xs, tx, sbdf)?)?,
            };
            let managed = old.is_some();
            let mut rec = DeviceRecord {
                driver: old.and_then(|r| r.driver),
                msix_size,
                table_base: Some(table_base),
                reason: Some("adopted".into()),
                // The toolstack gave the device and takes it back (permissions, backend,
                // deassign); ptguard's teardown is the MSI-X part: sweep, release, reset,
                // prepare, verify. A device ptguard already managed (assignable-add) goes
                // back to assignable after it; one it did not is forgotten.
                mode: Some(if managed {
                    CompanionMode::CompanionKeep
                } else {
                    CompanionMode::Companion
                }),
                dm_domain,
                ..DeviceRecord::new(sbdf, DeviceState::Attached, epoch)
            };
            attached_to(&mut rec, &info, epoch);
            write_head(xs, tx, &rec)?;
            index_owner(xs, tx, &rec)?;
            Ok(epoch)
        })
    }

    /// Makes a stuck device that no guest holds usable again without unbinding it from
    /// pciback: memory decoding on, `release_msix` then `prepare_msix` (Xen's 0→1 path
    /// clears `host_maskall` and writes Function Mask from `guest_maskall`), Enable and
    /// Function Mask cleared, and a reset if the mask survives. Returns what it did, in
    /// order; fails naming who holds the device, or what is left, when it cannot.
    pub fn repair(&mut self, sbdf: Sbdf) -> Result<Vec<String>> {
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        if !pci.exists(sbdf)? {
            return Err(EngineError::NoSuchDevice { sbdf });
        }
        if let Some(r) = self.record(sbdf)? {
            if !matches!(r.state, DeviceState::Assignable) {
                return Err(EngineError::NotAssignable {
                    sbdf,
                    state: r.state,
                    hint: " (a guest may still hold it: `ptguard detach` it, or let `ptguard watch` finish its teardown)",
                });
            }
        }
        if let Some(errno) = held_by_guest(hv, sbdf)? {
            return Err(EngineError::HeldByGuest {
                sbdf,
                state: DeviceState::Assignable,
                errno,
            });
        }
        let driver = pci.driver(sbdf)?;
        if driver.as_deref() != Some(pci::host::PCIBACK) {
            return Err(EngineError::NotInPciback { sbdf, driver });
        }
        let msix = |pci: &dyn pci::PciHost| msix_cap(pci, sbdf);
        let Some(cap) = msix(pci)? else {
            return Ok(vec![
                "no MSI-X capability: nothing Xen keeps to repair".into()
            ]);
        };
        let mut done = Vec::new();
        self.ensure_memory_decoding(sbdf)?;
        done.push("memory decoding on".to_string());
        match hv.release_msix(sbdf) {
            Ok(()) => done.push("release_msix: 0".into()),
            // used_entries is not exactly 1: 0 (never prepared) or vectors still mapped.
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                done.push("release_msix: -EBUSY (not prepared, or vectors mapped)".into())
            }
            Err(e) => return Err(e.into()),
        }
        match hv.prepare_msix(sbdf) {
            Ok(()) => done.push("prepare_msix: 0 (Xen's MSI-X state starts afresh)".into()),
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                return Err(EngineError::VectorsStillMapped { sbdf });
            }
            Err(e) => return Err(e.into()),
        }
        pci.write_config(sbdf, cap.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
        done.push("MSI-X Enable and Function Mask cleared".into());
        if msix(pci)?.is_some_and(|m| m.function_mask) && pci.can_reset(sbdf)? {
            pci.reset(sbdf)?;
            self.ensure_memory_decoding(sbdf)?;
            pci.write_config(sbdf, cap.offset + MSIX_FLAGS, &0u16.to_le_bytes())?;
            done.push("Function Mask survived: reset, Message Control cleared again".into());
        }
        if msix(pci)?.is_some_and(|m| m.function_mask) {
            return Err(EngineError::StillMasked { sbdf, done });
        }
        done.push("verified: MSI-X Function Mask clear".into());
        Ok(done)
    }

    // ---------------------------------------------------------------------------------
    // attach
    // ---------------------------------------------------------------------------------

    /// Gives an assignable device to `domid`; returns the new epoch.
    pub fn attach(&mut self, sbdf: Sbdf, domid: DomId) -> Result<u64> {
        self.attach_with_token(sbdf, domid, None)
    }

    /// [`Engine::attach`], recording `token`'s digest as the credential of this assignment:
    /// the broker then serves the holder of the token for `domid`'s use of the device
    /// (docs/broker.md). Without one, only the toolstack's recorded device model may act.
    pub fn attach_with_token(
        &mut self,
        sbdf: Sbdf,
        domid: DomId,
        token: Option<&crate::credential::AssignmentToken>,
    ) -> Result<u64> {
        self.refuse_protected(domid, "attach a device to")?;
        let hv = self.platform.hypervisor();
        let info = may_run(hv, domid)?;
        if !info.hvm {
            if self.platform.pv_memory_map(&info) == crate::PvMemoryMap::RamOnly {
                return Err(EngineError::PvMemoryMapRamOnly { sbdf, domid });
            }
            self.refuse_unreachable_pv_add(sbdf, domid)?;
        }
        let rec = self.xs.transaction(|xs, tx| -> Result<DeviceRecord> {
            let mut rec = read_head(xs, tx, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
            match (rec.state, rec.owner) {
                (DeviceState::Assignable, _) => {}
                (DeviceState::Attached, Some(owner)) => {
                    return Err(EngineError::AttachedElsewhere { sbdf, owner })
                }
                (state, _) => {
                    return Err(EngineError::NotAssignable {
                        sbdf,
                        state,
                        hint: " (see `ptguard show`)",
                    })
                }
            }
            let epoch = next_epoch(sbdf, rec.epoch)?;
            attached_to(&mut rec, &info, epoch);
            rec.credential = token.map(|t| t.digest());
            rec.step = Some(Step::Attach);
            write_head(xs, tx, &rec)?;
            index_owner(xs, tx, &rec)?;
            Ok(rec)
        })?;
        let epoch = rec.epoch;
        match self.attach_steps(rec) {
            Ok(()) => Ok(epoch),
            Err(e) if e.is_crash() => Err(e),
            Err(e) => {
                // Roll back through the teardown: it is idempotent and leaves the device
                // assignable (or quarantined if something is off).
                self.say(NoticeKind::AttachRolledBack {
                    sbdf,
                    domid,
                    error: e.to_string(),
                });
                self.teardown(sbdf, "attach-failed")?;
                Err(e)
            }
        }
    }

    /// Everything after the record says `step=attach`; the step goes when it is done.
    fn attach_steps(&mut self, mut rec: DeviceRecord) -> Result<()> {
        let sbdf = rec.sbdf;
        let domid = rec
            .owner
            .ok_or_else(|| corrupt(device_path(sbdf), "", "attach without an owner"))?;
        let hv = self.platform.hypervisor();
        let pci = self.platform.pci();
        self.checkpoint(sbdf, CrashStep::AttachTestAssign)?;
        hv.test_assign_device(sbdf)?;
        if pci.can_reset(sbdf)? {
            self.checkpoint(sbdf, CrashStep::AttachReset)?;
            pci.reset(sbdf)?;
        }
        // Assign first: a domain created without an IOMMU context (no `passthrough=` in
        // its xl config) is refused here, before it was given any permission or pirq.
        self.checkpoint(sbdf, CrashStep::AttachAssignDevice)?;
        hv.assign_device(domid, sbdf, XEN_DOMCTL_DEV_RDM_RELAXED)
            .map_err(|e| match e.errno() {
                Some(Errno::EOPNOTSUPP) => EngineError::NoIommuContext { sbdf, domid },
                _ => e.into(),
            })?;
        self.checkpoint(sbdf, CrashStep::AttachPermissions)?;
        bar_permissions(hv, pci, domid, sbdf, true, |r| r.map_err(Into::into))?;
        let irq = pci.irq(sbdf)?;
        if irq > 0 && irq < 0xff {
            // The INTx pirq is a binding like any other: intent, map, confirm.
            let intx = BindRequest {
                domid,
                sbdf,
                epoch: 0,
                kind: BindKind::Intx {
                    gsi: irq,
                    guest: None,
                },
                gvec: 0,
                gflags: 0,
                gtable: 0,
            };
            let path = binding_path(sbdf, &BindingKey::Intx);
            let intent = intx.binding(BindingState::Intent, None);
            self.xs.transaction(|xs, tx| -> Result<()> {
                write(xs, tx, &path, &intent.encode())?;
                write(xs, tx, &intx_line_path(domid, irq, Some(sbdf)), "")
            })?;
            self.checkpoint(sbdf, CrashStep::AttachMapIntx)?;
            let pirq = hv.map_pirq(&intx.map_request())?;
            let mapped = intx.binding(BindingState::Mapped, Some(pirq));
            write(self.xs, TxId::NONE, &path, &mapped.encode())?;
            self.checkpoint(sbdf, CrashStep::AttachIrqPermission)?;
            hv.irq_permission(domid, Pirq(irq as i32), true)?;
        }
        self.checkpoint(sbdf, CrashStep::AttachBackend)?;
        self.write_backend(sbdf, domid)?;
        self.checkpoint(sbdf, CrashStep::AttachDone)?;
        rec.step = None;
        write_head(self.xs, TxId::NONE, &rec)
    }

    /// The PCI backend and frontend nodes as libxl writes them (xen-semantics.md §4.2).
    fn write_backend(&mut self, sbdf: Sbdf, domid: DomId) -> Result<()> {
        let be = backend_dir(domid);
        let fe = format!("/local/domain/{}/device/pci/0", domid.0);
        let hot_add = self.pcifront_connected(domid)?;
        self.xs.transaction(|xs, tx| -> Result<()> {
            let n: u32 = read_opt(xs, tx, &format!("{be}/num_devs"))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            for i in 0..n {
                if read_opt(xs, tx, &format!("{be}/dev-{i}"))?.as_deref() == Some(&sbdf.to_string())
                {
                    return Ok(());
                }
            }
            if n == 0 {
                // As libxl: the backend is dom0's and readable by the guest; the frontend is
                // the guest's and readable by dom0. Children inherit these.
                let dom = u32::from(domid.0);
                xs.mkdir(tx, &be)?;
                xs.set_perms(
                    tx,
                    &be,
                    &perm_list(&[(Access::None, 0), (Access::Read, dom)]),
                )?;
                xs.mkdir(tx, &fe)?;
                xs.set_perms(
                    tx,
                    &fe,
                    &perm_list(&[(Access::None, dom), (Access::Read, 0)]),
                )?;
                write(xs, tx, &format!("{be}/frontend"), &fe)?;
                write(xs, tx, &format!("{be}/frontend-id"), &domid.0.to_string())?;
                write(xs, tx, &format!("{be}/online"), "1")?;
                write(xs, tx, &format!("{be}/state"), "1")?;
                write(
                    xs,
                    tx,
                    &format!("{be}/domain"),
                    &format!("domain-{}", domid.0),
                )?;
                write(xs, tx, &format!("{fe}/backend"), &be)?;
                write(xs, tx, &format!("{fe}/backend-id"), "0")?;
                write(xs, tx, &format!("{fe}/state"), "1")?;
            } else if hot_add {
                // As libxl's hot-add: the running guest's pcifront answers Reconfiguring and
                // pciback exports the new device (xen_pcibk_reconfigure, state-N
                // Initialising). Before pcifront connects it would break the connection.
                write(xs, tx, &format!("{be}/state"), XENBUS_RECONFIGURING)?;
            }
            write(xs, tx, &format!("{be}/key-{n}"), &sbdf.to_string())?;
            write(xs, tx, &format!("{be}/dev-{n}"), &sbdf.to_string())?;
            write(
                xs,
                tx,
                &format!("{be}/vdevfn-{n}"),
                &format!("{:#x}", (n + 1) << 3),
            )?;
            write(
                xs,
                tx,
                &format!("{be}/opts-{n}"),
                "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=relaxed",
            )?;
            write(xs, tx, &format!("{be}/state-{n}"), "1")?;
            write(xs, tx, &format!("{be}/num_devs"), &(n + 1).to_string())?;
            Ok(())
        })
    }

    /// A device added to a PV guest's backend that pciback has already set up, before the
    /// guest's pcifront connected, reaches neither: pciback exports devices only when the
    /// backend is set up (InitWait) or when pcifront answers Reconfiguring, and a
    /// Reconfiguring written before pcifront connects leaves it unconnected ("pciback not
    /// responding", seen on real Xen 4.17.5). Refused before anything is written.
    fn refuse_unreachable_pv_add(&mut self, sbdf: Sbdf, domid: DomId) -> Result<()> {
        let be = backend_dir(domid);
        let state = read_opt(self.xs, TxId::NONE, &format!("{be}/state"))?;
        let set_up = state
            .as_deref()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .is_some_and(|s| s >= 3);
        let lists_it = self.backend_slot(sbdf, domid)?.is_some();
        if set_up && !lists_it && !self.pcifront_connected(domid)? {
            return Err(EngineError::PvBackendSetUp {
                sbdf,
                domid,
                state: state.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Whether pciback exports `sbdf` through `domid`'s backend: it publishes `vdev-N`
    /// for each device it exported (xen_pcibk_export_device).
    pub(crate) fn backend_exports(&mut self, sbdf: Sbdf, domid: DomId) -> Result<bool> {
        let Some(i) = self.backend_slot(sbdf, domid)? else {
            return Ok(false);
        };
        let vdev = format!("{}/vdev-{i}", backend_dir(domid));
        Ok(read_opt(self.xs, TxId::NONE, &vdev)?.is_some())
    }

    /// The N of the `dev-N` naming `sbdf` in `domid`'s PCI backend.
    fn backend_slot(&mut self, sbdf: Sbdf, domid: DomId) -> Result<Option<u32>> {
        let be = backend_dir(domid);
        let n: u32 = read_opt(self.xs, TxId::NONE, &format!("{be}/num_devs"))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for i in 0..n {
            let dev = read_opt(self.xs, TxId::NONE, &format!("{be}/dev-{i}"))?;
            if dev.as_deref() == Some(sbdf.to_string().as_str()) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The other devices `domid`'s PCI backend lists besides `sbdf`.
    pub(crate) fn backend_peers(&mut self, sbdf: Sbdf, domid: DomId) -> Result<Vec<String>> {
        let be = backend_dir(domid);
        let n: u32 = read_opt(self.xs, TxId::NONE, &format!("{be}/num_devs"))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut peers = Vec::new();
        for i in 0..n {
            if let Some(d) = read_opt(self.xs, TxId::NONE, &format!("{be}/dev-{i}"))? {
                if d != sbdf.to_string() {
                    peers.push(d);
                }
            }
        }
        Ok(peers)
    }

    /// Whether `domid`'s pcifront is connected (its frontend node `state` is Connected):
    /// only a connected pcifront answers the Reconfiguring handshake that makes pciback
    /// let go of one device of several (pcifront_detach_devices, then pciback's
    /// xen_pcibk_reconfigure on the frontend's Reconfiguring).
    pub(crate) fn pcifront_connected(&mut self, domid: DomId) -> Result<bool> {
        let fe = format!("/local/domain/{}/device/pci/0/state", domid.0);
        Ok(read_opt(self.xs, TxId::NONE, &fe)?
            .as_deref()
            .map(str::trim)
            == Some(XENBUS_CONNECTED))
    }

    /// libxl's handshake for one device of several leaving a live PV guest: the device's
    /// `state-N` Closing and the backend Reconfiguring in one transaction; the guest's
    /// pcifront removes the device and answers Reconfiguring, pciback gives the device
    /// back (reset, restore) and answers Reconfigured, then both return to Connected.
    /// Waits for the backend to be Connected again; the nodes are removed after.
    pub(crate) fn reconfigure_out(&mut self, sbdf: Sbdf, domid: DomId) -> Result<()> {
        let be = backend_dir(domid);
        let state_path = format!("{be}/state");
        let started = self.xs.transaction(|xs, tx| -> Result<bool> {
            let n: u32 = read_opt(xs, tx, &format!("{be}/num_devs"))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            for i in 0..n {
                if read_opt(xs, tx, &format!("{be}/dev-{i}"))?.as_deref() == Some(&sbdf.to_string())
                {
                    if read_opt(xs, tx, &format!("{be}/state-{i}"))?.as_deref()
                        != Some(XENBUS_CLOSING)
                    {
                        write(xs, tx, &format!("{be}/state-{i}"), XENBUS_CLOSING)?;
                        write(xs, tx, &state_path, XENBUS_RECONFIGURING)?;
                    }
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if !started {
            return Ok(());
        }
        let pci = self.platform.pci();
        let start = std::time::Instant::now();
        loop {
            let state = read_opt(self.xs, TxId::NONE, &state_path)?;
            match state.as_deref().map(str::trim) {
                // As libxl: done when the backend is Connected again (pciback gave the
                // device back before its Reconfigured, pcifront has rescanned since).
                None => return Ok(()),
                Some(s) if s == XENBUS_CONNECTED => return Ok(()),
                Some(s) => {
                    if start.elapsed() >= PCIBACK_RELEASE {
                        return Err(EngineError::PcibackReconfigureStalled {
                            sbdf,
                            domid,
                            state: s.to_string(),
                            waited: PCIBACK_RELEASE,
                        });
                    }
                }
            }
            pci.yield_to_dom0(std::time::Duration::from_millis(20));
        }
    }

    /// Removes `domid`'s whole PCI backend and frontend (a domain that will not run again:
    /// pciback then gives every device of it back).
    pub(crate) fn remove_whole_backend(&mut self, domid: DomId) -> Result<()> {
        self.xs
            .transaction(|xs, tx| -> Result<()> { rm_backend_and_frontend(xs, tx, domid) })
    }

    /// How `sbdf` leaves a backend it shares with `peers` (not empty), `owner` running or
    /// not (`owner_may_run`, what Xen said of it); refused, before anything is written, when pciback exported it
    /// and no pcifront is connected to answer the handshake (docs/design.md, revoke).
    pub(crate) fn shared_backend_exit(
        &mut self,
        sbdf: Sbdf,
        owner: DomId,
        peers: &[String],
        owner_may_run: bool,
    ) -> Result<SharedBackendExit> {
        if !owner_may_run {
            Ok(SharedBackendExit::WholeBackend)
        } else if !self.backend_exports(sbdf, owner)? {
            Ok(SharedBackendExit::Entry)
        } else if self.pcifront_connected(owner)? {
            Ok(SharedBackendExit::Handshake)
        } else {
            Err(EngineError::SharedBackendNoFrontend {
                sbdf,
                domid: owner,
                others: peers.join(", "),
            })
        }
    }

    /// Takes `sbdf` out of `domid`'s PCI backend. The whole backend (and the frontend) goes
    /// with the last device; a device of several is removed only with `one_of_several`
    /// (after pciback let go of it), its nodes compacted as libxl does, else nothing is
    /// written and the others are returned.
    pub(crate) fn remove_backend(
        &mut self,
        sbdf: Sbdf,
        domid: DomId,
        one_of_several: bool,
    ) -> Result<BackendRemoval> {
        let be = backend_dir(domid);
        self.xs.transaction(|xs, tx| -> Result<BackendRemoval> {
            let n: u32 = read_opt(xs, tx, &format!("{be}/num_devs"))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut devs = Vec::new();
            for i in 0..n {
                devs.push(read_opt(xs, tx, &format!("{be}/dev-{i}"))?);
            }
            let me = sbdf.to_string();
            let others: Vec<String> = devs
                .iter()
                .flatten()
                .filter(|d| **d != me)
                .cloned()
                .collect();
            let Some(i) = devs.iter().position(|d| d.as_deref() == Some(me.as_str())) else {
                return Ok(if others.is_empty() {
                    BackendRemoval::Whole
                } else {
                    BackendRemoval::NotListed
                });
            };
            if others.is_empty() {
                rm_backend_and_frontend(xs, tx, domid)?;
                return Ok(BackendRemoval::Whole);
            }
            if !one_of_several {
                return Ok(BackendRemoval::Shared(others));
            }
            // libxl__device_pci_remove_xenstore: the entry's nodes go, the later ones move
            // down one, num_devs shrinks.
            const NODES: [&str; 7] = ["state", "key", "dev", "vdev", "opts", "vdevfn", "name"];
            for k in NODES {
                rm(xs, tx, &format!("{be}/{k}-{i}"))?;
            }
            for j in (i as u32 + 1)..n {
                for k in NODES {
                    let from = format!("{be}/{k}-{j}");
                    if let Some(v) = read_opt(xs, tx, &from)? {
                        write(xs, tx, &format!("{be}/{k}-{}", j - 1), &v)?;
                        rm(xs, tx, &from)?;
                    }
                }
            }
            write(xs, tx, &format!("{be}/num_devs"), &(n - 1).to_string())?;
            Ok(BackendRemoval::Entry)
        })
    }
}

/// `domid`'s whole PCI backend and frontend directories, in transaction `tx`.
fn rm_backend_and_frontend(xs: &mut xenstore::XsClient, tx: TxId, domid: DomId) -> Result<()> {
    rm(xs, tx, &format!("/local/domain/0/backend/pci/{}", domid.0))?;
    rm(xs, tx, &format!("/local/domain/{}/device/pci", domid.0))
}

/// How a device leaves a PCI backend it shares ([`Engine::shared_backend_exit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedBackendExit {
    /// Its domain will not run again: the whole backend goes, pciback gives every device
    /// back at once (one entry removed would stay exported until the last one goes).
    WholeBackend,
    /// pciback never exported it (no `vdev-N`): its entry goes, nothing to wait for.
    Entry,
    /// The Reconfiguring handshake with the guest's pcifront, then its entry goes.
    Handshake,
}

/// What [`Engine::remove_backend`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BackendRemoval {
    /// The whole backend went (this was its last device), or there was none.
    Whole,
    /// The device's entry went; the backend keeps its other devices.
    Entry,
    /// Other devices share the backend: nothing was written.
    Shared(Vec<String>),
    /// The backend does not list the device, and lists others.
    NotListed,
}

/// What Xen says of `domid`, a domain a device may be given to: refused when Xen does not
/// know it, or it will never run again (dying, shut down for good).
fn may_run(hv: &dyn xen::Hypervisor, domid: DomId) -> Result<xen::DomainInfo> {
    let info = hv
        .domain_info(domid)?
        .ok_or(EngineError::UnknownDomain { domid })?;
    match Liveness::of(Some(&info)) {
        l if l.finished() => Err(EngineError::DomainFinished { domid, liveness: l }),
        _ => Ok(info),
    }
}

/// xenbus states (Xen's public io/xenbus.h) as Xenstore holds them.
const XENBUS_CONNECTED: &str = "4";
const XENBUS_CLOSING: &str = "5";
const XENBUS_RECONFIGURING: &str = "7";

/// Whether Xen says `domid` may still run (running, paused or suspended).
pub(crate) fn owner_may_run(hv: &dyn xen::Hypervisor, domid: DomId) -> Result<bool> {
    Ok(matches!(hv.domain_info(domid)?, Some(i) if Liveness::of(Some(&i)).may_run()))
}
