//! Doctor's checks on fixture sysfs trees, each with its fix.

use engine::doctor::{diagnose, Severity};
use engine::{DeviceRecord, DeviceState, Step};
use pci::builder::ConfigBuilder;
use pci::config::regs::*;
use pci::fixture::{FixtureDevice, FixtureTree};
use pci::sysfs::SysfsHost;
use pci::Sbdf;
use xen::DomId;

fn sbdf(s: &str) -> Sbdf {
    s.parse().unwrap()
}

fn device(tree: &FixtureTree, s: Sbdf, driver: &str, ctrl: u16, msi_irqs: Vec<u32>) {
    let b = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(3, 0xf000_0000, 0x4000)
        .msix(4, 3, 0, 3, 0x2000);
    let mut cs = b.build();
    let off = cs.parse().unwrap().msix.unwrap().offset;
    cs.write16(
        off + MSIX_FLAGS,
        (cs.read16(off + MSIX_FLAGS).unwrap() & MSIX_FLAGS_QSIZE) | ctrl,
    )
    .unwrap();
    let mut d = FixtureDevice::new(s, cs, b.resources());
    d.driver = Some(driver.into());
    d.msi_irqs = msi_irqs;
    tree.add_device(&d).unwrap();
}

fn record(s: Sbdf, state: DeviceState, owner: Option<u16>, step: Option<Step>) -> DeviceRecord {
    DeviceRecord {
        sbdf: s,
        state,
        owner: owner.map(DomId),
        epoch: 1,
        step,
        reason: Some("test".into()),
        driver: None,
        msix_size: 4,
        table_base: Some(0xf000_0000),
        bindings: vec![],
    }
}

#[test]
fn every_check_finds_its_problem_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FixtureTree::create(dir.path()).unwrap();
    let clean = sbdf("0000:01:00.0");
    let masked = sbdf("0000:02:00.0");
    let stale_pv = sbdf("0000:03:00.0");
    let half = sbdf("0000:04:00.0");
    let dead_owner = sbdf("0000:05:00.0");
    let wrong_driver = sbdf("0000:06:00.0");
    let assignable_masked = sbdf("0000:07:00.0");
    let quarantined = sbdf("0000:08:00.0");
    device(&tree, clean, "pciback", 0, vec![]);
    device(
        &tree,
        masked,
        "igb",
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
        vec![120, 121],
    );
    device(&tree, stale_pv, "pciback", MSIX_FLAGS_ENABLE, vec![130]);
    device(&tree, half, "pciback", 0, vec![]);
    device(&tree, dead_owner, "pciback", MSIX_FLAGS_ENABLE, vec![]);
    device(&tree, wrong_driver, "igb", 0, vec![]);
    device(
        &tree,
        assignable_masked,
        "pciback",
        MSIX_FLAGS_MASKALL,
        vec![],
    );
    device(&tree, quarantined, "pciback", 0, vec![]);
    let ledger = vec![
        record(clean, DeviceState::Assignable, None, None),
        record(stale_pv, DeviceState::Assignable, None, None),
        record(half, DeviceState::TearingDown, Some(3), Some(Step::Release)),
        record(dead_owner, DeviceState::Attached, Some(4), None),
        record(wrong_driver, DeviceState::Assignable, None, None),
        record(assignable_masked, DeviceState::Assignable, None, None),
        record(
            quarantined,
            DeviceState::Quarantined,
            Some(5),
            Some(Step::Release),
        ),
        record(sbdf("0000:0f:00.0"), DeviceState::Assignable, None, None),
    ];
    let host = SysfsHost::new(dir.path());
    let alive = |d: DomId| Some(d == DomId(5));
    let findings = diagnose(&host, &ledger, &alive);
    let find = |s: Sbdf, needle: &str| {
        findings
            .iter()
            .find(|f| f.sbdf == Some(s) && f.problem.contains(needle))
            .unwrap_or_else(|| panic!("{s}: no finding with {needle:?} in {findings:#?}"))
    };
    assert!(find(masked, "Function Mask is set while igb has 2 vectors")
        .fix
        .contains("assignable-add"));
    assert_eq!(find(stale_pv, "msi_irqs/").severity, Severity::Warning);
    assert_eq!(
        find(half, "half done at step release").fix,
        "ptguard watch --once"
    );
    assert_eq!(
        find(dead_owner, "gone or dying").fix,
        "ptguard release-domain 4"
    );
    assert!(find(wrong_driver, "bound to igb")
        .fix
        .contains("assignable-remove 0000:06:00.0"));
    assert!(find(assignable_masked, "refuses to assign")
        .fix
        .contains("assignable-add"));
    assert!(find(quarantined, "quarantined").fix.contains("destroy d5"));
    assert!(find(sbdf("0000:0f:00.0"), "not on the PCI bus").severity == Severity::Error);
    assert!(
        findings.iter().all(|f| f.sbdf != Some(clean)),
        "a clean device has no finding"
    );
    // Nothing was written while diagnosing.
    assert!(host.writes().is_empty());
}
