//! Engine calls on the simulated host with crash injection, and the broker adapter that
//! lets the simulated device models bind through ptguard. The simulated host's
//! [`Platform`](engine::Platform) itself is the daemon's ([`SimPlatform`]).

use std::cell::RefCell;

pub use daemon::sim_platform::SimPlatform;
use engine::{
    BindRequest, CrashPoint, CrashPoints, Engine, EngineError, NoticeKind, QuarantineReason,
};
use sim::dm::{VectorBroker, VectorRequest};
use sim::SimError;
use xen::Pirq;
use xenstore::XsClient;

/// Engine calls with crash injection: a countdown of crash points shared by every call of a
/// run; when it reaches zero the call fails with `Crashed`, ptguard "restarts" and recovers.
pub struct Ctl {
    pub xs: XsClient,
    pub platform: SimPlatform,
    /// The run's crash points, with the injected crash if one is planned.
    pub crash_points: CrashPoints,
    /// Where the injected crash happened.
    pub crashed_at: Option<CrashPoint>,
    pub notices: Vec<String>,
    /// Every quarantine the engine reported, with its reason, in order.
    pub quarantines: Vec<QuarantineReason>,
}

impl Ctl {
    pub fn new(xs: XsClient, platform: SimPlatform) -> Ctl {
        Ctl {
            xs,
            platform,
            crash_points: CrashPoints::new(),
            crashed_at: None,
            notices: Vec::new(),
            quarantines: Vec::new(),
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
        let said = std::mem::take(&mut e.notices);
        drop(e);
        self.hear(said);
        if let Err(EngineError::Crashed { at }) = &r {
            self.crashed_at = Some(*at);
            let mut e = Engine::new(&mut self.xs, &platform);
            let rec = e.reconcile(engine::Trigger::Recover);
            let said = std::mem::take(&mut e.notices);
            drop(e);
            self.hear(said);
            if let Err(err) = rec {
                self.notices
                    .push(format!("recovery after the crash failed: {err}"));
            }
        }
        r
    }

    /// Keeps what the engine said: its text for the report, its quarantines by reason.
    fn hear(&mut self, said: Vec<engine::Notice>) {
        for n in said {
            if let NoticeKind::Quarantined { reason, .. } = &n.kind {
                self.quarantines.push(reason.clone());
            }
            self.notices.push(n.text);
        }
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
