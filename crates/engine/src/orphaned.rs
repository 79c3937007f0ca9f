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

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, Pirq};
use xenstore::TxId;

use crate::engine::{read_binding, read_head, release_msix_pirq, rm, write, Engine};
use crate::ledger::{binding_path, Binding, BindingKey, BindingState, DeviceState, DEVICES};
use crate::EngineError;

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
            Some(i) if !i.finished() && i.hvm => i,
            _ => return Ok(Vec::new()),
        };
        let names = match self.xs.directory(TxId::NONE, DEVICES) {
            Ok(n) => n,
            Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for sbdf in names.iter().filter_map(|n| Sbdf::from_xs_key(n).ok()) {
            let Some(rec) = read_head(self.xs, TxId::NONE, sbdf)? else {
                continue;
            };
            // Only this incarnation's devices (a reused domid is another domain).
            let ours = rec.owner == Some(domid)
                && rec.owner_handle.is_none_or(|h| h == info.handle)
                && rec.state == DeviceState::Attached
                && rec.step.is_none();
            if !ours {
                continue;
            }
            let mut pirqs = Vec::new();
            for entry in 0..rec.msix_size {
                let key = BindingKey::Msix(entry);
                let Some(b) = read_binding(self.xs, TxId::NONE, sbdf, key)? else {
                    continue;
                };
                let Some(pirq) = b.pirq else { continue };
                if pirqs.is_empty() {
                    // Xen masks in the table only while the device decodes memory; without
                    // it the unmap forces the Function Mask (docs/xen-semantics.md).
                    self.ensure_memory_decoding(sbdf)?;
                }
                self.release_one(sbdf, domid, b, pirq)?;
                pirqs.push(pirq);
            }
            if !pirqs.is_empty() {
                self.notice(format!(
                    "{sbdf}: the device model of {domid} is gone; unbound and unmapped its {} vector(s) (pirqs {}) so that the domain's end finds nothing mapped",
                    pirqs.len(),
                    pirqs
                        .iter()
                        .map(|p| p.0.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                out.push(Orphaned { sbdf, pirqs });
            }
        }
        Ok(out)
    }

    fn release_one(&mut self, sbdf: Sbdf, domid: DomId, b: Binding, pirq: Pirq) -> Result<()> {
        let path = binding_path(sbdf, &b.key);
        let unbinding = Binding {
            state: BindingState::Unbinding,
            ..b
        };
        write(self.xs, TxId::NONE, &path, &unbinding.encode())?;
        self.checkpoint(|| format!("{sbdf} orphaned {}: unbind and unmap", b.key))?;
        release_msix_pirq(self.platform.hypervisor(), domid, sbdf, &b, pirq)?;
        self.checkpoint(|| format!("{sbdf} orphaned {}: forget", b.key))?;
        rm(self.xs, TxId::NONE, &path)
    }
}
