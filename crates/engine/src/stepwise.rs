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

use pci::Sbdf;
use xen::{DomId, Pirq};
use xenstore::TxId;

use crate::engine::{
    attached_msix_bindings, read_head, release_msix_pirq, rm, unless_gone, write, BindKind,
    BindRequest,
};
use crate::ledger::{binding_path, Binding, BindingKey, BindingState};
use crate::{Engine, EngineError, Refusal};

type Result<T> = std::result::Result<T, EngineError>;

/// How a device model shows it belongs to the device's current assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The epoch `ptguard attach` printed (a broker-speaking device model).
    Epoch(u64),
    /// The broker saw that the connecting process is the pid libxl recorded as the domain's
    /// device model: it speaks for the current assignment, whatever the epoch.
    VerifiedDeviceModel,
}

impl Credential {
    /// The epoch the request presents: its own, or for a verified device model the
    /// device's `current` one.
    fn epoch(self, current: u64) -> u64 {
        match self {
            Credential::Epoch(e) => e,
            Credential::VerifiedDeviceModel => current,
        }
    }
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
    /// Carries out one device-model call for `domid`; the pirq for a map.
    pub fn device_model_call(
        &mut self,
        domid: DomId,
        credential: Credential,
        call: &DeviceModelCall,
    ) -> Result<Option<Pirq>> {
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
                    epoch: self.epoch_for(sbdf, credential)?,
                    kind: BindKind::Msix { entry, table_base },
                    gvec: 0,
                    gflags: 0,
                    gtable: 0,
                };
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
                let (req, b) = self.pirq_request(domid, credential, pirq)?;
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
                let (req, b) = self.pirq_request(domid, credential, pirq)?;
                let path = binding_path(req.sbdf, &req.key());
                if b.state == BindingState::Mapped {
                    return Ok(None); // unbound already (a repeated call)
                }
                self.held_binding(&req, pirq, |_| true, true)?;
                self.checkpoint(|| format!("{} unbind_msi_irq pirq {}", req.sbdf, pirq.0))?;
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
                let (req, b) = self.pirq_request(domid, credential, pirq)?;
                let path = binding_path(req.sbdf, &req.key());
                self.held_binding(&req, pirq, |_| true, true)?;
                self.checkpoint(|| format!("{} unmap_pirq pirq {}", req.sbdf, pirq.0))?;
                // Xen's unmap force-unbinds too; unbinding a bound pirq first keeps the order
                // qemu's own disable path has.
                release_msix_pirq(self.platform.hypervisor(), domid, req.sbdf, &b, pirq)?;
                self.checkpoint(|| format!("{} unmap_pirq pirq {}: forget", req.sbdf, pirq.0))?;
                rm(self.xs, TxId::NONE, &path)?;
                Ok(None)
            }
        }
    }

    /// The epoch a request for `sbdf` is checked against. The current one for a verified
    /// device model: the transaction that follows checks it again, so a teardown that
    /// starts in between still refuses the request.
    fn epoch_for(&mut self, sbdf: Sbdf, credential: Credential) -> Result<u64> {
        match credential {
            Credential::Epoch(e) => Ok(e),
            Credential::VerifiedDeviceModel => Ok(read_head(self.xs, TxId::NONE, sbdf)?
                .map(|r| r.epoch)
                .unwrap_or_default()),
        }
    }

    /// The MSI-X binding of a device attached to `domid` that holds `pirq`, as the request
    /// that would have made it.
    fn pirq_request(
        &mut self,
        domid: DomId,
        credential: Credential,
        pirq: Pirq,
    ) -> Result<(BindRequest, Binding)> {
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
            epoch: credential.epoch(rec.epoch),
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
        self.checkpoint(|| format!("{} rebind {key}: bind_pt_irq", req.sbdf))?;
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
