//! Doctor's checks on fixture sysfs trees, each with its fix.

use engine::doctor::{diagnose, holder_checks, reconcile, xen_view, Severity, CODES};
use engine::sweep::PirqBudget;
use engine::{DeviceRecord, DeviceState, Liveness, Step};
use pci::builder::ConfigBuilder;
use pci::config::regs::*;
use pci::fixture::{FixtureDevice, FixtureTree};
use pci::sysfs::SysfsHost;
use pci::Sbdf;
use std::collections::{BTreeMap, BTreeSet};
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
        owner: owner.map(DomId),
        step,
        reason: Some("test".into()),
        msix_size: 4,
        table_base: Some(0xf000_0000),
        ..DeviceRecord::new(s, state, 1)
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
    let suspended_owner = sbdf("0000:09:00.0");
    device(&tree, clean, "pciback", 0, vec![]);
    device(&tree, suspended_owner, "pciback", MSIX_FLAGS_ENABLE, vec![]);
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
        record(suspended_owner, DeviceState::Attached, Some(6), None),
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
    // d5 runs; d4 is gone; d6 is suspended (it may resume: its device is not orphaned).
    let alive = |r: &DeviceRecord| {
        r.owner.map(|d| match d.0 {
            5 => Liveness::Running,
            6 => Liveness::Suspended,
            _ => Liveness::Gone,
        })
    };
    let findings = diagnose(&host, &ledger, &alive);
    let find = |s: Sbdf, code: &str| {
        findings
            .iter()
            .find(|f| f.sbdf == Some(s) && f.code == code)
            .unwrap_or_else(|| panic!("{s}: no {code} in {findings:#?}"))
    };
    let f = find(masked, "mask-while-enabled");
    assert!(f.problem.contains("igb has 2 vectors"), "{f:?}");
    assert!(f.fix.contains("assignable-add"));
    assert!(f.evidence.iter().any(|e| e.contains("Masked+")), "{f:?}");
    assert_eq!(find(stale_pv, "msi-irqs-left").severity, Severity::Warning);
    let f = find(half, "teardown-half-done");
    assert_eq!(f.fix, "ptguard watch --once");
    assert!(f.problem.contains("step release"));
    assert_eq!(
        find(dead_owner, "owner-gone").fix,
        "ptguard release-domain 4"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f.sbdf == Some(suspended_owner) && f.code == "owner-gone"),
        "a suspended owner may resume: {findings:#?}"
    );
    assert!(find(wrong_driver, "driver-mismatch")
        .fix
        .contains("assignable-remove 0000:06:00.0"));
    assert_eq!(
        find(assignable_masked, "function-mask-forced").fix,
        "ptguard repair 0000:07:00.0"
    );
    assert!(find(quarantined, "quarantined").fix.contains("destroy d5"));
    assert_eq!(
        find(sbdf("0000:0f:00.0"), "not-on-bus").severity,
        Severity::Error
    );
    assert!(
        findings.iter().all(|f| f.sbdf != Some(clean)),
        "a clean device has no finding"
    );
    for f in &findings {
        assert!(!f.why.is_empty() && f.why != "unknown finding", "{f:?}");
    }
    // Nothing was written while diagnosing.
    assert!(host.writes().is_empty());
}

fn report_dmesg(name: &str) -> String {
    let p = format!(
        "{}/tests/fixtures/xen-4.17.5/{name}/report.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&p).unwrap();
    engine::xen_dump::report_sections(&text)
        .into_iter()
        .find(|(c, _)| c == "xl dmesg")
        .map(|(_, b)| b)
        .unwrap()
}

/// Xen's own view, on the dumps real Xen 4.17.5 printed: the guest that holds the device
/// and its three bound vectors is fine while it lives; once it is dying (a zombie) both
/// its ownership and its pirqs are reported.
#[test]
fn xen_view_on_real_dumps() {
    let dmesg = report_dmesg("hvm-guest-3-vectors-bound");
    let q = engine::xen_dump::pci_devices(&dmesg);
    let i = engine::xen_dump::irq_bindings(&dmesg);
    let nic = sbdf("0000:00:05.0");
    let alive: BTreeMap<DomId, Liveness> =
        [(DomId(0), Liveness::Running), (DomId(4), Liveness::Running)].into();
    let f = xen_view(&q, &i, &alive, &[(nic, 5)], &Default::default());
    assert!(f.is_empty(), "{f:#?}");
    let dying: BTreeMap<DomId, Liveness> =
        [(DomId(0), Liveness::Running), (DomId(4), Liveness::Dying)].into();
    let f = xen_view(&q, &i, &dying, &[(nic, 5)], &Default::default());
    let codes: Vec<&str> = f.iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        [
            "zombie-owner",
            "leftover-pirqs",
            "leftover-pirqs",
            "leftover-pirqs"
        ],
        "{f:#?}"
    );
    assert!(f[1].fix.contains("xl destroy 4"), "{:?}", f[1]);
    assert!(
        f[1].evidence.iter().any(|e| e.contains("pirq 5")),
        "{:?}",
        f[1]
    );
    // A 64-vector device against the default budget of 32; enough when raised.
    let f = xen_view(&q, &i, &alive, &[(nic, 64)], &Default::default());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].code, "pirq-budget");
    assert!(f[0].fix.contains("extra_guest_irqs=64"));
    let raised = PirqBudget {
        extra_guest_irqs: Some(64),
        xen: None,
    };
    assert!(xen_view(&q, &i, &alive, &[(nic, 64)], &raised).is_empty());
    // The advice states the bound of the running release: none before 4.19, 32768
    // pirqs in all from 4.19 on (a device needing more cannot be helped by the option).
    let on = |major, minor| PirqBudget {
        extra_guest_irqs: None,
        xen: Some(xen::XenVersion { major, minor }),
    };
    let fix = |b: &PirqBudget, n| xen_view(&q, &i, &alive, &[(nic, n)], b)[0].fix.clone();
    assert!(
        fix(&on(4, 17), 64).contains("Xen 4.17 takes any value"),
        "{}",
        fix(&on(4, 17), 64)
    );
    let f420 = fix(&on(4, 20), 64);
    assert!(
        f420.contains("extra_guest_irqs=64") && f420.contains("32768"),
        "{f420}"
    );
    let f_over = fix(&on(4, 19), 2048);
    assert!(
        f_over.contains("extra_guest_irqs=2048"),
        "2048 fits under the bound: {f_over}"
    );
    assert_eq!(PirqBudget::default().cap(), None);
    assert_eq!(on(4, 18).cap(), None);
    assert_eq!(on(4, 19).cap(), Some(32768));
    assert!(on(4, 22).advice(40_000).starts_with("enable fewer vectors"));
    assert_eq!(
        engine::doctor::extra_guest_irqs("loglvl=all extra_guest_irqs=96,512"),
        Some(96)
    );
    assert_eq!(engine::doctor::extra_guest_irqs("loglvl=all"), None);
}

/// Every code in the table is produced by some check in this file or in the CLI's tests
/// (`ledger-corrupt`, `view-missing` and preflight's come from the command, tested in
/// cli_sim.rs).
#[test]
fn every_finding_code_has_a_check() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FixtureTree::create(dir.path()).unwrap();
    let mut seen = BTreeSet::new();
    // The sysfs/ledger checks.
    let (a, b, c, d, e) = (
        sbdf("0000:01:00.0"),
        sbdf("0000:02:00.0"),
        sbdf("0000:03:00.0"),
        sbdf("0000:04:00.0"),
        sbdf("0000:05:00.0"),
    );
    device(&tree, a, "pciback", MSIX_FLAGS_MASKALL, vec![]);
    device(
        &tree,
        b,
        "igb",
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
        vec![1],
    );
    device(&tree, c, "pciback", 0, vec![7]);
    device(&tree, d, "pciback", 0, vec![]);
    device(&tree, e, "pciback", 0, vec![]);
    let mut unconfirmed = record(d, DeviceState::Attached, Some(9), None);
    unconfirmed.bindings.push(
        engine::Binding::decode(
            engine::BindingKey::Msix(0),
            "state=intent pirq=- gsi=0 gvec=0x40 gflags=0x0 gtable=0x0",
        )
        .unwrap(),
    );
    let ledger = vec![
        record(a, DeviceState::Assignable, None, None),
        record(c, DeviceState::Quarantined, Some(3), Some(Step::Release)),
        unconfirmed,
        record(e, DeviceState::TearingDown, Some(3), Some(Step::Reset)),
        record(sbdf("0000:0e:00.0"), DeviceState::Attached, Some(3), None),
    ];
    let host = SysfsHost::new(dir.path());
    let gone = |_: &DeviceRecord| Some(Liveness::Gone);
    seen.extend(diagnose(&host, &ledger, &gone).iter().map(|f| f.code));
    let wrong = vec![record(b, DeviceState::Assignable, None, None)];
    seen.extend(diagnose(&host, &wrong, &gone).iter().map(|f| f.code));
    // The three views (0000:06:00.0: in pciback, free in Xen, unknown to the ledger).
    device(&tree, sbdf("0000:06:00.0"), "pciback", 0, vec![]);
    let held = |s: Sbdf| Some(s == a || s == c);
    let views = vec![
        record(a, DeviceState::Assignable, None, None),
        record(d, DeviceState::Attached, Some(9), None),
        record(e, DeviceState::Attached, Some(3), None),
    ];
    let backends = [(DomId(4), c), (DomId(5), e)];
    seen.extend(
        reconcile(&host, &views, &held, &backends)
            .iter()
            .map(|f| f.code),
    );
    // Xen's view.
    let dmesg = report_dmesg("hvm-guest-3-vectors-bound");
    let q = engine::xen_dump::pci_devices(&dmesg);
    let i = engine::xen_dump::irq_bindings(&dmesg);
    seen.extend(
        xen_view(&q, &i, &BTreeMap::new(), &[(a, 2048)], &Default::default())
            .iter()
            .map(|f| f.code),
    );
    seen.extend(
        engine::doctor::dying_domains(&[(DomId(7), Liveness::Dying)].into())
            .iter()
            .map(|f| f.code),
    );
    // A device with no reset.
    let norst = sbdf("0000:09:00.0");
    let b2 = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(3, 0xf000_0000, 0x4000)
        .msix(4, 3, 0, 3, 0x2000);
    let mut dv = FixtureDevice::new(norst, b2.build(), b2.resources());
    dv.driver = Some("pciback".into());
    dv.reset_methods = Some(vec![]);
    tree.add_device(&dv).unwrap();
    seen.extend(diagnose(&host, &[], &gone).iter().map(|f| f.code));
    // Decoding off with vectors set up (a PV guest's, via pciback); a bus-reset-only
    // device sharing its bus.
    let off = sbdf("0000:0a:00.0");
    let b4 = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(3, 0xf000_0000, 0x4000)
        .msix(4, 3, 0, 3, 0x2000);
    let mut cs = b4.build();
    cs.write16(COMMAND, 0).unwrap();
    let mut dv = FixtureDevice::new(off, cs, b4.resources());
    dv.driver = Some("pciback".into());
    dv.msi_irqs = vec![5, 6];
    tree.add_device(&dv).unwrap();
    let busy = sbdf("0000:0b:00.0");
    let b3 = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(3, 0xf000_0000, 0x4000)
        .msix(4, 3, 0, 3, 0x2000);
    let mut dv = FixtureDevice::new(busy, b3.build(), b3.resources());
    dv.driver = Some("pciback".into());
    dv.reset_methods = Some(vec!["bus".into()]);
    tree.add_device(&dv).unwrap();
    device(&tree, sbdf("0000:0b:00.1"), "igb", 0, vec![]);
    // Decoding off under an HVM guest whose device model enabled MSI-X: no msi_irqs in
    // dom0, only Enable in the hardware's Message Control (issue 23: libxl's HVM unplug
    // then times out; the fix names the pre-unplug hook).
    let hvm_off = sbdf("0000:0c:00.0");
    let b5 = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(3, 0xf000_0000, 0x4000)
        .msix(4, 3, 0, 3, 0x2000);
    let mut cs = b5.build();
    cs.write16(COMMAND, 0).unwrap();
    let cap = cs.parse().unwrap().msix.unwrap();
    cs.write16(cap.offset + MSIX_FLAGS, MSIX_FLAGS_ENABLE | 3)
        .unwrap();
    let mut dv = FixtureDevice::new(hvm_off, cs, b5.resources());
    dv.driver = Some("pciback".into());
    tree.add_device(&dv).unwrap();
    let f = diagnose(&host, &[], &gone);
    let get = |s: Sbdf, c: &str| f.iter().find(|f| f.sbdf == Some(s) && f.code == c).cloned();
    assert!(get(off, "decoding-off").is_some(), "{f:#?}");
    let h = get(hvm_off, "decoding-off").unwrap_or_else(|| panic!("{f:#?}"));
    assert!(
        h.fix.contains("ptguard hook pre-unplug 0000:0c:00.0"),
        "{h:?}"
    );
    let b = get(busy, "bus-reset-blocked").unwrap_or_else(|| panic!("{f:#?}"));
    assert!(b.problem.contains("1 other devices share bus 0b"), "{b:?}");
    seen.extend(f.iter().map(|f| f.code));
    // Who Xen says holds a device against the ledger and a stale backend node.
    let held = sbdf("0000:0c:00.0");
    let q = engine::xen_dump::pci_devices("(XEN) 0000:0c:00.0 - d7 - node -1 \n");
    let wrong_owner = vec![record(held, DeviceState::Attached, Some(3), None)];
    let f = holder_checks(&q, &wrong_owner, &[(DomId(3), held), (DomId(7), held)]);
    let codes: Vec<_> = f.iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        ["ledger-owner-not-holder", "backend-not-holder"],
        "{f:#?}"
    );
    assert!(f
        .iter()
        .all(|f| f.fix.contains("ptguard adopt") || f.fix.contains("xl pci-detach 3")));
    assert!(holder_checks(
        &q,
        &[record(held, DeviceState::Attached, Some(7), None)],
        &[(DomId(7), held)]
    )
    .is_empty());
    // A guest's line is not Xen's.
    assert!(engine::xen_dump::pci_devices("(d5) (XEN) 0000:0c:00.0 - d3 - node -1 \n").is_empty());
    seen.extend(codes);
    // The toolstacks' logs.
    for name in ["xl-web1.log", "qemu-dm-web1.log", "xl-dmesg.txt"] {
        let (p, text) = log_fixture(name);
        seen.extend(
            engine::doctor::logs::log_findings(&p, &text)
                .iter()
                .map(|f| f.code),
        );
    }
    // An announced unplug: pending within libxl's wait, a finding after it.
    let pending = |waited| engine::companion::PendingUnplug {
        sbdf: held,
        owner: DomId(7),
        waited,
        stalled: waited >= engine::companion::UNPLUG_STALL_SECS,
    };
    assert!(engine::doctor::unplug_findings(&[pending(3)]).is_empty());
    let u = engine::doctor::unplug_findings(&[pending(40)]);
    assert_eq!(u.len(), 1);
    assert!(u[0].fix.contains("xl pci-detach -f 7"), "{:?}", u[0]);
    seen.extend(u.iter().map(|f| f.code));
    let all: BTreeSet<&str> = CODES.iter().map(|(c, _, _)| *c).collect();
    let from_cli: BTreeSet<&str> = [
        "ledger-corrupt",
        "view-missing",
        "not-assignable",
        "held-by-guest",
        "no-passthrough",
        "pvh-guest",
        "pv-memory-map",
        "guest-missing",
    ]
    .into();
    let missing: Vec<&&str> = all
        .difference(&seen)
        .filter(|c| !from_cli.contains(*c))
        .collect();
    assert!(missing.is_empty(), "codes no check produced: {missing:?}");
}

/// Real Xen 4.17.5 after a running PV guest was destroyed behind the toolstack's back
/// (`xc_domain_destroy`): the device is back in dom_io but its three vectors stay mapped.
#[test]
fn xen_view_names_vectors_a_zombie_left_on_a_quarantined_device() {
    let dmesg = report_dmesg("zombie-holds-the-device");
    let q = engine::xen_dump::pci_devices(&dmesg);
    let i = engine::xen_dump::irq_bindings(&dmesg);
    let f = xen_view(&q, &i, &BTreeMap::new(), &[], &Default::default());
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].code, "leftover-pirqs");
    assert_eq!(f[0].sbdf, Some(sbdf("0000:00:05.0")));
    assert!(f[0].problem.contains("25 26 27"), "{:?}", f[0]);
    let dying: BTreeMap<DomId, Liveness> = [
        (DomId(0), Liveness::Running),
        (DomId(4), Liveness::Dying),
        (DomId(5), Liveness::Running),
    ]
    .into();
    let d = engine::doctor::dying_domains(&dying);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].code, d[0].problem.as_str()),
        ("dying-domain", "d4 is dying and has not finished")
    );
}

fn log_fixture(name: &str) -> (String, String) {
    let p = format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&p).unwrap();
    (p, text)
}

/// Issue 27 (2): each known failure line of the toolstacks' logs is a named finding with
/// its cause and fix, naming the device and the domain; unknown lines are ignored.
#[test]
fn the_toolstacks_logs_are_read_as_findings() {
    use engine::doctor::logs::log_findings;
    let nic = sbdf("0000:00:05.0");
    let (p, xl) = log_fixture("xl-web1.log");
    let f = log_findings(&p, &xl);
    let codes: Vec<_> = f.iter().map(|f| (f.code, f.sbdf)).collect();
    assert_eq!(
        codes,
        [
            ("held-by-guest", Some(nic)),
            ("toolstack-pci-add-failed", Some(nic)),
            ("no-reset-method", Some(nic)),
            ("not-assignable", Some(sbdf("0000:03:00.0"))),
            ("toolstack-map-failed", None),
        ],
        "{f:#?}"
    );
    assert!(
        f[1].problem.contains("d8") && f[1].problem.contains("rc -3"),
        "{:?}",
        f[1]
    );
    assert!(f[1].evidence[0].contains("xl-web1.log:3:"), "{:?}", f[1]);
    assert!(
        !f[2].problem.contains("d0"),
        "libxl's reset names the segment, not a domain"
    );
    assert!(
        f[3].fix.contains("xl pci-assignable-add 0000:03:00.0"),
        "{:?}",
        f[3]
    );

    let (p, qemu) = log_fixture("qemu-dm-web1.log");
    let f = log_findings(&p, &qemu);
    let codes: Vec<_> = f.iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        ["dm-map-failed", "dm-bind-failed", "dm-unmap-failed"],
        "{f:#?}"
    );
    assert!(
        f.iter().all(|f| f.problem.contains("domain web1")),
        "{f:#?}"
    );
    assert!(
        f[2].problem.contains("pirq 53") && f[2].fix.contains("ptguard sweep"),
        "{:?}",
        f[2]
    );

    let (p, dmesg) = log_fixture("xl-dmesg.txt");
    let f = log_findings(&p, &dmesg);
    let codes: Vec<_> = f.iter().map(|f| (f.code, f.sbdf)).collect();
    // The guest's line that imitates Xen's is not Xen's.
    assert_eq!(
        codes,
        [
            ("mask-forced-logged", Some(nic)),
            ("assign-refused", Some(nic))
        ],
        "{f:#?}"
    );
    assert!(
        f[0].fix.contains("ptguard repair 0000:00:05.0"),
        "{:?}",
        f[0]
    );
    assert!(
        f[1].problem.contains("d8") && f[1].problem.contains("-EBUSY"),
        "{:?}",
        f[1]
    );
    // Every log finding's code is a known one.
    for f in log_findings(&p, &format!("{xl}{qemu}{dmesg}")) {
        assert!(CODES.iter().any(|(c, _, _)| *c == f.code), "{}", f.code);
    }
}

/// On a live host Xen's console ring outlives what it describes: its lines are evidence for
/// a finding the present state shows, and history otherwise.
#[test]
fn xens_console_lines_are_evidence_for_the_present_not_findings_of_their_own() {
    use engine::doctor::logs::{log_findings, merge_evidence};
    use engine::doctor::Finding;
    let nic = sbdf("0000:00:05.0");
    let (p, dmesg) = log_fixture("xl-dmesg.txt");
    let present = Finding::new(
        "function-mask-forced",
        Some(nic),
        "MSI-X Function Mask is set".into(),
        vec!["config space: MSI-X Enable- Count=5 Masked+".into()],
        "ptguard repair 0000:00:05.0".into(),
    );
    let mut now = vec![present];
    merge_evidence(&mut now, log_findings(&p, &dmesg));
    assert_eq!(now.len(), 1, "{now:#?}");
    assert!(
        now[0]
            .evidence
            .iter()
            .any(|e| e.contains("cannot mask IRQ 28")),
        "{now:#?}"
    );
    assert!(now[0]
        .evidence
        .iter()
        .any(|e| e.contains("assign (0000:00:05.0) failed (-16)")));
    // Repaired since: the same ring says nothing about the device now.
    let mut repaired: Vec<Finding> = Vec::new();
    merge_evidence(&mut repaired, log_findings(&p, &dmesg));
    assert!(repaired.is_empty());
}
