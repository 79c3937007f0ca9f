//! The broker's unix-socket protocol (docs/broker.md) served by `ptguard watch`'s code:
//! bind, unbind, refusals and garbage, one JSON object per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ptguard::broker::{serve_broker, BrokerLimits, BrokerReply, DaemonHost};
use ptguard::hostctx::sim_open;
use sim::{DeviceSpec, PcibackProfile, XenProfile};

#[test]
fn bind_unbind_and_refusals_over_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    let (mut ctx, host, _) = sim_open(
        &dir,
        XenProfile::Xen4_17_0,
        PcibackProfile::AfterCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    let a = host.create_domain("A", true);
    let epoch = {
        let mut e = ctx.engine();
        e.assignable_add(dev).unwrap();
        e.attach(dev, a).unwrap()
    };
    let host_ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let sock = tmp.path().join("broker.sock");
    let server = serve_broker(
        host_ctx.clone(),
        &sock,
        stop.clone(),
        BrokerLimits::default(),
    )
    .unwrap();
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let mut s = UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: String| -> BrokerReply {
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
    let bind = |domid: u16, epoch: u64, entry: u16| {
        format!(
            r#"{{"op":"bind","domid":{domid},"sbdf":"0000:03:00.0","epoch":{epoch},"kind":{{"kind":"msix","entry":{entry},"table_base":{tb}}},"gvec":64,"gflags":65536,"gtable":4043309056}}"#
        )
    };
    let ok = ask(bind(a.0, epoch, 0));
    assert!(ok.ok, "{ok:?}");
    let pirq = ok.pirq.unwrap();
    // The top of a guest's pirq space: nr_irqs_gsi (48) + extra_guest_irqs (32) - 1.
    assert_eq!(pirq, 79);
    let stale = ask(bind(a.0, epoch + 5, 1));
    assert_eq!(stale.code.as_deref(), Some("stale-epoch"), "{stale:?}");
    assert!(stale.error.unwrap().contains("stale epoch"));
    let other = ask(bind(7, epoch, 1));
    assert_eq!(other.code.as_deref(), Some("wrong-domain"), "{other:?}");
    assert!(other.error.unwrap().contains("attached to d1"));
    let garbage = ask("{\"op\":\"format-disk\"}".into());
    assert_eq!(garbage.code.as_deref(), Some("malformed"), "{garbage:?}");
    let dom0 = ask(bind(0, epoch, 1));
    assert_eq!(dom0.code.as_deref(), Some("protected-domain"), "{dom0:?}");
    let unbind = ask(format!(
        r#"{{"op":"unbind","pirq":{pirq},"domid":{},"sbdf":"0000:03:00.0","epoch":{epoch},"kind":{{"kind":"msix","entry":0,"table_base":{tb}}},"gvec":64,"gflags":65536,"gtable":4043309056}}"#,
        a.0
    ));
    assert!(unbind.ok, "{unbind:?}");
    host.with_world(|w| assert!(w.descs.is_empty(), "unmapped in Xen"));
    // libxl records each domain's device-model pid; a process that is not it is refused.
    let write_dm_pid = |pid: String| {
        host_ctx
            .with(|c| {
                let path = format!("/local/domain/{}/image/device-model-pid", a.0);
                Ok(c.xs.write(xenstore::TxId::NONE, &path, pid.as_bytes())?)
            })
            .unwrap()
    };
    write_dm_pid("999999".into());
    let impostor = ask(bind(a.0, epoch, 1));
    assert!(!impostor.ok);
    assert_eq!(impostor.code.as_deref(), Some("not-device-model"));
    assert!(impostor
        .error
        .unwrap()
        .contains("device model is pid 999999"));
    write_dm_pid(std::process::id().to_string());
    let genuine = ask(bind(a.0, epoch, 1));
    assert!(genuine.ok, "{genuine:?}");
    stop.store(true, Ordering::Relaxed);
    server.join();
    assert!(!sock.exists(), "the broker removes its own socket");
}
