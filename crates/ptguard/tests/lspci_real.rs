//! `ptguard lspci` against `lspci -vv` on this machine's real /sys: capability offsets,
//! MSI-X Count, Enable and Masked must agree for every device.
//!
//! Skipped (with a message) when pciutils is not installed, unless `CI` is set: CI installs
//! it, so there a missing `lspci` is a failure.

use std::collections::BTreeMap;
use std::process::Command;

#[derive(Debug, Default, PartialEq)]
struct Seen {
    cap_offsets: Vec<u16>,
    /// (Enable, Count, Masked)
    msix: Option<(bool, u16, bool)>,
    msi_enabled: Option<bool>,
    denied: bool,
}

fn flag(line: &str, name: &str) -> Option<bool> {
    let i = line.find(name)? + name.len();
    match line[i..].chars().next()? {
        '+' => Some(true),
        '-' => Some(false),
        _ => None,
    }
}

fn parse_lspci(text: &str) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with('\t') && !line.is_empty() {
            let addr = line.split_whitespace().next().unwrap_or("").to_string();
            out.insert(addr.clone(), Seen::default());
            cur = Some(addr);
            continue;
        }
        let Some(seen) = cur.as_ref().and_then(|c| out.get_mut(c)) else {
            continue;
        };
        let t = line.trim_start();
        if t.starts_with("Capabilities: <access denied>") {
            seen.denied = true;
        }
        let Some(rest) = t.strip_prefix("Capabilities: [") else {
            continue;
        };
        let Some(end) = rest.find(']') else { continue };
        let off_text = rest[..end].split_whitespace().next().unwrap_or("");
        let Ok(off) = u16::from_str_radix(off_text, 16) else {
            continue;
        };
        seen.cap_offsets.push(off);
        let body = &rest[end + 1..];
        if body.trim_start().starts_with("MSI-X:") {
            let count = body
                .split("Count=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            seen.msix = Some((
                flag(body, "Enable").unwrap_or(false),
                count,
                flag(body, "Masked").unwrap_or(false),
            ));
        } else if body.trim_start().starts_with("MSI:") {
            seen.msi_enabled = flag(body, "Enable");
        }
    }
    out
}

#[test]
#[cfg_attr(
    missing_pciutils,
    ignore = "needs Debian's pciutils (apt-get install pciutils)"
)]
fn agrees_with_lspci_vv_on_this_machine() {
    let lspci = Command::new("lspci").args(["-vv", "-D"]).output();
    let lspci = match lspci {
        Ok(o) if o.status.success() => o,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "lspci is missing in CI (.ci/run installs pciutils)"
            );
            eprintln!("SKIPPED: lspci (pciutils) not installed");
            return;
        }
    };
    let theirs = parse_lspci(&String::from_utf8_lossy(&lspci.stdout));
    let ours = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["lspci", "--json"])
        .output()
        .unwrap();
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let ours = ours.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "same devices");
    let mut compared_msix = 0;
    for dev in ours {
        let sbdf = dev["sbdf"].as_str().unwrap();
        let seen = theirs
            .get(sbdf)
            .unwrap_or_else(|| panic!("lspci does not list {sbdf}"));
        if seen.denied || dev["config_bytes"].as_u64() < Some(256) {
            eprintln!("{sbdf}: config space not readable; nothing to compare");
            continue;
        }
        let cfg = &dev["config"];
        let mut offsets: Vec<u16> = cfg["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .chain(cfg["extended_capabilities"].as_array().unwrap())
            .map(|c| c["offset"].as_u64().unwrap() as u16)
            .collect();
        offsets.sort_unstable();
        let mut theirs_sorted = seen.cap_offsets.clone();
        theirs_sorted.sort_unstable();
        assert_eq!(offsets, theirs_sorted, "{sbdf}: capability offsets");
        match (&cfg["msix"], seen.msix) {
            (serde_json::Value::Null, None) => {}
            (m, Some((enable, count, masked))) if !m.is_null() => {
                assert_eq!(m["enabled"].as_bool(), Some(enable), "{sbdf}: MSI-X Enable");
                assert_eq!(
                    m["table_size"].as_u64(),
                    Some(u64::from(count)),
                    "{sbdf}: Count"
                );
                assert_eq!(m["function_mask"].as_bool(), Some(masked), "{sbdf}: Masked");
                compared_msix += 1;
            }
            (m, s) => panic!("{sbdf}: MSI-X ours {m} theirs {s:?}"),
        }
        if let Some(en) = seen.msi_enabled {
            assert_eq!(
                cfg["msi"]["enabled"].as_bool(),
                Some(en),
                "{sbdf}: MSI Enable"
            );
        }
    }
    eprintln!(
        "compared {} devices, {compared_msix} with MSI-X",
        ours.len()
    );
}
