//! The engine against the simulated host and an in-process xenstored: the policy comparison,
//! the crash explorer, the broker's checks and every kind of bad input of issue #5.

use engine::{
    BindKind, BindRequest, BindingKey, BindingState, DeviceState, Engine, EngineError, Outcome,
    ProtectedDomains, Refusal,
};
use lab::explore::lost_map_by_design;
use lab::matrix::{load_scenarios, run_matrix};
use lab::platform::SimPlatform;
use lab::rig::{Policy, Rig};
use pci::PciHost;
use pci::Sbdf;
use sim::dm::DmBehaviour;
use sim::{DeviceSpec, PcibackProfile, Profile, SimHost, XenProfile};
use xen::{DomId, Hypervisor};
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;
use xenstore::{ErrorCode, TxId, XsClient};

#[test]
fn legacy_fails_the_seed_scenario_and_ptguard_does_not() {
    let scenarios = load_scenarios(&[]).unwrap();
    let rows = run_matrix(
        &scenarios,
        &DmBehaviour::ALL,
        &Policy::ALL,
        (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix),
    );
    assert_eq!(rows.len(), 3 * 4 * Policy::ALL.len());
    let get = |s: &str, b: DmBehaviour, p: Policy| {
        rows.iter()
            .find(|r| r.scenario == s && r.device_model == b && r.policy == p)
            .unwrap()
    };
    // The seed: reboot with a crashed device model.
    assert!(!get("reboot", DmBehaviour::Crashes, Policy::Legacy).works);
    assert!(
        get("reboot", DmBehaviour::Crashes, Policy::Legacy)
            .report
            .forced_mask
    );
    assert!(
        !get(
            "reboot",
            DmBehaviour::Crashes,
            Policy::PcibackReleasePrepare
        )
        .works
    );
    assert!(get("reboot", DmBehaviour::WellBehaved, Policy::Legacy).works);
    for r in rows.iter().filter(|r| r.policy == Policy::Ptguard) {
        assert!(
            r.report.violations.is_empty(),
            "{} {:?}: {:?}",
            r.scenario,
            r.device_model,
            r.report.violations
        );
        assert!(
            !r.report.forced_mask && r.report.leaked_bindings == 0,
            "{} {:?}",
            r.scenario,
            r.device_model
        );
        // Even a hostile model's hot-unplug: the vectors it bound behind the broker's back
        // are unmapped as Xen's dumps name them, and the next guest works.
        assert!(r.works, "{} {:?}", r.scenario, r.device_model);
        assert!(!r.report.quarantined, "{} {:?}", r.scenario, r.device_model);
    }
    // Legacy hands over stale bindings after a forced hot-unplug.
    assert_eq!(
        get("hot-unplug", DmBehaviour::Crashes, Policy::Legacy)
            .report
            .leaked_bindings,
        3
    );
}

#[test]
fn explorer_finds_no_violation_for_ptguard_and_flags_legacy() {
    let scenarios = load_scenarios(&[]).unwrap();
    assert_eq!(scenarios.len(), 3);
    let (xen, pb) = (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix);
    let mut cases = 0;
    let mut lost_maps = 0;
    for s in &scenarios {
        for b in DmBehaviour::ALL {
            let baseline = Rig::new(Policy::Ptguard, b, xen, pb, s.vectors).run(s);
            assert!(
                baseline.checkpoints > 20,
                "{b:?}: {} crash points",
                baseline.checkpoints
            );
            assert!(
                baseline.violations.is_empty(),
                "{}/{b:?}: {:?}",
                s.name,
                baseline.violations
            );
            for k in 0..baseline.checkpoints {
                let mut rig = Rig::new(Policy::Ptguard, b, xen, pb, s.vectors);
                rig.crash_at(k);
                let r = rig.run(s);
                cases += 1;
                assert!(
                    r.crashed_at.is_some(),
                    "{}/{b:?}/{k}: the crash happened",
                    s.name
                );
                assert!(
                    r.violations.is_empty(),
                    "{}/{b:?}/{k}: {:?}",
                    s.name,
                    r.violations
                );
                if r.end_state != baseline.end_state && lost_map_by_design(&r, &baseline) {
                    lost_maps += 1;
                    continue;
                }
                assert_eq!(
                    r.end_state, baseline.end_state,
                    "{}/{b:?}/{k} crashed at {:?}",
                    s.name, r.crashed_at
                );
            }
        }
    }
    assert!(cases > 700, "{cases} crash points explored");
    // Hot-unplug, one per vector and behaviour (3 vectors, 4 behaviours): a crash after
    // map_pirq and before bind_pt_irq leaves a vector mapped and bound to nothing, whose
    // pirq Xen's `i` dump does not name. A crash after the bind is cured instead: the
    // dump names the pirq and the teardown unmaps it.
    assert_eq!(
        lost_maps, 12,
        "map→record crashes quarantined until the owner went"
    );
    let mut legacy = Rig::new(
        Policy::Legacy,
        DmBehaviour::Crashes,
        xen,
        pb,
        scenarios[0].vectors,
    );
    assert!(
        !legacy.run(&scenarios[0]).violations.is_empty(),
        "the checker catches the seed failure"
    );
}

struct Fixture {
    host: SimHost,
    xs: LocalXenstore,
    platform: SimPlatform,
    client: XsClient,
}

fn fixture() -> Fixture {
    fixture_with(
        XenProfile::Xen4_17_0,
        vec![
            DeviceSpec::nic(dev(), 8),
            DeviceSpec::nic("0000:04:00.0".parse().unwrap(), 4),
        ],
    )
}

/// A simulated host of release `xen` (new pciback) with `devices`, its in-process
/// xenstored and dom0's connection.
fn fixture_with(xen: XenProfile, devices: Vec<DeviceSpec>) -> Fixture {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(Profile::new(xen, PcibackProfile::AfterCommandFix))
        .with_sink(std::sync::Arc::new(xs.clone()));
    for d in devices {
        host.add_device(d);
    }
    let platform = SimPlatform::new(host.clone(), xs.connect(0)).unwrap();
    let client = xs.connect(0);
    Fixture {
        host,
        xs,
        platform,
        client,
    }
}

fn dev() -> Sbdf {
    "0000:03:00.0".parse().unwrap()
}

/// What libxl writes for a guest's PCI backend holding one device (`dev-0`, `num_devs`).
fn write_toolstack_backend(client: &mut xenstore::XsClient, domid: DomId, sbdf: Sbdf) {
    let be = format!("/local/domain/0/backend/pci/{}/0", domid.0);
    client
        .write(
            TxId::NONE,
            &format!("{be}/dev-0"),
            sbdf.to_string().as_bytes(),
        )
        .unwrap();
    client
        .write(TxId::NONE, &format!("{be}/num_devs"), b"1")
        .unwrap();
}

/// Rewrites the device's ledger head by hand, as an operator (or an attacker in dom0) might.
fn edit_head(client: &mut xenstore::XsClient, edit: impl FnOnce(&mut engine::DeviceRecord)) {
    let mut rec = engine::engine::read_head(client, TxId::NONE, dev())
        .unwrap()
        .unwrap();
    edit(&mut rec);
    client
        .write(
            TxId::NONE,
            &engine::ledger::device_path(dev()),
            rec.encode_head().as_bytes(),
        )
        .unwrap();
}

fn req(domid: DomId, epoch: u64, entry: u16) -> BindRequest {
    BindRequest {
        domid,
        sbdf: dev(),
        epoch,
        kind: BindKind::Msix {
            entry,
            table_base: 0x40_0000_0000 + u64::from(dev().machine_sbdf()) * 0x10_0000,
        },
        gvec: 0x40,
        gflags: 0x10000,
        gtable: 0xf100_0000,
    }
}

#[test]
fn broker_checks_owner_epoch_entry_and_state() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let b = f.host.create_domain("B", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), a).unwrap();
    let refused = |r: Result<xen::Pirq, EngineError>| match r {
        Err(EngineError::Refused { refusal, .. }) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(e.bind(&req(b, epoch, 0))),
        Refusal::WrongDomain { owner: Some(a) }
    );
    assert_eq!(
        refused(e.bind(&req(a, epoch - 1, 0))),
        Refusal::StaleEpoch {
            presented: epoch - 1,
            current: epoch
        }
    );
    assert_eq!(
        refused(e.bind(&req(a, epoch, 8))),
        Refusal::EntryBeyondTable {
            entry: 8,
            table_size: 8
        }
    );
    // A device model that lies about where the table is.
    let mut lying = req(a, epoch, 0);
    lying.kind = BindKind::Msix {
        entry: 0,
        table_base: 0xdead_0000,
    };
    assert_eq!(refused(e.bind(&lying)).code().as_str(), "wrong-table-base");
    let p = e.bind(&req(a, epoch, 0)).unwrap();
    assert_eq!(
        refused(e.bind(&req(a, epoch, 0))).code().as_str(),
        "already-bound"
    );
    let rec = e.record(dev()).unwrap().unwrap();
    let bnd = rec
        .bindings
        .iter()
        .find(|b| b.key == engine::BindingKey::Msix(0))
        .unwrap();
    assert_eq!(
        (bnd.state, bnd.pirq),
        (engine::BindingState::Bound, Some(p))
    );
    // Unbinding through the broker removes the record and the mapping.
    e.unbind(&req(a, epoch, 0), p).unwrap();
    assert!(e
        .record(dev())
        .unwrap()
        .unwrap()
        .bindings
        .iter()
        .all(|b| b.key != engine::BindingKey::Msix(0)));
    // A device being torn down refuses new bindings.
    e.bind(&req(a, epoch, 1)).unwrap();
    assert!(matches!(
        e.detach(dev()).unwrap(),
        Outcome::Assignable { .. }
    ));
    assert_eq!(
        refused(e.bind(&req(a, epoch, 2))),
        Refusal::NotAttached {
            state: engine::DeviceState::Assignable
        }
    );
    // The detach force-unbound entry 1: nothing of A is left on the device.
    f.host
        .with_world(|w| assert_eq!(w.descs.values().filter(|d| d.sbdf == dev()).count(), 0));
}

fn intx_req(domid: DomId, epoch: u64, gsi: u32) -> BindRequest {
    BindRequest {
        kind: BindKind::Intx { gsi, guest: None },
        gvec: 0,
        gflags: 0,
        gtable: 0,
        ..req(domid, epoch, 0)
    }
}

fn refusal<T: std::fmt::Debug>(r: Result<T, EngineError>) -> Refusal {
    match r {
        Err(EngineError::Refused { refusal, .. }) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Issue 11 (1): after giving up its INTx, a device model asked for GSI 9, then GSI 1, and
/// got both mapped into its guest.
#[test]
fn broker_maps_only_the_devices_own_interrupt_line() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let line = f.host.irq(dev()).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), a).unwrap();
    let intx_pirq = e.record(dev()).unwrap().unwrap().bindings[0].pirq.unwrap();
    e.bind(&intx_req(a, epoch, line)).unwrap();
    e.unbind(&intx_req(a, epoch, line), intx_pirq).unwrap();
    for gsi in [9, 1] {
        assert_eq!(
            refusal(e.bind(&intx_req(a, epoch, gsi))),
            Refusal::NotDeviceGsi {
                presented: gsi,
                line: Some(line)
            }
        );
    }
    f.host.with_world(|w| {
        let pirqs = &w.domains[&a].pirqs;
        assert!(
            !pirqs.contains_key(&9) && !pirqs.contains_key(&1),
            "{pirqs:?}"
        );
    });
    // Its own line is still fine.
    e.bind(&intx_req(a, epoch, line)).unwrap();
}

/// Issue 11 (8): a stale unbind unmapped the live INTx pirq; unbinds of unmanaged devices
/// and wrong pirqs answered `ok`.
#[test]
fn broker_unbind_checks_like_bind() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), a).unwrap();
    let p = e.bind(&req(a, epoch, 0)).unwrap();
    let intx_pirq = e.record(dev()).unwrap().unwrap().bindings[0].pirq.unwrap();
    let line = f.host.irq(dev()).unwrap();
    assert_eq!(
        refusal(e.unbind(&intx_req(a, epoch - 1, line), intx_pirq)),
        Refusal::StaleEpoch {
            presented: epoch - 1,
            current: epoch
        }
    );
    assert_eq!(
        refusal(e.unbind(&req(a, epoch, 0), xen::Pirq(p.0 - 1))),
        Refusal::NoSuchBinding {
            key: "msix-0".into(),
            pirq: p.0 - 1
        }
    );
    assert_eq!(
        refusal(e.unbind(&req(a, epoch, 5), p)).code().as_str(),
        "no-such-binding"
    );
    let other = BindRequest {
        sbdf: "0000:04:00.0".parse().unwrap(),
        ..req(a, epoch, 0)
    };
    assert_eq!(refusal(e.unbind(&other, p)), Refusal::NotManaged);
    // Nothing was unmapped: both pirqs are still A's.
    f.host.with_world(|w| {
        let pirqs = &w.domains[&a].pirqs;
        assert!(pirqs.contains_key(&p.0) && pirqs.contains_key(&intx_pirq.0));
    });
}

/// Issue 11 (3): `attach SBDF 0` failed at assign, and its rollback stripped dom0 of its
/// memory and interrupt permissions and unmapped dom0's interrupt.
#[test]
fn protected_domains_are_refused_before_anything_changes() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let mut e = Engine::new(&mut f.client, &f.platform).protecting(ProtectedDomains::new(&[a]));
    e.assignable_add(dev()).unwrap();
    let dom0_after_add = format!("{:?}", f.host.snapshot().domains[&DomId::DOM0]);
    let calls_after_add = f.host.counters().total_hypercalls();
    for d in [DomId::DOM0, DomId::IO, DomId(0x7ff2), a] {
        let err = e.attach(dev(), d).unwrap_err();
        assert!(
            matches!(err, EngineError::ProtectedDomain { domid, .. } if domid == d),
            "{d}: {err}"
        );
        assert!(matches!(
            e.reconcile(engine::Trigger::DomainReleased(d)),
            Err(EngineError::ProtectedDomain { .. })
        ));
    }
    assert_eq!(
        refusal(e.bind(&req(DomId::DOM0, 0, 0))),
        Refusal::ProtectedDomain { domid: DomId::DOM0 }
    );
    let rec = e.record(dev()).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.owner, rec.epoch),
        (DeviceState::Assignable, None, 0)
    );
    // Not one hypercall after assignable-add: dom0's pirqs and permissions are as they were.
    assert_eq!(f.host.counters().total_hypercalls(), calls_after_add);
    assert_eq!(
        format!("{:?}", f.host.snapshot().domains[&DomId::DOM0]),
        dom0_after_add
    );
}

/// A hand-edited ledger naming dom0 as owner: the teardown must not revoke dom0's
/// permissions. A detach someone asks for is refused with nothing written; the daemon's
/// teardown (the owner not running) quarantines the device instead.
#[test]
fn a_ledger_naming_dom0_as_owner_is_quarantined_untouched() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    edit_head(&mut f.client, |r| {
        r.owner = Some(DomId::DOM0);
        r.owner_handle = None;
    });
    let dom0_before = format!("{:?}", f.host.snapshot().domains[&DomId::DOM0]);
    let mut e = Engine::new(&mut f.client, &f.platform);
    let before = e.record(dev()).unwrap();
    let err = e.detach(dev()).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::ProtectedDomain {
                domid: DomId::DOM0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        e.record(dev()).unwrap(),
        before,
        "a refused detach writes nothing"
    );
    match e.reconcile(engine::Trigger::Recover) {
        Ok(done) => assert!(done.is_empty(), "dom0 runs: nothing to do: {done:?}"),
        Err(err) => panic!("{err}"),
    }
    assert_eq!(
        format!("{:?}", f.host.snapshot().domains[&DomId::DOM0]),
        dom0_before
    );
}

/// Issue 25 (8): `--protect 2 detach` was refused but still moved the protected domain's
/// live device to `quarantined`.
#[test]
fn a_refused_detach_of_a_protected_domains_device_changes_nothing() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    let calls = f.host.counters().total_hypercalls();
    let mut e = Engine::new(&mut f.client, &f.platform).protecting(ProtectedDomains::new(&[a]));
    let before = e.record(dev()).unwrap();
    for attempt in [
        e.detach(dev()).map(|_| ()),
        e.reconcile(engine::Trigger::Unplug(dev(), "unplug"))
            .map(|_| ()),
    ] {
        let err = attempt.unwrap_err();
        assert!(
            matches!(err, EngineError::ProtectedDomain { domid, .. } if domid == a),
            "{err}"
        );
    }
    let after = e.record(dev()).unwrap();
    assert_eq!(after, before);
    assert_eq!(after.unwrap().state, DeviceState::Attached);
    assert_eq!(
        f.host.counters().total_hypercalls(),
        calls,
        "not one hypercall"
    );
}

/// Issue 11 (5): `assignable-remove` took "not in dom_io" for success and handed dom0's
/// driver a device a guest held.
#[test]
fn assignable_remove_refuses_a_device_a_guest_holds() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    // A toolstack assigns it behind ptguard's back.
    f.host.assign_device(a, dev(), 0).unwrap();
    let err = e.assignable_remove(dev()).unwrap_err();
    assert!(matches!(err, EngineError::HeldByGuest { .. }), "{err}");
    assert!(err.to_string().contains("-EINVAL"), "{err}");
    assert_eq!(
        e.record(dev()).unwrap().unwrap().state,
        DeviceState::Assignable
    );
    assert_eq!(f.host.driver(dev()).unwrap().as_deref(), Some("pciback"));
    f.host
        .with_world(|w| assert_eq!(w.device(dev()).unwrap().xen.owner, a));
}

/// Issue 11 (10): a hand-edited maximum epoch wrapped to 0, making old requests current.
#[test]
fn the_epoch_never_wraps() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    Engine::new(&mut f.client, &f.platform)
        .assignable_add(dev())
        .unwrap();
    edit_head(&mut f.client, |r| r.epoch = u64::MAX);
    let mut e = Engine::new(&mut f.client, &f.platform);
    assert!(matches!(
        e.attach(dev(), a),
        Err(EngineError::EpochExhausted {
            epoch: u64::MAX,
            ..
        })
    ));
    let rec = e.record(dev()).unwrap().unwrap();
    assert_eq!((rec.state, rec.epoch), (DeviceState::Assignable, u64::MAX));
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    let ghost: Sbdf = "0000:09:00.0".parse().unwrap();
    assert!(matches!(
        e.assignable_add(ghost),
        Err(EngineError::NoSuchDevice { .. })
    ));
    assert!(matches!(
        e.attach(dev(), a),
        Err(EngineError::UnknownDevice { .. })
    ));
    e.assignable_add(dev()).unwrap();
    assert!(matches!(
        e.assignable_add(dev()),
        Err(EngineError::AlreadyManaged { .. })
    ));
    assert!(matches!(
        e.attach(dev(), DomId(77)),
        Err(EngineError::UnknownDomain { .. })
    ));
    let z = f.host.create_domain("Z", true);
    f.host.hold_reference(z).unwrap();
    f.host.destroy_domain(z).unwrap();
    let err = e.attach(dev(), z).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::DomainFinished {
                liveness: engine::Liveness::Dying,
                ..
            }
        ),
        "{err}"
    );
    e.attach(dev(), a).unwrap();
    let b = f.host.create_domain("B", true);
    let err = e.attach(dev(), b).unwrap_err();
    assert!(
        matches!(err, EngineError::AttachedElsewhere { owner, .. } if owner == a),
        "{err}"
    );
    assert!(err.to_string().contains("ptguard detach 0000:03:00.0"));
    assert!(matches!(
        e.assignable_remove(dev()),
        Err(EngineError::NotAssignable { .. })
    ));
    // Nothing of that changed the device.
    let rec = e.record(dev()).unwrap().unwrap();
    assert_eq!((rec.state, rec.owner), (DeviceState::Attached, Some(a)));
}

#[test]
fn a_ledger_edited_into_nonsense_is_reported_not_trusted() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    let base = engine::ledger::device_path(dev());
    let head = f.client.read_string(TxId::NONE, &base).unwrap();
    // The head with one field's value replaced (or the field added).
    let with = |key: &str, value: &str| -> String {
        let mut found = false;
        let mut parts: Vec<String> = head
            .split(' ')
            .map(|t| match t.split_once('=') {
                Some((k, _)) if k == key => {
                    found = true;
                    format!("{key}={value}")
                }
                _ => t.to_string(),
            })
            .collect();
        if !found {
            parts.push(format!("{key}={value}"));
        }
        parts.join(" ")
    };
    let garbled_heads = [
        with("state", "attachd"),
        with("owner", "dom1"),
        with("msix-size", "4097"),
        with("table-base", "f000"),
        with("step", "sideways"),
        with("mode", "rogue"),
        with("colour", "blue"),
        // The owner's handle garbled, a field twice, a word that is not key=value.
        with("handle", "not-a-uuid"),
        format!("{head} epoch=2"),
        format!("{head} extra"),
        head.replacen("owner=1", "", 1),
    ];
    let head_cases = garbled_heads.iter().map(|h| ("", h.as_str()));
    let node_cases = [
        (
            "binding/msix-0",
            "state=bound pirq=-5 gsi=0 gvec=0x40 gflags=0 gtable=0",
        ),
        (
            "binding/msix-999",
            "state=bound pirq=1 gsi=0 gvec=0x40 gflags=0 gtable=0",
        ),
        ("binding/bogus", "x"),
        // A lost-maps count and a guest INTx link, each garbled.
        ("binding/lost", "many"),
        (
            "binding/intx",
            "state=bound pirq=16 gsi=16 gvec=0 gflags=0 gtable=0 gbus=0 gdev=0x40 gintx=0",
        ),
        (
            "binding/msix-1",
            "state=bound pirq=70 gsi=0 gvec=0x40 gflags=0 gtable=0 gbus=0 gdev=4 gintx=0",
        ),
    ];
    for (node, value) in head_cases.chain(node_cases) {
        let mut admin = f.xs.connect(0);
        let path = if node.is_empty() {
            base.clone()
        } else {
            format!("{base}/{node}")
        };
        let old = admin.read_optional(TxId::NONE, &path).unwrap();
        admin.write(TxId::NONE, &path, value.as_bytes()).unwrap();
        let mut e = Engine::new(&mut f.client, &f.platform);
        let err = e.record(dev()).unwrap_err();
        assert!(
            matches!(err, EngineError::LedgerCorrupt { .. }),
            "{node}: {err}"
        );
        assert!(
            err.to_string().contains(&path) || err.to_string().contains(&base),
            "{err}"
        );
        // detach refuses to act on it.
        assert!(e.detach(dev()).is_err());
        match old {
            Some(v) => admin.write(TxId::NONE, &path, &v).unwrap(),
            None => admin.rm(TxId::NONE, &path).unwrap(),
        }
    }
    let mut e = Engine::new(&mut f.client, &f.platform);
    assert!(matches!(
        e.detach(dev()).unwrap(),
        Outcome::Assignable { .. }
    ));
}

#[test]
fn concurrent_commands_on_one_device_are_decided_by_transactions() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let b = f.host.create_domain("B", true);
    Engine::new(&mut f.client, &f.platform)
        .assignable_add(dev())
        .unwrap();
    // Two ptguard processes race to attach the device: exactly one wins.
    let mut c2 = f.xs.connect(0);
    let r1 = Engine::new(&mut f.client, &f.platform).attach(dev(), a);
    let r2 = Engine::new(&mut c2, &f.platform).attach(dev(), b);
    assert!(r1.is_ok());
    assert!(matches!(r2, Err(EngineError::AttachedElsewhere { .. })));
    // Interleaved transactions: the second commit gets EAGAIN and is retried.
    let t1 = f.client.transaction_start().unwrap();
    let t2 = c2.transaction_start().unwrap();
    let head = engine::ledger::device_path(dev());
    let attached = f.client.read(TxId::NONE, &head).unwrap();
    let tearing_down = String::from_utf8(attached.clone())
        .unwrap()
        .replace("state=attached", "state=tearing-down step=revoke");
    f.client.read(t1, &head).unwrap();
    c2.read(t2, &head).unwrap();
    f.client.write(t1, &head, tearing_down.as_bytes()).unwrap();
    c2.write(t2, &head, &attached).unwrap();
    f.client.transaction_end(t1, false).unwrap();
    c2.transaction_end(t2, true).unwrap();
    let t1 = f.client.transaction_start().unwrap();
    f.client.read(t1, &head).unwrap();
    c2.write(TxId::NONE, &head, &attached).unwrap();
    f.client.write(t1, &head, tearing_down.as_bytes()).unwrap();
    assert_eq!(
        f.client.transaction_end(t1, true).unwrap_err().code(),
        Some(ErrorCode::Eagain)
    );
}

#[test]
fn the_ledger_is_dom0_only() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    let mut guest = f.xs.connect(u32::from(a.0));
    let head = engine::ledger::device_path(dev());
    assert_eq!(
        guest.read(TxId::NONE, &head).unwrap_err().code(),
        Some(ErrorCode::Eacces)
    );
    assert_eq!(
        guest
            .write(TxId::NONE, &head, b"state=assignable epoch=0 msix-size=0")
            .unwrap_err()
            .code(),
        Some(ErrorCode::Eacces)
    );
    let perms = f.client.get_perms(TxId::NONE, "/ptguard").unwrap();
    assert_eq!(perms.to_string(), "n0");
    // The PCI backend and frontend nodes carry libxl's permissions: the guest reads its
    // backend and owns its frontend; another guest sees neither.
    let be = format!("/local/domain/0/backend/pci/{}/0", a.0);
    assert_eq!(
        f.client.get_perms(TxId::NONE, &be).unwrap().to_string(),
        format!("n0,r{}", a.0)
    );
    assert_eq!(
        guest
            .read_string(TxId::NONE, &format!("{be}/dev-0"))
            .unwrap(),
        "0000:03:00.0"
    );
    let fe = format!("/local/domain/{}/device/pci/0", a.0);
    guest
        .write(TxId::NONE, &format!("{fe}/state"), b"3")
        .unwrap();
    let b = f.host.create_domain("B", true);
    let mut other = f.xs.connect(u32::from(b.0));
    assert_eq!(
        other.read(TxId::NONE, &be).unwrap_err().code(),
        Some(ErrorCode::Eacces)
    );
}

#[test]
fn teardown_resumes_from_the_journal_and_is_idempotent() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        let ep = e.attach(dev(), a).unwrap();
        for entry in 0..3 {
            e.bind(&req(a, ep, entry)).unwrap();
        }
    }
    // Crash in the middle of the force-unbind, then recover as a restarted ptguard.
    let crash = engine::CrashPoints::crashing_at(5);
    let mut e = Engine::new(&mut f.client, &f.platform).counting(&crash);
    let err = e.detach(dev()).unwrap_err();
    assert!(err.is_crash());
    let rec = Engine::new(&mut f.client, &f.platform)
        .record(dev())
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, DeviceState::TearingDown);
    assert!(rec.step.is_some());
    let out = Engine::new(&mut f.client, &f.platform)
        .reconcile(engine::Trigger::Recover)
        .unwrap();
    assert!(matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == dev()));
    // Running it again does nothing more.
    assert!(Engine::new(&mut f.client, &f.platform)
        .reconcile(engine::Trigger::Recover)
        .unwrap()
        .is_empty());
    assert!(matches!(
        Engine::new(&mut f.client, &f.platform)
            .detach(dev())
            .unwrap(),
        Outcome::Assignable { .. }
    ));
    let x = f.host.with_world(|w| w.device(dev()).unwrap().xen.clone());
    assert_eq!(x.used_entries, 1);
    assert!(!x.host_maskall);
    assert_eq!(
        f.host.domain_info(a).unwrap().map(|i| i.dying),
        Some(false),
        "A still runs"
    );
}

#[test]
fn every_profile_combination_matches_xens_outcome() {
    let scenarios = load_scenarios(&["reboot".into()]).unwrap();
    for p in lab::matrix::all_profiles() {
        let rows = run_matrix(&scenarios, &[DmBehaviour::Crashes], &Policy::ALL, p);
        let legacy = rows.iter().find(|r| r.policy == Policy::Legacy).unwrap();
        // Only the seed's era fails: Xen 4.11.0 without assign's flag reset, with a pciback
        // that leaves decoding off (scenario 2); 4.17 (scenario 3) or a new pciback
        // (scenario 4) hand over a working device.
        let seed_era = p == (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix);
        assert_eq!(legacy.works, !seed_era, "{}", legacy.profile);
        let ours = rows.iter().find(|r| r.policy == Policy::Ptguard).unwrap();
        assert!(
            ours.works && ours.report.violations.is_empty(),
            "{}",
            ours.profile
        );
    }
}

/// Real Xen 4.17.5: a domain created without `passthrough=` answers assign_device with
/// -EOPNOTSUPP; ptguard's rollback then stuck at `deassign` (also -EOPNOTSUPP).
#[test]
fn attach_to_a_domain_without_iommu_context_is_refused_and_rolled_back() {
    let mut f = fixture();
    let plain = f.host.create_domain_with("plain", true, false);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let err = e.attach(dev(), plain).unwrap_err();
    assert!(matches!(err, EngineError::NoIommuContext { .. }), "{err}");
    assert!(err.to_string().contains("passthrough="), "{err}");
    let rec = e.record(dev()).unwrap().unwrap();
    assert_eq!((rec.state, rec.owner), (DeviceState::Assignable, None));
    f.host.with_world(|w| {
        let d = &w.domains[&plain];
        assert!(d.iomem.is_empty() && d.ioports.is_empty() && d.pirqs.is_empty());
        assert!(d.irq_access.is_empty());
        assert_eq!(w.device(dev()).unwrap().xen.owner, DomId::IO);
    });
}

/// `XEN_DOMCTL_bind_pt_irq` is HVM-only: a PV guest's vectors are mapped, never bound.
#[test]
fn a_pv_guests_vectors_are_mapped_without_bind_pt_irq() {
    let mut f = fixture();
    let pv = f.host.create_domain("pv", false);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), pv).unwrap();
    let binds = || {
        let c = f.host.counters();
        let n = |op: xen::HypercallOp| c.calls(op);
        (n(xen::HypercallOp::MapPirq), n(xen::HypercallOp::BindPtIrq))
    };
    let (maps, binds_before) = binds();
    let p = e.bind(&req(pv, epoch, 0)).unwrap();
    assert_eq!(binds(), (maps + 1, binds_before));
    f.host
        .with_world(|w| assert!(w.domains[&pv].pirqs.contains_key(&p.0), "mapped"));
    assert!(matches!(
        e.detach(dev()).unwrap(),
        Outcome::Assignable { .. }
    ));
}

/// Real Xen showed `ptguard watch` exiting at start-up because one resumed teardown
/// failed. Recovery now quarantines that device, says why, and finishes the others.
#[test]
fn one_failing_teardown_does_not_stop_recovery_of_the_others() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    // A ledger entry for a device that has left the host, mid-teardown.
    let ghost: Sbdf = "0000:09:00.0".parse().unwrap();
    f.client
        .write(
            TxId::NONE,
            &engine::ledger::device_path(ghost),
            b"state=tearing-down epoch=3 owner=1 step=unbind msix-size=4",
        )
        .unwrap();
    f.host.shutdown(a).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    let done = e.reconcile(engine::Trigger::Recover).unwrap();
    let of = |s: Sbdf| done.iter().find(|(d, _)| *d == s).map(|(_, o)| o.clone());
    assert!(
        matches!(of(dev()), Some(Outcome::Assignable { .. })),
        "{done:?}"
    );
    match of(ghost) {
        Some(Outcome::Quarantined { reason }) => {
            assert!(
                matches!(
                    reason,
                    engine::QuarantineReason::StepFailed { step: "unbind", .. }
                ),
                "{reason}"
            )
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        e.record(ghost).unwrap().unwrap().state,
        DeviceState::Quarantined
    );
}

/// The seed's failure made behind ptguard's back (a device model mapping vectors itself,
/// memory decoding off when the guest dies), then `repair`: release + prepare clears Xen's
/// forced mask without unbinding the device from pciback, and the next attach works.
#[test]
fn repair_clears_a_forced_function_mask_in_place() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let b = f.host.create_domain("B", true);
    f.host.unpause(a).unwrap();
    Engine::new(&mut f.client, &f.platform)
        .assignable_add(dev())
        .unwrap();
    // A toolstack and a stock device model: assign, map and bind two entries directly.
    f.host.assign_device(a, dev(), 0).unwrap();
    sim::dm::bind_directly(&f.host, a, dev(), 2).unwrap();
    // Decoding off, then the guest dies.
    f.host.write_config(dev(), 4, &0u16.to_le_bytes()).unwrap();
    f.host.shutdown(a).unwrap();
    f.host.destroy_domain(a).unwrap();
    let stuck = f.host.with_world(|w| {
        let d = w.device(dev()).unwrap();
        (d.xen.host_maskall, d.hw.function_mask())
    });
    assert_eq!(stuck, (true, true), "the seed's failure");
    // Xen 4.17 refuses to assign it while the hardware mask is set (before any reset).
    assert_eq!(
        f.host.assign_device(b, dev(), 0).unwrap_err().errno(),
        Some(xen::Errno::EBUSY)
    );
    let mut e = Engine::new(&mut f.client, &f.platform);
    let done = e.repair(dev()).unwrap();
    assert!(
        done.iter().any(|s| s.starts_with("prepare_msix: 0")),
        "{done:?}"
    );
    f.host.with_world(|w| {
        let d = w.device(dev()).unwrap();
        assert!(!d.xen.host_maskall && !d.hw.function_mask());
        assert_eq!(d.xen.used_entries, 1);
    });
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.attach(dev(), b).unwrap();
    // A device a guest holds is never repaired.
    let err = e.repair(dev()).unwrap_err();
    assert!(matches!(err, EngineError::NotAssignable { .. }), "{err}");
}

/// Issue 14 (6): a guest's MSI pirqs are `extra_guest_irqs` (32 by default); the 33rd
/// vector of a 40-entry device cannot be mapped, and ptguard says why.
#[test]
fn a_guest_runs_out_of_msi_pirqs_at_its_budget() {
    let mut f = fixture_with(XenProfile::Xen4_17_0, vec![DeviceSpec::nic(dev(), 40)]);
    let a = f.host.create_domain("A", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), a).unwrap();
    let mut pirqs = Vec::new();
    for entry in 0..32 {
        pirqs.push(e.bind(&req(a, epoch, entry)).unwrap().0);
    }
    // Top-down from nr_irqs_gsi + 32 - 1; attach's INTx (a GSI pirq) does not count.
    assert_eq!((pirqs[0], pirqs[31]), (79, 48));
    let err = e.bind(&req(a, epoch, 32)).unwrap_err();
    assert!(
        matches!(err, EngineError::PirqBudgetExhausted { domid, .. } if domid == a),
        "{err}"
    );
    assert!(err.to_string().contains("extra_guest_irqs="), "{err}");
    // Nothing half-recorded: the intent of the refused vector is gone.
    let rec = e.record(dev()).unwrap().unwrap();
    assert!(rec
        .bindings
        .iter()
        .all(|b| b.key != engine::BindingKey::Msix(32)));
    assert!(matches!(
        e.detach(dev()).unwrap(),
        Outcome::Assignable { .. }
    ));
}

/// Issue 14 (3): two devices of one guest share a machine INTx line. Tearing one down
/// must leave the other's INTx working (unmapping the shared pirq force-unbinds both), and
/// each binds at the guest's virtual slot, not the host's.
#[test]
fn a_shared_intx_line_keeps_working_for_the_device_that_stays() {
    let (a_dev, b_dev): (Sbdf, Sbdf) = (
        "0000:03:00.0".parse().unwrap(),
        "0000:04:00.0".parse().unwrap(),
    );
    let on_line_17 = |s| DeviceSpec {
        gsi: 17,
        ..DeviceSpec::nic(s, 4)
    };
    let mut f = fixture_with(
        XenProfile::Xen4_17_5,
        vec![on_line_17(a_dev), on_line_17(b_dev)],
    );
    let (host, g) = (f.host.clone(), f.host.create_domain("g", true));
    let mut e = Engine::new(&mut f.client, &f.platform);
    let mut epochs = Vec::new();
    for s in [a_dev, b_dev] {
        e.assignable_add(s).unwrap();
        epochs.push(e.attach(s, g).unwrap());
    }
    let link = |slot: u8| xen::GuestIntx {
        bus: 0,
        device: slot,
        intx: 0,
    };
    let intx = |s: Sbdf, epoch: u64, slot: u8| BindRequest {
        sbdf: s,
        kind: BindKind::Intx {
            gsi: 17,
            guest: Some(link(slot)),
        },
        ..intx_req(g, epoch, 17)
    };
    let pa = e.bind(&intx(a_dev, epochs[0], 4)).unwrap();
    let pb = e.bind(&intx(b_dev, epochs[1], 5)).unwrap();
    assert_eq!(pa, pb, "one machine line is one pirq in the guest");
    host.with_world(|w| {
        assert!(w.raise_intx(a_dev, (0, 4, 0)).is_ok());
        assert!(w.raise_intx(b_dev, (0, 5, 0)).is_ok());
        // Bound at the guest's slot, not at the host's (3 and 4).
        assert!(w.raise_intx(b_dev, (0, b_dev.dev(), 0)).is_err());
    });
    // A guest slot Xen cannot route is refused before anything is recorded.
    assert_eq!(
        refusal(e.bind(&BindRequest {
            kind: BindKind::Intx {
                gsi: 17,
                guest: Some(xen::GuestIntx {
                    bus: 0,
                    device: 32,
                    intx: 0
                })
            },
            ..intx(a_dev, epochs[0], 4)
        }))
        .code()
        .as_str(),
        "bad-guest-intx"
    );

    // Hot-unplug B with its device model gone (no unbind through the broker). B came
    // after pciback had set the backend up with A, so pciback never exported it (an HVM
    // guest has no pcifront to answer a hot-add): it may leave the running guest; A, which
    // pciback exports, may not (its give-back needs the whole backend gone).
    assert!(matches!(
        e.detach(a_dev),
        Err(engine::EngineError::SharedBackendNoFrontend { .. })
    ));
    assert!(matches!(
        e.detach(b_dev).unwrap(),
        Outcome::Assignable { .. }
    ));
    host.with_world(|w| {
        assert!(
            w.raise_intx(a_dev, (0, 4, 0)).is_ok(),
            "A's INTx survives B's teardown: {:?}",
            w.raise_intx(a_dev, (0, 4, 0))
        );
        assert!(w.domains[&g].pirqs.contains_key(&pa.0));
        assert!(
            w.domains[&g].irq_access.contains(&17),
            "A still may use the line"
        );
    });
    let a_rec = e.record(a_dev).unwrap().unwrap();
    assert!(a_rec
        .bindings
        .iter()
        .any(|b| b.key == BindingKey::Intx && b.state == BindingState::Bound));

    // The last user's teardown (its guest gone: the whole backend goes) unmaps the line
    // and revokes it; the index is empty again.
    host.destroy_domain(g).unwrap();
    let done = e.reconcile(engine::Trigger::DomainReleased(g)).unwrap();
    assert!(
        matches!(&done[..], [(_, Outcome::Assignable { .. })]),
        "{done:?}"
    );
    host.with_world(|w| {
        assert!(!w.domains.contains_key(&g) || !w.domains[&g].irq_access.contains(&17));
    });
    drop(e);
    assert!(f.client.read(TxId::NONE, "/ptguard/intx/1/17").is_err());
}

/// A device model's requests, served by one engine (what `ptguard watch`'s broker does).
struct InProcess<'e, 'a>(std::cell::RefCell<&'e mut Engine<'a>>);

impl lab::platform::EngineAccess for InProcess<'_, '_> {
    fn with_engine<T>(
        &self,
        f: impl Fn(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        f(&mut self.0.borrow_mut())
    }
}

/// Issue 14 (4): for an SR-IOV virtual function Xen checks memory decoding on the physical
/// function; the VF's own Memory bit is hard-wired 0. ptguard must turn decoding on where
/// Xen looks, or its force-unbind falls back to `host_maskall` and the next guest of the VF
/// gets no interrupts.
#[test]
fn a_virtual_functions_decoding_is_its_physical_functions() {
    let pf: Sbdf = "0000:05:00.0".parse().unwrap();
    let vf: Sbdf = "0000:05:10.0".parse().unwrap();
    let mut f = fixture_with(
        XenProfile::Xen4_17_5,
        vec![
            DeviceSpec::nic(pf, 4),
            DeviceSpec::virtual_function(vf, pf, 4),
        ],
    );
    let host = f.host.clone();
    assert_eq!(host.physfn(vf).unwrap(), Some(pf));
    host.write_config(vf, 4, &0x6u16.to_le_bytes()).unwrap();
    host.with_world(|w| {
        assert!(!w.device(vf).unwrap().hw.memory_decoding(), "hard-wired 0");
        assert!(w.memory_decoded(vf), "decodes through its PF");
    });
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(vf).unwrap();
    // A VF is probed only through a driver_override when its PF's autoprobe is off.
    assert_eq!(
        host.driver_override(vf).unwrap().as_deref(),
        Some("pciback")
    );
    assert_eq!(
        host.driver_override(pf).unwrap(),
        None,
        "a PF binds as before"
    );
    let run_guest = |e: &mut Engine, name: &str, behaviour: DmBehaviour| {
        let g = host.create_domain(name, true);
        let epoch = e.attach(vf, g).unwrap();
        host.unpause(g).unwrap();
        let broker = lab::platform::EngineBroker {
            access: InProcess(std::cell::RefCell::new(e)),
            epoch,
        };
        let mut dm = sim::dm::DeviceModel::new(g, behaviour);
        dm.plug(&host, &broker, vf).unwrap();
        dm.guest_enable_msix(&host, &broker, vf, 3).unwrap();
        let report = sim::dm::check_interrupts(&host, g, vf, 3);
        (g, dm, report)
    };
    let (a, mut dm, report) = run_guest(&mut e, "A", DmBehaviour::Crashes);
    assert_eq!(report.delivered(), 3, "{report:?}");
    // The device model dies with its vectors bound; the PF's driver goes away and takes
    // memory decoding with it; then the guest shuts down.
    dm.crash();
    host.write_config(pf, 4, &0u16.to_le_bytes()).unwrap();
    host.shutdown(a).unwrap();
    let out = e.reconcile(engine::Trigger::DomainReleased(a)).unwrap();
    assert!(
        matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == vf),
        "{out:?}"
    );
    host.destroy_domain(a).unwrap();
    let x = host.with_world(|w| w.device(vf).unwrap().xen.clone());
    assert!(!x.host_maskall, "unbound with decoding on (through the PF)");
    assert_eq!(x.used_entries, 1);
    let (_, _, report) = run_guest(&mut e, "B", DmBehaviour::WellBehaved);
    assert_eq!(
        report.delivered(),
        3,
        "the next guest's interrupts: {report:?}"
    );
}

/// The owner index (`/ptguard/owner/<domid>/<device>`) lets a release read only its own
/// devices. A ledger written before the index (no index, no marker) is released correctly
/// by a full scan, which indexes it; later releases go through the index, and a device's
/// note goes with its teardown.
#[test]
fn a_ledger_without_the_owner_index_is_indexed_by_its_first_release() {
    let mut f = fixture();
    let other: Sbdf = "0000:04:00.0".parse().unwrap();
    let (a, b) = (
        f.host.create_domain("A", true),
        f.host.create_domain("B", true),
    );
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        for (s, d) in [(dev(), a), (other, b)] {
            e.assignable_add(s).unwrap();
            e.attach(s, d).unwrap();
        }
    }
    let note = |d: DomId, s: Sbdf| format!("/ptguard/owner/{}/{}", d.0, s.xs_key());
    // Marked wholly indexed, and b's device noted under b.
    let indexed = |c: &mut xenstore::XsClient| {
        c.read(xenstore::TxId::NONE, "/ptguard/owner").ok() == Some(b"indexed".to_vec())
            && c.read(xenstore::TxId::NONE, &note(b, other)).is_ok()
    };
    assert!(indexed(&mut f.client));
    // As an older ptguard left it.
    f.client.rm(xenstore::TxId::NONE, "/ptguard/owner").unwrap();
    f.host.destroy_domain(a).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    let out = e.reconcile(engine::Trigger::DomainReleased(a)).unwrap();
    assert!(
        matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == dev()),
        "{out:?}"
    );
    drop(e);
    assert!(
        indexed(&mut f.client),
        "the first release indexed the ledger"
    );
    assert!(f
        .client
        .read(xenstore::TxId::NONE, &note(a, dev()))
        .is_err());
    f.host.destroy_domain(b).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    let out = e.reconcile(engine::Trigger::DomainReleased(b)).unwrap();
    assert!(
        matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == other),
        "{out:?}"
    );
    drop(e);
    assert!(
        f.client
            .read(xenstore::TxId::NONE, &format!("/ptguard/owner/{}", b.0))
            .is_err(),
        "the owner's empty directory goes with its last device"
    );
}

/// The broker's side of "may the owner still run?": a suspended or soft-reset guest's
/// device model may still bind (the guest resumes with its device); once the guest is shut
/// down for good its model gets no new interrupt (`requester-finished`) but may still
/// unbind, the daemon's round tears the device down, and no device is given to a domain
/// that will not run again.
#[test]
fn the_broker_and_attach_ask_whether_the_domain_may_run() {
    for reason in [2u8, 5] {
        let mut f = fixture();
        let g = f.host.create_domain("G", true);
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        let epoch = e.attach(dev(), g).unwrap();
        e.bind(&req(g, epoch, 0)).unwrap();
        let before = e.record(dev()).unwrap().unwrap().bindings.len();
        f.host.shutdown_for(g, reason).unwrap();
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.bind(&req(g, epoch, 1))
            .unwrap_or_else(|err| panic!("reason {reason}: {err}"));
        assert!(e.reconcile(engine::Trigger::Recover).unwrap().is_empty());
        let rec = e.record(dev()).unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.bindings.len()),
            (DeviceState::Attached, before + 1),
            "reason {reason}: the device stays, the new vector recorded"
        );
    }
    let mut f = fixture();
    let g = f.host.create_domain("G", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    let epoch = e.attach(dev(), g).unwrap();
    let p0 = e.bind(&req(g, epoch, 0)).unwrap();
    f.host.shutdown_for(g, 0).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    let r = refusal(e.bind(&req(g, epoch, 1)));
    assert_eq!(r.code().as_str(), "requester-finished", "{r}");
    assert!(r.to_string().contains("powered off"), "{r}");
    // Its model's unmap of what it bound is still taken.
    e.unbind(&req(g, epoch, 0), p0).unwrap();
    let out = e.reconcile(engine::Trigger::Recover).unwrap();
    assert!(
        matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == dev()),
        "{out:?}"
    );
    // A powered-off domain is given nothing.
    let err = e.attach(dev(), g).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::DomainFinished {
                liveness: engine::Liveness::ShutDown { reason: 0 },
                ..
            }
        ),
        "{err}"
    );
}

/// Issue 14 (5): Xen reuses domain ids. A guest destroyed while ptguard was down, and a new
/// domain with its domid: the new one is not the owner (its handle differs). Recovery tears
/// the device down without touching the new domain's pirqs (which reuse the same numbers),
/// and the broker refuses the newcomer the old guest's device.
#[test]
fn a_reused_domid_is_not_the_owner() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let other: Sbdf = "0000:04:00.0".parse().unwrap();
    let (epoch, old_pirqs) = {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        let epoch = e.attach(dev(), a).unwrap();
        let pirqs: Vec<_> = (0..3).map(|n| e.bind(&req(a, epoch, n)).unwrap()).collect();
        (epoch, pirqs)
    };
    // ptguard is down: A is destroyed (Xen frees its pirqs) and a new domain gets its id,
    // a device of its own and the same pirq numbers.
    f.host.destroy_domain(a).unwrap();
    let a2 = f.host.create_domain_at("A-again", true, a).unwrap();
    assert_eq!(a2, a);
    let (h1, h2) = (
        Engine::new(&mut f.client, &f.platform)
            .record(dev())
            .unwrap()
            .unwrap()
            .owner_handle
            .unwrap(),
        f.host.domain_info(a2).unwrap().unwrap().handle,
    );
    assert_ne!(h1, h2);
    pci::pciback::seize(&f.host, other).unwrap();
    f.host.assign_device(a2, other, 0).unwrap();
    let tb = f
        .host
        .with_world(|w| w.device(other).unwrap().hw.table_base());
    let theirs = f
        .host
        .map_pirq(&xen::MapPirq::msix(a2, other, 0, tb))
        .unwrap();
    assert!(
        old_pirqs.contains(&theirs),
        "the new domain reuses a pirq number the ledger holds"
    );

    let mut e = Engine::new(&mut f.client, &f.platform);
    assert_eq!(
        refusal(e.bind(&req(a2, epoch, 4))).code().as_str(),
        "stale-incarnation"
    );
    let out = e.reconcile(engine::Trigger::Recover).unwrap();
    assert!(
        matches!(out.as_slice(), [(s, Outcome::Assignable { .. })] if *s == dev()),
        "{out:?}"
    );
    assert!(e.notices.iter().any(|n| n.contains("domid reused")));
    f.host.with_world(|w| {
        assert!(
            w.domains[&a2].pirqs.contains_key(&theirs.0),
            "the newcomer's pirq is untouched"
        );
        assert_eq!(w.device(other).unwrap().xen.owner, a2);
        let x = &w.device(dev()).unwrap().xen;
        assert_eq!((x.used_entries, x.host_maskall), (1, false));
    });
}

/// Issue 14 (8): `prepare_msix`/`release_msix` on a device without MSI-X dereference a NULL
/// pointer inside Xen 4.17. The whole lifecycle of such a device (and a repair) makes none.
#[test]
fn a_device_without_msix_never_gets_msix_hypercalls() {
    let mut f = fixture();
    let plain: Sbdf = "0000:06:00.0".parse().unwrap();
    let mut spec = DeviceSpec::nic(plain, 0);
    spec.reset_methods.clear(); // and no reset method either
    f.host.add_device(spec);
    let g = f.host.create_domain("g", true);
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(plain).unwrap();
    let epoch = e.attach(plain, g).unwrap();
    let gsi = f.host.irq(plain).unwrap();
    e.bind(&BindRequest {
        sbdf: plain,
        ..intx_req(g, epoch, gsi)
    })
    .unwrap();
    assert!(matches!(
        e.detach(plain).unwrap(),
        Outcome::Assignable { .. }
    ));
    let done = e.repair(plain).unwrap();
    assert!(done[0].contains("no MSI-X"), "{done:?}");
    e.assignable_remove(plain).unwrap();
    let c = f.host.counters();
    let n = |op: xen::HypercallOp| c.calls(op);
    assert_eq!(n(xen::HypercallOp::PrepareMsix), 0);
    assert_eq!(n(xen::HypercallOp::ReleaseMsix), 0);
    assert_eq!(c.fatal, 0);
    // The simulator does count such a call as fatal.
    assert!(f.host.prepare_msix(plain).is_err());
    assert_eq!(f.host.counters().fatal, 1);
}

/// Issue 15: companion mode beside a stock toolstack and a stock device model. With the
/// device model crashed or killed early, reboot and reassign end with the next guest's
/// interrupts working and no leaked binding, on every release profile; the toolstack alone
/// fails the seed's profile. And every crash point of the companion teardown recovers.
#[test]
fn companion_sweep_cures_reboot_and_reassign_on_every_profile() {
    let scenarios: Vec<_> = load_scenarios(&[])
        .unwrap()
        .into_iter()
        .filter(|s| s.name != "hot-unplug")
        .collect();
    let dms = [DmBehaviour::Crashes, DmBehaviour::KilledEarly];
    let mut rows = 0;
    for p in lab::matrix::all_profiles() {
        let sweep = run_matrix(&scenarios, &dms, &[Policy::Sweep], p);
        for r in &sweep {
            rows += 1;
            assert!(
                r.works,
                "{} {} {:?}: {:?}",
                r.profile, r.scenario, r.device_model, r.report.notices
            );
            assert_eq!(r.report.leaked_bindings, 0);
            assert!(r.report.violations.is_empty(), "{:?}", r.report.violations);
            assert!(
                r.report.notices.iter().any(|n| n.contains("swept")),
                "the sweep did the work: {:?}",
                r.report.notices
            );
        }
        if p == (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix) {
            let legacy = run_matrix(&scenarios, &dms, &[Policy::Legacy], p);
            assert!(
                legacy.iter().all(|r| !r.works),
                "the seed's failure without ptguard"
            );
        }
    }
    assert_eq!(rows, XenProfile::ALL.len() * 2 * 2 * 2);

    let (xen, pb) = (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix);
    let mut points = 0;
    for s in &scenarios {
        for b in dms {
            let baseline = Rig::new(Policy::Sweep, b, xen, pb, s.vectors).run(s);
            for k in 0..baseline.checkpoints {
                let mut rig = Rig::new(Policy::Sweep, b, xen, pb, s.vectors);
                rig.crash_at(k);
                let r = rig.run(s);
                points += 1;
                assert!(
                    r.violations.is_empty(),
                    "{}/{b:?}/{k}: {:?}",
                    s.name,
                    r.violations
                );
                assert_eq!(
                    r.end_state, baseline.end_state,
                    "{}/{b:?}/{k} at {:?}",
                    s.name, r.crashed_at
                );
            }
        }
    }
    assert!(points > 40, "{points} crash points");
}

/// Issue 15, companion mode at the engine: the daemon adopts what the toolstack's backend
/// gives a guest, `hook pre-reset` leaves a running guest alone, and once the guest is
/// finished sweeps what its stock device model left (through the companion teardown),
/// idempotently; the toolstack's own teardown then hands the next guest a clean device.
#[test]
fn companion_adopts_from_the_toolstack_and_sweeps_before_its_reset() {
    use engine::companion::PreReset;
    use sim::dm::{DeviceModel, DirectBroker};
    let mut f = fixture();
    sim::libxl::assignable_add(&f.host, dev()).unwrap();
    let g = f.host.create_domain("g", true);
    let direct = DirectBroker(f.host.clone());
    let mut dm = DeviceModel::new(g, DmBehaviour::Crashes);
    sim::libxl::attach(&f.host, g, dev(), &mut dm, &direct).unwrap();
    f.host.unpause(g).unwrap();
    dm.guest_enable_msix(&f.host, &direct, dev(), 3).unwrap();
    write_toolstack_backend(&mut f.client, g, dev());

    let mut e = Engine::new(&mut f.client, &f.platform);
    let adopted = e.adopt_from_toolstack().unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!((adopted[0].sbdf, adopted[0].domid), (dev(), g));
    assert!(e.adopt_from_toolstack().unwrap().is_empty(), "adopted once");
    assert_eq!(
        e.pre_reset(dev()).unwrap(),
        PreReset::OwnerRunning { domid: g }
    );
    assert!(matches!(
        e.sweep(g),
        Err(EngineError::SweepLiveDomain { .. })
    ));

    // qemu dies with its vectors bound; the guest reboots.
    dm.crash();
    f.host.shutdown(g).unwrap();
    match e.pre_reset(dev()).unwrap() {
        PreReset::TornDown {
            outcome: Outcome::Assignable { .. },
            ..
        } => {}
        other => panic!("expected a clean teardown, got {other:?}"),
    }
    assert!(
        e.notices.iter().any(|n| n.contains("swept 3 pirq(s)")),
        "{:?}",
        e.notices
    );
    f.host.with_world(|w| {
        let x = &w.device(dev()).unwrap().xen;
        assert_eq!((x.used_entries, x.host_maskall, x.owner), (1, false, g));
    });
    // Twice is harmless (the backend still names the guest until libxl removes it).
    assert!(
        matches!(e.pre_reset(dev()).unwrap(), PreReset::Swept { report } if report.unmapped.is_empty())
    );
    drop(e);

    // libxl's own teardown (reset, deassign, pciback) then the next guest.
    sim::libxl::destroy(&f.host, g, &[dev()], &mut dm, &direct).unwrap();
    let g2 = f.host.create_domain("g2", true);
    let mut dm2 = DeviceModel::new(g2, DmBehaviour::WellBehaved);
    sim::libxl::attach(&f.host, g2, dev(), &mut dm2, &direct).unwrap();
    f.host.unpause(g2).unwrap();
    dm2.guest_enable_msix(&f.host, &direct, dev(), 3).unwrap();
    let report = sim::dm::check_interrupts(&f.host, g2, dev(), 3);
    assert_eq!(report.delivered(), 3, "{report:?}");
}

/// pciback gives a device back in its xenbus worker, after the backend left Xenstore: the
/// teardown waits for that (the xen-backend device leaving sysfs) before it touches the
/// device, so pciback's reset — and the old pciback's Command write — cannot land on top
/// of ptguard's release, reset and prepare.
#[test]
fn the_teardown_waits_for_pciback_to_give_the_device_back() {
    for pciback in [
        PcibackProfile::BeforeCommandFix,
        PcibackProfile::AfterCommandFix,
    ] {
        let xs = LocalXenstore::new(Quotas::default());
        let host = SimHost::new(Profile::new(XenProfile::Xen4_17_5, pciback))
            .with_sink(std::sync::Arc::new(xs.clone()));
        host.add_device(DeviceSpec::nic(dev(), 4));
        let platform = SimPlatform::new(host.clone(), xs.connect(0)).unwrap();
        let mut client = xs.connect(0);
        let g = host.create_domain("g", true);
        let mut e = Engine::new(&mut client, &platform);
        e.assignable_add(dev()).unwrap();
        let epoch = e.attach(dev(), g).unwrap();
        // The guest's driver turns memory decoding on (the old pciback left it off).
        host.write_config(dev(), 4, &[0x06, 0x00]).unwrap();
        e.bind(&req(g, epoch, 0)).unwrap();
        // attach's backend nodes make pciback export the device to the guest once dom0's
        // work runs.
        platform.dom0_runs();
        assert!(host.journal().iter().any(|o| matches!(o,
            sim::SimOp::XenbusBackend { domid, listed, present: true, .. }
                if *domid == g && listed == &[dev()])));
        host.with_world(|w| assert_eq!(w.device(dev()).unwrap().linux.exported_to, Some(g)));
        let before = host.journal().len();
        let out = e.detach(dev()).unwrap();
        assert!(matches!(out, Outcome::Assignable { .. }), "{out:?}");
        let ops = host.journal()[before..].to_vec();
        // pciback read the backend's removal from Xenstore (its xenbus watch), which leaves
        // its worker a put to do.
        let put_later = ops
            .iter()
            .position(|o| {
                matches!(o, sim::SimOp::XenbusBackend { domid, listed, present: false, .. }
                    if *domid == g && listed.is_empty())
            })
            .expect("pciback saw the backend go");
        let settled = ops
            .iter()
            .position(|o| matches!(o, sim::SimOp::Settle))
            .expect("pciback's worker ran during the teardown");
        let first_touch = ops
            .iter()
            .position(|o| {
                matches!(
                    o,
                    sim::SimOp::ReleaseMsix { .. }
                        | sim::SimOp::Reset { .. }
                        | sim::SimOp::PrepareMsix { .. }
                )
            })
            .expect("release, reset, prepare");
        assert!(
            put_later < settled && settled < first_touch,
            "{pciback:?}: pciback's give-back at {settled}, ptguard's first reset/release at {first_touch}: {ops:?}"
        );
        host.with_world(|w| {
            assert!(w.pciback.pending_puts.is_empty());
            assert!(w.msix_clean(dev()).is_ok(), "{pciback:?}");
            assert!(w.memory_decoded(dev()), "{pciback:?}: decoding left on");
        });
    }
}

/// Issue 15: what a dead device model left is released only for an HVM guest, whose
/// MSI-X bindings are its device model's; a PV guest's vectors belong to pciback and the
/// guest's event channels (a PV domain's qemu serves only disks), so they are never
/// touched. Protected domains are refused.
#[test]
fn orphaned_bindings_are_released_for_hvm_guests_only() {
    let mut f = fixture();
    let other: Sbdf = "0000:04:00.0".parse().unwrap();
    let hvm = f.host.create_domain("hvm", true);
    let pv = f.host.create_domain("pv", false);
    let mut e = Engine::new(&mut f.client, &f.platform);
    for (s, d) in [(dev(), hvm), (other, pv)] {
        e.assignable_add(s).unwrap();
        let epoch = e.attach(s, d).unwrap();
        for n in 0..2 {
            e.bind(&BindRequest {
                sbdf: s,
                kind: BindKind::Msix {
                    entry: n,
                    table_base: 0x40_0000_0000 + u64::from(s.machine_sbdf()) * 0x10_0000,
                },
                ..req(d, epoch, n)
            })
            .unwrap();
        }
    }
    let msix = |e: &mut Engine, s: Sbdf| {
        e.record(s)
            .unwrap()
            .unwrap()
            .bindings
            .iter()
            .filter(|b| matches!(b.key, BindingKey::Msix(_)))
            .count()
    };
    assert!(e.release_orphaned_bindings(pv).unwrap().is_empty());
    assert_eq!(msix(&mut e, other), 2, "the PV guest's vectors stay");
    let released = e.release_orphaned_bindings(hvm).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].sbdf, dev());
    assert_eq!(released[0].pirqs.len(), 2);
    assert_eq!(msix(&mut e, dev()), 0);
    f.host.with_world(|w| {
        // MSI pirqs sit above the 48 GSIs of the simulated IO-APIC.
        let msi = |d: DomId| w.domains[&d].pirqs.keys().filter(|p| **p >= 48).count();
        assert_eq!(msi(hvm), 0, "nothing left mapped to the HVM guest");
        assert_eq!(msi(pv), 2, "the PV guest's two vectors still mapped");
    });
    assert!(matches!(
        e.release_orphaned_bindings(DomId(0)),
        Err(EngineError::ProtectedDomain { .. })
    ));
}

/// Issue 25 (1): adoption took the first live domain any backend node named. Now Xen's own
/// `Q` dump must name the holder: `adopt` of the wrong live domain is refused, and the
/// daemon's adoption passes over a stale backend node of another live domain (listed
/// first) and records the real holder.
#[test]
fn adoption_records_only_the_domain_xen_says_holds_the_device() {
    use sim::dm::{DeviceModel, DirectBroker};
    let mut f = fixture();
    sim::libxl::assignable_add(&f.host, dev()).unwrap();
    let stale = f.host.create_domain("stale", true);
    let holder = f.host.create_domain("holder", true);
    let direct = DirectBroker(f.host.clone());
    let mut dm = DeviceModel::new(holder, DmBehaviour::WellBehaved);
    sim::libxl::attach(&f.host, holder, dev(), &mut dm, &direct).unwrap();
    f.host.unpause(holder).unwrap();
    f.host.unpause(stale).unwrap();
    // A backend node of the live domain `stale` still names the device, beside the
    // holder's (libxl writes both the same way).
    for d in [stale, holder] {
        write_toolstack_backend(&mut f.client, d, dev());
    }
    let mut e = Engine::new(&mut f.client, &f.platform);
    let err = e.adopt(dev(), stale).unwrap_err();
    assert!(
        matches!(err, EngineError::HeldByAnother { named, holder: h, .. } if named == stale && h == holder),
        "{err}"
    );
    assert_eq!(e.record(dev()).unwrap(), None, "nothing recorded");
    let adopted = e.adopt_from_toolstack().unwrap();
    assert_eq!(
        adopted
            .iter()
            .map(|a| (a.sbdf, a.domid))
            .collect::<Vec<_>>(),
        vec![(dev(), holder)]
    );
    let rec = e.record(dev()).unwrap().unwrap();
    assert_eq!(rec.owner, Some(holder));
    // The stale domain going away touches nothing of the holder's device.
    f.host.destroy_domain(stale).unwrap();
    let done = e.reconcile(engine::Trigger::Recover).unwrap();
    assert!(done.is_empty(), "{done:?}");
    assert_eq!(
        e.record(dev()).unwrap().unwrap().state,
        DeviceState::Attached
    );
}

/// Issue 25 (11): since XSA-476 libxl's revoke of a detached device's BARs was wrong for
/// 64-bit BARs. ptguard's own grant and revoke take the BAR addresses from sysfs's
/// `resource` (64-bit); the simulated NIC's MSI-X BAR is a 64-bit BAR at 256 GiB. The
/// guest gets exactly the frames of both BARs, and the detach takes back exactly those.
#[test]
fn a_64_bit_bar_above_4_gib_is_granted_and_revoked_exactly() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let resources = engine::Platform::pci(&f.platform).resources(dev()).unwrap();
    let high = resources
        .iter()
        .find(|r| r.start >= 1 << 32)
        .expect("a BAR above 4 GiB");
    assert!(high.start >= 0x40_0000_0000, "{high:?}");
    let want: std::collections::BTreeSet<(u64, u64)> = resources
        .iter()
        .take(6)
        .filter(|r| !r.is_empty() && !r.is_io())
        .map(|r| (r.start >> 12, r.len().div_ceil(4096)))
        .collect();
    assert!(want.contains(&(high.start >> 12, high.len().div_ceil(4096))));
    let mut e = Engine::new(&mut f.client, &f.platform);
    e.assignable_add(dev()).unwrap();
    e.attach(dev(), a).unwrap();
    assert_eq!(f.host.snapshot().domains[&a].iomem, want);
    let mut e = Engine::new(&mut f.client, &f.platform);
    assert!(matches!(
        e.detach(dev()).unwrap(),
        Outcome::Assignable { .. }
    ));
    assert!(
        f.host.snapshot().domains[&a].iomem.is_empty(),
        "left granted: {:?}",
        f.host.snapshot().domains[&a].iomem
    );
}

/// Issue 25 (1): when the ledger's owner ended, its teardown reset the device another live
/// guest was using (the toolstack had given it on behind ptguard's back). Once the owner
/// let go, Xen must say no guest holds the device; else it is quarantined unreset.
#[test]
fn no_teardown_resets_a_device_another_live_domain_holds() {
    let mut f = fixture();
    let a = f.host.create_domain("A", true);
    let b = f.host.create_domain("B", true);
    {
        let mut e = Engine::new(&mut f.client, &f.platform);
        e.assignable_add(dev()).unwrap();
        e.attach(dev(), a).unwrap();
    }
    // Behind ptguard's back, a toolstack moves the device from A to the live B: A's
    // backend goes (pciback gives the device back), then deassign and assign.
    f.client
        .rm(TxId::NONE, &format!("/local/domain/0/backend/pci/{}", a.0))
        .unwrap();
    f.platform.settle();
    f.host.deassign_device(a, dev()).unwrap();
    f.host.assign_device(b, dev(), 0).unwrap();
    let resets = f.host.with_world(|w| w.device(dev()).unwrap().hw.resets);
    f.host.shutdown(a).unwrap();
    f.host.destroy_domain(a).unwrap();
    let mut e = Engine::new(&mut f.client, &f.platform);
    let done = e.reconcile(engine::Trigger::Recover).unwrap();
    match &done[..] {
        [(s, Outcome::Quarantined { reason })] if *s == dev() => {
            assert!(
                matches!(reason, engine::QuarantineReason::HeldAfterDeassign { owner, .. } if *owner == a),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    f.host.with_world(|w| {
        let d = w.device(dev()).unwrap();
        assert_eq!(d.hw.resets, resets, "not reset under B");
        assert_eq!(d.xen.owner, b, "B keeps it");
    });
    // The next round leaves it so, without writing the same quarantine again.
    let again = e.reconcile(engine::Trigger::Recover).unwrap();
    assert!(
        again
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Quarantined { .. })),
        "{again:?}"
    );
}
