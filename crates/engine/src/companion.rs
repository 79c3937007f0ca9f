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

use crate::engine::{Engine, Outcome};
use crate::ledger::DeviceState;
use crate::sweep::SweepReport;
use crate::EngineError;

type Result<T> = std::result::Result<T, EngineError>;

/// Where libxl (and xenopsd, which writes the same nodes) lists a guest's PCI devices.
pub const TOOLSTACK_BACKENDS: &str = "/local/domain/0/backend/pci";

/// Every `dev-N` of the toolstack's PCI backends:
/// `/local/domain/0/backend/pci/<domid>/0/dev-<n>` = `SSSS:BB:DD.F`. Unreadable or
/// malformed nodes are skipped (a guest cannot write dom0's backend, but a half-written
/// one may be seen).
pub fn toolstack_backends(xs: &mut XsClient) -> Vec<(DomId, Sbdf)> {
    let mut out = Vec::new();
    for dom in xs
        .directory(TxId::NONE, TOOLSTACK_BACKENDS)
        .unwrap_or_default()
    {
        let Ok(domid) = dom.parse::<u16>() else {
            continue;
        };
        let be = format!("{TOOLSTACK_BACKENDS}/{dom}/0");
        for node in xs.directory(TxId::NONE, &be).unwrap_or_default() {
            if !node.starts_with("dev-") {
                continue;
            }
            let Ok(Some(v)) = xs.read_optional(TxId::NONE, &format!("{be}/{node}")) else {
                continue;
            };
            if let Ok(s) = String::from_utf8_lossy(&v).trim().parse::<Sbdf>() {
                out.push((DomId(domid), s));
            }
        }
    }
    out
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

impl Engine<'_> {
    /// Adopts every device the toolstack's backends give a live guest that the ledger does
    /// not hold for it already (absent, or assignable from an earlier guest). Xen must
    /// agree that a guest holds the device; anything refused is logged and left.
    pub fn adopt_from_toolstack(&mut self) -> Result<Vec<Adopted>> {
        let mut done = Vec::new();
        for (domid, sbdf) in toolstack_backends(self.xs) {
            if self.protected_domain(domid) {
                continue;
            }
            match self.record(sbdf)? {
                None => {}
                Some(r) if r.state == DeviceState::Assignable => {}
                Some(_) => continue,
            }
            match self.adopt(sbdf, domid) {
                Ok(epoch) => {
                    self.notice(format!(
                        "{sbdf}: adopted from the toolstack as attached to {domid} (companion mode)"
                    ));
                    done.push(Adopted { sbdf, domid, epoch });
                }
                // A domain that is going or gone, or a device Xen says nobody holds (the
                // toolstack is still assigning it, or already took it back): next round.
                Err(
                    e @ (EngineError::DomainDying { .. }
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
        let owner = from_ledger.or_else(|| {
            toolstack_backends(self.xs)
                .into_iter()
                .find(|(_, s)| *s == sbdf)
                .map(|(d, _)| d)
        });
        let Some(domid) = owner else {
            return Ok(PreReset::NoOwner);
        };
        let info = self.platform.hypervisor().domain_info(domid)?;
        if info.is_some_and(|i| !i.finished()) {
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
