//! Issue 14: `explore` over the lifecycles with several devices or domains — a shared INTx
//! line, a VF whose PF stops decoding, a reused domid — crashing ptguard at every point.

use lab::explore_devices::{explore, SCENARIOS};
use sim::{PcibackProfile, XenProfile};

#[test]
fn every_crash_point_of_the_multi_device_lifecycles_ends_as_without_a_crash() {
    let profiles = [
        (XenProfile::Xen4_17_5, PcibackProfile::AfterCommandFix),
        (XenProfile::Xen4_17_5, PcibackProfile::BeforeCommandFix),
        (XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix),
        (XenProfile::Xen4_20_0, PcibackProfile::AfterCommandFix),
        // The reused domid comes back under the same handle: the unique id must decide.
        (XenProfile::Xen4_21_0, PcibackProfile::AfterCommandFix),
        (XenProfile::Xen4_22_0, PcibackProfile::AfterCommandFix),
    ];
    for (xen, pciback) in profiles {
        for name in SCENARIOS {
            let s = explore(name, xen, pciback);
            eprintln!(
                "{} {} {name}: {} crash points, {} violations",
                xen.name(),
                pciback.name(),
                s.crash_points,
                s.violations.len()
            );
            assert!(
                s.crash_points >= 5,
                "{name}: {} crash points",
                s.crash_points
            );
            assert!(
                s.violations.is_empty(),
                "{} {} {name}: {:#?}",
                xen.name(),
                pciback.name(),
                s.violations
            );
        }
    }
}

/// The README states how many crash points the multi-device lifecycles have; it must say
/// what `ptguard explore` prints on its default profile (Xen 4.11.0, old pciback).
#[test]
fn the_readmes_crash_point_count_is_what_explore_counts() {
    let counts: Vec<u64> = SCENARIOS
        .iter()
        .map(|n| explore(n, XenProfile::Xen4_11_0, PcibackProfile::BeforeCommandFix).crash_points)
        .collect();
    let total: u64 = counts.iter().sum();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let listed = counts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let listed = match listed.rsplit_once(", ") {
        Some((head, last)) => format!("{head} and {last}"),
        None => listed,
    };
    let said = format!("`crates/lab/src/explore_devices.rs`; {total} crash points — {listed},");
    assert!(readme.contains(&said), "README should say: {said}");
}
