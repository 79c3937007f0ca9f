//! The broker's side of the engine: a device model's bind and unbind of one interrupt,
//! checked against the ledger (owner, incarnation, epoch, table, line) and journaled
//! (intent before the map, the pirq right after it, the confirmation after the bind).

use xen::{DomainInfo, Errno, Pirq};
use xenstore::TxId;

use crate::credential::Credential;
use crate::ledger::*;
use crate::refusal::Refusal;
use crate::stepwise::Acting;
use crate::{EngineError, Liveness};

use crate::engine::*;

type Result<T> = std::result::Result<T, EngineError>;

/// `req` refused for `refusal`.
pub(crate) fn refused(req: &BindRequest, refusal: Refusal) -> EngineError {
    EngineError::Refused {
        sbdf: req.sbdf,
        domid: req.domid,
        refusal,
    }
}

/// The broker's checks common to bind and unbind: the device is managed, attached (attach
/// finished, no teardown running) to the requesting domain, at the epoch it presents.
/// Whether `req` may act on the device: attached to its domain at its epoch and, when the
/// ledger recorded the owner's identity, to this incarnation of that domid (`current`: the
/// requester as Xen describes it now; its unique id decides on Xen 4.21+, else its handle).
pub(crate) fn check_requester(
    rec: Option<DeviceRecord>,
    req: &BindRequest,
    current: Option<&DomainInfo>,
) -> std::result::Result<DeviceRecord, Refusal> {
    let rec = rec.ok_or(Refusal::NotManaged)?;
    match (rec.state, rec.step) {
        (DeviceState::Attached, None) => {}
        (DeviceState::Attached, Some(_)) => return Err(Refusal::AttachInProgress),
        (DeviceState::TearingDown, _) => return Err(Refusal::TearingDown),
        (state, _) => return Err(Refusal::NotAttached { state }),
    }
    if rec.owner != Some(req.domid) {
        return Err(Refusal::WrongDomain { owner: rec.owner });
    }
    if let Some(now) = current.filter(|i| Liveness::of_owner(&rec, Some(i)) == Liveness::Replaced) {
        let (recorded, current) = match (rec.owner_uid, now.unique_id) {
            (Some(r), Some(c)) => (format!("unique id {r}"), format!("unique id {c}")),
            _ => (
                rec.owner_handle.map_or("none".into(), |h| h.to_string()),
                now.handle.to_string(),
            ),
        };
        return Err(Refusal::StaleIncarnation {
            domid: req.domid,
            recorded,
            current,
        });
    }
    if rec.epoch != req.epoch {
        return Err(Refusal::StaleEpoch {
            presented: req.epoch,
            current: rec.epoch,
        });
    }
    Ok(rec)
}

impl Engine<'_> {
    /// Records, maps and binds one interrupt for a device model. A new MSI-X vector costs
    /// four Xenstore requests: the head and the binding read for the broker's checks, the
    /// intent before `map_pirq`, the confirmation (with the pirq Xen chose) after
    /// `bind_pt_irq`. No transaction: ptguard's processes take turns on the ledger (the
    /// ledger lock on a dom0, the host directory's lock on a simulated host), so nothing
    /// changes the record between the check and the intent, and each write is one node.
    pub fn bind(&mut self, req: &BindRequest) -> Result<Pirq> {
        let (requester, existing) = self.record_intent(req)?;
        let pirq = match existing.and_then(|b| b.pirq) {
            Some(p) => p,
            None => self.map_intent(req, None)?,
        };
        self.bind_mapped(req, requester.as_ref(), pirq)?;
        Ok(pirq)
    }

    /// A broker client's bind: [`Engine::bind`] once `credential` proves it speaks for the
    /// request's domain.
    pub fn broker_bind(&mut self, req: &BindRequest, credential: &Credential) -> Result<Pirq> {
        self.check_credential(req.domid, Acting::Device(req.sbdf), credential)?;
        self.bind(req)
    }

    /// A broker client's unbind: [`Engine::unbind`] once `credential` proves it.
    pub fn broker_unbind(
        &mut self,
        req: &BindRequest,
        pirq: Pirq,
        credential: &Credential,
    ) -> Result<()> {
        self.check_credential(req.domid, Acting::Device(req.sbdf), credential)?;
        self.unbind(req, pirq)
    }

    /// The broker's checks and the binding's intent: the requester and the binding the
    /// ledger already holds for the interrupt (`Mapped`: mapped before, by attach for INTx
    /// or by a device model's separate map; the caller binds it).
    pub(crate) fn record_intent(
        &mut self,
        req: &BindRequest,
    ) -> Result<(Option<DomainInfo>, Option<Binding>)> {
        let key = req.key();
        let refuse = |refusal| refused(req, refusal);
        self.refuse_protected_requester(req)?;
        if let BindKind::Intx { gsi, guest } = req.kind {
            if let Some(g) = guest.filter(|g| !g.is_valid()) {
                return Err(refuse(Refusal::BadGuestIntx {
                    device: g.device,
                    intx: g.intx,
                }));
            }
            // A device model may only map its own device's line: any other GSI would hand
            // its guest a host interrupt (a disk's, a timer's).
            let line = self.platform.pci().irq(req.sbdf)?;
            let line = (line > 0 && line < 0xff).then_some(line);
            if line != Some(gsi) {
                return Err(refuse(Refusal::NotDeviceGsi {
                    presented: gsi,
                    line,
                }));
            }
        }
        // Who the requester is now: its handle names the incarnation, and a PV guest gets
        // no XEN_DOMCTL_bind_pt_irq.
        let requester = self.platform.hypervisor().domain_info(req.domid)?;
        let rec = read_head(self.xs, TxId::NONE, req.sbdf)?;
        let rec = check_requester(rec, req, requester.as_ref()).map_err(refuse)?;
        // A new interrupt only for a domain that may run; its unbinds stay allowed (a
        // device model unmaps while its guest shuts down).
        let life = Liveness::of(requester.as_ref());
        if requester.is_some() && life.finished() {
            return Err(refuse(Refusal::RequesterFinished {
                domid: req.domid,
                liveness: life,
            }));
        }
        if let BindKind::Msix { entry, table_base } = req.kind {
            if entry >= rec.msix_size {
                return Err(refuse(Refusal::EntryBeyondTable {
                    entry,
                    table_size: rec.msix_size,
                }));
            }
            if let Some(expected) = rec.table_base.filter(|t| *t != table_base) {
                return Err(refuse(Refusal::WrongTableBase {
                    presented: table_base,
                    expected,
                }));
            }
        }
        let found = read_binding(self.xs, TxId::NONE, req.sbdf, key)?;
        let existing = found.filter(|b| b.state != BindingState::Intent);
        match existing {
            // The INTx pirq attach mapped: qemu binds it.
            Some(b) if b.state == BindingState::Mapped => return Ok((requester, existing)),
            Some(_) => return Err(refuse(Refusal::already_bound(key))),
            None => {}
        }
        // No binding, or an unconfirmed intent a crash left behind: (re)record it. An
        // earlier map that did happen is caught by release_msix at teardown.
        let intent = req.binding(BindingState::Intent, None);
        let line = match req.kind {
            BindKind::Intx { gsi, .. } => Some(intx_line_path(req.domid, gsi, Some(req.sbdf))),
            BindKind::Msix { .. } => None,
        };
        // A crash hit this bind between its intent and its confirmation: the map may have
        // reached Xen. Its pirq is lost; count it so the teardown can say why it must wait
        // for the owner to go (docs/ledger.md, "The map→record window").
        let retried = found.is_some_and(|b| b.pirq.is_none());
        if line.is_none() && !retried {
            write(
                self.xs,
                TxId::NONE,
                &binding_path(req.sbdf, &key),
                &intent.encode(),
            )?;
            return Ok((requester, None));
        }
        // More than one node: one transaction.
        self.xs.transaction(|xs, tx| -> Result<()> {
            if retried {
                let path = lost_maps_path(req.sbdf);
                let lost = match read_opt(xs, tx, &path)? {
                    Some(t) => parse_lost_maps(req.sbdf, &t)?,
                    None => 0,
                };
                write(xs, tx, &path, &lost.saturating_add(1).to_string())?;
            }
            write(xs, tx, &binding_path(req.sbdf, &key), &intent.encode())?;
            if let Some(line) = &line {
                write(xs, tx, line, "")?;
            }
            Ok(())
        })?;
        Ok((requester, None))
    }

    /// `PHYSDEVOP_map_pirq` for the interrupt `record_intent` recorded. `requested`: a pirq
    /// the device model asks for (a guest using pirq routing chose it), else Xen chooses.
    /// On failure the intent goes (nothing was mapped).
    pub(crate) fn map_intent(
        &mut self,
        req: &BindRequest,
        requested: Option<Pirq>,
    ) -> Result<Pirq> {
        let key = req.key();
        self.checkpoint(req.sbdf, CrashStep::BindMapPirq(key))?;
        let mut map = req.map_request();
        if requested.is_some() {
            map.pirq = requested;
        }
        match self.platform.hypervisor().map_pirq(&map) {
            Ok(p) => Ok(p),
            Err(e) => {
                rm(self.xs, TxId::NONE, &binding_path(req.sbdf, &key))?;
                // Xen hands a guest only extra_guest_irqs MSI pirqs.
                if e.errno() == Some(Errno::ENOSPC) {
                    return Err(EngineError::PirqBudgetExhausted {
                        sbdf: req.sbdf,
                        domid: req.domid,
                    });
                }
                Err(e.into())
            }
        }
    }

    /// A device model's separate map (libxenctrl's `xc_physdev_map_pirq_msi`): maps the
    /// recorded intent (unless `existing` holds its pirq) and records the pirq Xen chose at
    /// once, since the bind comes in another call: the binding is then `Mapped`.
    pub(crate) fn map_recorded(
        &mut self,
        req: &BindRequest,
        existing: Option<Binding>,
        requested: Option<Pirq>,
    ) -> Result<Pirq> {
        if let Some(p) = existing.and_then(|b| b.pirq) {
            return Ok(p);
        }
        let pirq = self.map_intent(req, requested)?;
        // Xen chose the pirq and offers no way to list a domain's pirqs, so this write is
        // what lets a teardown find it (docs/ledger.md).
        self.checkpoint(req.sbdf, CrashStep::MapRecordPirq(req.key()))?;
        let record = req.binding(BindingState::Mapped, Some(pirq));
        write(
            self.xs,
            TxId::NONE,
            &binding_path(req.sbdf, &req.key()),
            &record.encode(),
        )?;
        Ok(pirq)
    }

    /// `XEN_DOMCTL_bind_pt_irq` for a mapped interrupt, then the confirming write.
    pub(crate) fn bind_mapped(
        &mut self,
        req: &BindRequest,
        requester: Option<&DomainInfo>,
        pirq: Pirq,
    ) -> Result<()> {
        let key = req.key();
        let hv = self.platform.hypervisor();
        let path = binding_path(req.sbdf, &key);
        let mut record = req.binding(BindingState::Mapped, Some(pirq));
        // XEN_DOMCTL_bind_pt_irq is for HVM guests only (a PV guest binds the pirq to an
        // event channel itself; Xen 4.17 answers -EINVAL for a PV domain).
        let hvm = requester.is_none_or(|i| i.hvm);
        self.checkpoint(req.sbdf, CrashStep::BindPtIrq(key))?;
        if hvm {
            if let Err(e) = hv.bind_pt_irq(req.domid, &record.pt_irq(pirq, req.sbdf)) {
                let _ = hv.unmap_pirq(req.domid, pirq);
                rm(self.xs, TxId::NONE, &path)?;
                return Err(e.into());
            }
        }
        self.checkpoint(req.sbdf, CrashStep::BindConfirm(key))?;
        record.state = BindingState::Bound;
        write(self.xs, TxId::NONE, &path, &record.encode())
    }

    /// Unbinds and unmaps one interrupt a device model bound through the broker. The same
    /// checks as a bind: the device is attached to the requester at the current epoch, and
    /// the ledger holds that binding with that pirq.
    pub fn unbind(&mut self, req: &BindRequest, pirq: Pirq) -> Result<()> {
        let key = req.key();
        let path = binding_path(req.sbdf, &key);
        let (_, b) = self.held_binding(req, pirq, |s| s != BindingState::Intent, true)?;
        let hv = self.platform.hypervisor();
        self.checkpoint(req.sbdf, CrashStep::Unbind(key))?;
        if key == BindingKey::Intx {
            self.release_intx_line(req.sbdf, req.domid, &b, pirq)?;
        } else {
            unbind_and_unmap(hv, req.domid, &b.pt_irq(pirq, req.sbdf))?;
        }
        self.checkpoint(req.sbdf, CrashStep::UnbindForget(key))?;
        if key == BindingKey::Intx {
            return self.xs.transaction(|xs, tx| -> Result<()> {
                forget_intx_line(xs, tx, req.domid, b.gsi, req.sbdf)?;
                rm(xs, tx, &path)
            });
        }
        rm(self.xs, TxId::NONE, &path)
    }

    /// One transaction: the broker's checks of the requester, then the binding of `req`'s
    /// interrupt holding `pirq` in a state `accept` allows (else `no-such-binding`); with
    /// `unbinding`, marked `Unbinding` so that a crash from here on leaves the teardown a
    /// binding to unbind and unmap. Returns the requester as Xen knows it and the binding
    /// as it was.
    pub(crate) fn held_binding(
        &mut self,
        req: &BindRequest,
        pirq: Pirq,
        accept: impl Fn(BindingState) -> bool,
        unbinding: bool,
    ) -> Result<(Option<DomainInfo>, Binding)> {
        self.refuse_protected_requester(req)?;
        let requester = self.platform.hypervisor().domain_info(req.domid)?;
        let key = req.key();
        self.xs
            .transaction(|xs, tx| -> Result<Binding> {
                let rec = read_head(xs, tx, req.sbdf)?;
                check_requester(rec, req, requester.as_ref()).map_err(|r| refused(req, r))?;
                let b = read_binding(xs, tx, req.sbdf, key)?
                    .filter(|b| b.pirq == Some(pirq) && accept(b.state))
                    .ok_or_else(|| {
                        refused(
                            req,
                            Refusal::NoSuchBinding {
                                key: key.to_string(),
                                pirq: pirq.0,
                            },
                        )
                    })?;
                if unbinding {
                    let u = Binding {
                        state: BindingState::Unbinding,
                        ..b
                    };
                    write(xs, tx, &binding_path(req.sbdf, &key), &u.encode())?;
                }
                Ok(b)
            })
            .map(|b| (requester, b))
    }
}
