//! Issue 25 (10): what a newcomer or an operator meets at the edges of the command line —
//! JSON that parses with `--trace`/`--dry-run`, an empty `PTGUARD_PROTECT=`, a report too
//! large to be one, `sim check --json`, text without Rust debug forms, `report --json`,
//! `lspci` into a closed pipe or a wrong `--sysfs`, and an epoch that never restarts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{ok, ptguard_env};

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = ok(dir, args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}):\n{out}"))
}

/// A host with the first NIC attached to d1 and three vectors bound by its model.
fn host_with_a_guest(dir: &Path) {
    ok(dir, &["sim", "init"]);
    ok(dir, &["assignable-add", "0000:03:00.0"]);
    ok(dir, &["sim", "create", "g1"]);
    ok(dir, &["attach", "0000:03:00.0", "1"]);
    ok(dir, &["sim", "start", "1", "0000:03:00.0"]);
}

#[test]
fn json_output_parses_with_trace_and_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    let v = json(&d, &["--dry-run", "detach", "0000:03:00.0", "--json"]);
    assert_eq!(v["action"], "detach", "{v}");
    let o = ptguard_env(&d, &["--dry-run", "detach", "0000:03:00.0", "--json"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dry run: nothing was changed"),
        "the plan goes to stderr: {err}"
    );
    let v = json(&d, &["--trace", "list", "--json"]);
    assert!(v.is_array(), "{v}");
    let v = json(&d, &["--trace", "assignable-list", "--json"]);
    assert!(v.is_object() || v.is_array(), "{v}");
}

#[test]
fn an_empty_protect_variable_protects_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    for empty in ["", " "] {
        let o = ptguard_env(&d, &["list"], &[("PTGUARD_PROTECT", empty)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A real list still protects.
    let o = ptguard_env(&d, &["detach", "0000:03:00.0"], &[("PTGUARD_PROTECT", "1")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("protected domain"));
}

#[test]
fn a_report_larger_than_any_report_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    for huge in ["/dev/zero".to_string(), {
        let p = tmp.path().join("big.txt");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(ptguard::commands::doctor::MAX_REPORT + 1)
            .unwrap();
        p.display().to_string()
    }] {
        let o = ptguard_env(&d, &["doctor", "--from-report", &huge], &[]);
        assert_eq!(o.status.code(), Some(1), "{huge}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("larger than 16 MiB"), "{huge}: {err}");
    }
}

#[test]
fn sim_check_json_lists_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    let v = json(&d, &["sim", "check", "1", "0000:03:00.0", "--json"]);
    assert_eq!(v["vectors"], 3, "{v}");
    assert_eq!(v["delivered"], 3, "{v}");
    assert_eq!(v["missing"], serde_json::json!([]), "{v}");
    ok(&d, &["sim", "reboot", "1"]);
    let v = json(&d, &["sim", "check", "2", "0000:03:00.0", "--json"]);
    assert_eq!(v["delivered"], 0, "{v}");
    assert_eq!(v["missing"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["missing"][0]["why"].is_string(), "{v}");
}

#[test]
fn operator_text_has_no_rust_debug_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    let mut text = String::new();
    for args in [
        vec!["list"],
        vec!["show", "0000:03:00.0"],
        vec!["doctor"],
        vec!["sim", "reboot", "1"],
        vec!["-v", "watch", "--once"],
        vec!["-v", "detach", "0000:03:00.0"],
    ] {
        let o = ptguard_env(&d, &args, &[("PTGUARD_LOG", "info")]);
        text.push_str(&String::from_utf8_lossy(&o.stdout));
        text.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    for debug_form in ["Some(", "None)", "Quarantined {", "Assignable {"] {
        assert!(!text.contains(debug_form), "{debug_form} in:\n{text}");
    }
}

#[test]
fn report_speaks_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    let v = json(&d, &["report", "--json"]);
    let sections = v["sections"].as_array().expect("sections");
    assert!(sections.iter().any(|s| s["command"] == "xl dmesg"), "{v}");
    // The text form is what doctor --from-report reads; the JSON form carries the same.
    let text = ok(&d, &["report"]);
    for s in sections {
        assert!(text.contains(&format!("### {}", s["command"].as_str().unwrap())));
    }
}

#[test]
fn lspci_into_a_closed_pipe_ends_quietly_and_a_wrong_sysfs_fails() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["lspci", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe, as `| head -c1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    let _ = stdout.read(&mut one);
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("Broken pipe"));
    let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["lspci", "--sysfs", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/bus/pci/devices does not exist")
    );
}

#[test]
fn the_epoch_never_restarts_after_assignable_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    host_with_a_guest(&d);
    ok(&d, &["detach", "0000:03:00.0"]);
    let before = json(&d, &["show", "0000:03:00.0", "--json"])["ledger"]["epoch"]
        .as_u64()
        .unwrap();
    assert!(before >= 2);
    ok(&d, &["assignable-remove", "0000:03:00.0"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    let v = json(&d, &["attach", "0000:03:00.0", "1", "--json"]);
    assert!(
        v["epoch"].as_u64().unwrap() > before,
        "{v} after epoch {before}"
    );
}
