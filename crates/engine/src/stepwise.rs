//! The four libxenctrl calls a stock device model makes for MSI-X, brokered one at a time.
//!
//! qemu-xen (`hw/xen/xen_pt_msi.c`) does not bind an interrupt in one request: it maps the
//! entry (`xc_physdev_map_pirq_msi`), binds the pirq to the guest vector
//! (`xc_domain_update_msi_irq`, called again whenever the guest rewrites the entry), and on
//! disable or unplug unbinds (`xc_domain_unbind_msi_irq`) and unmaps
//! (`xc_physdev_unmap_pirq`). ptguard's preload library (`crates/preload`) sends each of
//! them here, so that a stock qemu keeps the ledger as exact as a broker-speaking one: the
//! same checks, and the same journal (intent before the map, the pirq right after it).
//! Only the map names the device; the others name a pirq, which the ledger maps back to
//! the device and entry.

use crate::CrashStep;
use pci::Sbdf;
use xen::{DomId, Pirq};
use xenstore::TxId;

use crate::credential::Credential;
use crate::engine::BindRequestExt;
use crate::engine::{
    attached_msix_bindings, heads, read_head, release_msix_pirq, rm, unless_gone, write, BindKind,
    BindRequest,
};
use crate::ledger::{binding_path, Binding, BindingKey, BindingState};
use crate::sweep::nr_irqs_gsi;
use crate::{Engine, EngineError, Refusal};

type Result<T> = std::result::Result<T, EngineError>;

/// What a broker request acts on, for its credential check: a device it names, or a pirq
/// of its domain's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting {
    Device(Sbdf),
    Pirq(Pirq),
}

/// One libxenctrl call of a device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceModelCall {
    /// `xc_physdev_map_pirq_msi` for an MSI-X entry (`pirq`: the one the guest chose, with
    /// pirq routing; `None`: Xen chooses).
    MapPirqMsi {
        sbdf: Sbdf,
        entry: u16,
        table_base: u64,
        pirq: Option<Pirq>,
    },
    /// `xc_domain_update_msi_irq`: bind, or rebind with the guest's new vector.
    UpdateMsiIrq {
        pirq: Pirq,
        gvec: u8,
        gflags: u32,
        gtable: u64,
    },
    /// `xc_domain_unbind_msi_irq`.
    UnbindMsiIrq { pirq: Pirq },
    /// `xc_physdev_unmap_pirq`.
    UnmapPirq { pirq: Pirq },
}

impl Engine<'_> {
    /// Carries out one device-model call for `domid`, once `credential` proves the caller
    /// speaks for it; the pirq for a map.
    pub fn device_model_call(
        &mut self,
        domid: DomId,
        credential: &Credential,
        call: &DeviceModelCall,
    ) -> Result<Option<Pirq>> {
        let acting = match *call {
            DeviceModelCall::MapPirqMsi { sbdf, .. } => Acting::Device(sbdf),
            DeviceModelCall::UpdateMsiIrq { pirq, .. }
            | DeviceModelCall::UnbindMsiIrq { pirq }
            | DeviceModelCall::UnmapPirq { pirq } => Acting::Pirq(pirq),
        };
        self.check_credential(domid, acting, credential)?;
        match *call {
            DeviceModelCall::MapPirqMsi {
                sbdf,
                entry,
                table_base,
                pirq,
            } => {
                let req = BindRequest {
                    domid,
                    sbdf,
                    epoch: self.current_epoch(sbdf)?,
                    kind: BindKind::Msix { entry, table_base },
                    gvec: 0,
                    gflags: 0,
                    gtable: 0,
                };
                if let Some(p) = pirq {
                    self.check_chosen_pirq(&req, p)?;
                }
                let (_, existing) = self.record_intent(&req)?;
                // A map the device model repeats (it got no answer) finds the pirq recorded.
                self.map_recorded(&req, existing, pirq).map(Some)
            }
            DeviceModelCall::UpdateMsiIrq {
                pirq,
                gvec,
                gflags,
                gtable,
            } => {
                let (req, b) = self.pirq_request(domid, pirq)?;
                let req = BindRequest {
                    gvec,
                    gflags,
                    gtable,
                    ..req
                };
                match b.state {
                    BindingState::Mapped => {
                        let (requester, _) = self.record_intent(&req)?;
                        self.bind_mapped(&req, requester.as_ref(), pirq)?;
                    }
                    _ => self.rebind(&req, pirq)?,
                }
                Ok(None)
            }
            DeviceModelCall::UnbindMsiIrq { pirq } => {
                let (req, b) = self.pirq_request(domid, pirq)?;
                let path = binding_path(req.sbdf, &req.key());
                if b.state == BindingState::Mapped {
                    return Ok(None); // unbound already (a repeated call)
                }
                self.held_binding(&req, pirq, |_| true, true)?;
                self.checkpoint(req.sbdf, CrashStep::DmUnbindMsi(pirq))?;
                let hv = self.platform.hypervisor();
                unless_gone(hv.unbind_pt_irq(domid, &b.pt_irq(pirq, req.sbdf)))?;
                let mapped = Binding {
                    state: BindingState::Mapped,
                    ..b
                };
                write(self.xs, TxId::NONE, &path, &mapped.encode())?;
                Ok(None)
            }
            DeviceModelCall::UnmapPirq { pirq } => {
                let (req, b) = self.pirq_request(domid, pirq)?;
                let path = binding_path(req.sbdf, &req.key());
                self.held_binding(&req, pirq, |_| true, true)?;
                self.checkpoint(req.sbdf, CrashStep::DmUnmapPirq(pirq))?;
                // Xen's unmap force-unbinds too; unbinding a bound pirq first keeps the order
                // qemu's own disable path has.
                release_msix_pirq(self.platform.hypervisor(), domid, req.sbdf, &b, pirq)?;
                self.checkpoint(req.sbdf, CrashStep::DmUnmapForget(pirq))?;
                rm(self.xs, TxId::NONE, &path)?;
                Ok(None)
            }
        }
    }

    /// The epoch a proven caller's request for `sbdf` is checked against: the current
    /// one (the checks that follow read it again, so a teardown that starts in between
    /// still refuses the request).
    fn current_epoch(&mut self, sbdf: Sbdf) -> Result<u64> {
        Ok(read_head(self.xs, TxId::NONE, sbdf)?
            .map(|r| r.epoch)
            .unwrap_or_default())
    }

    /// Whether `credential` proves the caller speaks for `domid` about what it acts on. A
    /// verified device model does (the broker saw its pid); a token must be the one issued
    /// for the current assignment of that device to `domid`. Every failure is the same
    /// refusal, so an unproven caller learns nothing of the ledger.
    pub fn check_credential(
        &mut self,
        domid: DomId,
        acting: Acting,
        credential: &Credential,
    ) -> Result<()> {
        let Credential::Token(token) = credential else {
            return Ok(());
        };
        let rec = match acting {
            Acting::Device(sbdf) => read_head(self.xs, TxId::NONE, sbdf)?,
            Acting::Pirq(pirq) => attached_msix_bindings(self.xs, domid)?
                .into_iter()
                .find(|(_, b)| b.pirq == Some(pirq))
                .map(|(r, _)| r),
        };
        let admitted = rec.is_some_and(|r| {
            r.owner == Some(domid) && r.credential.is_some_and(|c| c.admits(token))
        });
        if admitted {
            return Ok(());
        }
        let refusal = Refusal::CredentialRejected;
        Err(match acting {
            Acting::Device(sbdf) => EngineError::Refused {
                sbdf,
                domid,
                refusal,
            },
            Acting::Pirq(pirq) => EngineError::RefusedPirq {
                domid,
                pirq,
                refusal,
            },
        })
    }

    /// A pirq the device model chose for an MSI-X map (a guest using pirq routing picked
    /// it) must be free for an MSI vector: no other interrupt of the domain's devices in
    /// the ledger holds it (Xen answers a map of a pirq mapped already with success and
    /// maps nothing, so a later failure's cleanup would unmap the other interrupt), and it
    /// is above the GSI range (an HVM guest's INTx pirqs are its GSIs). The entry's own
    /// recorded pirq is a repeat of the same map.
    fn check_chosen_pirq(&mut self, req: &BindRequest, pirq: Pirq) -> Result<()> {
        let key = req.key();
        let mut held = false;
        for rec in heads(self.xs)?
            .into_iter()
            .filter(|r| r.owner == Some(req.domid))
        {
            let Some(full) = crate::engine::read_record(self.xs, TxId::NONE, rec.sbdf)? else {
                continue;
            };
            held |= full
                .bindings
                .iter()
                .any(|b| b.pirq == Some(pirq) && !(rec.sbdf == req.sbdf && b.key == key));
        }
        let gsis = self
            .platform
            .hypervisor()
            .read_console()
            .ok()
            .and_then(|c| nr_irqs_gsi(&c));
        let in_gsi_range =
            gsis.is_some_and(|gsis| u32::try_from(pirq.0).map_or(true, |p| p < gsis));
        if held || in_gsi_range || pirq.0 < 0 {
            return Err(crate::bind::refused(
                req,
                Refusal::PirqInUse { pirq: pirq.0 },
            ));
        }
        Ok(())
    }

    /// The MSI-X binding of a device attached to `domid` that holds `pirq`, as the request
    /// that would have made it.
    fn pirq_request(&mut self, domid: DomId, pirq: Pirq) -> Result<(BindRequest, Binding)> {
        let not_found = || EngineError::RefusedPirq {
            domid,
            pirq,
            refusal: Refusal::NoSuchBinding {
                key: "msix".into(),
                pirq: pirq.0,
            },
        };
        let found = attached_msix_bindings(self.xs, domid)?
            .into_iter()
            .find(|(_, b)| b.pirq == Some(pirq) && b.state != BindingState::Intent);
        let Some((rec, b)) = found else {
            return Err(not_found());
        };
        let BindingKey::Msix(entry) = b.key else {
            return Err(not_found());
        };
        let req = BindRequest {
            domid,
            sbdf: rec.sbdf,
            epoch: rec.epoch,
            kind: BindKind::Msix {
                entry,
                table_base: rec.table_base.unwrap_or_default(),
            },
            gvec: b.gvec,
            gflags: b.gflags,
            gtable: b.gtable,
        };
        Ok((req, b))
    }

    /// `xc_domain_update_msi_irq` on a bound pirq: Xen takes the guest's new vector and
    /// flags (`pt_irq_create_bind` on a bound MSI pirq updates them); the ledger follows.
    fn rebind(&mut self, req: &BindRequest, pirq: Pirq) -> Result<()> {
        let (requester, _) = self.held_binding(req, pirq, |s| s == BindingState::Bound, false)?;
        let key = req.key();
        let record = req.binding(BindingState::Bound, Some(pirq));
        self.checkpoint(req.sbdf, CrashStep::Rebind(key))?;
        let hv = self.platform.hypervisor();
        if requester.is_none_or(|i| i.hvm) {
            hv.bind_pt_irq(req.domid, &record.pt_irq(pirq, req.sbdf))?;
        }
        // A crash before this write leaves the old vector in the ledger: harmless, since
        // unbinding an MSI pirq does not look at the vector.
        write(
            self.xs,
            TxId::NONE,
            &binding_path(req.sbdf, &key),
            &record.encode(),
        )
    }
}
