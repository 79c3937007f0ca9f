//! `ptguard doctor --log` and `ptguard report`'s log sections: the toolstacks' logs read
//! as findings from the command line, on any machine (no Xen needed for --log).

use std::process::Command;

mod common;
use common::{ok, ptguard};

fn fixture(name: &str) -> String {
    format!(
        "{}/../engine/tests/fixtures/logs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The codes of doctor's `--json` findings.
fn codes(stdout: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn doctor_reads_the_toolstacks_logs_without_a_host() {
    let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["doctor", "--json", "--log"])
        .args([
            fixture("xl-web1.log"),
            fixture("qemu-dm-web1.log"),
            fixture("xl-dmesg.txt"),
        ])
        .env("PTGUARD_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "errors found: exit 1");
    let codes = codes(&o.stdout);
    for want in [
        "held-by-guest",
        "toolstack-pci-add-failed",
        "no-reset-method",
        "not-assignable",
        "dm-map-failed",
        "dm-unmap-failed",
        "mask-forced-logged",
        "assign-refused",
    ] {
        assert!(codes.iter().any(|c| c == want), "{want} in {codes:?}");
    }
    // Only this device's findings, and those about no device in particular.
    let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args([
            "doctor",
            "0000:03:00.0",
            "--json",
            "--log",
            &fixture("xl-web1.log"),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["sbdf"] == "0000:03:00.0" || f["sbdf"].is_null()));
    // A log that is not there: a clear error.
    let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["doctor", "--log", "/nonexistent/xl-x.log"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/xl-x.log"));
}

#[test]
fn a_report_captures_the_logs_of_guests_that_held_a_device() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    let logs = tmp.path().join("xen-logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(fixture("xl-web1.log"), logs.join("xl-web1.log")).unwrap();
    std::fs::write(
        logs.join("xl-other.log"),
        "Waiting for domain other (domid 3) to die\n",
    )
    .unwrap();
    let report = tmp.path().join("report.txt");
    let o = ptguard(
        &d,
        &[
            "report",
            "-o",
            report.to_str().unwrap(),
            "--log-dir",
            logs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains(&format!("### log {}", logs.join("xl-web1.log").display())),
        "{text}"
    );
    assert!(
        !text.contains("xl-other.log"),
        "a log naming no device is left out"
    );
    let o = ptguard(
        &d,
        &[
            "doctor",
            "--json",
            "--from-report",
            report.to_str().unwrap(),
        ],
    );
    let codes = codes(&o.stdout);
    assert!(
        codes.contains(&"toolstack-pci-add-failed".to_string()),
        "{codes:?}"
    );
}
