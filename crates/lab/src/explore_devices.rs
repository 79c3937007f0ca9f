//! Crash exploration of lifecycles with more than one device or domain, which the
//! single-device scenarios of `explore` cannot express: two devices of one guest sharing a
//! machine INTx line, an SR-IOV virtual function whose physical function stops decoding,
//! and a domid reused by a new domain while ptguard was down. Each runs once without a
//! crash, then once per crash point with ptguard crashing there (and restarting: recovery
//! from the ledger, then the interrupted request again); the invariants are checked on the
//! simulated host after every run, and the end state must equal the crash-free run's.

use std::cell::RefCell;
use std::sync::Arc;

use engine::{BindKind, BindRequest, DeviceState, Engine, EngineError};
use pci::{PciHost, Sbdf};
use serde::Serialize;
use sim::dm::{check_interrupts, DeviceModel, DmBehaviour};
use sim::{DeviceSpec, PcibackProfile, Profile, SimHost, XenProfile};
use xen::{DomId, GuestIntx, Hypervisor, MapPirq};
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;

use crate::platform::{Ctl, EngineAccess, EngineBroker, SimPlatform};

/// What one multi-device scenario's exploration found.
#[derive(Debug, Serialize)]
pub struct DeviceScenarioSummary {
    pub scenario: &'static str,
    pub crash_points: u64,
    /// `scenario/point: what`, one per run that broke an invariant or ended differently.
    pub violations: Vec<String>,
}

/// The scenarios, by name.
pub const SCENARIOS: [&str; 4] = [
    "shared-intx-line",
    "vf-pf-decoding",
    "reused-domid",
    "stubdomain",
];

struct Bed {
    host: SimHost,
    ctl: RefCell<Ctl>,
    _xs: LocalXenstore,
}

impl Bed {
    fn new(xen: XenProfile, pciback: PcibackProfile, devices: Vec<DeviceSpec>) -> Bed {
        let xs = LocalXenstore::new(Quotas::default());
        let host = SimHost::new(Profile::new(xen, pciback)).with_sink(Arc::new(xs.clone()));
        for d in devices {
            host.add_device(d);
        }
        let platform = SimPlatform::new(host.clone(), xs.connect(0))
            .unwrap_or_else(|e| unreachable!("an in-process store takes a watch: {e}"));
        let ctl = Ctl::new(xs.connect(0), platform);
        Bed {
            host,
            ctl: RefCell::new(ctl),
            _xs: xs,
        }
    }

    /// One engine request; after a crash (ptguard restarted and recovered) it is asked
    /// again, as a device model or an operator would.
    /// An engine call; a crash restarts ptguard and the call is made again.
    fn ask<T>(&self, f: impl Fn(&mut Engine) -> Result<T, EngineError>) -> Result<T, EngineError> {
        (&self.ctl).with_engine(f)
    }

    fn state(&self, sbdf: Sbdf) -> Option<DeviceState> {
        self.ask(|e| e.record(sbdf)).ok().flatten().map(|r| r.state)
    }

    /// The invariants every run ends with: nothing fatal reached Xen, and each device the
    /// ledger calls assignable is clean in Xen.
    fn end_checks(&self, devices: &[Sbdf], out: &mut Vec<String>) {
        let fatal = self.host.with_world(|w| w.counters.fatal);
        if fatal > 0 {
            out.push(format!("{fatal} call(s) real Xen would not survive"));
        }
        for s in devices {
            if self.state(*s) == Some(DeviceState::Assignable) {
                if let Err(e) = self.host.with_world(|w| w.msix_clean(*s)) {
                    out.push(format!("{s} assignable but {e}"));
                }
            }
        }
    }
}

fn msix_request(host: &SimHost, domid: DomId, sbdf: Sbdf, epoch: u64, entry: u16) -> BindRequest {
    let table_base = host.with_world(|w| w.device(sbdf).map(|d| d.hw.table_base()));
    BindRequest {
        domid,
        sbdf,
        epoch,
        kind: BindKind::Msix {
            entry,
            table_base: table_base.unwrap_or_default(),
        },
        gvec: 0x40 + entry as u8,
        gflags: 0,
        gtable: 0xf100_0000,
    }
}

/// Runs `scenario` on a fresh host with a crash at crash point `crash_at` (None: no crash); returns its end state and
/// what went wrong, and the crash points it passed.
type Scenario = fn(&Bed, &mut Vec<String>) -> String;

fn run_one(
    xen: XenProfile,
    pciback: PcibackProfile,
    devices: &[DeviceSpec],
    scenario: Scenario,
    crash_at: Option<u64>,
) -> (String, Vec<String>, u64) {
    let bed = Bed::new(xen, pciback, devices.to_vec());
    if let Some(k) = crash_at {
        bed.ctl.borrow_mut().crash_points = engine::CrashPoints::crashing_at(k);
    }
    let mut problems = Vec::new();
    let end = scenario(&bed, &mut problems);
    let sbdfs: Vec<Sbdf> = devices.iter().map(|d| d.sbdf).collect();
    bed.end_checks(&sbdfs, &mut problems);
    let passed = bed.ctl.borrow().crash_points.passed();
    (end, problems, passed)
}

fn shared_line_devices() -> Vec<DeviceSpec> {
    ["0000:03:00.0", "0000:04:00.0"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .map(|s| DeviceSpec {
            gsi: 17,
            ..DeviceSpec::nic(s, 4)
        })
        .collect()
}

/// Two devices of one guest on machine line 17: A is hot-unplugged, B's INTx must keep
/// arriving; then the guest goes and both end clean.
fn shared_intx_line(bed: &Bed, problems: &mut Vec<String>) -> String {
    let [a, b] = [shared_line_devices()[0].sbdf, shared_line_devices()[1].sbdf];
    let host = &bed.host;
    let g = host.create_domain("g", true);
    let mut epochs = Vec::new();
    for s in [a, b] {
        let _ = bed.ask(|e| match e.record(s)? {
            Some(_) => Ok(()),
            None => e.assignable_add(s).map(|_| ()),
        });
        match bed.ask(|e| e.attach(s, g)) {
            Ok(ep) => epochs.push(ep),
            Err(e) => problems.push(format!("attach {s}: {e}")),
        }
    }
    if epochs.len() != 2 {
        return "attach failed".into();
    }
    for (i, s) in [a, b].into_iter().enumerate() {
        let req = BindRequest {
            domid: g,
            sbdf: s,
            epoch: epochs[i],
            kind: BindKind::Intx {
                gsi: 17,
                guest: Some(GuestIntx {
                    bus: 0,
                    device: 4 + i as u8,
                    intx: 0,
                }),
            },
            gvec: 0,
            gflags: 0,
            gtable: 0,
        };
        if let Err(e) = bed.ask(|en| en.bind(&req)) {
            problems.push(format!("bind INTx of {s}: {e}"));
        }
    }
    let detached = bed.ask(|e| e.detach(a));
    if let Err(e) = host.with_world(|w| w.raise_intx(b, (0, 5, 0))) {
        problems.push(format!("B's INTx after A's unplug ({detached:?}): {e}"));
    }
    let _ = host.shutdown(g);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::DomainReleased(g)));
    let _ = host.destroy_domain(g);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::Recover));
    format!("A {:?} B {:?}", bed.state(a), bed.state(b))
}

fn vf_devices() -> Vec<DeviceSpec> {
    let (Ok(pf), Ok(vf)) = ("0000:05:00.0".parse(), "0000:05:10.0".parse()) else {
        return Vec::new();
    };
    vec![
        DeviceSpec::nic(pf, 4),
        DeviceSpec::virtual_function(vf, pf, 4),
    ]
}

/// A VF's device model dies with three vectors bound, the PF stops decoding, the guest
/// shuts down; ptguard must unbind with decoding on (through the PF) and the next guest's
/// interrupts must arrive.
fn vf_pf_decoding(bed: &Bed, problems: &mut Vec<String>) -> String {
    let [pf, vf] = [vf_devices()[0].sbdf, vf_devices()[1].sbdf];
    let host = &bed.host;
    let _ = host.write_config(vf, 4, &0x6u16.to_le_bytes());
    let _ = bed.ask(|e| e.assignable_add(vf));
    let guest = |name: &str, behaviour: DmBehaviour, problems: &mut Vec<String>| {
        let g = host.create_domain(name, true);
        let epoch = match bed.ask(|e| e.attach(vf, g)) {
            Ok(ep) => ep,
            Err(e) => {
                problems.push(format!("attach to {name}: {e}"));
                return (g, DeviceModel::new(g, behaviour), 0);
            }
        };
        let _ = host.unpause(g);
        let broker = EngineBroker {
            access: &bed.ctl,
            epoch,
        };
        let mut dm = DeviceModel::new(g, behaviour);
        let _ = dm.plug(host, &broker, vf);
        let _ = dm.guest_enable_msix(host, &broker, vf, 3);
        let delivered = check_interrupts(host, g, vf, 3).delivered();
        (g, dm, delivered)
    };
    let (a, mut dm, _) = guest("A", DmBehaviour::Crashes, problems);
    dm.crash();
    let _ = host.write_config(pf, 4, &0u16.to_le_bytes());
    let _ = host.shutdown(a);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::DomainReleased(a)));
    let _ = host.destroy_domain(a);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::Recover));
    let maskall = host.with_world(|w| w.device(vf).map(|d| d.xen.host_maskall));
    if maskall != Some(false) {
        problems.push(format!("the VF's host_maskall after A: {maskall:?}"));
    }
    let (_, _, delivered) = guest("B", DmBehaviour::WellBehaved, problems);
    if delivered != 3 {
        problems.push(format!("the next guest got {delivered} of 3 vectors"));
    }
    format!("VF {:?}, next guest {delivered}/3", bed.state(vf))
}

fn reuse_devices() -> Vec<DeviceSpec> {
    ["0000:03:00.0", "0000:04:00.0"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .map(|s| DeviceSpec::nic(s, 4))
        .collect()
}

/// A guest is destroyed while ptguard is down and a new domain takes its domid, a device
/// of its own and the same pirq numbers; recovery must clean the old guest's device
/// without touching the newcomer.
fn reused_domid(bed: &Bed, problems: &mut Vec<String>) -> String {
    let [dev, other] = [reuse_devices()[0].sbdf, reuse_devices()[1].sbdf];
    let host = &bed.host;
    let a = host.create_domain("A", true);
    let _ = bed.ask(|e| e.assignable_add(dev));
    let Ok(epoch) = bed.ask(|e| e.attach(dev, a)) else {
        problems.push("attach failed".into());
        return "attach failed".into();
    };
    // The guest's driver turns memory decoding on (an old pciback leaves it off).
    let _ = host.write_config(dev, 4, &0x6u16.to_le_bytes());
    for n in 0..3 {
        let req = msix_request(host, a, dev, epoch, n);
        if let Err(e) = bed.ask(|en| en.bind(&req)) {
            problems.push(format!("bind {n}: {e}"));
        }
    }
    // The newcomer is the same VM booted again: a toolstack that names each boot by the
    // VM's UUID (xenopsd; xl with `uuid=`) gives it A's handle. Only Xen 4.21+'s unique id
    // tells the two apart then; on older profiles the newcomer gets a fresh handle (what
    // xl does without `uuid=`), the case the handle covers.
    let a_handle = host.with_world(|w| w.domains.get(&a).map(|d| d.handle));
    let same_handle = host.profile().xen.has_unique_domain_ids();
    let _ = host.destroy_domain(a);
    let Ok(a2) = host.create_domain_as("A-again", true, a, a_handle.filter(|_| same_handle)) else {
        problems.push("domid not reusable".into());
        return "no reuse".into();
    };
    let _ = pci::pciback::seize(host, other);
    let _ = host.assign_device(a2, other, 0);
    let _ = host.write_config(other, 4, &0x6u16.to_le_bytes());
    let tb = host.with_world(|w| w.device(other).map(|d| d.hw.table_base()));
    let theirs = host.map_pirq(&MapPirq::msix(a2, other, 0, tb.unwrap_or_default()));
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::Recover));
    let kept = theirs.as_ref().is_ok_and(|p| {
        host.with_world(|w| {
            w.domains
                .get(&a2)
                .is_some_and(|d| d.pirqs.contains_key(&p.0))
        })
    });
    if !kept {
        problems.push(format!("the newcomer's pirq {theirs:?} was touched"));
    }
    // The old guest's device is in no guest now: the newcomer must not inherit its record
    // (its model could then bind the device, and its end would tear it down).
    if bed.state(dev) == Some(DeviceState::Attached) {
        problems.push("the newcomer was taken for the old guest: the ledger still gives it the old guest's device".into());
    }
    format!("device {:?}, newcomer's pirq kept {kept}", bed.state(dev))
}

fn stubdomain_devices() -> Vec<DeviceSpec> {
    ["0000:03:00.0"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .map(|s| DeviceSpec::nic(s, 4))
        .collect()
}

/// Companion mode beside a guest whose stock device model runs in a stubdomain: libxl
/// writes the PCI backend for the stubdomain and assigns the device to the guest; the
/// model maps the guest's pirqs. The daemon adopts the device as the guest's, the
/// stubdomain dies first (its model never unmapped), then the guest powers off: the round
/// sweeps the guest's pirqs and the device ends clean.
fn stubdomain(bed: &Bed, problems: &mut Vec<String>) -> String {
    let dev = stubdomain_devices()[0].sbdf;
    let host = &bed.host;
    let g = host.create_domain("g", true);
    let stub = host.create_domain("g-dm", false);
    let _ = pci::pciback::seize(host, dev);
    let _ = host.assign_device(g, dev, 0);
    let _ = host.write_config(dev, 4, &0x6u16.to_le_bytes());
    if let Err(e) = sim::dm::bind_directly(host, g, dev, 3) {
        problems.push(format!("the stubdomain's model could not bind: {e}"));
    }
    {
        let mut ctl = bed.ctl.borrow_mut();
        let xs = &mut ctl.xs;
        let none = xenstore::TxId::NONE;
        let _ = xs.write(
            none,
            &format!("/local/domain/{}/target", stub.0),
            g.0.to_string().as_bytes(),
        );
        let _ = xs.write(
            none,
            &format!("/local/domain/{}/image/device-model-domid", g.0),
            stub.0.to_string().as_bytes(),
        );
        if let Err(e) = sim::libxl::backend_add(xs, stub, dev) {
            problems.push(format!("backend: {e}"));
        }
    }
    let _ = bed.ask(|e| e.adopt_from_toolstack());
    let adopted = bed.ask(|e| e.record(dev)).ok().flatten();
    let as_guests = adopted
        .as_ref()
        .is_some_and(|r| r.owner == Some(g) && r.dm_domain == Some(stub));
    if !as_guests {
        problems.push(format!(
            "not adopted as the guest's with its stubdomain: {:?}",
            adopted.map(|r| (r.owner, r.dm_domain))
        ));
    }
    // The stubdomain dies; the guest runs on, and keeps its device.
    let _ = host.destroy_domain(stub);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::Recover));
    if bed.state(dev) != Some(DeviceState::Attached) {
        problems.push(format!(
            "torn down under a running guest: {:?}",
            bed.state(dev)
        ));
    }
    // The guest powers off: its pirqs (the dead model's) are swept, the device cleaned.
    let _ = host.shutdown_for(g, 0);
    let _ = bed.ask(|e| e.reconcile(engine::Trigger::Recover));
    if bed.state(dev) == Some(DeviceState::Attached) {
        problems.push("still attached to a guest that powered off".into());
    }
    if let Err(e) = host.with_world(|w| w.msix_clean(dev)) {
        problems.push(format!("not clean for the next guest: {e}"));
    }
    let mapped = host.with_world(|w| w.device(dev).map(|d| d.xen.used_entries));
    format!("device {:?}, entries still used {mapped:?}", bed.state(dev))
}

/// Explores one scenario on one release profile.
pub fn explore(name: &str, xen: XenProfile, pciback: PcibackProfile) -> DeviceScenarioSummary {
    let (scenario, devices): (Scenario, Vec<DeviceSpec>) = match name {
        "shared-intx-line" => (shared_intx_line, shared_line_devices()),
        "vf-pf-decoding" => (vf_pf_decoding, vf_devices()),
        "stubdomain" => (stubdomain, stubdomain_devices()),
        _ => (reused_domid, reuse_devices()),
    };
    let (base_end, base_problems, total) = run_one(xen, pciback, &devices, scenario, None);
    let mut violations: Vec<String> = base_problems
        .into_iter()
        .map(|p| format!("{name}/none: {p}"))
        .collect();
    for k in 0..total {
        let (end, problems, _) = run_one(xen, pciback, &devices, scenario, Some(k));
        for p in problems {
            violations.push(format!("{name}/{k}: {p}"));
        }
        if end != base_end {
            violations.push(format!(
                "{name}/{k}: ended '{end}', without a crash '{base_end}'"
            ));
        }
    }
    DeviceScenarioSummary {
        scenario: SCENARIOS
            .iter()
            .copied()
            .find(|s| *s == name)
            .unwrap_or("reused-domid"),
        crash_points: total,
        violations,
    }
}
