//! The broker's unix-socket protocol (docs/broker.md) served by `ptguard watch`'s code:
//! bind, unbind, refusals and garbage, one JSON object per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use daemon::broker::{serve_broker, BrokerLimits, DaemonHost};
use daemon::host::sim_open;
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
    let token = engine::AssignmentToken::from_entropy([0x5a; 32]);
    let epoch = {
        let mut e = ctx.engine().unwrap();
        e.assignable_add(dev).unwrap();
        e.attach_with_token(dev, a, Some(&token)).unwrap()
    };
    let host_ctx = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
    let stop = Arc::new(AtomicBool::new(false));
    let sock = tmp.path().join("broker.sock");
    let metrics = Arc::new(daemon::metrics::Metrics::default());
    let server = serve_broker(
        host_ctx.clone(),
        &sock,
        stop.clone(),
        BrokerLimits::default(),
        metrics.clone(),
    )
    .unwrap();
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let mut s = UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: String| -> wire::Reply {
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
    let bind_with = |domid: u16, epoch: u64, entry: u16, token: &str| {
        format!(
            r#"{{"op":"bind","domid":{domid},"sbdf":"0000:03:00.0","epoch":{epoch},"kind":{{"kind":"msix","entry":{entry},"table_base":{tb}}},"gvec":64,"gflags":65536,"gtable":4043309056{token}}}"#
        )
    };
    let t = format!(r#","token":"{token}""#);
    let bind = |domid: u16, epoch: u64, entry: u16| bind_with(domid, epoch, entry, &t);
    // Knowing the numbers is not enough: no device-model pid is recorded and no token given.
    let anyone = ask(bind_with(a.0, epoch, 0, ""));
    assert_eq!(
        anyone.code.map(wire::ReplyCode::as_str),
        Some("credential-required"),
        "{anyone:?}"
    );
    let wrong = ask(bind_with(
        a.0,
        epoch,
        0,
        &format!(r#","token":"{}""#, "00".repeat(32)),
    ));
    assert_eq!(
        wrong.code.map(wire::ReplyCode::as_str),
        Some("credential-rejected"),
        "{wrong:?}"
    );
    let ok = ask(bind(a.0, epoch, 0));
    assert!(ok.ok, "{ok:?}");
    let pirq = ok.pirq.unwrap();
    // The top of a guest's pirq space: nr_irqs_gsi (48) + extra_guest_irqs (32) - 1.
    assert_eq!(pirq, 79);
    let stale = ask(bind(a.0, epoch + 5, 1));
    assert_eq!(
        stale.code.map(wire::ReplyCode::as_str),
        Some("stale-epoch"),
        "{stale:?}"
    );
    let text = stale.error.unwrap();
    assert!(
        !text.contains(&epoch.to_string()),
        "the current epoch stays secret: {text}"
    );
    // The token speaks for A's use of the device, not for another domain, and the refusal
    // does not say who holds the device.
    let other = ask(bind(7, epoch, 1));
    assert_eq!(
        other.code.map(wire::ReplyCode::as_str),
        Some("credential-rejected"),
        "{other:?}"
    );
    assert!(!other.error.unwrap().contains("d1"));
    let garbage = ask("{\"op\":\"format-disk\"}".into());
    assert_eq!(
        garbage.code.map(wire::ReplyCode::as_str),
        Some("malformed"),
        "{garbage:?}"
    );
    let dom0 = ask(bind(0, epoch, 1));
    assert_eq!(
        dom0.code.map(wire::ReplyCode::as_str),
        Some("protected-domain"),
        "{dom0:?}"
    );
    let unbind = ask(format!(
        r#"{{"op":"unbind","pirq":{pirq},"domid":{},"sbdf":"0000:03:00.0","epoch":{epoch},"kind":{{"kind":"msix","entry":0,"table_base":{tb}}},"gvec":64,"gflags":65536,"gtable":4043309056{t}}}"#,
        a.0
    ));
    assert!(unbind.ok, "{unbind:?}");
    host.with_world(|w| assert!(w.descs.is_empty(), "unmapped in Xen"));
    // libxl records each domain's device-model pid; a process that is not it is refused,
    // and the refusal names no pid.
    let write_dm_pid = |pid: String| {
        host_ctx
            .with(|c| {
                let path = format!("/local/domain/{}/image/device-model-pid", a.0);
                Ok(c.xs.write(xenstore::TxId::NONE, &path, pid.as_bytes())?)
            })
            .unwrap()
    };
    write_dm_pid("999999".into());
    let impostor = ask(bind_with(a.0, epoch, 1, ""));
    assert!(!impostor.ok);
    assert_eq!(
        impostor.code.map(wire::ReplyCode::as_str),
        Some("not-device-model")
    );
    let text = impostor.error.unwrap();
    assert!(
        !text.contains("999999") && !text.contains(&std::process::id().to_string()),
        "{text}"
    );
    write_dm_pid(std::process::id().to_string());
    let genuine = ask(bind_with(a.0, epoch, 1, ""));
    assert!(genuine.ok, "{genuine:?}");
    stop.store(true, Ordering::Relaxed);
    server.join();
    assert!(!sock.exists(), "the broker removes its own socket");
    // Every request counted by its operation, every refusal by its code.
    let text = metrics.render();
    let sample = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(sample(r#"ptguard_broker_requests_total{op="bind"}"#), 8);
    assert_eq!(sample(r#"ptguard_broker_requests_total{op="unbind"}"#), 1);
    assert_eq!(
        sample(r#"ptguard_broker_requests_total{op="malformed"}"#),
        1
    );
    for (code, n) in [
        ("credential-required", 1),
        ("credential-rejected", 2),
        ("stale-epoch", 1),
        ("malformed", 1),
        ("protected-domain", 1),
        ("not-device-model", 1),
    ] {
        let series = format!(r#"ptguard_broker_refusals_total{{code="{code}"}}"#);
        assert_eq!(sample(&series), n, "{code}");
    }
}

/// The four libxenctrl calls of a stock device model (the preload library's requests)
/// from a hostile or confused process: every one is refused with its code, and the ledger
/// and Xen keep only what the genuine device models mapped.
#[test]
fn hostile_device_model_calls_are_refused() {
    use daemon::broker::handle_line;
    let tmp = tempfile::tempdir().unwrap();
    let (a_dev, b_dev): (pci::Sbdf, pci::Sbdf) = (
        "0000:03:00.0".parse().unwrap(),
        "0000:04:00.0".parse().unwrap(),
    );
    let (mut ctx, host, _) = sim_open(
        &tmp.path().join("host"),
        XenProfile::Xen4_17_5,
        PcibackProfile::AfterCommandFix,
        &[DeviceSpec::nic(a_dev, 4), DeviceSpec::nic(b_dev, 4)],
    )
    .unwrap();
    let (a, b) = (host.create_domain("A", true), host.create_domain("B", true));
    // C's device model was not started by libxl: no pid is recorded for it.
    let c = host.create_domain("C", true);
    for (s, d, pid) in [(a_dev, a, "100"), (b_dev, b, "200")] {
        let mut e = ctx.engine().unwrap();
        e.assignable_add(s).unwrap();
        e.attach(s, d).unwrap();
        drop(e);
        let path = format!("/local/domain/{}/image/device-model-pid", d.0);
        ctx.xs
            .write(xenstore::TxId::NONE, &path, pid.as_bytes())
            .unwrap();
    }
    let tb = |s: pci::Sbdf| host.with_world(|w| w.device(s).unwrap().hw.table_base());
    let map = |domid: u16, s: pci::Sbdf, entry: u16, table_base: u64| {
        format!(
            r#"{{"op":"map-pirq-msi","domid":{domid},"sbdf":"{s}","entry":{entry},"table_base":{table_base}}}"#
        )
    };
    let code = |r: wire::Reply| {
        r.code
            .map_or_else(|| format!("ok {:?}", r.pirq), |c| c.to_string())
    };

    // The genuine device models map one vector each.
    let ra = handle_line(&mut ctx, &map(a.0, a_dev, 0, tb(a_dev)), Some(100));
    assert!(ra.ok, "{ra:?}");
    let rb = handle_line(&mut ctx, &map(b.0, b_dev, 0, tb(b_dev)), Some(200));
    assert!(rb.ok, "{rb:?}");
    let (pa, pb) = (ra.pirq.unwrap(), rb.pirq.unwrap());
    let intx_a = ctx
        .engine()
        .unwrap()
        .record(a_dev)
        .unwrap()
        .unwrap()
        .bindings
        .iter()
        .find(|b| b.key == engine::BindingKey::Intx)
        .and_then(|b| b.pirq)
        .expect("attach mapped A's INTx")
        .0;

    let hostile = [
        // Another process, claiming A.
        (map(a.0, a_dev, 1, tb(a_dev)), Some(300), "not-device-model"),
        // A peer the socket could not name, without a token.
        (map(a.0, a_dev, 1, tb(a_dev)), None, "credential-required"),
        // A's genuine model speaking for a domain whose model is not recorded.
        (
            map(c.0, a_dev, 1, tb(a_dev)),
            Some(100),
            "credential-required",
        ),
        // A's model speaking for B.
        (map(b.0, b_dev, 1, tb(b_dev)), Some(100), "not-device-model"),
        // A's model asking for B's device, for A.
        (map(a.0, b_dev, 1, tb(b_dev)), Some(100), "wrong-domain"),
        // An address of its choosing, an entry past the table.
        (
            map(a.0, a_dev, 1, 0xdead_0000),
            Some(100),
            "wrong-table-base",
        ),
        (
            map(a.0, a_dev, 99, tb(a_dev)),
            Some(100),
            "entry-beyond-table",
        ),
        // The same entry again is the pirq already recorded, not a second mapping: below.
        // A token that is not the assignment's (no token was issued: attach without one).
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}","entry":1,"table_base":{},"token":"{}"}}"#,
                a.0,
                tb(a_dev),
                "ab".repeat(32)
            ),
            Some(300),
            "credential-rejected",
        ),
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}","entry":1,"table_base":{},"token":"x"}}"#,
                a.0,
                tb(a_dev)
            ),
            Some(300),
            "credential-rejected",
        ),
        // Pirqs it may not choose for a vector: its own INTx's, its other vector's, a GSI's.
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}","entry":1,"table_base":{},"pirq":{intx_a}}}"#,
                a.0,
                tb(a_dev)
            ),
            Some(100),
            "pirq-in-use",
        ),
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}","entry":1,"table_base":{},"pirq":{pa}}}"#,
                a.0,
                tb(a_dev)
            ),
            Some(100),
            "pirq-in-use",
        ),
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}","entry":1,"table_base":{},"pirq":5}}"#,
                a.0,
                tb(a_dev)
            ),
            Some(100),
            "pirq-in-use",
        ),
        // Pirqs that are not its own.
        (
            format!(
                r#"{{"op":"update-msi-irq","domid":{},"pirq":12,"gvec":64,"gflags":0,"gtable":0}}"#,
                a.0
            ),
            Some(100),
            "no-such-binding",
        ),
        (
            format!(r#"{{"op":"unmap-pirq","domid":{},"pirq":{pb}}}"#, b.0),
            Some(100),
            "not-device-model",
        ),
        (
            format!(r#"{{"op":"unbind-msi-irq","domid":{},"pirq":7}}"#, a.0),
            Some(100),
            "no-such-binding",
        ),
        // Garbage.
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":{},"sbdf":"{a_dev}"}}"#,
                a.0
            ),
            Some(100),
            "malformed",
        ),
        (
            format!(r#"{{"op":"unmap-pirq","domid":{},"pirq":"all"}}"#, a.0),
            Some(100),
            "malformed",
        ),
        // dom0.
        (
            format!(
                r#"{{"op":"map-pirq-msi","domid":0,"sbdf":"{a_dev}","entry":0,"table_base":0}}"#
            ),
            None,
            "protected-domain",
        ),
    ];
    for (line, peer, want) in hostile {
        assert_eq!(code(handle_line(&mut ctx, &line, peer)), want, "{line}");
    }
    let again = handle_line(&mut ctx, &map(a.0, a_dev, 0, tb(a_dev)), Some(100));
    assert_eq!(
        again.pirq,
        Some(pa),
        "a repeated map finds the recorded pirq"
    );

    // Nothing the hostile requests asked for exists, in the ledger or in Xen.
    let msix = |ctx: &mut daemon::host::HostCtx, s| {
        ctx.engine()
            .unwrap()
            .record(s)
            .unwrap()
            .unwrap()
            .bindings
            .into_iter()
            .filter(|b| matches!(b.key, engine::BindingKey::Msix(_)))
            .count()
    };
    assert_eq!(msix(&mut ctx, a_dev), 1);
    assert_eq!(msix(&mut ctx, b_dev), 1);
    // A's INTx is still mapped and bound as attach left it.
    let intx = ctx
        .engine()
        .unwrap()
        .record(a_dev)
        .unwrap()
        .unwrap()
        .bindings
        .into_iter()
        .find(|b| b.key == engine::BindingKey::Intx)
        .unwrap();
    assert_eq!(intx.pirq, Some(xen::Pirq(intx_a)));
    host.with_world(|w| {
        let msi = |d| w.domains[&d].pirqs.keys().filter(|p| **p >= 48).count();
        assert_eq!((msi(a), msi(b)), (1, 1), "one MSI pirq each");
    });
}

/// A simulated host (Xen 4.17.5) with one NIC attached to a new domain, with `token` as
/// the assignment's credential: the directory, the context, the host, the domain, the NIC.
fn one_attached_device(
    token: Option<&engine::AssignmentToken>,
) -> (
    tempfile::TempDir,
    daemon::host::HostCtx,
    sim::SimHost,
    xen::DomId,
    pci::Sbdf,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
    let (mut ctx, host, _) = sim_open(
        &tmp.path().join("host"),
        XenProfile::Xen4_17_5,
        PcibackProfile::AfterCommandFix,
        &[DeviceSpec::nic(dev, 4)],
    )
    .unwrap();
    let a = host.create_domain("A", true);
    {
        let mut e = ctx.engine().unwrap();
        e.assignable_add(dev).unwrap();
        e.attach_with_token(dev, a, token).unwrap();
    }
    (tmp, ctx, host, a, dev)
}

/// A broker over a simulated host with one device attached to d1, for the I/O tests.
fn served(
    limits: BrokerLimits,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<AtomicBool>,
    daemon::broker::BrokerHandle,
) {
    let (tmp, ctx, _, _, _) = one_attached_device(None);
    let stop = Arc::new(AtomicBool::new(false));
    let sock = tmp.path().join("broker.sock");
    let server = serve_broker(
        Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx)))),
        &sock,
        stop.clone(),
        limits,
        Default::default(),
    )
    .unwrap();
    (tmp, sock, stop, server)
}

/// Issue 25 (4): a request followed by a half-close was executed and its reply never
/// sent; 1,000 pipelined requests were executed with no reply (past the output cap before
/// any flush). Every request executed gets its reply.
#[test]
fn every_request_executed_gets_its_reply() {
    use std::io::Read;
    let (_tmp, sock, stop, server) = served(BrokerLimits {
        max_pending_output: 4096,
        ..BrokerLimits::default()
    });
    // A request without a credential: answered (refused), cheap, and it touches nothing.
    let request = r#"{"op":"unmap-pirq","domid":1,"pirq":79}"#;
    // Half-close after the request, as `socat` and `nc -N` do.
    let mut s = UnixStream::connect(&sock).unwrap();
    writeln!(s, "{request}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let replies: Vec<wire::Reply> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 1, "{all}");
    assert_eq!(
        replies[0].code.map(wire::ReplyCode::as_str),
        Some("credential-required")
    );

    // 1,000 requests in one go from a client that reads only when it has sent them all.
    let n = 1000;
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let batch: String = (0..n).map(|_| format!("{request}\n")).collect();
        w.write_all(batch.as_bytes()).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    writer.join().unwrap();
    assert_eq!(all.lines().count(), n, "one reply per request");
    assert!(all
        .lines()
        .all(|l| l.contains(r#""code":"credential-required""#)));
    stop.store(true, Ordering::Relaxed);
    let stats = server.join();
    assert_eq!(stats.requests, n as u64 + 1);
}

/// Issue 25 (9): the sockets' modes do not depend on the umask: 0600 even under umask
/// 000 (set only in a child process, which serves the embedded xenstored).
#[test]
fn the_daemons_sockets_are_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, sock, stop, server) = served(BrokerLimits::default());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "broker socket");
    stop.store(true, Ordering::Relaxed);
    server.join();

    let tmp = tempfile::tempdir().unwrap();
    let rundir = tmp.path().join("run");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} xenstored --rundir {}",
            env!("CARGO_BIN_EXE_ptguard"),
            rundir.display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = rundir.join("socket");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "xenstored did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o600, "xenstored socket under umask 000");
}

/// Issue 25 (9): every connection to the embedded xenstored was dom0, so user `nobody`
/// forged a ledger entry. A process of another user is refused even when the socket's
/// mode would let it connect. Runs Xen's own `xenstore-write` as `nobody` (needs root and
/// xenstore-utils; CI has both).
#[test]
#[cfg_attr(
    missing_xenstore_utils,
    ignore = "needs Debian's xenstore-utils (apt-get install xenstore-utils)"
)]
fn the_embedded_xenstored_refuses_another_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: needs root, to run Xen's xenstore-write as nobody");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rundir = tmp.path().join("run");
    let handle = xenstore::server::start(xenstore::server::ServerConfig::new(&rundir)).unwrap();
    let socket = handle.socket_path().to_path_buf();
    std::fs::set_permissions(&rundir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let write_as = |uid: u32, path: &str| {
        std::process::Command::new("xenstore-write")
            .args([path, "forged"])
            .env("XENSTORED_RUNDIR", &rundir)
            .env_remove("XENSTORED_PATH")
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    // Mode 0600: nobody cannot even connect.
    assert!(!write_as(65534, "/ptguard/a").status.success());
    // Open to everyone: the server itself must still say no.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(!write_as(65534, "/ptguard/b").status.success());
    // Root (the server's own user) is dom0.
    assert!(write_as(0, "/ptguard/c").status.success());
    let mut c = xenstore::XsClient::connect(&socket).unwrap();
    for (p, want) in [
        ("/ptguard/a", false),
        ("/ptguard/b", false),
        ("/ptguard/c", true),
    ] {
        let v = c.read_optional(xenstore::TxId::NONE, p).unwrap();
        assert_eq!(v.is_some(), want, "{p}");
    }
    drop(c);
    handle.shutdown().unwrap();
}

/// Issue 25 (2): on the simulated host no device-model pid was ever recorded, so any
/// client of the socket could act for any domain. The simulated host records one as libxl
/// does when it starts an HVM guest's model; a process that is not that model is refused,
/// and the holder of the attach token is served.
#[test]
fn the_simulated_host_records_device_model_pids_as_libxl_does() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let pt = |args: &[&str]| common::ok(&dir, args);
    pt(&["sim", "init"]);
    pt(&["assignable-add", "0000:03:00.0"]);
    pt(&["sim", "create", "g"]);
    let attached: serde_json::Value =
        serde_json::from_str(&pt(&["attach", "0000:03:00.0", "1", "--json"])).unwrap();
    let token = attached["token"].as_str().unwrap().to_string();
    pt(&["sim", "start", "1", "0000:03:00.0"]);
    let spec = daemon::host::HostSpec::Sim(dir.clone());
    let (recorded, tb) = {
        let mut ctx = daemon::host::HostCtx::open(&spec, true).unwrap();
        let pid = ctx
            .xs
            .read(
                xenstore::TxId::NONE,
                "/local/domain/1/image/device-model-pid",
            )
            .unwrap();
        let tb = ctx
            .engine()
            .unwrap()
            .record("0000:03:00.0".parse().unwrap())
            .unwrap()
            .unwrap()
            .table_base
            .unwrap();
        (String::from_utf8(pid).unwrap(), tb)
    };
    assert_eq!(
        recorded,
        daemon::host::simulated_device_model_pid(xen::DomId(1)).to_string()
    );
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .arg("--host")
        .arg(format!("sim:{}", dir.display()))
        .arg("watch")
        .env("PTGUARD_LOG", "error")
        .spawn()
        .unwrap();
    let sock = dir.join("broker.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "watch did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ask = |extra: &str| -> wire::Reply {
        let mut s = UnixStream::connect(&sock).unwrap();
        writeln!(
            s,
            r#"{{"op":"map-pirq-msi","domid":1,"sbdf":"0000:03:00.0","entry":5,"table_base":{tb}{extra}}}"#
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let impostor = ask("");
    assert_eq!(
        impostor.code.map(wire::ReplyCode::as_str),
        Some("not-device-model"),
        "{impostor:?}"
    );
    let holder = ask(&format!(r#","token":"{token}""#));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(holder.ok, "{holder:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
    /// No request from an unproven caller — any op, domain, device, entry, pirq or token
    /// it guesses — is ever served, and none changes the ledger or Xen.
    #[test]
    fn an_unproven_caller_is_never_served(
        op in proptest::sample::select(vec!["bind", "unbind", "map-pirq-msi", "update-msi-irq", "unbind-msi-irq", "unmap-pirq"]),
        domid in 0u16..4,
        entry in 0u16..8,
        pirq in -1i32..100,
        token in proptest::option::of("[0-9a-f]{64}"),
        peer in proptest::option::of(1i32..1_000_000),
    ) {
        use daemon::broker::handle_line;
        let real = engine::AssignmentToken::from_entropy([0x11; 32]);
        let (_tmp, mut ctx, host, a, dev) = one_attached_device(Some(&real));
        let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
        let before = (ctx.engine().unwrap().record(dev).unwrap(), host.with_world(|w| format!("{:?}", w.domains[&a].pirqs)));
        let t = token.map(|t| format!(r#","token":"{t}""#)).unwrap_or_default();
        let line = format!(
            r#"{{"op":"{op}","domid":{domid},"sbdf":"{dev}","epoch":1,"entry":{entry},"table_base":{tb},"pirq":{pirq},"gvec":64,"gflags":0,"gtable":0,"kind":{{"kind":"msix","entry":{entry},"table_base":{tb}}}{t}}}"#
        );
        let reply = handle_line(&mut ctx, &line, peer);
        proptest::prop_assert!(!reply.ok, "{line} -> {reply:?}");
        let after = (ctx.engine().unwrap().record(dev).unwrap(), host.with_world(|w| format!("{:?}", w.domains[&a].pirqs)));
        proptest::prop_assert_eq!(before, after);
    }
}
