//! The sysfs host on fixture trees: every read, every pciback write byte for byte, the
//! seize/release sequences, and devices that are missing files or vanish.

use std::path::PathBuf;

use pci::builder::ConfigBuilder;
use pci::fixture::{FixtureDevice, FixtureTree};
use pci::host::{PciHost, Resource};
use pci::pciback;
use pci::sysfs::{SysfsHost, SysfsWrite};
use pci::{PciError, Sbdf};

fn sbdf(s: &str) -> Sbdf {
    s.parse().unwrap()
}

struct Fix {
    _dir: tempfile::TempDir,
    tree: FixtureTree,
    host: SysfsHost,
}

fn fixture() -> Fix {
    let dir = tempfile::tempdir().unwrap();
    let tree = FixtureTree::create(dir.path()).unwrap();
    let b = ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(0, 0xf7c0_0000, 0x2_0000)
        .bar32(3, 0xf7c2_0000, 0x4000)
        .pcie(true)
        .msix(5, 3, 0, 3, 0x2000);
    let mut nic = FixtureDevice::new(sbdf("0000:03:00.0"), b.build(), b.resources());
    nic.irq = 17;
    nic.msi_irqs = vec![130, 128, 129];
    nic.driver = Some("igb".into());
    tree.add_device(&nic).unwrap();
    let mut plain = FixtureDevice::new(
        sbdf("0000:00:1f.3"),
        ConfigBuilder::endpoint(0x8086, 0xa348).build(),
        vec![],
    );
    plain.reset_methods = None;
    plain.resettable = false;
    plain.enabled = false;
    tree.add_device(&plain).unwrap();
    let host = SysfsHost::new(dir.path());
    Fix {
        _dir: dir,
        tree,
        host,
    }
}

fn w(f: &Fix, rel: &str, data: &[u8]) -> SysfsWrite {
    SysfsWrite {
        path: f.tree.root().join(rel),
        offset: 0,
        data: data.to_vec(),
    }
}

#[test]
fn enumerates_and_reads_every_file() {
    let f = fixture();
    let h = &f.host;
    assert_eq!(
        h.list_devices().unwrap(),
        [sbdf("00:1f.3"), sbdf("03:00.0")]
    );
    let nic = sbdf("03:00.0");
    assert_eq!(h.read_config(nic).unwrap().len(), 4096);
    let res = h.resources(nic).unwrap();
    assert_eq!(res.len(), 7);
    assert_eq!(res[0].len(), 0x2_0000);
    assert!(res[0].is_mem() && !res[0].is_io());
    assert_eq!(res[1], Resource::default());
    assert_eq!(h.irq(nic).unwrap(), 17);
    assert_eq!(h.msi_irqs(nic).unwrap(), [128, 129, 130]);
    assert_eq!(h.driver(nic).unwrap().as_deref(), Some("igb"));
    assert_eq!(h.driver_override(nic).unwrap(), None);
    assert_eq!(h.reset_methods(nic).unwrap().unwrap(), ["flr", "bus"]);
    assert!(h.can_reset(nic).unwrap());
    assert!(h.enabled(nic).unwrap());

    let plain = sbdf("00:1f.3");
    assert_eq!(h.msi_irqs(plain).unwrap(), Vec::<u32>::new());
    assert_eq!(h.driver(plain).unwrap(), None);
    assert_eq!(h.reset_methods(plain).unwrap(), None);
    assert!(!h.can_reset(plain).unwrap());
    assert!(!h.enabled(plain).unwrap());
    assert!(h.writes().is_empty(), "reads write nothing");
}

#[test]
fn every_pciback_write_is_the_bytes_linux_expects() {
    let f = fixture();
    let h = &f.host;
    let nic = sbdf("3:0.0");
    h.pciback_new_slot(nic).unwrap();
    h.driver_bind("pciback", nic).unwrap();
    h.pciback_permissive(nic).unwrap();
    h.pciback_allow_interrupt_control(nic).unwrap();
    h.set_driver_override(nic, Some("pciback")).unwrap();
    h.reset(nic).unwrap();
    h.driver_unbind("pciback", nic).unwrap();
    h.pciback_remove_slot(nic).unwrap();
    h.set_driver_override(nic, None).unwrap();
    let a = b"0000:03:00.0";
    assert_eq!(
        h.writes(),
        [
            w(&f, "bus/pci/drivers/pciback/new_slot", a),
            w(&f, "bus/pci/drivers/pciback/bind", a),
            w(&f, "bus/pci/drivers/pciback/permissive", a),
            w(&f, "bus/pci/drivers/pciback/allow_interrupt_control", a),
            w(
                &f,
                "bus/pci/devices/0000:03:00.0/driver_override",
                b"pciback"
            ),
            w(&f, "bus/pci/devices/0000:03:00.0/reset", b"1"),
            w(&f, "bus/pci/drivers/pciback/unbind", a),
            w(&f, "bus/pci/drivers/pciback/remove_slot", a),
            w(&f, "bus/pci/devices/0000:03:00.0/driver_override", b"\n"),
        ]
    );
    // And they reached the files, whole.
    for file in [
        "new_slot",
        "bind",
        "permissive",
        "allow_interrupt_control",
        "unbind",
        "remove_slot",
    ] {
        assert_eq!(f.tree.driver_file("pciback", file).unwrap(), a, "{file}");
    }
    assert_eq!(f.tree.device_file(nic, "reset").unwrap(), b"1");
    assert_eq!(f.tree.device_file(nic, "driver_override").unwrap(), b"\n");
}

#[test]
fn config_writes_land_at_their_offset() {
    let f = fixture();
    let nic = sbdf("03:00.0");
    let before = f.host.read_config(nic).unwrap();
    f.host
        .write_config(nic, 4, &0x0006u16.to_le_bytes())
        .unwrap();
    let after = f.host.read_config(nic).unwrap();
    assert_eq!(&after[4..6], &[6, 0]);
    assert_eq!(before[..4], after[..4]);
    assert_eq!(before[6..], after[6..]);
    assert_eq!(f.host.writes()[0].offset, 4);
    assert!(f.host.writes()[0].to_string().contains("@0x4: 0600"));
}

#[test]
fn seize_follows_libxl_order_and_remembers_the_driver() {
    let f = fixture();
    let nic = sbdf("03:00.0");
    let s = pciback::seize(&f.host, nic).unwrap();
    assert_eq!(s.original_driver.as_deref(), Some("igb"));
    assert!(!s.already_seized);
    let a = b"0000:03:00.0";
    assert_eq!(
        f.host.take_writes(),
        [
            w(&f, "bus/pci/drivers/igb/unbind", a),
            w(&f, "bus/pci/drivers/pciback/new_slot", a),
            w(&f, "bus/pci/drivers/pciback/bind", a),
        ]
    );
    // The kernel would now show pciback as the driver and list the slot.
    f.tree.set_driver_link(nic, Some("pciback")).unwrap();
    f.tree.set_pciback_slots(&[nic]).unwrap();
    let again = pciback::seize(&f.host, nic).unwrap();
    assert!(again.already_seized);
    assert!(
        f.host.take_writes().is_empty(),
        "seizing twice writes nothing"
    );

    pciback::release(&f.host, nic, s.original_driver.as_deref()).unwrap();
    assert_eq!(
        f.host.take_writes(),
        [
            w(&f, "bus/pci/drivers/pciback/unbind", a),
            w(&f, "bus/pci/drivers/pciback/remove_slot", a),
            w(&f, "bus/pci/drivers/igb/bind", a),
        ]
    );
}

#[test]
fn seize_skips_new_slot_when_pciback_lists_it_already() {
    let f = fixture();
    let plain = sbdf("00:1f.3");
    f.tree.set_pciback_slots(&[plain]).unwrap();
    let s = pciback::seize(&f.host, plain).unwrap();
    assert_eq!(s.original_driver, None);
    assert_eq!(
        f.host.take_writes(),
        [w(&f, "bus/pci/drivers/pciback/bind", b"0000:00:1f.3")]
    );
}

#[test]
fn dry_run_records_but_does_not_write() {
    let f = fixture();
    let host = SysfsHost::new(f.tree.root()).dry_run(true);
    let nic = sbdf("03:00.0");
    host.reset(nic).unwrap();
    host.write_config(nic, 4, &[0, 0]).unwrap();
    assert_eq!(host.writes().len(), 2);
    assert_eq!(f.tree.device_file(nic, "reset").unwrap(), b"");
    assert_eq!(host.read_config(nic).unwrap()[4], 0x06);
}

#[test]
fn unknown_missing_and_vanished_devices_are_named() {
    let f = fixture();
    let ghost = sbdf("0000:09:00.0");
    let e = f.host.read_config(ghost).unwrap_err();
    assert!(matches!(e, PciError::NoSuchDevice { sbdf, .. } if sbdf == ghost));
    assert!(e.to_string().contains("0000:09:00.0"));
    assert!(matches!(
        pciback::seize(&f.host, ghost),
        Err(PciError::Refused { .. })
    ));

    // The device lacks a reset file: writing it is a clear error naming the file.
    let plain = sbdf("00:1f.3");
    let e = f.host.reset(plain).unwrap_err();
    assert!(
        matches!(&e, PciError::Missing { file, .. } if file.ends_with("reset")),
        "{e}"
    );

    // A device removed between two operations.
    let nic = sbdf("03:00.0");
    f.host.driver(nic).unwrap();
    f.tree.remove_device(nic).unwrap();
    assert!(matches!(
        f.host.irq(nic),
        Err(PciError::NoSuchDevice { .. })
    ));
    assert!(matches!(f.host.list_devices(), Ok(d) if d == [plain]));
}

#[test]
fn a_file_that_disappears_under_a_present_device_is_reported_as_vanished_or_missing() {
    let f = fixture();
    let nic = sbdf("03:00.0");
    std::fs::remove_file(f.tree.device_dir(nic).join("irq")).unwrap();
    let e = f.host.irq(nic).unwrap_err();
    assert!(
        matches!(&e, PciError::Missing { file, .. } if file.ends_with("irq")),
        "{e}"
    );
}

#[test]
fn malformed_sysfs_text_is_a_typed_error() {
    let f = fixture();
    let nic = sbdf("03:00.0");
    std::fs::write(f.tree.device_dir(nic).join("resource"), "0x1000 junk\n").unwrap();
    let e = f.host.resources(nic).unwrap_err();
    assert!(
        matches!(&e, PciError::Malformed { text, .. } if text == "0x1000 junk"),
        "{e}"
    );
    std::fs::write(f.tree.device_dir(nic).join("irq"), "seventeen\n").unwrap();
    assert!(matches!(f.host.irq(nic), Err(PciError::Malformed { .. })));
    std::fs::write(
        f.tree.driver_dir("pciback").join("slots"),
        "0000:03:00.0\nbogus\n",
    )
    .unwrap();
    assert!(matches!(
        f.host.pciback_slots(),
        Err(PciError::Malformed { .. })
    ));
}

#[test]
fn a_missing_sysfs_root_is_an_io_error_naming_the_directory() {
    let host = SysfsHost::new(PathBuf::from("/nonexistent/sys"));
    let e = host.list_devices().unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/sys/bus/pci/devices"),
        "{e}"
    );
}

/// Linux links an SR-IOV virtual function to its physical function with `physfn` (a
/// relative link, `../0000:03:00.0`); other functions have none.
#[test]
fn physfn_names_a_virtual_functions_physical_function() {
    let f = fixture();
    let vf = sbdf("0000:03:10.0");
    let b = ConfigBuilder::endpoint(0x8086, 0x1520).msix(3, 3, 0, 3, 0x2000);
    f.tree
        .add_device(&FixtureDevice::new(vf, b.build(), b.resources()))
        .unwrap();
    std::os::unix::fs::symlink("../0000:03:00.0", f.tree.device_dir(vf).join("physfn")).unwrap();
    assert_eq!(f.host.physfn(vf).unwrap(), Some(sbdf("03:00.0")));
    assert_eq!(f.host.physfn(sbdf("03:00.0")).unwrap(), None);
    std::os::unix::fs::symlink(
        "../not-a-device",
        f.tree.device_dir(sbdf("00:1f.3")).join("physfn"),
    )
    .unwrap();
    assert!(matches!(
        f.host.physfn(sbdf("00:1f.3")),
        Err(PciError::Malformed { .. })
    ));
    assert!(
        f.host.physfn(sbdf("0000:09:00.0")).is_err(),
        "no such device"
    );
}

/// A removed PCI backend is released only when the xen-backend device's own directory is
/// gone: Linux drops the bus's link before it runs pciback's remove (the give-back) and the
/// directory after, so the link alone would end the wait too early.
#[test]
fn a_backend_is_released_when_its_device_directory_goes_not_its_bus_link() {
    let f = fixture();
    let root = f.tree.root();
    let device = root.join("devices/xen-backend/pci-5-0");
    std::fs::create_dir_all(&device).unwrap();
    let links = root.join("bus/xen-backend/devices");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(&device, links.join("pci-5-0")).unwrap();
    let wait = |ms| {
        f.host
            .wait_backend_released(5, std::time::Duration::from_millis(ms))
            .unwrap()
    };
    assert!(!wait(50), "both still there");
    // device_del: the bus's link first, then pciback's remove, then the directory.
    std::fs::remove_file(links.join("pci-5-0")).unwrap();
    assert!(
        !wait(50),
        "pciback's remove has not finished: the directory is still there"
    );
    std::fs::remove_dir(&device).unwrap();
    assert!(wait(0));
    // Another domain's backend that never existed is released at once.
    assert!(
        wait(0)
            && f.host
                .wait_backend_released(6, std::time::Duration::ZERO)
                .unwrap()
    );
}
