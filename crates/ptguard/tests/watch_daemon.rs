//! The daemon's loop: a domain dies, `@releaseDomain` fires, the daemon tears its device
//! down — with nobody running a command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{BindKind, BindRequest, DeviceState};
use ptguard::broker::DaemonHost;
use ptguard::commands::watch::watch_loop;
use ptguard::hostctx::{sim_init, HostCtx, HostSpec};
use sim::{DeviceSpec, PcibackProfile, XenProfile};

#[test]
fn release_domain_event_triggers_the_teardown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    sim_init(
        &dir,
        XenProfile::Xen4_11_0,
        PcibackProfile::BeforeCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    let mut ctx = HostCtx::open(&HostSpec::Sim(dir), false).unwrap();
    let (host, xs) = ctx
        .sim
        .as_ref()
        .map(|(h, x, _)| (h.clone(), x.clone()))
        .unwrap();
    let a = host.create_domain("A", true);
    host.unpause(a).unwrap();
    let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
    {
        let mut e = ctx.engine();
        e.assignable_add(dev).unwrap();
        let epoch = e.attach(dev, a).unwrap();
        drop(e);
        // The guest's driver turns decoding on (through its device model) before MSI-X.
        pci::PciHost::write_config(&host, dev, 4, &0x0006u16.to_le_bytes()).unwrap();
        let mut e = ctx.engine();
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
    let ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = xs.connect(0);
    watcher.watch("@releaseDomain", "ptguard").unwrap();
    let done = Arc::new(Mutex::new(Vec::new()));
    let daemon = {
        let (ctx, stop, done) = (ctx.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            watch_loop(&ctx, Some(&mut watcher), &stop, true, |d| {
                done.lock().unwrap().push(d.clone())
            })
            .unwrap()
        })
    };
    // The guest dies (its device model crashed: nothing was unmapped).
    host.shutdown(a).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = ctx
            .with(|c| Ok(c.engine().record(dev)?.map(|r| r.state)))
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
