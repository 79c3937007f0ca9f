//! pciback's xenbus side: the watch a real pciback keeps on dom0's PCI backend directory
//! (`xen_pcibk_xenbus_register`), reacting to what the toolstack (or ptguard) writes there.
//! A backend's `dev-N` nodes make it export those devices; a device leaving them is put
//! back, at once when the backend stays, by pciback's worker when the whole backend went.
//!
//! The watcher reads Xenstore only when it runs ([`PcibackXenbus::run`]); what it read goes
//! into the host's journal ([`crate::host::SimOp::XenbusBackend`]), so a replay never needs
//! Xenstore. When it runs is the simulated platform's choice: before each call ptguard makes
//! into dom0's kernel, as dom0's own work would have run by then.

use std::collections::BTreeSet;
use std::time::Duration;

use pci::Sbdf;
use xen::DomId;
use xenstore::{TxId, XenstoreError, XsClient};

use crate::host::SimHost;

/// Where every toolstack writes dom0's PCI backends.
pub const PCI_BACKENDS: &str = "/local/domain/0/backend/pci";

/// pciback's watch on [`PCI_BACKENDS`], over its own dom0 connection.
pub struct PcibackXenbus {
    xs: XsClient,
}

impl PcibackXenbus {
    /// Registers the watch (xenstored answers it with one event for the path itself, so
    /// the first run reads every backend).
    pub fn new(mut xs: XsClient) -> Result<PcibackXenbus, XenstoreError> {
        xs.watch(PCI_BACKENDS, "pciback")?;
        Ok(PcibackXenbus { xs })
    }

    /// Handles every event received so far; true when any arrived.
    pub fn run(&mut self, host: &SimHost) -> Result<bool, XenstoreError> {
        if !self.xs.is_in_process() {
            // Over a socket, events for changes made before now arrive ahead of this reply.
            self.xs.read_optional(TxId::NONE, PCI_BACKENDS)?;
        }
        let mut domids = BTreeSet::new();
        let mut every = false;
        let mut any = false;
        while let Some(ev) = self.xs.next_event(Some(Duration::ZERO))? {
            any = true;
            match backend_domid(&ev.path) {
                Some(d) => {
                    domids.insert(d);
                }
                None => every = true,
            }
        }
        if every {
            for name in self.directory(PCI_BACKENDS)? {
                if let Ok(d) = name.parse() {
                    domids.insert(DomId(d));
                }
            }
            domids
                .extend(host.with_world(|w| w.pciback.xenbus.keys().copied().collect::<Vec<_>>()));
        }
        for domid in domids {
            let (listed, present) = self.backend(domid)?;
            // A device pciback cannot take is refused there, as xen_pcibk_export_device
            // refuses it; nothing for the toolstack to see here.
            let _ = host.xenbus_backend(domid, listed, present);
        }
        Ok(any)
    }

    /// The devices domain `domid`'s backend lists, and whether it exists.
    fn backend(&mut self, domid: DomId) -> Result<(Vec<Sbdf>, bool), XenstoreError> {
        let be = format!("{PCI_BACKENDS}/{}/0", domid.0);
        let Some(n) = self
            .xs
            .read_optional(TxId::NONE, &format!("{be}/num_devs"))?
        else {
            let present = self.xs.read_optional(TxId::NONE, &be)?.is_some();
            return Ok((Vec::new(), present));
        };
        let n: u32 = String::from_utf8_lossy(&n).parse().unwrap_or(0);
        let mut listed = Vec::new();
        for i in 0..n {
            if let Some(v) = self
                .xs
                .read_optional(TxId::NONE, &format!("{be}/dev-{i}"))?
            {
                if let Ok(s) = String::from_utf8_lossy(&v).parse::<Sbdf>() {
                    listed.push(s);
                }
            }
        }
        Ok((listed, true))
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>, XenstoreError> {
        match self.xs.directory(TxId::NONE, path) {
            Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(Vec::new()),
            r => r,
        }
    }
}

/// `<domid>` of `/local/domain/0/backend/pci/<domid>[/...]`.
fn backend_domid(path: &str) -> Option<DomId> {
    let rest = path.strip_prefix(PCI_BACKENDS)?.strip_prefix('/')?;
    rest.split('/').next()?.parse().ok().map(DomId)
}
