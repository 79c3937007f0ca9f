//! pciback's xenbus side: the watch a real pciback keeps on dom0's PCI backend directory
//! (`xen_pcibk_xenbus_register`), reacting to what the toolstack (or ptguard) writes there.
//! A backend's `dev-N` nodes make it export those devices. A device leaves a live backend
//! only through the Reconfiguring handshake: its `state-N` Closing and the backend
//! Reconfiguring, which a connected pcifront answers (pcifront_detach_devices), and then
//! pciback gives it back (xen_pcibk_reconfigure → xen_pcibk_remove_device); a device whose
//! nodes merely vanish stays exported until the whole backend goes, when pciback's worker
//! gives every device back. The guest's pcifront is played here too: a running PV guest's
//! frontend connects (frontend and backend Connected) once its backend exports a device;
//! an HVM guest, or a paused PV one, has none.
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
            let view = self.backend(domid)?;
            let pcifront = host.with_world(|w| {
                w.domains.get(&domid).is_some_and(|d| {
                    !d.hvm && !d.paused && !d.dying && d.state == crate::world::DomainState::Running
                })
            });
            // pcifront answers Reconfiguring: the Closing devices leave the guest and
            // pciback gives them back, the Initialising ones are exported; the backend ends
            // Connected again.
            let reconfigure =
                pcifront && view.present && view.state.as_deref() == Some(RECONFIGURING);
            let (closing, adding) = if reconfigure {
                (view.closing.clone(), view.initialising.clone())
            } else {
                (Vec::new(), Vec::new())
            };
            // A device pciback cannot take is refused there, as xen_pcibk_export_device
            // refuses it; nothing for the toolstack to see here.
            let _ = host.xenbus_backend(domid, view.listed.clone(), view.present, closing, adding);
            let exported: Vec<Sbdf> = host.with_world(|w| {
                w.pciback
                    .xenbus
                    .get(&domid)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default()
            });
            if !view.present {
                continue;
            }
            let be = format!("{PCI_BACKENDS}/{}/0", domid.0);
            // xen_pcibk_publish_pci_dev: a vdev-N for each device exported.
            for (i, slot) in view.slots.iter().enumerate() {
                let published = view.vdevs.get(i).copied().unwrap_or(false);
                if slot.is_some_and(|s| exported.contains(&s)) && !published {
                    let vdev = format!("0000:00:{i:02x}.0");
                    self.xs
                        .write(TxId::NONE, &format!("{be}/vdev-{i}"), vdev.as_bytes())?;
                }
            }
            // xen_pcibk_setup_backend ends Initialised.
            if !exported.is_empty() && matches!(view.state.as_deref(), Some("1") | Some("2")) {
                self.xs.write(TxId::NONE, &format!("{be}/state"), b"3")?;
            }
            if reconfigure {
                self.xs
                    .write(TxId::NONE, &format!("{be}/state"), CONNECTED.as_bytes())?;
            } else if pcifront
                && !exported.is_empty()
                && view.frontend_state.as_deref() != Some(CONNECTED)
            {
                if let Some(fe) = view.frontend.as_deref() {
                    self.xs
                        .write(TxId::NONE, &format!("{fe}/state"), CONNECTED.as_bytes())?;
                    self.xs
                        .write(TxId::NONE, &format!("{be}/state"), CONNECTED.as_bytes())?;
                }
            }
        }
        Ok(any)
    }

    /// Domain `domid`'s backend as Xenstore holds it now.
    fn backend(&mut self, domid: DomId) -> Result<BackendView, XenstoreError> {
        let be = format!("{PCI_BACKENDS}/{}/0", domid.0);
        let mut read = |p: String| -> Result<Option<String>, XenstoreError> {
            Ok(self
                .xs
                .read_optional(TxId::NONE, &p)?
                .map(|v| String::from_utf8_lossy(&v).trim().to_string()))
        };
        let mut view = BackendView {
            state: read(format!("{be}/state"))?,
            frontend: read(format!("{be}/frontend"))?,
            ..BackendView::default()
        };
        if let Some(fe) = view.frontend.clone() {
            view.frontend_state = read(format!("{fe}/state"))?;
        }
        let Some(n) = read(format!("{be}/num_devs"))? else {
            view.present = read(be)?.is_some();
            return Ok(view);
        };
        view.present = true;
        let n: u32 = n.parse().unwrap_or(0);
        for i in 0..n {
            let dev = read(format!("{be}/dev-{i}"))?.and_then(|v| v.parse::<Sbdf>().ok());
            view.slots.push(dev);
            view.vdevs.push(read(format!("{be}/vdev-{i}"))?.is_some());
            if let Some(s) = dev {
                view.listed.push(s);
                match read(format!("{be}/state-{i}"))?.as_deref() {
                    Some(CLOSING) => view.closing.push(s),
                    Some(INITIALISING) => view.initialising.push(s),
                    _ => {}
                }
            }
        }
        Ok(view)
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>, XenstoreError> {
        match self.xs.directory(TxId::NONE, path) {
            Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(Vec::new()),
            r => r,
        }
    }
}

/// xenbus states (Xen's public io/xenbus.h) as Xenstore holds them.
const INITIALISING: &str = "1";
const CONNECTED: &str = "4";
const CLOSING: &str = "5";
const RECONFIGURING: &str = "7";

/// What pciback reads of one backend.
#[derive(Default)]
struct BackendView {
    listed: Vec<Sbdf>,
    /// Listed devices whose `state-N` is Closing.
    closing: Vec<Sbdf>,
    /// Listed devices whose `state-N` is Initialising (a hot-add).
    initialising: Vec<Sbdf>,
    /// `dev-N` by N, and whether `vdev-N` exists.
    slots: Vec<Option<Sbdf>>,
    vdevs: Vec<bool>,
    present: bool,
    state: Option<String>,
    frontend: Option<String>,
    frontend_state: Option<String>,
}

/// `<domid>` of `/local/domain/0/backend/pci/<domid>[/...]`.
fn backend_domid(path: &str) -> Option<DomId> {
    let rest = path.strip_prefix(PCI_BACKENDS)?.strip_prefix('/')?;
    rest.split('/').next()?.parse().ok().map(DomId)
}
