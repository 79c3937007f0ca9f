//! The broker's side of the engine: a device model's bind and unbind of one interrupt,
//! checked against the ledger (owner, incarnation, epoch, table, line) and journaled
//! (intent before the map, the pirq right after it, the confirmation after the bind).

use xen::{DomainHandle, DomainInfo, Errno, Pirq};
use xenstore::TxId;

use crate::ledger::*;
use crate::refusal::Refusal;
use crate::EngineError;

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
/// ledger recorded the owner's handle, to this incarnation of that domid (`current`: the
/// requester's handle now, from getdomaininfo).
pub(crate) fn check_requester(
    rec: Option<DeviceRecord>,
    req: &BindRequest,
    current: Option<DomainHandle>,
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
    if let (Some(recorded), Some(now)) = (rec.owner_handle, current) {
        if recorded != now {
            return Err(Refusal::StaleIncarnation {
                domid: req.domid,
                recorded: recorded.to_string(),
                current: now.to_string(),
            });
        }
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
    /// Records, maps and binds one interrupt for a device model: one Xenstore transaction
    /// (check + intent), then one write recording the pirq Xen chose and one confirming the
    /// bind.
    pub fn bind(&mut self, req: &BindRequest) -> Result<Pirq> {
        let (requester, existing) = self.record_intent(req)?;
        let pirq = self.map_recorded(req, existing, None)?;
        self.bind_mapped(req, requester.as_ref(), pirq)?;
        Ok(pirq)
    }

    /// The broker's checks and the binding's intent, in one transaction: the requester and
    /// the binding the ledger already holds for the interrupt (`Mapped`: mapped before, by
    /// attach for INTx or by a device model's separate map; the caller binds it).
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
        let existing = self.xs.transaction(|xs, tx| -> Result<Option<Binding>> {
            let rec = read_head(xs, tx, req.sbdf)?;
            let rec = check_requester(rec, req, requester.map(|i| i.handle)).map_err(refuse)?;
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
            let found = read_binding(xs, tx, req.sbdf, key)?;
            if found.is_some_and(|b| b.state == BindingState::Intent && b.pirq.is_none()) {
                // A crash hit this bind between its intent and its pirq: the map may have
                // reached Xen. Its pirq is lost; count it so the teardown can say why it must
                // wait for the owner to go (docs/ledger.md, "The map→record window").
                let path = lost_maps_path(req.sbdf);
                let lost = match read_opt(xs, tx, &path)? {
                    Some(t) => parse_lost_maps(req.sbdf, &t)?,
                    None => 0,
                };
                write(xs, tx, &path, &lost.saturating_add(1).to_string())?;
            }
            let existing = found.filter(|b| b.state != BindingState::Intent);
            match existing {
                // The INTx pirq attach mapped: qemu binds it.
                Some(b) if b.state == BindingState::Mapped => {}
                Some(b) if b.state != BindingState::Intent => {
                    return Err(refuse(Refusal::already_bound(key)))
                }
                // No binding, or an unconfirmed intent a crash left behind: (re)record it. An
                // earlier map that did happen is caught by release_msix at teardown.
                _ => {
                    let intent = req.binding(BindingState::Intent, None);
                    write(xs, tx, &binding_path(req.sbdf, &key), &intent.encode())?;
                    if let BindKind::Intx { gsi, .. } = req.kind {
                        write(xs, tx, &intx_line_path(req.domid, gsi, Some(req.sbdf)), "")?;
                    }
                }
            }
            Ok(existing)
        })?;
        Ok((requester, existing))
    }

    /// Maps the interrupt `record_intent` recorded (unless `existing` holds its pirq) and
    /// records the pirq Xen chose: the binding is then `Mapped`. `requested`: a pirq the
    /// device model asks for (a guest using pirq routing chose it), else Xen chooses.
    pub(crate) fn map_recorded(
        &mut self,
        req: &BindRequest,
        existing: Option<Binding>,
        requested: Option<Pirq>,
    ) -> Result<Pirq> {
        let key = req.key();
        let hv = self.platform.hypervisor();
        let path = binding_path(req.sbdf, &key);
        // Mapped before (INTx by attach, or a map a crash interrupted): nothing to map.
        if let Some(p) = existing.and_then(|b| b.pirq) {
            return Ok(p);
        }
        self.checkpoint(|| format!("{} bind {key}: map_pirq", req.sbdf))?;
        let mut map = req.map_request();
        if requested.is_some() {
            map.pirq = requested;
        }
        let pirq = match hv.map_pirq(&map) {
            Ok(p) => p,
            Err(e) => {
                rm(self.xs, TxId::NONE, &path)?;
                // Xen hands a guest only extra_guest_irqs MSI pirqs.
                if e.errno() == Some(Errno::ENOSPC) {
                    return Err(EngineError::PirqBudgetExhausted {
                        sbdf: req.sbdf,
                        domid: req.domid,
                    });
                }
                return Err(e.into());
            }
        };
        // Recorded at once: Xen chose the pirq and offers no way to list a domain's
        // pirqs, so this write is what lets a teardown find it (docs/ledger.md).
        self.checkpoint(|| format!("{} bind {key}: record pirq", req.sbdf))?;
        let record = req.binding(BindingState::Mapped, Some(pirq));
        write(self.xs, TxId::NONE, &path, &record.encode())?;
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
        self.checkpoint(|| format!("{} bind {key}: bind_pt_irq", req.sbdf))?;
        if hvm {
            if let Err(e) = hv.bind_pt_irq(req.domid, &record.pt_irq(pirq, req.sbdf)) {
                let _ = hv.unmap_pirq(req.domid, pirq);
                rm(self.xs, TxId::NONE, &path)?;
                return Err(e.into());
            }
        }
        self.checkpoint(|| format!("{} bind {key}: confirm", req.sbdf))?;
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
        self.checkpoint(|| format!("{} unbind {key}", req.sbdf))?;
        if key == BindingKey::Intx {
            self.release_intx_line(req.sbdf, req.domid, &b, pirq)?;
        } else {
            unbind_and_unmap(hv, req.domid, &b.pt_irq(pirq, req.sbdf))?;
        }
        self.checkpoint(|| format!("{} unbind {key}: forget", req.sbdf))?;
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
                check_requester(rec, req, requester.map(|i| i.handle))
                    .map_err(|r| refused(req, r))?;
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
