//! The README's walk-through through the real binary on a simulated host kept in a
//! directory: attach, guest reboot with a crashed device model, the device works again.
//! Also: commands that need Xen fail fast without it, and dry runs change nothing.

use std::path::Path;
use std::process::Command;

mod common;
use common::{ok, ptguard};

#[test]
fn reboot_with_a_crashed_device_model_then_the_device_works_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.11.0", "--pciback", "old"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    let dom: String = ok(&d, &["sim", "create", "guest1"]).trim().to_string();
    assert_eq!(dom, "1");
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    let start = ok(
        &d,
        &["sim", "start", "1", "0000:03:00.0", "--dm", "crashes"],
    );
    assert!(start.contains("3 of 3"), "{start}");
    let list = ok(&d, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["state"], "attached");
    assert_eq!(
        v[0]["bindings"].as_array().unwrap().len(),
        4,
        "INTx + 3 MSI-X"
    );
    let reboot = ok(&d, &["sim", "reboot", "1"]);
    assert!(reboot.trim().ends_with('2'), "{reboot}");
    // The daemon's job on @releaseDomain.
    let w = ok(&d, &["watch", "--once"]);
    assert!(w.contains("clean and assignable"), "{w}");
    let state: serde_json::Value =
        serde_json::from_str(&ok(&d, &["sim", "state", "0000:03:00.0", "--json"])).unwrap();
    assert_eq!(state["host_maskall"], false);
    assert_eq!(state["used_entries"], 1);
    ok(&d, &["attach", "0000:03:00.0", "2"]);
    let again = ok(&d, &["sim", "start", "2", "0000:03:00.0"]);
    assert!(
        again.contains("3 of 3"),
        "the rebooted guest's interrupts arrive: {again}"
    );
    let lspci: serde_json::Value =
        serde_json::from_str(&ok(&d, &["lspci", "--json", "0000:03:00.0"])).unwrap();
    assert_eq!(lspci[0]["driver"], "pciback");
    assert_eq!(
        lspci[0]["config"]["msix"]["enabled"], true,
        "the guest's MSI-X is on"
    );
    assert_eq!(lspci[0]["config"]["msix"]["function_mask"], false);
    let doctor = ptguard(&d, &["doctor"]);
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
}

#[test]
fn dry_run_prints_the_teardown_sequence_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "g"]);
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    ok(
        &d,
        &["sim", "start", "1", "0000:03:00.0", "--dm", "crashes"],
    );
    let before = std::fs::read_to_string(d.join("host.json")).unwrap();
    let plan = ok(&d, &["--dry-run", "detach", "0000:03:00.0"]);
    let lines: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing from:\n{plan}"))
    };
    // docs/design.md, "The cure": revoke, force-unbind (unbind then unmap), release, deassign, reset,
    // prepare — in that order.
    let revoke = pos("iomem_permission");
    let unbind = pos("unbind_pt_irq d1 pirq 79");
    let unmap = pos("unmap_pirq d1 pirq 79");
    let release = pos("release_msix");
    let deassign = pos("deassign_device");
    let reset = pos("/reset <- 1");
    let prepare = pos("prepare_msix");
    assert!(
        revoke < unbind && unbind < unmap && unmap < release,
        "{plan}"
    );
    assert!(
        release < deassign && deassign < reset && reset < prepare,
        "{plan}"
    );
    assert_eq!(
        before,
        std::fs::read_to_string(d.join("host.json")).unwrap(),
        "nothing changed"
    );
    let list = ok(&d, &["list", "--json"]);
    assert!(list.contains("\"attached\""));
    // The guest's MSI-X is still enabled in the device (nothing was written), yet the plan
    // verifies what it would have written: it ends clean, not "verification failed".
    assert!(
        plan.contains("would end: 0000:03:00.0: clean and assignable"),
        "{plan}"
    );
}

#[test]
fn bad_input_is_refused_with_the_text_and_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    ok(&d, &["sim", "create", "g"]);
    // A malformed address is a command-line error (exit 2), like any other.
    for (args, needle) in [
        (
            vec!["attach", "0000:03:00.8", "1"],
            "function number must be 0..7",
        ),
        (vec!["show", "1:2:3"], "invalid PCI address \"1:2:3\""),
        (vec!["sim", "init", "--entries", "0"], "--entries"),
        (vec!["sim", "init", "--entries", "65535"], "--entries"),
    ] {
        let o = ptguard(&d, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for (args, needle) in [
        (
            vec!["attach", "0000:03:00.0", "1"],
            "not managed by ptguard",
        ),
        (vec!["assignable-add", "0000:09:00.0"], "no such PCI device"),
        (vec!["show", "0000:09:00.0"], "no such PCI device"),
        (vec!["sim", "reboot", "0"], "d0 is not a guest"),
        (vec!["attach", "0000:03:00.0", "0"], "protected domain"),
    ] {
        let o = ptguard(&d, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    let o = ptguard(&d, &["attach", "0000:03:00.0", "42"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("d42: no such domain"));
    let o = ptguard(&d, &["attach"]);
    assert_eq!(o.status.code(), Some(2), "usage error");
    let missing = tmp.path().join("nothing-here");
    let o = ptguard(&missing, &["list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sim init"));
}

#[test]
fn without_xen_real_host_commands_fail_fast_and_write_nothing() {
    if Path::new("/dev/xen/privcmd").exists() {
        eprintln!("SKIPPED: this machine runs on Xen");
        return;
    }
    for args in [
        vec!["attach", "0000:00:03.0", "1"],
        vec!["assignable-add", "0000:00:03.0"],
        vec!["detach", "0000:00:03.0"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("/dev/xen/privcmd"), "{args:?}: {err}");
    }
    // The device is still with its driver: nothing was written.
    let link = std::fs::read_link("/sys/bus/pci/devices/0000:00:03.0/driver");
    if let Ok(l) = link {
        assert!(!l.to_string_lossy().ends_with("pciback"));
    }
}

#[test]
fn concurrent_commands_on_one_simulated_host_take_turns() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    // Eight domain creations at once: none may be lost to a concurrent save.
    let host = format!("sim:{}", d.display());
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ptguard"))
                .args(["--host", &host, "sim", "create", &format!("g{i}")])
                .output()
        })
        .collect();
    let mut domids: Vec<u16> = children
        .into_iter()
        .map(|o| {
            String::from_utf8_lossy(&o.unwrap().stdout)
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    domids.sort_unstable();
    assert_eq!(domids, (1..=8).collect::<Vec<u16>>());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("host.json")).unwrap()).unwrap();
    let creates = state["sim"]["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["op"] == "create_domain")
        .count();
    assert_eq!(creates, 8, "every creation was saved");
    // Two attaches of one device to different domains race: exactly one wins.
    let spawn = |dom: &str| {
        Command::new(env!("CARGO_BIN_EXE_ptguard"))
            .args(["--host", &host, "attach", "0000:03:00.0", dom])
            .env("PTGUARD_LOG", "error")
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("1"), spawn("2"));
    let (ra, rb) = (a.wait().unwrap().success(), b.wait().unwrap().success());
    assert!(ra ^ rb, "exactly one attach succeeds ({ra}, {rb})");
    let v: serde_json::Value = serde_json::from_str(&ok(&d, &["list", "--json"])).unwrap();
    assert_eq!(v[0]["owner"], if ra { 1 } else { 2 });
}

#[test]
fn a_simulated_host_directory_is_locked_for_the_whole_command() {
    let tmp = tempfile::tempdir().unwrap();
    let held = daemon::host::lock_dir(tmp.path()).unwrap();
    let dir = tmp.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let l = daemon::host::lock_dir(&dir);
        tx.send(l.is_ok()).unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "the second command waits while the first holds the lock"
    );
    drop(held);
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(true));
    waiter.join().unwrap();
}

/// Issue 11 (10): `--dry-run sim init` wrote files, and two `sim init`s of one directory
/// both succeeded.
#[test]
fn sim_init_dry_run_writes_nothing_and_only_one_init_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    let plan = ok(&d, &["--dry-run", "sim", "init", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["created"], false);
    assert!(!d.exists(), "a dry run created {}", d.display());
    let host = format!("sim:{}", d.display());
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ptguard"))
                .args(["--host", &host, "sim", "init"])
                .spawn()
                .unwrap()
        })
        .collect();
    let wins = children
        .into_iter()
        .filter_map(|mut c| c.wait().ok())
        .filter(|s| s.success())
        .count();
    assert_eq!(wins, 1, "exactly one sim init creates the host");
}

/// Issue 11 (10): `--trace` printed nothing when the command failed.
#[test]
fn trace_is_printed_when_the_command_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "--no-passthrough", "plain"]);
    let o = ptguard(&d, &["--trace", "attach", "0000:03:00.0", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no IOMMU context"), "{err}");
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("trace of the failed command"), "{out}");
    assert!(
        out.contains("XEN_DOMCTL_assign_device d1 0000:03:00.0 flags 1 -> -EOPNOTSUPP"),
        "{out}"
    );
    // Every Xenstore request is listed, reads too (issue 26): the attach read the head.
    assert!(
        out.contains("xenstore  READ /ptguard/device/0000-03-00-0"),
        "{out}"
    );
}

fn edit_xenstore(dir: &Path, f: impl FnOnce(&mut xenstore::XsClient)) {
    let spec = daemon::host::HostSpec::Sim(dir.to_path_buf());
    let mut ctx = daemon::host::HostCtx::open(&spec, false).unwrap();
    f(&mut ctx.xs);
    ctx.save().unwrap();
}

fn doctor(dir: &Path) -> (i32, Vec<serde_json::Value>) {
    let o = ptguard(dir, &["doctor", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    (o.status.code().unwrap_or(-1), v)
}

/// Issue 11 (6): removing a corrupt ledger entry, as ptguard's message suggested, made a
/// device with 3 live vectors invisible to list, doctor and detach. Doctor now reconciles
/// the ledger with Xen and the toolstack's backend nodes, and `adopt` takes it back.
#[test]
fn doctor_finds_a_device_the_ledger_lost_and_adopt_recovers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17", "--pciback", "new"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "g"]);
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    let start = ok(&d, &["sim", "start", "1", "0000:03:00.0"]);
    assert!(start.contains("3 of 3"), "{start}");
    let entry = "/ptguard/device/0000-03-00-0";
    edit_xenstore(&d, |xs| {
        let head = xs.read_string(xenstore::TxId::NONE, entry).unwrap();
        let garbled = head.replacen("state=attached", "state=attachd", 1);
        assert_ne!(garbled, head);
        xs.write(xenstore::TxId::NONE, entry, garbled.as_bytes())
            .unwrap()
    });
    let (code, findings) = doctor(&d);
    assert_eq!(code, 1);
    assert!(
        findings
            .iter()
            .any(|f| f["sbdf"] == "0000:03:00.0"
                && f["problem"].as_str().unwrap().contains("corrupt")),
        "{findings:?}"
    );
    edit_xenstore(&d, |xs| xs.rm(xenstore::TxId::NONE, entry).unwrap());
    assert!(!ok(&d, &["list"]).contains("0000:03:00.0"));
    let (code, findings) = doctor(&d);
    assert_eq!(code, 1, "{findings:?}");
    let lost = findings
        .iter()
        .find(|f| f["sbdf"] == "0000:03:00.0" && f["severity"] == "error")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert!(
        lost["problem"]
            .as_str()
            .unwrap()
            .contains("ledger does not know it"),
        "{lost}"
    );
    assert!(
        lost["fix"]
            .as_str()
            .unwrap()
            .contains("ptguard adopt 0000:03:00.0 1"),
        "{lost}"
    );
    ok(&d, &["adopt", "0000:03:00.0", "1"]);
    // Its 3 vectors are unknown: the hot-unplug quarantines, it never reaches a guest.
    let o = ptguard(&d, &["detach", "0000:03:00.0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("QUARANTINED"));
    ok(&d, &["sim", "reboot", "1"]);
    let w = ok(&d, &["watch", "--once", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&w).unwrap();
    assert_eq!(v["finished"][0]["outcome"], "assignable", "{w}");
    let (code, findings) = doctor(&d);
    assert_eq!(code, 0, "{findings:?}");
}

/// Issue 11 (7, 9): a simulated host's `watch` served the real /run/ptguard socket, a
/// second one stole it, every other command on the directory waited 10 s and failed, and
/// the idle daemon rewrote the state twice a second.
#[test]
fn a_simulated_hosts_daemon_shares_the_directory_and_its_socket_is_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    let host = format!("sim:{}", d.display());
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["--host", &host, "watch"])
        .env("PTGUARD_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = d.join("broker.sock");
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed().as_secs() < 20,
            "watch opened no socket in {}",
            d.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Idle: the state file is left alone.
    let state = d.join("host.json");
    let before = std::fs::metadata(&state).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        before
    );
    // Other commands run meanwhile, and the daemon sees what they did.
    let t = std::time::Instant::now();
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "g"]);
    assert!(t.elapsed().as_secs() < 5, "commands waited for the daemon");
    // A second daemon is refused, naming the first; the first keeps its socket.
    let o = ptguard(&d, &["watch"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("another instance (pid {},", daemon.id())),
        "{err}"
    );
    assert!(sock.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(!sock.exists(), "the daemon removes its own socket");
}

fn report_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures/xen-4.17.5")
        .join(name)
        .join("report.txt")
}

/// Issue 16: doctor reads what users paste. On the report captured from real Xen 4.17.5
/// right after the seed's failure it names the forced mask and the fix; a report with
/// sections missing says what that leaves unknown; garbage is refused.
#[test]
fn doctor_from_a_report_of_real_xen() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = ptguard(
        d,
        &[
            "doctor",
            "--json",
            "--from-report",
            report_fixture("seed-function-mask-forced")
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let f: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let forced = f
        .iter()
        .find(|f| f["code"] == "function-mask-forced")
        .unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(forced["sbdf"], "0000:00:05.0");
    assert_eq!(forced["fix"], "ptguard repair 0000:00:05.0");
    assert!(forced["why"].as_str().unwrap().contains("-EBUSY"));
    // The clean boot's report: nothing wrong.
    let o = ptguard(
        d,
        &[
            "doctor",
            "--from-report",
            report_fixture("clean-boot").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Only lspci: what is unknown is said, as info.
    let only = d.join("only-lspci.txt");
    std::fs::write(&only, "### lspci -vvv\n00:05.0 Ethernet controller\n").unwrap();
    let o = ptguard(
        d,
        &["doctor", "--json", "--from-report", only.to_str().unwrap()],
    );
    let f: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        f.iter()
            .all(|f| f["code"] == "view-missing" && f["severity"] == "info"),
        "{f:#?}"
    );
    assert!(f
        .iter()
        .any(|f| f["problem"].as_str().unwrap().contains("zombie owners")));
    let junk = d.join("junk.txt");
    std::fs::write(&junk, [0xffu8, 0, 1, 2, b'\n']).unwrap();
    let o = ptguard(d, &["doctor", "--from-report", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a report"));
}

/// The seed's failure on the simulated host, made behind ptguard's back; doctor finds it
/// (live, through Xen's dumps and config space), Prometheus sees it, `repair` cures it,
/// and a report taken by `ptguard report` says the same as the live doctor.
#[test]
fn doctor_finds_a_forced_mask_and_repair_cures_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17", "--pciback", "new"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    {
        let spec = daemon::host::HostSpec::Sim(d.clone());
        let mut ctx = daemon::host::HostCtx::open(&spec, false).unwrap();
        let host = ctx.sim.as_ref().map(|(h, _, _)| h.clone()).unwrap();
        use pci::PciHost;
        use xen::Hypervisor;
        let dev: pci::Sbdf = "0000:03:00.0".parse().unwrap();
        let a = host.create_domain("a", true);
        host.unpause(a).unwrap();
        host.assign_device(a, dev, 0).unwrap();
        sim::dm::bind_directly(&host, a, dev, 1).unwrap();
        host.write_config(dev, 4, &0u16.to_le_bytes()).unwrap();
        host.shutdown(a).unwrap();
        host.destroy_domain(a).unwrap();
        ctx.save().unwrap();
    }
    let (code, f) = doctor(&d);
    assert_eq!(code, 1, "{f:#?}");
    assert!(
        f.iter()
            .any(|f| f["code"] == "function-mask-forced" && f["sbdf"] == "0000:03:00.0"),
        "{f:#?}"
    );
    let prom = ok(&d, &["doctor", "--prometheus"]);
    assert!(
        prom.contains(r#"ptguard_doctor_finding{code="function-mask-forced",severity="error",sbdf="0000:03:00.0"} 1"#),
        "{prom}"
    );
    assert!(prom.contains("ptguard_doctor_errors 1"), "{prom}");
    let report = tmp.path().join("report.txt");
    ok(&d, &["report", "-o", report.to_str().unwrap()]);
    let o = ptguard(
        &d,
        &[
            "doctor",
            "--json",
            "--from-report",
            report.to_str().unwrap(),
        ],
    );
    let from_report: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        from_report
            .iter()
            .any(|f| f["code"] == "function-mask-forced"),
        "{from_report:#?}"
    );
    let r = ok(&d, &["repair", "0000:03:00.0"]);
    assert!(r.contains("repaired"), "{r}");
    let (code, f) = doctor(&d);
    assert_eq!(code, 0, "{f:#?}");
}

/// A corrupt ledger entry is a finding with its own code and its device.
#[test]
fn doctor_reports_a_corrupt_entry_by_code() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    edit_xenstore(&d, |xs| {
        let entry = "/ptguard/device/0000-03-00-0";
        let head = xs.read_string(xenstore::TxId::NONE, entry).unwrap();
        let garbled = head.replacen("epoch=0", "epoch=many", 1);
        assert_ne!(garbled, head);
        xs.write(xenstore::TxId::NONE, entry, garbled.as_bytes())
            .unwrap()
    });
    let (code, f) = doctor(&d);
    assert_eq!(code, 1);
    let c = f.iter().find(|f| f["code"] == "ledger-corrupt").unwrap();
    assert_eq!(c["sbdf"], "0000:03:00.0");
}

/// Issue 16 (3): preflight says, before a start, whether the device will work for that
/// guest — and why not.
#[test]
fn preflight_says_whether_a_device_will_work_for_a_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17", "--pciback", "new"]);
    ok(&d, &["sim", "create", "g"]);
    let codes = |args: &[&str]| -> (i32, Vec<String>) {
        let mut a = vec!["preflight", "--json"];
        a.extend_from_slice(args);
        let o = ptguard(&d, &a);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        (
            o.status.code().unwrap_or(-1),
            v.iter()
                .map(|f| f["code"].as_str().unwrap().to_string())
                .collect(),
        )
    };
    // Not in pciback yet; no such guest 7.
    let (rc, c) = codes(&["0000:03:00.0", "7"]);
    assert_eq!(rc, 1);
    assert!(
        c.contains(&"not-assignable".into()) && c.contains(&"guest-missing".into()),
        "{c:?}"
    );
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    let (rc, c) = codes(&["0000:03:00.0", "1"]);
    assert_eq!((rc, c.len()), (0, 0), "{c:?}");
    // xl configs: PVH, and one without passthrough or pci.
    let cfg = tmp.path().join("g.cfg");
    std::fs::write(&cfg, "name = \"g\"\ntype = \"pvh\"\nmemory = 256\n").unwrap();
    let (rc, c) = codes(&["0000:03:00.0", "--xl-config", cfg.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert_eq!(c, ["pvh-guest", "no-passthrough"]);
    std::fs::write(&cfg, "type = \"hvm\"\npassthrough = \"enabled\" # yes\n").unwrap();
    let (rc, c) = codes(&["0000:03:00.0", "--xl-config", cfg.to_str().unwrap()]);
    assert_eq!((rc, c.len()), (0, 0), "{c:?}");
    // Given to g: a second guest cannot have it.
    ok(&d, &["sim", "create", "h"]);
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    let (rc, c) = codes(&["0000:03:00.0", "2"]);
    assert_eq!(rc, 1);
    assert!(c.contains(&"held-by-guest".into()), "{c:?}");
}

/// A PV guest built without the host's memory map (xl without `pci=[...]` or
/// `e820_host = 1`): a Linux 6.5+ guest sets up no swiotlb-xen, and its devices' DMA
/// misses the IOMMU (seen on real Xen 4.20.4 with Linux 6.12). preflight says so from the
/// config and from the live domain, and attach refuses it with nothing changed; the same
/// guest built with `e820_host` takes the device.
#[test]
fn a_pv_guest_without_the_hosts_memory_map_is_refused_before_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    let nic = "0000:03:00.0";
    ok(&d, &["sim", "init", "--xen", "4.20.0", "--pciback", "new"]);
    ok(&d, &["assignable-add", nic]);
    let cfg = tmp.path().join("pv.cfg");
    let codes = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["preflight", "--json", nic];
        a.extend_from_slice(args);
        let o = ptguard(&d, &a);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        v.iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    };
    for (text, expect) in [
        (
            "type = \"pv\"\npassthrough = \"enabled\"\n",
            vec!["pv-memory-map"],
        ),
        ("passthrough = \"enabled\"\n", vec!["pv-memory-map"]),
        (
            "type = \"pv\"\npassthrough = \"enabled\"\ne820_host = 1\n",
            vec![],
        ),
        ("type = \"pv\"\npci = [ \"03:00.0\" ]\n", vec![]),
        ("type = \"hvm\"\npassthrough = \"enabled\"\n", vec![]),
    ] {
        std::fs::write(&cfg, text).unwrap();
        assert_eq!(
            codes(&["--xl-config", cfg.to_str().unwrap()]),
            expect,
            "{text}"
        );
    }
    let bare = ok(&d, &["sim", "create", "--pv", "--paused", "bare"])
        .trim()
        .to_string();
    assert_eq!(codes(&[&bare]), ["pv-memory-map"]);
    let before = ok(&d, &["show", nic, "--json"]);
    let o = ptguard(&d, &["attach", nic, &bare]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("memory map has no reserved region") && err.contains("e820_host = 1"),
        "{err}"
    );
    assert_eq!(ok(&d, &["show", nic, "--json"]), before, "nothing changed");
    let mapped = ok(
        &d,
        &["sim", "create", "--pv", "--e820-host", "--paused", "mapped"],
    )
    .trim()
    .to_string();
    assert!(codes(&[&mapped]).is_empty());
    let out = ok(&d, &["attach", nic, &mapped]);
    assert!(out.contains(&format!("attached to d{mapped}")), "{out}");
    let doctor = |d: &Path| -> Vec<(String, String)> {
        let o = ptguard(d, &["doctor", "--json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        v.iter()
            .map(|f| {
                let sbdf = f["sbdf"].as_str().unwrap_or_default().to_string();
                (f["code"].as_str().unwrap().to_string(), sbdf)
            })
            .collect()
    };
    assert!(!doctor(&d).iter().any(|(c, _)| c == "pv-memory-map"));
    // Stock xl gives a device to such a guest all the same (pci-attach checks nothing):
    // doctor names the device and the fix.
    let tmp2 = tempfile::tempdir().unwrap();
    let d2 = tmp2.path().join("host");
    ok(&d2, &["sim", "init", "--xen", "4.20.0", "--pciback", "new"]);
    ok(&d2, &["assignable-add", nic]);
    let bare = ok(&d2, &["sim", "create", "--pv", "bare"])
        .trim()
        .to_string();
    ok(&d2, &["sim", "plug", &bare, nic]);
    let found = doctor(&d2);
    assert!(
        found.contains(&("pv-memory-map".to_string(), nic.to_string())),
        "{found:?}"
    );
}

/// Issue 17: under systemd (JOURNAL_STREAM set) log lines carry journald's `<N>` level
/// prefix and no timestamp of their own; `--version` names the commit and the Xen ABI.
#[test]
fn logs_fit_journald_and_version_names_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    // Xen 4.11.0 has no dom_io quarantine: assignable-add logs that it leaves the device
    // with dom0 (an INFO line of the engine).
    ok(&d, &["sim", "init", "--xen", "4.11.0"]);
    let o = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args([
            "--host",
            &format!("sim:{}", d.display()),
            "assignable-add",
            "0000:03:00.0",
        ])
        .env("PTGUARD_LOG", "info")
        .env("JOURNAL_STREAM", "8:12345")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("has no quarantine"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.starts_with("<6>engine::lifecycle: "), "{line}");
    assert!(!line.contains("2026-") && !line.contains("Z "), "{line}");
    let v = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.starts_with("ptguard 0.1.0 (commit "), "{v}");
    // The releases it names are the table's ends.
    let (old, new) = (
        xen::abi::ReleaseAbi::oldest(),
        xen::abi::ReleaseAbi::newest(),
    );
    let want = format!(
        "Xen 4.{} to 4.{}: domctl interface {:#x} to {:#x}, sysctl {:#x} to {:#x}",
        old.minor,
        new.minor,
        old.domctl_version,
        new.domctl_version,
        xen::abi::RELEASE_ABIS
            .iter()
            .map(|a| a.sysctl_version)
            .min()
            .unwrap(),
        xen::abi::RELEASE_ABIS
            .iter()
            .map(|a| a.sysctl_version)
            .max()
            .unwrap(),
    );
    assert!(v.contains(&want), "{v} lacks {want}");
}

/// Issue 13: a command finishes only its own device's interrupted work; another device's
/// teardown a crash left behind is the daemon's (one `reconcile` entry, scoped by what
/// asked).
#[test]
fn a_command_resumes_only_its_own_devices_unfinished_teardown() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17", "--pciback", "new"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["assignable-add", "0000:04:00.0"]);
    ok(&d, &["sim", "create", "g1"]);
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    ok(&d, &["attach", "0000:04:00.0", "1"]);
    // ptguard died right after it marked 03:00.0's teardown started.
    let entry = "/ptguard/device/0000-03-00-0";
    edit_xenstore(&d, |xs| {
        let head = xs.read_string(xenstore::TxId::NONE, entry).unwrap();
        let crashed =
            head.replacen("state=attached", "state=tearing-down", 1) + " step=revoke reason=unplug";
        // Keep the canonical order: step before driver, reason last.
        let rec =
            engine::DeviceRecord::decode_head("0000:03:00.0".parse().unwrap(), &crashed).unwrap();
        xs.write(xenstore::TxId::NONE, entry, rec.encode_head().as_bytes())
            .unwrap()
    });
    let state = |dev: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&ok(&d, &["show", dev, "--json"])).unwrap();
        v["ledger"]["state"].as_str().unwrap().to_string()
    };
    ok(&d, &["detach", "0000:04:00.0"]);
    assert_eq!(state("0000:04:00.0"), "assignable");
    assert_eq!(
        state("0000:03:00.0"),
        "tearing-down",
        "not detach's to finish"
    );
    // Its own command finishes it first...
    ok(&d, &["attach", "0000:03:00.0", "1"]);
    assert_eq!(state("0000:03:00.0"), "attached");
    // ...and the daemon's round finishes any device's.
    edit_xenstore(&d, |xs| {
        let head = xs.read_string(xenstore::TxId::NONE, entry).unwrap();
        let mut rec =
            engine::DeviceRecord::decode_head("0000:03:00.0".parse().unwrap(), &head).unwrap();
        rec.state = engine::DeviceState::TearingDown;
        rec.step = Some(engine::Step::Revoke);
        xs.write(xenstore::TxId::NONE, entry, rec.encode_head().as_bytes())
            .unwrap()
    });
    ok(&d, &["watch", "--once"]);
    assert_eq!(state("0000:03:00.0"), "assignable");
}

/// `ptguard broker-request`: one broker line served in-process, as the daemon serves it on
/// its socket — with the assignment's token a bind is served (and traced), without it
/// refused with the protocol's code, and a line that is not a request is `malformed`.
#[test]
fn a_broker_request_is_served_in_process_with_the_assignments_token() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    ok(&d, &["sim", "init", "--xen", "4.17.5"]);
    ok(&d, &["assignable-add", "0000:03:00.0"]);
    ok(&d, &["sim", "create", "g"]);
    let attached: serde_json::Value =
        serde_json::from_str(&ok(&d, &["attach", "0000:03:00.0", "1", "--json"])).unwrap();
    let token = attached["token"].as_str().unwrap().to_string();
    let show: serde_json::Value =
        serde_json::from_str(&ok(&d, &["show", "0000:03:00.0", "--json"])).unwrap();
    let tb = show["ledger"]["table_base"].as_u64().unwrap();
    ok(&d, &["sim", "decoding", "0000:03:00.0", "on"]);
    let bind = |token: &str| {
        format!(
            r#"{{"op":"bind","domid":1,"sbdf":"0000:03:00.0","epoch":1,"kind":{{"kind":"msix","entry":0,"table_base":{tb}}},"gvec":64,"gflags":0,"gtable":0{token}}}"#
        )
    };
    let served = ok(
        &d,
        &[
            "--trace",
            "broker-request",
            &bind(&format!(r#","token":"{token}""#)),
        ],
    );
    let reply: wire::Reply = wire::Reply::parse_line(served.lines().next().unwrap()).unwrap();
    assert!(reply.ok && reply.pirq.is_some(), "{served}");
    assert!(served.contains("hypercall PHYSDEVOP_map_pirq"), "{served}");
    assert!(
        served.contains("hypercall XEN_DOMCTL_bind_pt_irq"),
        "{served}"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&d, &["list", "--json"])).unwrap();
    assert!(
        list[0]["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["pirq"] == reply.pirq.unwrap() && b["state"] == "bound"),
        "in the ledger: {list}"
    );
    let o = ptguard(&d, &["broker-request", &bind("")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"code\":\"credential-required\""));
    let o = ptguard(&d, &["broker-request", "{\"op\":\"format-disk\"}"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[malformed]"));
}

/// One device of two leaves a running PV guest only through the Reconfiguring handshake
/// pcifront answers; a guest without a connected pcifront keeps both until it goes, and a
/// second device for a PV guest whose pcifront has not connected would reach no one (seen
/// on real Xen 4.17.5: "pcifront pci-0: pciback not responding!!!").
#[test]
fn one_device_of_two_leaves_a_guest_only_through_pcifronts_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    let (nic, other) = ("0000:03:00.0", "0000:04:00.0");
    ok(&d, &["sim", "init"]);
    ok(&d, &["assignable-add", nic]);
    ok(&d, &["assignable-add", other]);

    // A paused PV guest: pciback sets the backend up with the first device; the second
    // is refused and nothing of it changes.
    let g = ok(
        &d,
        &["sim", "create", "--pv", "--e820-host", "--paused", "pv"],
    )
    .trim()
    .to_string();
    ok(&d, &["attach", nic, &g]);
    let o = ptguard(&d, &["attach", other, &g]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("already set up"),
        "{err}"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&d, &["list", "--json"])).unwrap();
    assert_eq!(list[1]["state"], "assignable", "{list}");

    // Running, its pcifront connected: the second device is a hot-add, both work.
    ok(&d, &["sim", "unpause", &g]);
    ok(&d, &["sim", "check", &g, nic]);
    ok(&d, &["attach", other, &g]);
    for s in [nic, other] {
        let r = ok(&d, &["sim", "start", &g, s]);
        assert!(r.contains("3 of 3"), "{s}: {r}");
    }

    // The detach of one: Closing, Reconfiguring, pciback gives it back, then the nodes go.
    let trace = ok(&d, &["--trace", "detach", other]);
    let closing = trace
        .find("backend/pci/1/0/state-1 (tx")
        .expect("state-N written");
    let removed = trace
        .find("RM /local/domain/0/backend/pci/1/0/dev-1")
        .expect("nodes removed");
    assert!(
        closing < removed,
        "the handshake before the nodes go:\n{trace}"
    );
    let reset = trace.find("0000:04:00.0/reset").expect("reset");
    assert!(
        removed < reset,
        "pciback let go before ptguard resets:\n{trace}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&ok(&d, &["sim", "state", other, "--json"])).unwrap();
    assert_eq!(state["owner"], 0, "{state}");
    let r = ok(&d, &["sim", "check", &g, nic]);
    assert!(r.contains("3 of 3"), "the other device keeps working: {r}");

    // An HVM guest has no pcifront: detaching one of its two exported devices is refused,
    // before anything is written; its teardown gives both back.
    ok(&d, &["detach", nic]);
    let h = ok(&d, &["sim", "create", "hvm"]).trim().to_string();
    ok(&d, &["attach", nic, &h]);
    let before = ok(&d, &["show", nic, "--json"]);
    let o = ptguard(&d, &["attach", other, &h]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Only a device pciback exported (vdev-N) needs the handshake: the second, added after
    // the backend was set up, was exported to no one and leaves at once.
    ok(&d, &["detach", other]);
    ok(&d, &["attach", other, &h]);
    let o = ptguard(&d, &["detach", nic]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no pcifront connected"),
        "{err}"
    );
    let after = ok(&d, &["show", nic, "--json"]);
    let epoch =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["ledger"]["epoch"].clone();
    assert_eq!(epoch(&before), epoch(&after), "nothing changed");
    ok(&d, &["sim", "destroy", &h]);
    let w = ok(&d, &["watch", "--once"]);
    assert!(w.matches("clean and assignable").count() >= 2, "{w}");
}
