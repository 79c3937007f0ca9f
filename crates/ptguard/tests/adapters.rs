//! The toolstack adapters the package installs, run the way their hosts run them:
//! xenopsd's `pci-flr-script` (`flr-pre SBDF`, the reset, `flr-post SBDF`) and libvirt's
//! libxl hook (`DOMAIN OPERATION SUB-OPERATION EXTRA`, the domain XML on stdin), against a
//! simulated host: a guest whose stock device model died with its vectors mapped has shut
//! down, and the toolstack is about to reset its device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::ok;

const NIC: &str = "0000:03:00.0";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/hooks")
        .join(name)
}

/// A host whose guest 1 (stock toolstack and device model) powered off after its device
/// model died: its pirqs are still mapped, the domain kept (on_poweroff="preserve").
fn finished_guest_with_leftovers(d: &Path) {
    ok(d, &["sim", "init", "--xen", "4.17"]);
    ok(d, &["assignable-add", NIC]);
    let g = ok(d, &["sim", "create", "g1"]).trim().to_string();
    assert_eq!(g, "1");
    ok(d, &["sim", "plug", "1", NIC, "--dm", "crashes"]);
    ok(d, &["sim", "kill-dm", "1"]);
    ok(d, &["sim", "shutdown", "1", "--reason", "poweroff"]);
}

/// Runs an adapter as its host does: the packaged script, with ptguard acting on `dir`.
fn run(adapter: &str, dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(script(adapter));
    c.args(args)
        .env("PTGUARD", env!("CARGO_BIN_EXE_ptguard"))
        .env("PTGUARD_HOST", format!("sim:{}", dir.display()))
        .env("PTGUARD_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    // A hook that has nothing to do may exit before it reads its stdin (libvirt's hooks get
    // the domain XML there): a broken pipe is its choice, not a failure.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The device's vectors Xen still maps to a pirq (the sweep's business).
fn pirqs_of_guest(d: &Path) -> usize {
    let state: serde_json::Value =
        serde_json::from_str(&ok(d, &["sim", "state", NIC, "--json"])).unwrap();
    state["mapped_vectors"].as_array().map_or(0, Vec::len)
}

#[test]
fn xenopsds_pci_flr_script_sweeps_before_the_reset_and_chains_the_default_script() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    finished_guest_with_leftovers(&d);
    let before = pirqs_of_guest(&d);
    assert!(before > 0, "the dead model left its pirqs mapped");
    // xenopsd's own script, which ours must still run, with the same arguments.
    let calls = tmp.path().join("chained.log");
    let chained = tmp.path().join("pci-flr");
    std::fs::write(
        &chained,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 3\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &chained,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let chain = chained.display().to_string();
    let env = [("PTGUARD_CHAIN_PCI_FLR", chain.as_str())];
    let pre = run("xenopsd-pci-flr", &d, &["flr-pre", NIC], "", &env);
    assert!(text(&pre).contains("swept"), "{}", text(&pre));
    assert_eq!(pre.status.code(), Some(3), "the chained script's status");
    assert_eq!(
        pirqs_of_guest(&d),
        0,
        "nothing left mapped before the reset"
    );
    let post = run("xenopsd-pci-flr", &d, &["flr-post", NIC], "", &env);
    assert!(!text(&post).contains("swept"), "{}", text(&post));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("flr-pre {NIC}\nflr-post {NIC}\n")
    );
    // Without a default script to chain (a host that has none): exit 0.
    let alone = run(
        "xenopsd-pci-flr",
        &d,
        &["flr-pre", NIC],
        "",
        &[("PTGUARD_CHAIN_PCI_FLR", "/nonexistent/pci-flr")],
    );
    assert_eq!(alone.status.code(), Some(0), "{}", text(&alone));
}

const DOMAIN_XML: &str = r#"<domain type='xen' id='1'>
  <name>g1</name>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='xen'/>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>
"#;

#[test]
fn libvirts_libxl_hook_sweeps_when_the_guest_stopped_and_leaves_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    finished_guest_with_leftovers(&d);
    // Operations before the device is reset again are not ptguard's: nothing happens.
    for (op, sub) in [
        ("started", "begin"),
        ("release", "end"),
        ("migrate", "begin"),
    ] {
        let o = run("libvirt-libxl", &d, &["g1", op, sub, "-"], DOMAIN_XML, &[]);
        assert!(o.status.success(), "{op}: {}", text(&o));
        assert_eq!(text(&o), "", "{op} {sub}");
    }
    assert!(pirqs_of_guest(&d) > 0);
    // libvirt's libxlDomainCleanup: `stopped end`, then it resets and reattaches.
    let o = run(
        "libvirt-libxl",
        &d,
        &["g1", "stopped", "end", "-"],
        DOMAIN_XML,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("swept"), "{}", text(&o));
    assert_eq!(pirqs_of_guest(&d), 0);
    // A definition that is not one never stops libvirt: said, exit 0, nothing done.
    let o = run(
        "libvirt-libxl",
        &d,
        &["g1", "prepare", "begin", "-"],
        "<network/>",
        &[],
    );
    assert!(o.status.success());
    assert!(
        text(&o).contains("not a libvirt domain definition"),
        "{}",
        text(&o)
    );
}
