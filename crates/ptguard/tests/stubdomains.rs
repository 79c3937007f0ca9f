//! Issue 27 (4): a guest whose device model runs in a stubdomain. libxl then writes the PCI
//! backend for the stubdomain, not the guest, and assigns the device to the guest; the
//! pirqs the model maps are the guest's. ptguard beside stock xl (companion mode) must
//! adopt the device as the guest's (recording the stubdomain), and leave it clean for the
//! next guest whether the stubdomain dies before its guest, with it, or after it.

use std::path::Path;

mod common;
use common::ok;

const NIC: &str = "0000:03:00.0";

fn show(d: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(d, &["show", NIC, "--json"])).unwrap()
}

/// A guest with the device from stock xl, its model in a stubdomain, adopted by the
/// daemon's round: the record names the guest as owner and the stubdomain beside it.
fn guest_with_stubdomain(d: &Path, name: &str, dm: &str) -> (String, u64) {
    let g = ok(d, &["sim", "create", name]).trim().to_string();
    let out = ok(d, &["sim", "plug", &g, NIC, "--stubdom", "--dm", dm]);
    assert!(out.contains("3 of 3"), "{out}");
    let round = ok(d, &["watch", "--once"]);
    assert!(round.contains("its device model in stubdomain"), "{round}");
    let rec = show(d);
    assert_eq!(rec["ledger"]["owner"], g.parse::<u64>().unwrap(), "{rec}");
    let stub = rec["ledger"]["dm_domain"]
        .as_u64()
        .expect("the stubdomain is recorded");
    assert_ne!(stub.to_string(), g);
    // Doctor sees the stubdomain's backend as the guest's: no stale-backend finding.
    let doctor = common::ptguard(d, &["doctor", "--json"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !text.contains("backend-not-holder") && !text.contains("backend-owner-mismatch"),
        "{text}"
    );
    (g, stub)
}

fn next_guest_works(d: &Path, name: &str) {
    let g = ok(d, &["sim", "create", name]).trim().to_string();
    let out = ok(d, &["sim", "plug", &g, NIC]);
    assert!(
        out.contains("3 of 3 MSI-X vectors"),
        "the next guest's interrupts arrive: {out}"
    );
    ok(d, &["watch", "--once"]);
    ok(d, &["sim", "destroy", &g]);
    ok(d, &["watch", "--once"]);
}

fn host(tmp: &Path) -> std::path::PathBuf {
    let d = tmp.join("host");
    ok(&d, &["sim", "init", "--xen", "4.17"]);
    ok(&d, &["assignable-add", NIC]);
    d
}

#[test]
fn the_stubdomain_dies_before_its_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = host(tmp.path());
    let (g, _) = guest_with_stubdomain(&d, "g1", "crashes");
    let out = ok(&d, &["sim", "kill-dm", &g]);
    assert!(out.contains("stubdomain"), "{out}");
    // The guest runs on: nothing of it is torn down, its pirqs are its own.
    let round = ok(&d, &["watch", "--once"]);
    assert!(
        !round.contains("swept") && !round.contains("clean and assignable"),
        "{round}"
    );
    assert_eq!(show(&d)["ledger"]["state"], "attached");
    // It powers off: its leftover pirqs (mapped from the dead stubdomain) are swept.
    ok(&d, &["sim", "shutdown", &g, "--reason", "poweroff"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("swept"), "{round}");
    ok(&d, &["sim", "destroy", &g]);
    ok(&d, &["watch", "--once"]);
    next_guest_works(&d, "g2");
}

#[test]
fn the_stubdomain_dies_with_its_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = host(tmp.path());
    let (g, stub) = guest_with_stubdomain(&d, "g1", "well-behaved");
    let out = ok(&d, &["sim", "destroy", &g]);
    assert!(out.contains("destroyed"), "{out}");
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("clean"), "{round}");
    // Both domains are gone.
    let list = ok(&d, &["sim", "state", NIC, "--json"]);
    assert!(!list.contains(&format!("\"owner\": {stub}")), "{list}");
    next_guest_works(&d, "g2");
}

#[test]
fn the_stubdomain_dies_after_its_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = host(tmp.path());
    let (g, _) = guest_with_stubdomain(&d, "g1", "crashes");
    // The guest shuts down for good while its stubdomain still runs.
    ok(&d, &["sim", "shutdown", &g, "--reason", "crash"]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(round.contains("swept"), "{round}");
    // Then the stubdomain goes: nothing left to do.
    ok(&d, &["sim", "kill-dm", &g]);
    let round = ok(&d, &["watch", "--once"]);
    assert!(!round.contains("QUARANTINED"), "{round}");
    ok(&d, &["sim", "destroy", &g]);
    ok(&d, &["watch", "--once"]);
    next_guest_works(&d, "g2");
}
