//! Bindings whose device model died while its guest still runs.
//!
//! qemu-xen unbinds and unmaps a vector only when the guest disables MSI-X or the device is
//! unplugged; if qemu dies, the pirqs stay bound until Xen destroys the domain — which, with
//! plain `xl destroy`, is after libxl has reset the device, and with memory decoding off at
//! that moment leaves the Function Mask forced (the seed failure). When the daemon sees the
//! domain's device model gone (`device-model-pid` no longer a live process), the MSI-X
//! bindings the ledger holds for it are dead weight: nobody will ever unbind them but the
//! domain's destruction. This unbinds exactly those — with decoding on, journaled like a
//! device model's own unmap — so whatever the toolstack does next finds nothing mapped.
//! Nothing else of the guest is touched: not its INTx (a machine line may be shared),
//! not pirqs the ledger does not know (no sweep of a live domain), not the assignment.

use crate::CrashStep;
use std::collections::BTreeSet;

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, Pirq};
use xenstore::TxId;

use crate::engine::{attached_msix_bindings, heads, release_msix_pirq, rm, write, Engine};
use crate::ledger::{binding_path, Binding, BindingState, DeviceRecord, DeviceState};
use crate::{EngineError, Liveness, NoticeKind};

type Result<T> = std::result::Result<T, EngineError>;

/// What was unbound for one device of a guest whose device model is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphaned {
    pub sbdf: Sbdf,
    pub pirqs: Vec<Pirq>,
}

impl Engine<'_> {
    /// Unbinds and unmaps the MSI-X bindings the ledger holds for devices attached to the
    /// HVM guest `domid`, whose device model is gone. Refused for a protected domain; does
    /// nothing for a PV guest, or a domain Xen no longer knows or that is finished (its
    /// teardown covers it).
    pub fn release_orphaned_bindings(&mut self, domid: DomId) -> Result<Vec<Orphaned>> {
        self.refuse_protected(domid, "unbind the interrupts of")?;
        // A finished domain's devices get their whole teardown on @releaseDomain. A PV
        // guest's vectors are not its device model's (pciback maps them, the guest binds
        // them to event channels; a PV domain's qemu serves only disks): never touched.
        let info = match self.platform.hypervisor().domain_info(domid)? {
            Some(i) if Liveness::of(Some(&i)).may_run() && i.hvm => i,
            _ => return Ok(Vec::new()),
        };
        // Only this incarnation's devices (a reused domid is another domain), attach done.
        let bindings: Vec<(DeviceRecord, Binding)> = attached_msix_bindings(self.xs, domid)?
            .into_iter()
            .filter(|(rec, _)| {
                Liveness::of_owner(rec, Some(&info)) != Liveness::Replaced && rec.step.is_none()
            })
            .collect();
        let mut out: Vec<Orphaned> = Vec::new();
        for (rec, b) in bindings {
            let Some(pirq) = b.pirq else { continue };
            if out.last().is_none_or(|o| o.sbdf != rec.sbdf) {
                // Xen masks in the table only while the device decodes memory; without it
                // the unmap forces the Function Mask (docs/xen-semantics.md).
                self.ensure_memory_decoding(rec.sbdf)?;
                out.push(Orphaned {
                    sbdf: rec.sbdf,
                    pirqs: Vec::new(),
                });
            }
            self.release_one(rec.sbdf, domid, b, pirq)?;
            if let Some(o) = out.last_mut() {
                o.pirqs.push(pirq);
            }
        }
        for o in &out {
            self.say(NoticeKind::OrphansReleased {
                sbdf: o.sbdf,
                domid,
                pirqs: o.pirqs.clone(),
            });
        }
        Ok(out)
    }

    /// The domains the ledger has devices attached to (record heads only: the daemon asks
    /// this every second, so it reads no bindings).
    pub fn attached_owners(&mut self) -> Result<BTreeSet<DomId>> {
        Ok(heads(self.xs)?
            .into_iter()
            .filter(|rec| rec.state == DeviceState::Attached)
            .filter_map(|rec| rec.owner)
            .collect())
    }

    fn release_one(&mut self, sbdf: Sbdf, domid: DomId, b: Binding, pirq: Pirq) -> Result<()> {
        let path = binding_path(sbdf, &b.key);
        let unbinding = Binding {
            state: BindingState::Unbinding,
            ..b
        };
        write(self.xs, TxId::NONE, &path, &unbinding.encode())?;
        self.checkpoint(sbdf, CrashStep::OrphanedUnbind(b.key))?;
        release_msix_pirq(self.platform.hypervisor(), domid, sbdf, &b, pirq)?;
        self.checkpoint(sbdf, CrashStep::OrphanedForget(b.key))?;
        rm(self.xs, TxId::NONE, &path)
    }
}
