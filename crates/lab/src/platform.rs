//! The engine's [`Platform`] over the simulated host, and the broker adapter that lets the
//! simulated device models bind through ptguard.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::{BindRequest, CrashPoints, Engine, EngineError, Platform};
use pci::host::Resource;
use pci::{PciError, PciHost, Sbdf};
use sim::dm::{VectorBroker, VectorRequest};
use sim::xenbus::PcibackXenbus;
use sim::{SimError, SimHost};
use xen::{Hypervisor, Pirq};
use xenstore::XsClient;

use crate::LabError;

/// The simulated host as the engine sees it: Xen and dom0's PCI devices, with pciback
/// watching dom0's PCI backends in Xenstore as the real one does.
#[derive(Clone)]
pub struct SimPlatform {
    pub host: SimHost,
    pciback: Arc<Mutex<PcibackXenbus>>,
}

impl SimPlatform {
    /// The host, with pciback's xenbus watch over `xs` (its own dom0 connection to the
    /// Xenstore ptguard writes).
    pub fn new(host: SimHost, xs: XsClient) -> Result<SimPlatform, LabError> {
        Ok(SimPlatform {
            host,
            pciback: Arc::new(Mutex::new(PcibackXenbus::new(xs)?)),
        })
    }

    /// dom0's pending work runs: pciback reacts to the backends written since it last ran.
    /// Every call into dom0's kernel (sysfs) does this first.
    pub fn dom0_runs(&self) {
        let mut pciback = self.pciback.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = pciback.run(&self.host) {
            tracing::warn!("simulated pciback's xenbus watch: {e}");
        }
    }

    /// Time passes in dom0: pciback's reactions, then its worker's give-backs; true when
    /// the worker gave any device back.
    pub fn settle(&self) -> bool {
        self.dom0_runs();
        self.host.settle()
    }

    fn kernel(&self) -> &SimHost {
        self.dom0_runs();
        &self.host
    }
}

impl Platform for SimPlatform {
    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.host
    }
    fn pci(&self) -> &dyn PciHost {
        self
    }
}

impl PciHost for SimPlatform {
    fn list_devices(&self) -> Result<Vec<Sbdf>, PciError> {
        self.kernel().list_devices()
    }
    fn exists(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().exists(sbdf)
    }
    fn read_config(&self, sbdf: Sbdf) -> Result<Vec<u8>, PciError> {
        self.kernel().read_config(sbdf)
    }
    fn write_config(&self, sbdf: Sbdf, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.kernel().write_config(sbdf, offset, data)
    }
    fn resources(&self, sbdf: Sbdf) -> Result<Vec<Resource>, PciError> {
        self.kernel().resources(sbdf)
    }
    fn irq(&self, sbdf: Sbdf) -> Result<u32, PciError> {
        self.kernel().irq(sbdf)
    }
    fn msi_irqs(&self, sbdf: Sbdf) -> Result<Vec<u32>, PciError> {
        self.kernel().msi_irqs(sbdf)
    }
    fn enabled(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().enabled(sbdf)
    }
    fn driver(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.kernel().driver(sbdf)
    }
    fn physfn(&self, sbdf: Sbdf) -> Result<Option<Sbdf>, PciError> {
        self.kernel().physfn(sbdf)
    }
    fn driver_override(&self, sbdf: Sbdf) -> Result<Option<String>, PciError> {
        self.kernel().driver_override(sbdf)
    }
    fn set_driver_override(&self, sbdf: Sbdf, driver: Option<&str>) -> Result<(), PciError> {
        self.kernel().set_driver_override(sbdf, driver)
    }
    fn reset_methods(&self, sbdf: Sbdf) -> Result<Option<Vec<String>>, PciError> {
        self.kernel().reset_methods(sbdf)
    }
    fn can_reset(&self, sbdf: Sbdf) -> Result<bool, PciError> {
        self.kernel().can_reset(sbdf)
    }
    fn reset(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().reset(sbdf)
    }
    fn driver_bind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().driver_bind(driver, sbdf)
    }
    fn driver_unbind(&self, driver: &str, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().driver_unbind(driver, sbdf)
    }
    fn pciback_slots(&self) -> Result<Vec<Sbdf>, PciError> {
        self.kernel().pciback_slots()
    }
    fn pciback_new_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_new_slot(sbdf)
    }
    fn pciback_remove_slot(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_remove_slot(sbdf)
    }
    fn pciback_permissive(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_permissive(sbdf)
    }
    fn pciback_allow_interrupt_control(&self, sbdf: Sbdf) -> Result<(), PciError> {
        self.kernel().pciback_allow_interrupt_control(sbdf)
    }
    fn wait_backend_released(&self, domid: u16, timeout: Duration) -> Result<bool, PciError> {
        self.kernel().wait_backend_released(domid, timeout)
    }
}

/// Engine calls with crash injection: a countdown of crash points shared by every call of a
/// run; when it reaches zero the call fails with `Crashed`, ptguard "restarts" and recovers.
pub struct Ctl {
    pub xs: XsClient,
    pub platform: SimPlatform,
    /// The run's crash points, with the injected crash if one is planned.
    pub crash_points: CrashPoints,
    /// Where the injected crash happened.
    pub crashed_at: Option<String>,
    pub notices: Vec<String>,
}

impl Ctl {
    pub fn new(xs: XsClient, platform: SimPlatform) -> Ctl {
        Ctl {
            xs,
            platform,
            crash_points: CrashPoints::new(),
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
        let mut e = Engine::new(&mut self.xs, &platform).counting(&self.crash_points);
        let r = f(&mut e);
        self.notices.extend(e.notices.drain(..).map(|n| n.text));
        drop(e);
        if let Err(EngineError::Crashed { at }) = &r {
            self.crashed_at = Some(at.clone());
            let mut e = Engine::new(&mut self.xs, &platform);
            let rec = e.reconcile(engine::Trigger::Recover);
            self.notices.extend(e.notices.drain(..).map(|n| n.text));
            if let Err(err) = rec {
                self.notices
                    .push(format!("recovery after the crash failed: {err}"));
            }
        }
        r
    }
}

/// Whatever runs engine calls for a simulated device model's broker requests: the
/// harness (a crash restarts ptguard and the device model asks again), a command's host
/// context, a test's engine.
pub trait EngineAccess {
    fn with_engine<T>(
        &self,
        f: impl Fn(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError>;
}

/// The broker as the simulated device models reach it (in-process API): each request
/// becomes the engine's bind or unbind, with the epoch the device model was started with.
pub struct EngineBroker<A> {
    pub access: A,
    pub epoch: u64,
}

impl<A: EngineAccess> VectorBroker for EngineBroker<A> {
    fn bind_vector(&self, req: &VectorRequest) -> Result<Pirq, SimError> {
        let r = bind_request(req, self.epoch);
        self.access
            .with_engine(|e| e.bind(&r))
            .map_err(|e| SimError::Broker(e.to_string()))
    }
    fn unbind_vector(&self, req: &VectorRequest, pirq: Pirq) -> Result<(), SimError> {
        let r = bind_request(req, self.epoch);
        self.access
            .with_engine(|e| e.unbind(&r, pirq))
            .map_err(|e| SimError::Broker(e.to_string()))
    }
}

impl EngineAccess for &RefCell<Ctl> {
    fn with_engine<T>(
        &self,
        f: impl Fn(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut ctl = self.borrow_mut();
        match ctl.call(&f) {
            // ptguard restarted under the device model: it asks again.
            Err(EngineError::Crashed { .. }) => ctl.call(&f),
            other => other,
        }
    }
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
