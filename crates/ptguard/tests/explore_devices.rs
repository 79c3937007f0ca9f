//! Issue 14: `explore` over the lifecycles with several devices or domains — a shared INTx
//! line, a VF whose PF stops decoding, a reused domid — crashing ptguard at every point.

use ptguard::commands::explore_devices::{explore, SCENARIOS};
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
