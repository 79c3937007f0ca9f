//! `ptguard watch --metrics-file`: the daemon's Prometheus textfile, read back the way
//! node_exporter's textfile collector reads it (exposition format, every sample under its
//! family's HELP and TYPE), after a guest whose device model crashed rebooted.

use std::collections::BTreeMap;

mod common;
use common::{ok, ptguard_env};

/// Every sample of a textfile, checked for the exposition format's rules on the way.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let (mut helped, mut typed) = (None::<String>, None::<String>);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = rest.split(' ').next().map(str::to_string);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE NAME KIND");
            assert_eq!(helped.as_deref(), Some(name), "HELP before TYPE: {line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            typed = Some(name.to_string());
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("SERIES VALUE");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.starts_with("ptguard_"), "{line}");
        assert_eq!(
            typed.as_deref(),
            Some(name),
            "a sample under its family: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"'), "{line}");
                }
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "one sample per series: {line}"
        );
    }
    samples
}

/// `watch --once` told to keep its metrics in a directory that does not exist.
fn watch_into_a_missing_directory(d: &std::path::Path) -> std::process::Output {
    ptguard_env(
        d,
        &[
            "watch",
            "--once",
            "--metrics-file",
            "/nonexistent/dir/ptguard.prom",
        ],
        &[],
    )
}

#[test]
fn the_daemons_textfile_counts_a_teardown_and_the_ledgers_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    let prom = tmp.path().join("ptguard.prom");
    ok(&d, &["sim", "init", "--xen", "4.17.5", "--pciback", "new"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "guest1"]);
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    ok(
        &d,
        &["sim", "start", "1", "0000:03:00.0", "--dm", "crashes"],
    );
    ok(&d, &["sim", "reboot", "1"]);
    // Set as the Debian package's /etc/default/ptguard sets it.
    let prom_s = prom.display().to_string();
    let o = ptguard_env(
        &d,
        &["watch", "--once"],
        &[("PTGUARD_METRICS_FILE", prom_s.as_str())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = parse(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(
        s[r#"ptguard_teardowns_total{trigger="recover",outcome="assignable"}"#],
        1.0
    );
    assert_eq!(s[r#"ptguard_rounds_total{round="recover"}"#], 1.0);
    assert!(s["ptguard_last_round_timestamp_seconds"] > 1.6e9);
    assert_eq!(s[r#"ptguard_devices{state="assignable"}"#], 1.0);
    assert_eq!(s[r#"ptguard_devices{state="quarantined"}"#], 0.0);
    assert_eq!(s["ptguard_errors_total"], 0.0);
    assert!(!s.keys().any(|k| k.starts_with("ptguard_last_error")));
    // Nothing else beside it: the atomic rewrite leaves no temporary file.
    let files: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");

    // A directory that is not there: a clear error, and nothing else is lost.
    let o = watch_into_a_missing_directory(&d);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/dir/ptguard.prom"), "{err}");
    let list = ok(&d, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["state"], "assignable");
}

/// An error's cause is said once, not once in the message and again as its cause.
#[test]
fn an_error_says_its_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    let o = watch_into_a_missing_directory(&d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
