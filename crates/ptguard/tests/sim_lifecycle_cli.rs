//! Issue 23 (5): every lifecycle event on the simulated host from the command line —
//! `sim plug`/`unplug` (the toolstack's hot-plug with libxl's backend nodes), `sim
//! kill-dm`, `sim decoding`, `sim shutdown --reason`, `sim destroy` — with the daemon's
//! round (`watch --once`) between them, as a soak runs them on real Xen: after each
//! teardown the next guest gets every interrupt.

use std::path::Path;

mod common;
use common::ok;

const NIC: &str = "0000:03:00.0";

fn delivered(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("MSI-X vectors of"))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or(out)
        .trim()
}

/// The next guest, given the device by the toolstack: all its vectors arrive.
fn next_guest(d: &Path, name: &str, pv: bool) -> String {
    let mut args = vec!["sim", "create", name];
    if pv {
        args.extend(["--pv", "--e820-host"]);
    }
    let g = ok(d, &args).trim().to_string();
    let out = ok(d, &["sim", "plug", &g, NIC]);
    assert_eq!(
        delivered(&out),
        format!("3 of 3 MSI-X vectors of {NIC} delivered"),
        "{name}: {out}"
    );
    ok(d, &["watch", "--once"]);
    g
}

#[test]
fn a_chain_of_teardowns_of_every_kind_keeps_the_device_working() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17"]);
    ok(&d, &["assignable-add", NIC]);

    // HVM, its model dies with vectors bound, xl pci-detach from the running guest.
    let g = ok(&d, &["sim", "create", "h1"]).trim().to_string();
    ok(&d, &["sim", "plug", &g, NIC, "--dm", "crashes"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("ledger: 1 devices"), "{round}");
    ok(&d, &["sim", "kill-dm", &g]);
    let out = ok(&d, &["sim", "unplug", &g, NIC]);
    assert!(out.contains("forced"), "{out}");
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("unmapped pirq(s)"), "{round}");
    assert!(round.contains("clean and assignable"), "{round}");

    // PV, decoding off, xl pci-detach: pciback tears the vectors down with decoding off.
    let p = next_guest(&d, "p1", true);
    ok(&d, &["sim", "decoding", NIC, "off"]);
    ok(&d, &["sim", "unplug", &p, NIC]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(
        !round.contains("swept"),
        "a PV guest's pirqs are pciback's: {round}"
    );

    // PV powers itself off, then xl destroys it.
    let p2 = next_guest(&d, "p2", true);
    ok(&d, &["sim", "shutdown", &p2, "--reason", "poweroff"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(!round.contains("swept"), "{round}");
    ok(&d, &["sim", "destroy", &p2]);
    ok(&d, &["watch", "--once"]);

    // HVM with decoding off, its model SIGKILLed, then xl destroy.
    let h2 = next_guest(&d, "h2", false);
    ok(&d, &["sim", "decoding", NIC, "off"]);
    ok(&d, &["sim", "kill-dm", &h2]);
    ok(&d, &["sim", "shutdown", &h2, "--reason", "crash"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("swept 3 pirq(s)"), "{round}");
    ok(&d, &["sim", "destroy", &h2]);
    ok(&d, &["watch", "--once"]);

    // Suspend is not an end: nothing is torn down while the guest may resume.
    let h3 = next_guest(&d, "h3", false);
    ok(&d, &["sim", "shutdown", &h3, "--reason", "suspend"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(!round.contains("clean and assignable"), "{round}");
    ok(&d, &["sim", "destroy", &h3]);
    ok(&d, &["watch", "--once"]);

    let last = next_guest(&d, "last", false);
    let state = ok(&d, &["sim", "state", NIC]);
    assert!(state.contains(&format!("owner d{last}")), "{state}");
}

#[test]
fn lifecycle_events_refuse_what_is_not_there() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    for args in [
        vec!["sim", "destroy", "7"],
        vec!["sim", "shutdown", "0"],
        vec!["sim", "kill-dm", "7"],
        vec!["sim", "unplug", "7", NIC],
        vec!["sim", "decoding", "0000:09:00.0", "on"],
    ] {
        let o = common::ptguard(&d, &args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let o = common::ptguard(&d, &["sim", "shutdown", "1", "--reason", "nap"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("poweroff"));
}

/// `xl pci-detach` of one of two devices from a running HVM guest, as the test bed's nvme
/// group runs it on real Xen: pciback still exports the device in the guest's backend
/// (no pcifront answers the Reconfiguring), so the daemon's round makes it give it back;
/// a PV guest's pcifront can then be given it, and keeps it when the HVM guest goes.
#[test]
fn a_device_of_two_leaving_a_running_hvm_guest_can_go_to_a_pv_guest() {
    const OTHER: &str = "0000:04:00.0";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.20"]);
    ok(&d, &["assignable-add", NIC]);
    ok(&d, &["assignable-add", OTHER]);
    let h = ok(&d, &["sim", "create", "h"]).trim().to_string();
    ok(&d, &["sim", "plug", &h, NIC]);
    ok(&d, &["sim", "plug", &h, OTHER]);
    ok(&d, &["watch", "--once"]);

    ok(&d, &["sim", "unplug", &h, NIC]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("pciback gave it back"), "{round}");
    assert!(round.contains("clean and assignable"), "{round}");
    let r = ok(&d, &["sim", "check", &h, OTHER]);
    assert!(r.contains("3 of 3"), "the HVM guest's other device: {r}");

    let p = next_guest(&d, "p", true);
    ok(&d, &["sim", "destroy", &h]);
    ok(&d, &["watch", "--once"]);
    let r = ok(&d, &["sim", "check", &p, NIC]);
    assert!(
        r.contains("3 of 3"),
        "nothing reset under the PV guest: {r}"
    );
}
