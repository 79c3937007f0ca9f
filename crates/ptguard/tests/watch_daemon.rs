//! The daemon's loop: a domain dies, `@releaseDomain` fires, the daemon tears its device
//! down — with nobody running a command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{BindKind, BindRequest, DeviceState};
mod common;

use daemon::broker::DaemonHost;
use daemon::host::sim_open;
use daemon::watch::{watch_loop, RoundPolicy};
use sim::{DeviceSpec, PcibackProfile, XenProfile};

/// The daemon as the package runs it: companion mode, cures on.
const COMPANION: RoundPolicy = RoundPolicy {
    adopt: true,
    report_only: false,
};

#[test]
fn release_domain_event_triggers_the_teardown() {
    let (_tmp, mut ctx, host, xs, dev, a) = running_guest(XenProfile::Xen4_11_0);
    attach_with_three_vectors(&mut ctx, &host, dev, a);
    let ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = xs.connect(0);
    watcher.watch("@releaseDomain", "ptguard").unwrap();
    let done = Arc::new(Mutex::new(Vec::new()));
    let daemon = {
        let (ctx, stop, done) = (ctx.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            watch_loop(
                &ctx,
                Some(&mut watcher),
                &stop,
                COMPANION,
                &Default::default(),
                |d| done.lock().unwrap().push(d.clone()),
            )
            .unwrap()
        })
    };
    // The guest dies (its device model crashed: nothing was unmapped).
    host.shutdown(a).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = ctx
            .with(|c| Ok(c.engine()?.record(dev)?.map(|r| r.state)))
            .unwrap();
        if state == Some(DeviceState::Assignable) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not tear the device down: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    daemon.join().unwrap();
    assert_eq!(done.lock().unwrap().len(), 1);
    host.with_world(|w| {
        let d = w.device(dev).unwrap();
        assert_eq!(d.xen.used_entries, 1);
        assert!(!d.xen.host_maskall);
        assert!(w.descs.is_empty(), "the daemon force-unbound every vector");
    });
}

/// The daemon watches the toolstack's PCI backends to adopt what it gives. ptguard's own
/// attach writes a backend too: a backend event must never make the daemon take an attach
/// still in progress (journal step `attach`) for an interrupted one and tear it down. Seen
/// on real Xen: the daemon under systemd quarantined devices being attached.
#[test]
fn a_backend_event_during_an_attach_does_not_tear_it_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    let (mut ctx, host, xs) = sim_open(
        &dir,
        XenProfile::Xen4_17_5,
        PcibackProfile::AfterCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    let a = host.create_domain("A", true);
    ctx.engine().unwrap().assignable_add(dev).unwrap();
    // An attach in progress in another process: the journal says `attach` and the backend
    // nodes are being written.
    let mut other = xs.connect(0);
    let mut rec = ctx.engine().unwrap().record(dev).unwrap().unwrap();
    rec.state = DeviceState::Attached;
    rec.owner = Some(a);
    rec.epoch = 1;
    rec.step = Some(engine::Step::Attach);
    other
        .write(
            xenstore::TxId::NONE,
            &engine::ledger::device_path(dev),
            rec.encode_head().as_bytes(),
        )
        .unwrap();
    let ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = xs.connect(0);
    watcher
        .watch(engine::companion::TOOLSTACK_BACKENDS, "ptguard-adopt")
        .unwrap();
    let daemon = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::spawn(move || {
            watch_loop(
                &ctx,
                Some(&mut watcher),
                &stop,
                COMPANION,
                &Default::default(),
                |_| {},
            )
            .unwrap()
        })
    };
    other
        .write(
            xenstore::TxId::NONE,
            &format!("/local/domain/0/backend/pci/{}/0/dev-0", a.0),
            dev.to_string().as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    daemon.join().unwrap();
    let rec = ctx.with(|c| Ok(c.engine()?.record(dev)?)).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.step.map(|s| s.as_str())),
        (DeviceState::Attached, Some("attach")),
        "the attach in progress was left alone"
    );
}

/// Issue 15: a running guest's device model dies with its vectors bound through the broker
/// (or the preload library). The daemon sees libxl's `device-model-pid` name a process
/// that is gone and unbinds exactly the ledger's bindings, with decoding on, while the
/// guest still runs — so a plain `xl destroy` afterwards finds nothing mapped, even with
/// decoding off by then.
#[test]
fn a_dead_device_models_bindings_are_released_while_its_guest_runs() {
    let (_tmp, mut ctx, host, xs, dev, a) = running_guest(XenProfile::Xen4_17_5);
    // A device model that really ran and is gone: a child process that exited and was
    // reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let live_pid = std::process::id();
    let dm_path = format!("/local/domain/{}/image/device-model-pid", a.0);
    attach_with_three_vectors(&mut ctx, &host, dev, a);
    {
        ctx.xs
            .write(
                xenstore::TxId::NONE,
                &dm_path,
                live_pid.to_string().as_bytes(),
            )
            .unwrap();
    }
    let ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = xs.connect(0);
    watcher.watch("@releaseDomain", "ptguard").unwrap();
    let daemon = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::spawn(move || {
            watch_loop(
                &ctx,
                Some(&mut watcher),
                &stop,
                COMPANION,
                &Default::default(),
                |_| {},
            )
            .unwrap()
        })
    };
    let bindings = || {
        ctx.with(|c| {
            Ok(c.engine()?.record(dev)?.map(|r| {
                r.bindings
                    .iter()
                    .filter(|b| matches!(b.key, engine::BindingKey::Msix(_)))
                    .count()
            }))
        })
        .unwrap()
    };
    // A live device model: two checks pass and nothing is touched.
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(bindings(), Some(3), "a live device model's bindings stay");
    // The device model dies; the guest keeps running; decoding goes off.
    ctx.with(|c| {
        Ok(c.xs.write(
            xenstore::TxId::NONE,
            &dm_path,
            dead_pid.to_string().as_bytes(),
        )?)
    })
    .unwrap();
    pci::PciHost::write_config(&host, dev, 4, &0u16.to_le_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bindings() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the daemon left the dead model's bindings"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host.with_world(|w| {
        assert!(w.descs.is_empty(), "every vector unmapped in Xen");
        assert!(!w.domains[&a].dying, "the guest itself untouched");
        assert_eq!(w.device(dev).unwrap().xen.owner, a, "still assigned to it");
        assert!(w.memory_decoded(dev), "unbound with decoding on");
    });
    let state = ctx
        .with(|c| Ok(c.engine()?.record(dev)?.map(|r| r.state)))
        .unwrap();
    assert_eq!(state, Some(DeviceState::Attached));
    // Now the toolstack destroys the guest with decoding off (xl destroy, the seed recipe):
    // Xen has nothing left to mask, so no Function Mask is forced.
    pci::PciHost::write_config(&host, dev, 4, &0u16.to_le_bytes()).unwrap();
    host.destroy_domain(a).unwrap();
    stop.store(true, Ordering::Relaxed);
    daemon.join().unwrap();
    host.with_world(|w| {
        let d = w.device(dev).unwrap();
        assert!(!d.xen.host_maskall, "no forced mask at the destroy");
    });
}

/// Gives `dev` to `a` with ptguard and binds three MSI-X vectors through the broker, the
/// guest's driver having turned memory decoding on first.
fn attach_with_three_vectors(
    ctx: &mut daemon::host::HostCtx,
    host: &sim::SimHost,
    dev: pci::Sbdf,
    a: xen::DomId,
) {
    let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
    let mut e = ctx.engine().unwrap();
    e.assignable_add(dev).unwrap();
    let epoch = e.attach(dev, a).unwrap();
    drop(e);
    pci::PciHost::write_config(host, dev, 4, &0x0006u16.to_le_bytes()).unwrap();
    let mut e = ctx.engine().unwrap();
    for entry in 0..3 {
        e.bind(&BindRequest {
            domid: a,
            sbdf: dev,
            epoch,
            kind: BindKind::Msix {
                entry,
                table_base: tb,
            },
            gvec: 0x40,
            gflags: 0x10000,
            gtable: 0,
        })
        .unwrap();
    }
}

/// A simulated host of release `xen` (the old pciback) with one NIC, and a running HVM
/// guest "A": the directory (kept alive by the caller), the host context, the host, its
/// xenstored, the NIC and the guest.
fn running_guest(
    xen: XenProfile,
) -> (
    tempfile::TempDir,
    daemon::host::HostCtx,
    sim::SimHost,
    xenstore::local::LocalXenstore,
    pci::Sbdf,
    xen::DomId,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    let (ctx, host, xs) = sim_open(
        &tmp.path().join("host"),
        xen,
        PcibackProfile::BeforeCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    let a = host.create_domain("A", true);
    host.unpause(a).unwrap();
    (tmp, ctx, host, xs, dev, a)
}

/// Issue 25 (6): `watch` exited (status 1) when another process held the host's lock
/// longer than it waits, and the broker then answered nobody. It must keep running, say
/// why it waited, and do the work once the lock is free.
#[test]
fn watch_outlives_another_process_holding_the_lock() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let exe = env!("CARGO_BIN_EXE_ptguard");
    let pt = |args: &[&str]| common::ok(&dir, args);
    pt(&["sim", "init"]);
    pt(&["assignable-add", "0000:03:00.0"]);
    pt(&["sim", "create", "g"]);
    pt(&["attach", "0000:03:00.0", "1"]);
    pt(&["sim", "start", "1", "0000:03:00.0", "--dm", "crashes"]);
    let log = tmp.path().join("watch.log");
    let mut daemon = Command::new(exe)
        .arg("--host")
        .arg(format!("sim:{}", dir.display()))
        .arg("watch")
        .env("PTGUARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("broker.sock").exists() {
        assert!(Instant::now() < deadline, "watch did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another process holds the host's lock longer than the daemon waits (10 s).
    let held = nix::fcntl::Flock::lock(
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("lock"))
            .unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(11));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "watch exited while another process held the lock: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(held);
    // The guest reboots; the daemon, still there, tears the device down.
    pt(&["sim", "reboot", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&pt(&["show", "0000:03:00.0", "--json"])).unwrap();
        if v["ledger"]["state"] == "assignable" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no teardown after the lock was freed: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("keeps serving"), "{said}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// The ledger lock is a guard the engine requires: a daemon that let go of its host
/// between rounds gets no engine until it holds the lock again, and another command gets
/// the host meanwhile.
#[test]
fn no_engine_without_the_hosts_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    let (mut ctx, _host, _xs) = sim_open(
        &dir,
        XenProfile::Xen4_17_5,
        PcibackProfile::AfterCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    ctx.engine().unwrap().assignable_add(dev).unwrap();
    ctx.save().unwrap();
    ctx.unlock();
    match ctx.engine() {
        Err(daemon::DaemonError::LedgerNotLocked) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an engine without the host's lock"),
    }
    // Meanwhile another command has the host, and changes it.
    {
        let spec = daemon::host::HostSpec::Sim(dir.clone());
        let mut other = daemon::host::HostCtx::open(&spec, false).unwrap();
        other.engine().unwrap().assignable_remove(dev).unwrap();
        other.save().unwrap();
    }
    // The daemon sees the host changed under it: it does not take the stale state back.
    assert!(!ctx.relock_if_unchanged().unwrap());
    assert!(matches!(
        ctx.engine(),
        Err(daemon::DaemonError::LedgerNotLocked)
    ));
}
