//! The preload library against Debian's real libxenctrl (package `libxen-dev`): a C
//! program linked with `-lxenctrl` makes qemu-xen's four MSI-X calls with
//! `libptguard_preload.so` preloaded; ptguard's broker (the daemon's code, on a simulated
//! host) answers them, and the ledger and the simulated Xen show each binding as it is made.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use daemon::broker::{serve_broker, BrokerLimits, DaemonHost};
use daemon::host::sim_open;
use engine::{BindingKey, BindingState, Outcome};
use sim::{DeviceSpec, PcibackProfile, XenProfile};
use xen::{DomId, PtIrq};

/// The library as this source tree builds it. `cargo test` does not build a cdylib for
/// the package's own integration tests, so the test builds it once, with the cargo running
/// it, into a target directory of its own (the outer cargo keeps its own locked).
fn preload_library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-build");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "--quiet", "--manifest-path"])
                .arg(manifest.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("cargo");
            assert!(st.success(), "building libptguard_preload.so failed");
            let lib = target.join("debug/libptguard_preload.so");
            assert!(lib.exists(), "{} not built", lib.display());
            lib
        })
        .clone()
}

/// Which libxenctrl the device model links.
#[derive(Clone, Copy, PartialEq)]
enum Libxenctrl {
    /// Debian 12's (4.17).
    Debian,
    /// tests/xenctrl_4_21_stub.c as `libxenctrl.so.4.21`: the 4.21 calling convention.
    Stub4_21,
}

/// Compiles tests/dm_calls.c against the system's libxenctrl headers, linked with `lib`.
fn dm_calls_program(out: &Path, lib: Libxenctrl) -> PathBuf {
    assert!(
        Path::new("/usr/include/xenctrl.h").exists(),
        "Debian's libxenctrl headers are missing: apt-get install libxen-dev (.ci/run does)"
    );
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let bin = out.join("dm_calls");
    let src = tests.join("dm_calls.c");
    let mut cc = Command::new("cc");
    cc.args(["-Wall", "-Werror", "-o"]).arg(&bin).arg(&src);
    match lib {
        Libxenctrl::Debian => {
            cc.arg("-lxenctrl");
        }
        Libxenctrl::Stub4_21 => {
            let so = out.join("libxenctrl.so.4.21");
            let st = Command::new("cc")
                .args(["-Wall", "-Werror", "-shared", "-fPIC"])
                .arg("-Wl,-soname,libxenctrl.so.4.21")
                .arg("-o")
                .arg(&so)
                .arg(tests.join("xenctrl_4_21_stub.c"))
                .status()
                .expect("cc");
            assert!(st.success(), "compiling the 4.21 stub failed");
            cc.arg(&so).arg(format!("-Wl,-rpath,{}", out.display()));
        }
    }
    let st = cc.arg("-ldl").status().expect("cc");
    assert!(st.success(), "compiling {} failed", src.display());
    bin
}

struct DeviceModel {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl DeviceModel {
    fn call(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        if out.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "the device model died at {line:?}: {:?}; stderr:\n{err}",
                self.child.wait()
            );
        }
        out.trim().to_owned()
    }
}

struct Bed {
    _tmp: tempfile::TempDir,
    host: sim::SimHost,
    daemon: Arc<DaemonHost>,
    stop: Arc<AtomicBool>,
    server: Option<daemon::broker::BrokerHandle>,
    dm: DeviceModel,
    dev: pci::Sbdf,
    domid: DomId,
}

impl Bed {
    fn new() -> Bed {
        Bed::with("0000:03:00.0", XenProfile::Xen4_17_5, Libxenctrl::Debian)
    }

    /// A device model for `dev` on `xen`, linking `lib`; its bus argument is what that
    /// libxenctrl takes (the segment in the high 16 bits from 4.21).
    fn with(dev: &str, xen: XenProfile, lib: Libxenctrl) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("host");
        let dev: pci::Sbdf = dev.parse().unwrap();
        let bus_arg = match lib {
            Libxenctrl::Debian => u32::from(dev.bus()),
            Libxenctrl::Stub4_21 => u32::from(dev.seg()) << 16 | u32::from(dev.bus()),
        };
        let (mut ctx, host, _) = sim_open(
            &dir,
            xen,
            PcibackProfile::AfterCommandFix,
            &[DeviceSpec::nic(dev, 4)],
        )
        .unwrap();
        let domid = host.create_domain("hvm", true);
        {
            let mut e = ctx.engine().unwrap();
            e.assignable_add(dev).unwrap();
            e.attach(dev, domid).unwrap();
        }
        let tb = host.with_world(|w| w.device(dev).unwrap().hw.table_base());
        let daemon = Arc::new(DaemonHost::Held(Box::new(Mutex::new(ctx))));
        let stop = Arc::new(AtomicBool::new(false));
        let sock = tmp.path().join("broker.sock");
        let server = serve_broker(
            daemon.clone(),
            &sock,
            stop.clone(),
            BrokerLimits::default(),
            Default::default(),
        )
        .unwrap();
        let bin = dm_calls_program(tmp.path(), lib);
        let mut child = Command::new(bin)
            .args([
                domid.0.to_string(),
                format!("{bus_arg:#x}"),
                format!("{:#x}", dev.devfn()),
                format!("{tb:x}"),
            ])
            .env("LD_PRELOAD", preload_library())
            .env("PTGUARD_BROKER", &sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        Bed {
            _tmp: tmp,
            host,
            daemon,
            stop,
            server: Some(server),
            dm: DeviceModel {
                child,
                stdin,
                stdout,
            },
            dev,
            domid,
        }
    }

    /// Records the C program's pid as the domain's device model, as libxl does.
    fn record_device_model_pid(&self) {
        let path = format!("/local/domain/{}/image/device-model-pid", self.domid.0);
        let pid = self.dm.child.id().to_string();
        self.daemon
            .with(|c| Ok(c.xs.write(xenstore::TxId::NONE, &path, pid.as_bytes())?))
            .unwrap();
    }

    fn binding(&self, entry: u16) -> Option<engine::Binding> {
        let dev = self.dev;
        self.daemon
            .with(|c| Ok(c.engine()?.record(dev)?))
            .unwrap()
            .unwrap()
            .bindings
            .into_iter()
            .find(|b| b.key == BindingKey::Msix(entry))
    }

    fn xen_dpci(&self, pirq: i32) -> Option<Option<PtIrq>> {
        let d = self.domid;
        self.host.with_world(|w| {
            w.domains
                .get(&d)
                .and_then(|d| d.pirqs.get(&pirq))
                .map(|e| e.dpci)
        })
    }

    /// Stops the broker and returns what the library wrote to the device model's stderr.
    fn finish(mut self) -> String {
        drop(self.dm.stdin);
        let out = self.dm.child.wait_with_output().unwrap();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.server.take() {
            s.join();
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
#[cfg_attr(
    missing_libxenctrl,
    ignore = "needs Debian's libxenctrl and its headers (apt-get install libxen-dev)"
)]
fn the_four_calls_reach_the_ledger_through_the_real_libxenctrl() {
    let mut bed = Bed::new();
    // Each of the four symbols resolves to the preload library first and still exists,
    // distinct, in libxenctrl behind it (where the library falls through).
    writeln!(bed.dm.stdin, "where").unwrap();
    for _ in 0..4 {
        let mut l = String::new();
        bed.dm.stdout.read_line(&mut l).unwrap();
        assert!(
            l.contains("default=") && l.contains("libptguard_preload.so"),
            "{l}"
        );
        assert!(
            l.contains("libxenctrl=/") && l.contains("libxenctrl.so.4.17"),
            "{l}"
        );
        assert!(l.trim_end().ends_with("distinct=1"), "{l}");
    }
    let mut done = String::new();
    bed.dm.stdout.read_line(&mut done).unwrap();
    assert_eq!(done.trim(), "done");

    // Without libxl's device-model-pid the broker cannot tell this process is the device
    // model, and the library sends no epoch: refused, EPERM, nothing mapped.
    assert_eq!(bed.dm.call("map 0"), "rc=-1 errno=1 pirq=-1");
    assert_eq!(bed.binding(0), None);

    bed.record_device_model_pid();
    // Map: the pirq Xen chose (the top of the guest's pirq space), recorded as mapped.
    assert_eq!(bed.dm.call("map 0"), "rc=0 errno=0 pirq=79");
    let b = bed.binding(0).expect("msix-0 in the ledger");
    assert_eq!(
        (b.state, b.pirq),
        (BindingState::Mapped, Some(xen::Pirq(79)))
    );
    assert_eq!(bed.xen_dpci(79), Some(None), "mapped, not bound, in Xen");

    // Bind to the guest vector, then rebind when the guest rewrites the entry.
    assert_eq!(
        bed.dm.call("update 79 0x40 0x1000 0xf0000000"),
        "rc=0 errno=0"
    );
    let b = bed.binding(0).unwrap();
    assert_eq!(
        (b.state, b.gvec, b.gflags),
        (BindingState::Bound, 0x40, 0x1000)
    );
    assert!(matches!(
        bed.xen_dpci(79),
        Some(Some(PtIrq::Msi { gvec: 0x40, .. }))
    ));
    assert_eq!(
        bed.dm.call("update 79 0x41 0x1000 0xf0000000"),
        "rc=0 errno=0"
    );
    assert_eq!(bed.binding(0).unwrap().gvec, 0x41);
    assert!(matches!(
        bed.xen_dpci(79),
        Some(Some(PtIrq::Msi { gvec: 0x41, .. }))
    ));

    // The broker's checks hold for the library too: an entry beyond the table is refused.
    assert_eq!(bed.dm.call("map 9"), "rc=-1 errno=1 pirq=-1");

    // qemu's disable path: unbind, then unmap; the ledger follows each.
    assert_eq!(bed.dm.call("unbind 79 0x41 0x1000"), "rc=0 errno=0");
    assert_eq!(bed.binding(0).unwrap().state, BindingState::Mapped);
    assert_eq!(bed.xen_dpci(79), Some(None));
    assert_eq!(bed.dm.call("unmap 79"), "rc=0 errno=0");
    assert_eq!(bed.binding(0), None);
    assert_eq!(bed.xen_dpci(79), None, "unmapped in Xen");

    let log = bed.finish();
    assert!(log.contains("credential-required"), "{log}");
    assert!(log.contains("entry-beyond-table"), "{log}");
    assert!(
        log.contains("map_pirq_msi d1 0000:03:00.0 entry 0: pirq 79 (ledger)"),
        "{log}"
    );
}

#[test]
#[cfg_attr(
    missing_libxenctrl,
    ignore = "needs Debian's libxenctrl and its headers (apt-get install libxen-dev)"
)]
fn a_killed_device_model_leaves_nothing_the_ledger_does_not_know() {
    let mut bed = Bed::new();
    bed.record_device_model_pid();
    let mut pirqs = Vec::new();
    for entry in 0..3 {
        let out = bed.dm.call(&format!("map {entry}"));
        let pirq: i32 = out
            .rsplit("pirq=")
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            bed.dm
                .call(&format!("update {pirq} 0x{:x} 0 0", 0x50 + entry)),
            "rc=0 errno=0"
        );
        pirqs.push(pirq);
    }
    // qemu dies with its three vectors bound; the guest is hot-unplugged from while it runs.
    bed.dm.child.kill().unwrap();
    let dev = bed.dev;
    let outcome = bed.daemon.with(|c| Ok(c.engine()?.detach(dev)?)).unwrap();
    // The ledger knew every binding: the teardown unbinds them, release_msix answers 0,
    // and the device is clean without waiting for the guest to go.
    assert!(matches!(outcome, Outcome::Assignable { .. }), "{outcome:?}");
    for p in pirqs {
        assert_eq!(bed.xen_dpci(p), None, "pirq {p} unmapped");
    }
    bed.finish();
}

/// libxenctrl 4.21+ carries the segment in the high 16 bits of the bus argument (commit
/// b7838d12bd): a device on segment 1 reaches the ledger under its own address, and the
/// library behind (a 4.21 stand-in) is never called. Before this, the preload library
/// read only the low byte's convention and sent such a call past the ledger.
#[test]
#[cfg_attr(
    missing_libxenctrl,
    ignore = "needs Debian's libxenctrl headers (apt-get install libxen-dev)"
)]
fn a_device_on_segment_1_reaches_the_ledger_through_libxenctrl_4_21() {
    let mut bed = Bed::with("0001:03:00.0", XenProfile::Xen4_21_0, Libxenctrl::Stub4_21);
    bed.record_device_model_pid();
    let out = bed.dm.call("map 0");
    let pirq: i32 = out
        .strip_prefix("rc=0 errno=0 pirq=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let b = bed
        .binding(0)
        .expect("msix-0 of 0001:03:00.0 in the ledger");
    assert_eq!(
        (b.state, b.pirq),
        (BindingState::Mapped, Some(xen::Pirq(pirq)))
    );
    assert_eq!(
        bed.xen_dpci(pirq),
        Some(None),
        "mapped in Xen for the segment-1 device"
    );
    let dev = bed.dev;
    let mapped_for = bed.host.with_world(|w| {
        w.descs
            .values()
            .filter(|d| d.pirq == pirq)
            .map(|d| d.sbdf)
            .collect::<Vec<_>>()
    });
    assert_eq!(mapped_for, vec![dev]);
    let log = bed.finish();
    assert!(log.contains("0001:03:00.0 entry 0: pirq"), "{log}");
    assert!(
        !log.contains("stub-4.21"),
        "never reached libxenctrl: {log}"
    );
}
