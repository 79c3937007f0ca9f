//! The engine's [`Platform`] over the simulated host, and the broker adapter that lets the
//! simulated device models bind through ptguard.

use std::cell::RefCell;

use engine::{BindRequest, Engine, EngineError, Platform};
use pci::{PciHost, Sbdf};
use sim::dm::{VectorBroker, VectorRequest};
use sim::SimHost;
use xen::{DomId, Hypervisor, Pirq};
use xenstore::XsClient;

/// The simulated host as the engine sees it.
#[derive(Clone)]
pub struct SimPlatform {
    pub host: SimHost,
}

impl Platform for SimPlatform {
    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.host
    }
    fn pci(&self) -> &dyn PciHost {
        &self.host
    }
    fn backend_changed(&self, sbdf: Sbdf, domid: Option<DomId>) {
        // pciback reacting to the backend nodes: export, or give back (reset + restore).
        let _ = match domid {
            Some(d) => self.host.pciback_export(sbdf, d),
            None => {
                // Whether another device stays exported to the same domain.
                let others = self.host.with_world(|w| {
                    let owner = w.device(sbdf).and_then(|d| d.linux.exported_to);
                    owner.is_some()
                        && w.devices
                            .iter()
                            .any(|(s, d)| *s != sbdf && d.linux.exported_to == owner)
                });
                if others {
                    // One of several devices leaves a live backend: given back at once here
                    // (real pciback needs libxl's Closing/Reconfiguring handshake for this,
                    // which ptguard does not do; docs/simulator.md).
                    self.host.pciback_put(sbdf)
                } else {
                    // The whole backend went: pciback's xenbus worker gives the device back
                    // later, and the engine waits for it (`wait_backend_released`).
                    self.host.pciback_put_later(sbdf)
                }
            }
        };
    }
}

/// Engine calls with crash injection: a countdown of crash points shared by every call of a
/// run; when it reaches zero the call fails with `Crashed`, ptguard "restarts" and recovers.
pub struct Ctl {
    pub xs: XsClient,
    pub platform: SimPlatform,
    /// Crash points left before the injected crash (`None`: no crash planned).
    pub fuel: Option<u64>,
    /// Crash points passed in this run.
    pub checkpoints: u64,
    /// Where the injected crash happened.
    pub crashed_at: Option<String>,
    pub notices: Vec<String>,
}

impl Ctl {
    pub fn new(xs: XsClient, platform: SimPlatform) -> Ctl {
        Ctl {
            xs,
            platform,
            fuel: None,
            checkpoints: 0,
            crashed_at: None,
            notices: Vec::new(),
        }
    }

    /// Runs `f` on a fresh engine. After an injected crash, recovers as a restarted ptguard
    /// would and returns the crash error.
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let platform = self.platform.clone();
        let mut e = Engine::new(&mut self.xs, &platform);
        if let Some(fuel) = self.fuel {
            e = e.crash_at(fuel);
        }
        let r = f(&mut e);
        let used = e.checkpoints;
        self.notices.append(&mut e.notices);
        drop(e);
        self.checkpoints += used;
        if let Some(f) = &mut self.fuel {
            *f = f.saturating_sub(used);
        }
        if let Err(EngineError::Crashed { at }) = &r {
            self.crashed_at = Some(at.clone());
            self.fuel = None;
            let mut e = Engine::new(&mut self.xs, &platform);
            let rec = e.recover();
            self.notices.append(&mut e.notices);
            if let Err(err) = rec {
                self.notices
                    .push(format!("recovery after the crash failed: {err}"));
            }
        }
        r
    }
}

/// The broker as the simulated device models reach it (in-process API).
pub struct EngineBroker<'c> {
    pub ctl: &'c RefCell<Ctl>,
    pub epoch: u64,
}

/// The broker request for a device model's vector request, with the epoch it was started
/// with.
pub fn bind_request(req: &VectorRequest, epoch: u64) -> BindRequest {
    BindRequest {
        domid: req.domid,
        sbdf: req.sbdf,
        epoch,
        // The same vocabulary (xen::IrqSource) on both sides.
        kind: req.kind,
        gvec: req.gvec,
        gflags: req.gflags,
        gtable: req.gtable,
    }
}

impl VectorBroker for EngineBroker<'_> {
    fn bind_vector(&self, req: &VectorRequest) -> Result<Pirq, String> {
        let r = bind_request(req, self.epoch);
        let mut ctl = self.ctl.borrow_mut();
        match ctl.call(|e| e.bind(&r)) {
            // ptguard restarted under the device model: it asks again.
            Err(EngineError::Crashed { .. }) => ctl.call(|e| e.bind(&r)).map_err(|e| e.to_string()),
            other => other.map_err(|e| e.to_string()),
        }
    }
    fn unbind_vector(&self, req: &VectorRequest, pirq: Pirq) -> Result<(), String> {
        let r = bind_request(req, self.epoch);
        let mut ctl = self.ctl.borrow_mut();
        match ctl.call(|e| e.unbind(&r, pirq)) {
            Err(EngineError::Crashed { .. }) => {
                ctl.call(|e| e.unbind(&r, pirq)).map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }
}
