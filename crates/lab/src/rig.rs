//! A simulated host with one passthrough device, guests, device models and a toolstack
//! running one of three teardown policies. `ptguard scenario` and `ptguard explore` drive it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use engine::{DeviceState, EngineError, Outcome};
use pci::Sbdf;
use serde::Serialize;
use sim::dm::{check_interrupts, DeviceModel, DirectBroker, DmBehaviour};
use sim::{libxl, DeviceSpec, PcibackProfile, Profile, SimHost, XenProfile};
use xen::DomId;
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;
use xenstore::TxId;

use crate::platform::{Ctl, EngineBroker, SimPlatform};
use crate::LabError;
use sim::SimError;

/// Who tears a device down, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// libxl's order: forced detach and reset while the dying domain still holds its pirqs.
    Legacy,
    /// libxl's order plus pciback's release_msix + prepare_msix when a device comes back.
    PcibackReleasePrepare,
    /// ptguard: ledger, broker, force-unbind before reset, quarantine on -EBUSY.
    Ptguard,
    /// ptguard's companion mode beside a stock toolstack (libxl's order) and a stock device
    /// model (direct hypercalls, no broker): it adopts the device the toolstack gave and,
    /// when the guest goes, sweeps the domain's pirqs, releases, resets and prepares before
    /// the toolstack's own teardown.
    Sweep,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Legacy,
        Policy::PcibackReleasePrepare,
        Policy::Sweep,
        Policy::Ptguard,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Policy::Legacy => "legacy",
            Policy::PcibackReleasePrepare => "pciback-release-prepare",
            Policy::Ptguard => "ptguard",
            Policy::Sweep => "sweep",
        }
    }
}

/// One step of a scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ScenarioStep {
    Boot(String),
    Reboot(String, String),
    Unplug(String),
    Attach(String),
    Destroy(String),
    Check(String),
    /// The guest's device model runs in a stubdomain (declared before its `boot`): libxl
    /// writes the PCI backend for the stubdomain, the model binds directly (no broker
    /// reaches it), and the stubdomain goes with its guest.
    Stubdom(String),
    /// The guest's stubdomain dies while the guest runs (what it mapped stays mapped).
    StubdomDies(String),
}

/// A lifecycle scenario (`scenarios/*.scn`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    pub vectors: u16,
    pub steps: Vec<ScenarioStep>,
}

impl Scenario {
    /// Parses the line format: `name N`, `about TEXT`, `vectors N`, then one step per line
    /// (`boot G`, `reboot G G2`, `unplug G`, `attach G`, `destroy G`, `check G`, `stubdom G`
    /// before G's boot, `stubdom-dies G`); `#` starts
    /// a comment.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let mut s = Scenario {
            name: String::new(),
            about: String::new(),
            vectors: 3,
            steps: Vec::new(),
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |m: &str| format!("line {}: {m}: {raw:?}", i + 1);
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let args: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            let one = || -> Result<String, String> {
                match args.as_slice() {
                    [g] => Ok(g.clone()),
                    _ => Err(err("expected one guest name")),
                }
            };
            match word {
                "name" => s.name = rest.trim().to_string(),
                "about" => s.about = rest.trim().to_string(),
                "vectors" => {
                    s.vectors = rest
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| err("vectors must be 1..64"))?
                }
                "boot" => s.steps.push(ScenarioStep::Boot(one()?)),
                "unplug" => s.steps.push(ScenarioStep::Unplug(one()?)),
                "attach" => s.steps.push(ScenarioStep::Attach(one()?)),
                "destroy" => s.steps.push(ScenarioStep::Destroy(one()?)),
                "check" => s.steps.push(ScenarioStep::Check(one()?)),
                "stubdom" => s.steps.push(ScenarioStep::Stubdom(one()?)),
                "stubdom-dies" => s.steps.push(ScenarioStep::StubdomDies(one()?)),
                "reboot" => match args.as_slice() {
                    [a, b] => s.steps.push(ScenarioStep::Reboot(a.clone(), b.clone())),
                    _ => return Err(err("expected: reboot OLD NEW")),
                },
                _ => return Err(err("unknown step")),
            }
        }
        if s.name.is_empty() {
            return Err("missing `name`".into());
        }
        if s.steps.is_empty() {
            return Err(format!("scenario {}: no steps", s.name));
        }
        Ok(s)
    }
}

/// The scenarios shipped in `scenarios/`, compiled in so the binary runs anywhere.
pub const BUILTIN_SCENARIOS: [(&str, &str); 3] = [
    ("reboot.scn", include_str!("../../../scenarios/reboot.scn")),
    (
        "reassign.scn",
        include_str!("../../../scenarios/reassign.scn"),
    ),
    (
        "hot-unplug.scn",
        include_str!("../../../scenarios/hot-unplug.scn"),
    ),
];

struct Guest {
    domid: DomId,
    dm: DeviceModel,
    epoch: u64,
    /// The stubdomain running its device model, if it has one.
    stubdomain: Option<DomId>,
}

/// What one run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Interrupt checks: guest, vectors delivered, vectors enabled.
    pub checks: Vec<(String, usize, u16)>,
    /// Stale bindings of other domains on the device when it was handed to a guest.
    pub leaked_bindings: usize,
    /// Xen's host_maskall or the hardware Function Mask set when it was handed over.
    pub forced_mask: bool,
    /// The device ended quarantined (or a hand-over was refused because it was).
    pub quarantined: bool,
    pub hypercalls: u64,
    pub sysfs_writes: u64,
    pub xenstore_requests: u64,
    pub xenstore_transactions: u64,
    pub notices: Vec<String>,
    /// Every quarantine the engine reported during the run, with its reason.
    pub quarantines: Vec<engine::QuarantineReason>,
    pub violations: Vec<String>,
    pub crashed_at: Option<engine::CrashPoint>,
    pub checkpoints: u64,
    /// Comparable end state for the crash explorer.
    pub end_state: String,
    /// Every simulated operation in order, when traced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

impl RunReport {
    /// Whether the last guest's interrupts all arrived.
    pub fn works(&self) -> bool {
        self.checks
            .last()
            .is_some_and(|(_, d, n)| *d == usize::from(*n))
    }
}

/// One simulated host, device and toolstack.
pub struct Rig {
    pub policy: Policy,
    pub behaviour: DmBehaviour,
    pub host: SimHost,
    pub xs: LocalXenstore,
    pub sbdf: Sbdf,
    vectors: u16,
    guests: BTreeMap<String, Guest>,
    /// Guests whose device model runs in a stubdomain once booted (`stubdom G`).
    stubdomained: std::collections::BTreeSet<String>,
    /// A guest being destroyed and its stubdomain, destroyed after it.
    stubdomains_of: BTreeMap<String, DomId>,
    ctl: RefCell<Ctl>,
    report: RunReport,
}

/// The device every scenario passes through.
pub fn scenario_device() -> Sbdf {
    Sbdf::from_devfn(0, 3, 0)
}

impl Rig {
    pub fn new(
        policy: Policy,
        behaviour: DmBehaviour,
        xen: XenProfile,
        pciback: PcibackProfile,
        vectors: u16,
    ) -> Rig {
        let mut profile = Profile::new(xen, pciback);
        profile.pciback_release_prepare_on_put = policy == Policy::PcibackReleasePrepare;
        let xs = LocalXenstore::new(Quotas::default());
        let host = SimHost::new(profile).with_sink(std::sync::Arc::new(xs.clone()));
        let sbdf = scenario_device();
        host.add_device(DeviceSpec::nic(sbdf, vectors.max(4) + 2));
        let platform = SimPlatform::new(host.clone(), xs.connect(0))
            .unwrap_or_else(|e| unreachable!("an in-process store takes a watch: {e}"));
        let ctl = Ctl::new(xs.connect(0), platform);
        Rig {
            policy,
            behaviour,
            host,
            xs,
            sbdf,
            vectors,
            guests: BTreeMap::new(),
            stubdomained: Default::default(),
            stubdomains_of: BTreeMap::new(),
            ctl: RefCell::new(ctl),
            report: RunReport::default(),
        }
    }

    /// Keeps a trace of every hypercall, sysfs write, guest action and Xen console line.
    pub fn trace(&mut self) {
        self.host.set_tracing(true);
    }

    /// Plans an injected ptguard crash at crash point `k` of this run.
    pub fn crash_at(&mut self, k: u64) {
        self.ctl.get_mut().crash_points = engine::CrashPoints::crashing_at(k);
    }

    fn engine<T>(
        &self,
        f: impl FnOnce(&mut engine::Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.ctl.borrow_mut().call(f)
    }

    /// Runs an engine call; after an injected crash (and the recovery `Ctl` runs), the
    /// operator or daemon runs the command again.
    fn engine_retry<T>(
        &self,
        f: impl Fn(&mut engine::Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        match self.engine(&f) {
            Err(EngineError::Crashed { .. }) => self.engine(&f),
            r => r,
        }
    }

    fn ledger_state(&self) -> Option<(DeviceState, u64)> {
        self.engine(|e| e.record(self.sbdf))
            .ok()
            .flatten()
            .map(|r| (r.state, r.epoch))
    }

    /// Prepares the device: pci-assignable-add (libxl) or ptguard assignable-add.
    pub fn setup(&mut self) -> Result<(), LabError> {
        match self.policy {
            Policy::Ptguard => self
                .engine_retry(|e| match e.record(self.sbdf)? {
                    Some(_) => Ok(()),
                    None => e.assignable_add(self.sbdf).map(|_| ()),
                })
                .map_err(LabError::from),
            _ => Ok(libxl::assignable_add(&self.host, self.sbdf)?),
        }
    }

    pub fn run(&mut self, scenario: &Scenario) -> RunReport {
        if let Err(e) = self.setup() {
            self.report.notices.push(format!("setup failed: {e}"));
        }
        self.check_invariants("setup");
        for step in &scenario.steps {
            let r = match step {
                ScenarioStep::Boot(g) => self.boot(g),
                ScenarioStep::Reboot(a, b) => self.destroy(a).and_then(|_| self.boot(b)),
                ScenarioStep::Unplug(g) => self.unplug(g),
                ScenarioStep::Attach(g) => self.attach_existing(g),
                ScenarioStep::Destroy(g) => self.destroy(g),
                ScenarioStep::Check(g) => {
                    self.check(g);
                    Ok(())
                }
                ScenarioStep::Stubdom(g) => {
                    self.stubdomained.insert(g.clone());
                    Ok(())
                }
                ScenarioStep::StubdomDies(g) => self.stubdomain_dies(g),
            };
            if let Err(e) = r {
                self.report.notices.push(format!("{step:?}: {e}"));
            }
            // Time passes between steps: dom0's asynchronous work (pciback's give-back of a
            // removed backend) has run by the next one, whoever waited for it.
            self.ctl.borrow().platform.settle();
            self.check_invariants(&format!("{step:?}"));
        }
        // The lifecycle ends: every remaining guest is destroyed, so the end state compares
        // what is left once nothing owns the device.
        let remaining: Vec<String> = self.guests.keys().cloned().collect();
        for g in remaining {
            if let Err(e) = self.destroy(&g) {
                self.report.notices.push(format!("final destroy {g}: {e}"));
            }
        }
        self.check_invariants("the end");
        self.finish()
    }

    fn finish(&mut self) -> RunReport {
        let c = self.host.counters();
        let ctl = self.ctl.borrow();
        let stats = ctl.xs.stats();
        let mut r = std::mem::take(&mut self.report);
        r.hypercalls = c.total_hypercalls();
        r.sysfs_writes = c.sysfs_writes;
        r.xenstore_requests = stats.requests;
        r.xenstore_transactions = stats.transactions_started;
        r.notices.extend(ctl.notices.iter().cloned());
        r.quarantines.extend(ctl.quarantines.iter().cloned());
        r.crashed_at = ctl.crashed_at;
        r.trace = self.host.take_trace();
        r.checkpoints = ctl.crash_points.passed();
        drop(ctl);
        let ledger = self.ledger_state();
        r.quarantined |= matches!(ledger, Some((DeviceState::Quarantined, _)));
        r.end_state = self.host.with_world(|w| {
            let d = w.device(self.sbdf);
            format!(
                "ledger={:?} used_entries={:?} host_maskall={:?} hw_maskall={:?} owner={:?} works={}",
                // The epoch counts assignments and rollbacks; a recovered crash may add one.
                ledger.map(|(s, _)| s),
                d.map(|d| d.xen.used_entries),
                d.map(|d| d.xen.host_maskall),
                d.map(|d| d.hw.function_mask()),
                d.map(|d| d.xen.owner),
                r.works()
            )
        });
        r
    }

    fn direct(&self) -> DirectBroker<SimHost> {
        DirectBroker(self.host.clone())
    }

    fn boot(&mut self, name: &str) -> Result<(), LabError> {
        let domid = self.host.create_domain(name, true);
        let stubdomain = if self.stubdomained.contains(name) {
            Some(self.create_stubdomain(name, domid)?)
        } else {
            None
        };
        self.guests.insert(
            name.to_string(),
            Guest {
                domid,
                dm: DeviceModel::new(domid, self.behaviour),
                epoch: 0,
                stubdomain,
            },
        );
        let r = self.attach_to(name);
        self.host
            .unpause(domid)
            .map_err(SimError::refused("unpause"))?;
        r?;
        self.enable(name)
    }

    fn attach_existing(&mut self, name: &str) -> Result<(), LabError> {
        self.attach_to(name)?;
        self.enable(name)
    }

    fn attach_to(&mut self, name: &str) -> Result<(), LabError> {
        let sbdf = self.sbdf;
        let Some(mut g) = self.guests.remove(name) else {
            return Err(LabError::NoGuest { name: name.into() });
        };
        let r = match self.policy {
            Policy::Ptguard => {
                let domid = g.domid;
                match self.engine_retry(|e| e.attach(sbdf, domid)) {
                    Ok(epoch) if g.stubdomain.is_some() => {
                        // No broker reaches a model in a stubdomain: it binds directly.
                        g.epoch = epoch;
                        g.dm.plug(&self.host, &self.direct(), sbdf)
                            .map_err(LabError::from)
                    }
                    Ok(epoch) => {
                        g.epoch = epoch;
                        let broker = EngineBroker {
                            access: &self.ctl,
                            epoch,
                        };
                        g.dm.plug(&self.host, &broker, sbdf).map_err(LabError::from)
                    }
                    Err(
                        e @ EngineError::NotAssignable {
                            state: DeviceState::Quarantined,
                            ..
                        },
                    ) => {
                        self.report.quarantined = true;
                        Err(e.into())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Policy::Sweep => {
                let domid = g.domid;
                let stubdomain = g.stubdomain;
                libxl::attach(&self.host, domid, sbdf, &mut g.dm, &self.direct())
                    .map_err(LabError::from)
                    .and_then(|()| match stubdomain {
                        // libxl writes the stubdomain's backend; the daemon's adoption
                        // round reads it as the guest's.
                        Some(s) => {
                            libxl::backend_add(&mut self.xs.connect(0), s, sbdf)?;
                            let adopted = self.engine_retry(|e| e.adopt_from_toolstack())?;
                            if !adopted.iter().any(|a| a.sbdf == sbdf && a.domid == domid) {
                                self.report.violations.push(format!(
                                    "a stubdomain's backend was not adopted as its guest {domid}'s"
                                ));
                            }
                            Ok(())
                        }
                        // `ptguard watch` sees the toolstack's backend and adopts the device.
                        None => Ok(self.engine_retry(|e| e.adopt(sbdf, domid)).map(|_| ())?),
                    })
            }
            _ => Ok(libxl::attach(
                &self.host,
                g.domid,
                sbdf,
                &mut g.dm,
                &self.direct(),
            )?),
        };
        self.guests.insert(name.to_string(), g);
        r
    }

    fn enable(&mut self, name: &str) -> Result<(), LabError> {
        let sbdf = self.sbdf;
        let n = self.vectors;
        let Some(mut g) = self.guests.remove(name) else {
            return Err(LabError::NoGuest { name: name.into() });
        };
        let r = match self.policy {
            Policy::Ptguard if g.stubdomain.is_none() => {
                let broker = EngineBroker {
                    access: &self.ctl,
                    epoch: g.epoch,
                };
                g.dm.guest_enable_msix(&self.host, &broker, sbdf, n)
            }
            _ => g.dm.guest_enable_msix(&self.host, &self.direct(), sbdf, n),
        };
        if g.dm.behaviour == DmBehaviour::Hostile && self.policy == Policy::Ptguard {
            // A compromised model (as a stub domain) tries to rewrite the ledger.
            let mut c = self.xs.connect(u32::from(g.domid.0));
            let w = c.write(
                TxId::NONE,
                &engine::ledger::device_path(sbdf),
                b"state=assignable epoch=0 msix-size=0",
            );
            if w.is_ok() {
                self.report
                    .violations
                    .push("a guest-domain connection could write the ledger".into());
            }
        }
        let domid = g.domid;
        self.guests.insert(name.to_string(), g);
        // Hand-over: the state the guest received.
        self.host.with_world(|w| {
            if let Some(d) = w.device(sbdf) {
                let stale = w
                    .descs
                    .values()
                    .filter(|x| x.sbdf == sbdf && x.domid != domid)
                    .count();
                self.report.leaked_bindings = self.report.leaked_bindings.max(stale);
                self.report.forced_mask |= d.xen.host_maskall || d.hw.function_mask();
            }
        });
        self.check(name);
        Ok(r.map(|_| ())?)
    }

    /// The stubdomain of guest `name` (`domid`): a PV domain naming it as `target`, named
    /// by the guest's `image/device-model-domid`, as libxl writes them.
    fn create_stubdomain(&mut self, name: &str, domid: DomId) -> Result<DomId, LabError> {
        let s = self.host.create_domain(&format!("{name}-dm"), false);
        self.host
            .unpause(s)
            .map_err(SimError::refused("unpause the stubdomain"))?;
        let mut xs = self.xs.connect(0);
        xs.write(
            TxId::NONE,
            &format!("/local/domain/{}/target", s.0),
            domid.0.to_string().as_bytes(),
        )?;
        xs.write(
            TxId::NONE,
            &format!("/local/domain/{}/image/device-model-domid", domid.0),
            s.0.to_string().as_bytes(),
        )?;
        Ok(s)
    }

    /// The guest's stubdomain dies (killed or crashed); its model never unmapped anything.
    fn stubdomain_dies(&mut self, name: &str) -> Result<(), LabError> {
        let Some(g) = self.guests.get_mut(name) else {
            return Err(LabError::NoGuest { name: name.into() });
        };
        let Some(s) = g.stubdomain else {
            return Err(LabError::Unexpected(format!("{name} has no stubdomain")));
        };
        g.dm.kill();
        let _ = self.host.destroy_domain(s);
        // The daemon's rounds run on: nothing of the running guest is torn down.
        if matches!(self.policy, Policy::Ptguard | Policy::Sweep) {
            self.engine_retry(|e| e.reconcile(engine::Trigger::Recover))?;
        }
        Ok(())
    }

    /// Whether guest `g` currently owns the device (a refused hand-over is not a failure).
    fn host_got_device(&self, g: &str) -> bool {
        let Some(domid) = self.guests.get(g).map(|g| g.domid) else {
            return false;
        };
        self.host
            .with_world(|w| w.device(self.sbdf).is_some_and(|d| d.xen.owner == domid))
    }

    fn check(&mut self, name: &str) {
        let Some(g) = self.guests.get(name) else {
            return;
        };
        let rep = check_interrupts(&self.host, g.domid, self.sbdf, self.vectors);
        self.report
            .checks
            .push((name.to_string(), rep.delivered(), self.vectors));
    }

    /// The guest shuts down (its device model behaving as it does) and the toolstack
    /// destroys the domain.
    fn destroy(&mut self, name: &str) -> Result<(), LabError> {
        let r = self.destroy_guest(name);
        // libxl__destroy_domid: the model's stubdomain is destroyed with its guest.
        if let Some(s) = self.stubdomains_of.remove(name) {
            let _ = self.host.destroy_domain(s);
        }
        r
    }

    fn destroy_guest(&mut self, name: &str) -> Result<(), LabError> {
        let sbdf = self.sbdf;
        let Some(mut g) = self.guests.remove(name) else {
            return Err(LabError::NoGuest { name: name.into() });
        };
        if let Some(s) = g.stubdomain {
            self.stubdomains_of.insert(name.to_string(), s);
        }
        let domid = g.domid;
        let attached_here = self
            .host
            .with_world(|w| w.device(sbdf).is_some_and(|d| d.xen.owner == domid));
        match self.policy {
            Policy::Ptguard => {
                let broker = EngineBroker {
                    access: &self.ctl,
                    epoch: g.epoch,
                };
                g.dm.guest_shutdown(&self.host, &broker, sbdf);
                let _ = self.host.shutdown(domid);
                let _ = self.host.pause(domid);
                g.dm.kill();
                // @releaseDomain → ptguard watch tears down what the domain had.
                let r = self.engine_retry(|e| e.reconcile(engine::Trigger::DomainReleased(domid)));
                let _ = self.host.destroy_domain(domid);
                // The domain is gone: finish quarantined teardowns.
                let _ = self.engine_retry(|e| e.reconcile(engine::Trigger::Recover));
                Ok(r.map(|_| ())?)
            }
            Policy::Sweep => {
                let direct = self.direct();
                g.dm.guest_shutdown(&self.host, &direct, sbdf);
                let _ = self.host.shutdown(domid);
                // @releaseDomain reaches ptguard before libxl starts its teardown (the race
                // docs/companion.md measures): sweep, release, reset, prepare, verify.
                let r = self.engine_retry(|e| e.reconcile(engine::Trigger::DomainReleased(domid)));
                if let Ok(out) = &r {
                    if out
                        .iter()
                        .any(|(_, o)| matches!(o, Outcome::Quarantined { .. }))
                    {
                        self.report.quarantined = true;
                    }
                }
                let devices: Vec<Sbdf> = if attached_here { vec![sbdf] } else { vec![] };
                let l = libxl::destroy(&self.host, domid, &devices, &mut g.dm, &direct);
                r.map(|_| ())?;
                Ok(l?)
            }
            _ => {
                let direct = self.direct();
                g.dm.guest_shutdown(&self.host, &direct, sbdf);
                let _ = self.host.shutdown(domid);
                let devices: Vec<Sbdf> = if attached_here { vec![sbdf] } else { vec![] };
                Ok(libxl::destroy(
                    &self.host, domid, &devices, &mut g.dm, &direct,
                )?)
            }
        }
    }

    /// Hot-unplug from a running guest.
    fn unplug(&mut self, name: &str) -> Result<(), LabError> {
        let sbdf = self.sbdf;
        let Some(mut g) = self.guests.remove(name) else {
            return Err(LabError::NoGuest { name: name.into() });
        };
        if g.dm.behaviour == DmBehaviour::Crashes || g.dm.behaviour == DmBehaviour::KilledEarly {
            g.dm.crash();
        }
        let r = match self.policy {
            Policy::Ptguard => {
                let broker = EngineBroker {
                    access: &self.ctl,
                    epoch: g.epoch,
                };
                let _ = g.dm.unplug(&self.host, &broker, sbdf, true);
                match self.engine_retry(|e| e.detach(sbdf)) {
                    Ok(Outcome::Quarantined { .. }) => {
                        self.report.quarantined = true;
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Policy::Sweep => {
                let direct = self.direct();
                let r = libxl::detach(&self.host, g.domid, sbdf, &mut g.dm, &direct, false)
                    .or_else(|_| {
                        libxl::detach(&self.host, g.domid, sbdf, &mut g.dm, &direct, true)
                    });
                // The device left the toolstack's backend while its guest runs: the
                // daemon's round follows it (Xen no longer shows it with the guest) and
                // cleans it, unmapping only what the guest still has bound to its vectors.
                match self.engine_retry(|e| e.follow_departures(false)) {
                    Ok(d) => {
                        if d.iter()
                            .any(|d| matches!(d.outcome, Some(Outcome::Quarantined { .. }) | None))
                        {
                            self.report.quarantined = true;
                        }
                    }
                    Err(e) => self.report.notices.push(format!("follow departures: {e}")),
                }
                Ok(r?)
            }
            _ => {
                let direct = self.direct();
                // xl pci-detach; on a device_del timeout the operator forces it.
                Ok(
                    libxl::detach(&self.host, g.domid, sbdf, &mut g.dm, &direct, false).or_else(
                        |_| libxl::detach(&self.host, g.domid, sbdf, &mut g.dm, &direct, true),
                    )?,
                )
            }
        };
        self.guests.insert(name.to_string(), g);
        r
    }

    /// Invariants 1, 2, 3 and 5 (docs/design.md, "The invariants"), checked after every step.
    fn check_invariants(&mut self, at: &str) {
        let sbdf = self.sbdf;
        let ledger = self.ledger_state();
        let mut v = Vec::new();
        // 2 and 5: what the ledger calls assignable is clean — asked of the simulated host
        // itself, never through the engine's platform.
        if matches!(ledger, Some((DeviceState::Assignable, _))) {
            if let Err(e) = self.host.with_world(|w| w.msix_clean(sbdf)) {
                v.push(format!(
                    "invariant 2/5 after {at}: ledger says assignable but {e}"
                ));
            }
        }
        // In companion mode the toolstack deassigns and gives devices on without asking
        // ptguard; after the daemon's round no live guest may still hold pirqs of a device
        // it lost (the round unmaps them), so invariant 3 holds for both of ptguard's modes.
        let toolstack_deassigns = self.policy == Policy::Sweep;
        let mut toolstack = Vec::new();
        self.host.with_world(|w| {
            let Some(d) = w.device(sbdf) else { return };
            // 3: no live domain holds a binding to a device it does not own.
            for desc in w.descs.values().filter(|x| x.sbdf == sbdf) {
                let live = w.domains.get(&desc.domid).is_some_and(|dd| !dd.dying);
                if live && desc.domid != d.xen.owner {
                    v.push(format!(
                        "invariant 3 after {at}: {} holds pirq {} on {sbdf} owned by {}",
                        desc.domid, desc.pirq, d.xen.owner
                    ));
                }
            }
            // 1: a guest that was handed the device got clean state.
            if d.xen.owner != xen::DomId::IO && d.xen.owner != xen::DomId::DOM0 {
                let stale = w
                    .descs
                    .values()
                    .filter(|x| x.sbdf == sbdf && x.domid != d.xen.owner)
                    .count();
                if stale > 0 && w.domains.get(&d.xen.owner).is_some_and(|o| !o.dying) {
                    // Handed over by the toolstack although ptguard had quarantined it.
                    let to = if toolstack_deassigns
                        && matches!(ledger, Some((DeviceState::Quarantined, _)))
                    {
                        &mut toolstack
                    } else {
                        &mut v
                    };
                    to.push(format!(
                        "invariant 1 after {at}: {} got {sbdf} with {stale} stale bindings",
                        d.xen.owner
                    ));
                }
            }
        });
        let fatal = self.host.counters().fatal;
        if fatal > 0 {
            v.push(format!(
                "after {at}: {fatal} call(s) real Xen 4.17 would crash on (MSI-X ops on a device without MSI-X)"
            ));
        }
        if at.starts_with("Boot") || at.starts_with("Attach") || at.starts_with("Reboot") {
            if let Some((g, got, n)) = self.report.checks.last() {
                if *got != usize::from(*n) && !self.report.quarantined && self.host_got_device(g) {
                    v.push(format!(
                        "invariant 1 after {at}: {g} received {got} of {n} interrupts"
                    ));
                }
            }
        }
        self.report.violations.extend(v);
        self.report
            .notices
            .extend(toolstack.into_iter().map(|t| format!("toolstack: {t}")));
    }
}
