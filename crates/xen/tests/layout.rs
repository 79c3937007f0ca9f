//! Layout proof: compiles a C program against Debian's Xen public headers (libxen-dev) that
//! prints the size and field offsets of every structure ptguard passes to Xen and the value
//! of every constant it uses, and compares each with the Rust definition.
//!
//! Skipped with a message when the headers or a C compiler are missing, unless `CI` is set
//! (`.ci/run` installs libxen-dev, so there a skip is a failure).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use xen::abi::{self, payload, *};

const C_PROGRAM: &str = include_str!("abi/layout.c");

fn rust_values() -> Vec<(&'static str, i64)> {
    macro_rules! s {
        ($t:ty) => {
            size_of::<$t>() as i64
        };
    }
    macro_rules! o {
        ($t:ty, $f:ident) => {
            offset_of!($t, $f) as i64
        };
    }
    type Map = physdev_map_pirq;
    type Unmap = physdev_unmap_pirq;
    type Dev = physdev_pci_device;
    type Dc = xen_domctl;
    vec![
        ("sizeof physdev_map_pirq", s!(Map)),
        ("offsetof physdev_map_pirq.domid", o!(Map, domid)),
        ("offsetof physdev_map_pirq.type", o!(Map, type_)),
        ("offsetof physdev_map_pirq.index", o!(Map, index)),
        ("offsetof physdev_map_pirq.pirq", o!(Map, pirq)),
        ("offsetof physdev_map_pirq.bus", o!(Map, bus)),
        ("offsetof physdev_map_pirq.devfn", o!(Map, devfn)),
        ("offsetof physdev_map_pirq.entry_nr", o!(Map, entry_nr)),
        ("offsetof physdev_map_pirq.table_base", o!(Map, table_base)),
        ("sizeof physdev_unmap_pirq", s!(Unmap)),
        ("offsetof physdev_unmap_pirq.domid", o!(Unmap, domid)),
        ("offsetof physdev_unmap_pirq.pirq", o!(Unmap, pirq)),
        ("sizeof physdev_pci_device", s!(Dev)),
        ("offsetof physdev_pci_device.seg", o!(Dev, seg)),
        ("offsetof physdev_pci_device.bus", o!(Dev, bus)),
        ("offsetof physdev_pci_device.devfn", o!(Dev, devfn)),
        ("sizeof xen_domctl", s!(Dc)),
        ("offsetof xen_domctl.cmd", o!(Dc, cmd)),
        (
            "offsetof xen_domctl.interface_version",
            o!(Dc, interface_version),
        ),
        ("offsetof xen_domctl.domain", o!(Dc, domain)),
        ("offsetof xen_domctl.u", o!(Dc, u)),
        ("sizeof xen_sysctl", s!(xen_sysctl)),
        ("offsetof xen_sysctl.cmd", o!(xen_sysctl, cmd)),
        (
            "offsetof xen_sysctl.interface_version",
            o!(xen_sysctl, interface_version),
        ),
        ("offsetof xen_sysctl.u", o!(xen_sysctl, u)),
        ("sizeof xen_sysctl_readconsole", s!(xen_sysctl_readconsole)),
        (
            "offsetof xen_sysctl_readconsole.clear",
            payload::CONSOLE_CLEAR as i64,
        ),
        (
            "offsetof xen_sysctl_readconsole.incremental",
            payload::CONSOLE_INCREMENTAL as i64,
        ),
        (
            "offsetof xen_sysctl_readconsole.index",
            payload::CONSOLE_INDEX as i64,
        ),
        (
            "offsetof xen_sysctl_readconsole.buffer",
            payload::CONSOLE_BUFFER as i64,
        ),
        (
            "offsetof xen_sysctl_readconsole.count",
            payload::CONSOLE_COUNT as i64,
        ),
        ("sizeof xen_sysctl_debug_keys", s!(xen_sysctl_debug_keys)),
        (
            "offsetof xen_sysctl_debug_keys.keys",
            payload::DEBUG_KEYS_KEYS as i64,
        ),
        (
            "offsetof xen_sysctl_debug_keys.nr_keys",
            payload::DEBUG_KEYS_NR as i64,
        ),
        (
            "XEN_SYSCTL_INTERFACE_VERSION",
            XEN_SYSCTL_INTERFACE_VERSION.into(),
        ),
        ("XEN_SYSCTL_readconsole", XEN_SYSCTL_READCONSOLE.into()),
        ("XEN_SYSCTL_debug_keys", XEN_SYSCTL_DEBUG_KEYS.into()),
        ("__HYPERVISOR_sysctl", HYPERVISOR_SYSCTL as i64),
        ("XENVER_commandline", XENVER_COMMANDLINE as i64),
        ("sizeof xen_commandline_t", XEN_COMMANDLINE_LEN as i64),
        (
            "sizeof xen_domctl_assign_device",
            s!(xen_domctl_assign_device),
        ),
        (
            "offsetof xen_domctl_assign_device.dev",
            payload::ASSIGN_DEV as i64,
        ),
        (
            "offsetof xen_domctl_assign_device.flags",
            payload::ASSIGN_FLAGS as i64,
        ),
        (
            "offsetof xen_domctl_assign_device.u.pci.machine_sbdf",
            payload::ASSIGN_MACHINE_SBDF as i64,
        ),
        ("sizeof xen_domctl_bind_pt_irq", s!(xen_domctl_bind_pt_irq)),
        (
            "offsetof xen_domctl_bind_pt_irq.machine_irq",
            payload::BIND_MACHINE_IRQ as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.irq_type",
            payload::BIND_IRQ_TYPE as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.msi.gvec",
            payload::BIND_MSI_GVEC as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.msi.gflags",
            payload::BIND_MSI_GFLAGS as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.msi.gtable",
            payload::BIND_MSI_GTABLE as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.pci.bus",
            payload::BIND_PCI_BUS as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.pci.device",
            payload::BIND_PCI_DEVICE as i64,
        ),
        (
            "offsetof xen_domctl_bind_pt_irq.u.pci.intx",
            payload::BIND_PCI_INTX as i64,
        ),
        (
            "sizeof xen_domctl_irq_permission",
            s!(xen_domctl_irq_permission),
        ),
        (
            "offsetof xen_domctl_irq_permission.pirq",
            payload::IRQ_PERM_PIRQ as i64,
        ),
        (
            "offsetof xen_domctl_irq_permission.allow_access",
            payload::IRQ_PERM_ALLOW as i64,
        ),
        (
            "sizeof xen_domctl_iomem_permission",
            s!(xen_domctl_iomem_permission),
        ),
        (
            "offsetof xen_domctl_iomem_permission.first_mfn",
            payload::IOMEM_FIRST_MFN as i64,
        ),
        (
            "offsetof xen_domctl_iomem_permission.nr_mfns",
            payload::IOMEM_NR_MFNS as i64,
        ),
        (
            "offsetof xen_domctl_iomem_permission.allow_access",
            payload::IOMEM_ALLOW as i64,
        ),
        (
            "sizeof xen_domctl_ioport_permission",
            s!(xen_domctl_ioport_permission),
        ),
        (
            "offsetof xen_domctl_ioport_permission.first_port",
            payload::IOPORT_FIRST_PORT as i64,
        ),
        (
            "offsetof xen_domctl_ioport_permission.nr_ports",
            payload::IOPORT_NR_PORTS as i64,
        ),
        (
            "offsetof xen_domctl_ioport_permission.allow_access",
            payload::IOPORT_ALLOW as i64,
        ),
        (
            "offsetof xen_domctl_getdomaininfo.domain",
            payload::DOMINFO_DOMAIN as i64,
        ),
        (
            "offsetof xen_domctl_getdomaininfo.flags",
            payload::DOMINFO_FLAGS as i64,
        ),
        (
            "offsetof xen_domctl_getdomaininfo.handle",
            payload::DOMINFO_HANDLE as i64,
        ),
        ("sizeof privcmd_hypercall", s!(privcmd_hypercall)),
        ("IOCTL_PRIVCMD_HYPERCALL", IOCTL_PRIVCMD_HYPERCALL as i64),
        ("__HYPERVISOR_xen_version", HYPERVISOR_XEN_VERSION as i64),
        ("__HYPERVISOR_physdev_op", HYPERVISOR_PHYSDEV_OP as i64),
        ("__HYPERVISOR_domctl", HYPERVISOR_DOMCTL as i64),
        ("XENVER_version", XENVER_VERSION as i64),
        ("PHYSDEVOP_map_pirq", PHYSDEVOP_MAP_PIRQ.into()),
        ("PHYSDEVOP_unmap_pirq", PHYSDEVOP_UNMAP_PIRQ.into()),
        ("PHYSDEVOP_prepare_msix", PHYSDEVOP_PREPARE_MSIX.into()),
        ("PHYSDEVOP_release_msix", PHYSDEVOP_RELEASE_MSIX.into()),
        ("MAP_PIRQ_TYPE_MSI", MAP_PIRQ_TYPE_MSI.into()),
        ("MAP_PIRQ_TYPE_GSI", MAP_PIRQ_TYPE_GSI.into()),
        ("MAP_PIRQ_TYPE_UNKNOWN", MAP_PIRQ_TYPE_UNKNOWN.into()),
        ("MAP_PIRQ_TYPE_MSI_SEG", MAP_PIRQ_TYPE_MSI_SEG.into()),
        ("MAP_PIRQ_TYPE_MULTI_MSI", MAP_PIRQ_TYPE_MULTI_MSI.into()),
        (
            "XEN_DOMCTL_INTERFACE_VERSION",
            XEN_DOMCTL_INTERFACE_VERSION.into(),
        ),
        ("XEN_DOMCTL_getdomaininfo", XEN_DOMCTL_GETDOMAININFO.into()),
        (
            "XEN_DOMCTL_irq_permission",
            XEN_DOMCTL_IRQ_PERMISSION.into(),
        ),
        (
            "XEN_DOMCTL_iomem_permission",
            XEN_DOMCTL_IOMEM_PERMISSION.into(),
        ),
        (
            "XEN_DOMCTL_ioport_permission",
            XEN_DOMCTL_IOPORT_PERMISSION.into(),
        ),
        ("XEN_DOMCTL_assign_device", XEN_DOMCTL_ASSIGN_DEVICE.into()),
        ("XEN_DOMCTL_bind_pt_irq", XEN_DOMCTL_BIND_PT_IRQ.into()),
        (
            "XEN_DOMCTL_test_assign_device",
            XEN_DOMCTL_TEST_ASSIGN_DEVICE.into(),
        ),
        (
            "XEN_DOMCTL_deassign_device",
            XEN_DOMCTL_DEASSIGN_DEVICE.into(),
        ),
        ("XEN_DOMCTL_unbind_pt_irq", XEN_DOMCTL_UNBIND_PT_IRQ.into()),
        ("XEN_DOMCTL_DEV_PCI", XEN_DOMCTL_DEV_PCI.into()),
        (
            "XEN_DOMCTL_DEV_RDM_RELAXED",
            XEN_DOMCTL_DEV_RDM_RELAXED.into(),
        ),
        ("PT_IRQ_TYPE_PCI", PT_IRQ_TYPE_PCI.into()),
        ("PT_IRQ_TYPE_ISA", PT_IRQ_TYPE_ISA.into()),
        ("PT_IRQ_TYPE_MSI", PT_IRQ_TYPE_MSI.into()),
        (
            "PT_IRQ_TYPE_MSI_TRANSLATE",
            PT_IRQ_TYPE_MSI_TRANSLATE.into(),
        ),
        (
            "XEN_DOMCTL_VMSI_X86_UNMASKED",
            XEN_DOMCTL_VMSI_X86_UNMASKED.into(),
        ),
        ("XEN_DOMINF_dying", XEN_DOMINF_DYING.into()),
        ("XEN_DOMINF_hvm_guest", XEN_DOMINF_HVM_GUEST.into()),
        ("XEN_DOMINF_shutdown", XEN_DOMINF_SHUTDOWN.into()),
        ("XEN_DOMINF_paused", XEN_DOMINF_PAUSED.into()),
        ("XEN_DOMINF_shutdownshift", XEN_DOMINF_SHUTDOWNSHIFT.into()),
        ("XEN_DOMINF_shutdownmask", XEN_DOMINF_SHUTDOWNMASK.into()),
        ("DOMID_SELF", DOMID_SELF.into()),
        ("DOMID_IO", DOMID_IO.into()),
        ("DOMID_XEN", DOMID_XEN.into()),
        ("DOMID_INVALID", DOMID_INVALID.into()),
    ]
}

#[test]
#[cfg_attr(
    missing_libxen_dev,
    ignore = "needs Xen's public headers (apt-get install libxen-dev)"
)]
fn rust_abi_matches_xen_public_headers() {
    let header = std::path::Path::new("/usr/include/xen/domctl.h");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if !header.exists() || Command::new(&cc).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have libxen-dev and a C compiler (.ci/run installs them)"
        );
        eprintln!("SKIPPED: Xen headers (libxen-dev) or C compiler missing");
        return;
    }
    let dir = tempfile_dir();
    let src = dir.join("layout.c");
    let bin = dir.join("layout");
    std::fs::write(&src, C_PROGRAM).unwrap();
    let out = Command::new(&cc)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().unwrap();
    assert!(run.status.success());
    let c: BTreeMap<String, i64> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    let rust = rust_values();
    let mut mismatches = Vec::new();
    for (name, value) in &rust {
        match c.get(*name) {
            Some(cv) if cv == value => {}
            Some(cv) => mismatches.push(format!("{name}: C {cv}, Rust {value}")),
            None => mismatches.push(format!("{name}: not printed by the C program")),
        }
    }
    assert_eq!(c.len(), rust.len(), "every C value has a Rust twin");
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    // The union holds every payload.
    for size in [
        size_of::<xen_domctl_assign_device>(),
        size_of::<xen_domctl_bind_pt_irq>(),
        size_of::<xen_domctl_iomem_permission>(),
    ] {
        assert!(size <= 128);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = abi::xen_domctl::new(0, 0);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ptguard-layout-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn payload_encodings_put_fields_where_xen_reads_them() {
    let m = physdev_map_pirq {
        domid: 5,
        type_: MAP_PIRQ_TYPE_MSI_SEG,
        index: -1,
        pirq: -1,
        bus: 0x0001_0003,
        devfn: 0x10,
        entry_nr: 2,
        table_base: 0xfebf_0000,
    };
    let b = m.to_bytes();
    assert_eq!(&b[0..2], &5u16.to_ne_bytes());
    assert_eq!(&b[4..8], &3i32.to_ne_bytes());
    assert_eq!(&b[12..16], &(-1i32).to_ne_bytes());
    assert_eq!(&b[16..20], &0x0001_0003i32.to_ne_bytes());
    assert_eq!(&b[32..40], &0xfebf_0000u64.to_ne_bytes());
    let mut d = xen_domctl::new(XEN_DOMCTL_ASSIGN_DEVICE, 7);
    d.put_u32(payload::ASSIGN_MACHINE_SBDF, 0x0003_0010);
    let bytes = d.to_bytes();
    assert_eq!(bytes.len(), 144);
    assert_eq!(&bytes[4..8], &0x15u32.to_ne_bytes());
    assert_eq!(&bytes[8..10], &7u16.to_ne_bytes());
    assert_eq!(&bytes[16 + 8..16 + 12], &0x0003_0010u32.to_ne_bytes());
}

/// Real Xen 4.17.5 answered `-ESRCH` when this domctl named `DOMID_SELF`: `do_domctl` looks
/// up every id but `DOMID_INVALID` for `XEN_DOMCTL_test_assign_device`.
#[test]
fn test_assign_device_names_no_domain() {
    let sbdf: pci::Sbdf = "0000:00:05.0".parse().expect("literal SBDF");
    let bytes = xen::privcmd::test_assign_domctl(sbdf).to_bytes();
    assert_eq!(&bytes[0..4], &XEN_DOMCTL_TEST_ASSIGN_DEVICE.to_ne_bytes());
    assert_eq!(&bytes[8..10], &DOMID_INVALID.to_ne_bytes());
    assert_eq!(&bytes[16..20], &XEN_DOMCTL_DEV_PCI.to_ne_bytes());
    assert_eq!(&bytes[16 + 8..16 + 12], &sbdf.machine_sbdf().to_ne_bytes());
}

/// The release table: 4.17 is what Debian's headers (checked above) say; the neighbours are
/// ordered, and only releases before 4.16 carry a one-byte pirq in irq_permission.
#[test]
fn release_abis_cover_4_11_to_4_22() {
    assert_eq!(ReleaseAbi::of(4, 17), Some(ReleaseAbi::xen_4_17()));
    assert_eq!(
        ReleaseAbi::xen_4_17().domctl_version,
        XEN_DOMCTL_INTERFACE_VERSION
    );
    assert_eq!(
        ReleaseAbi::xen_4_17().sysctl_version,
        XEN_SYSCTL_INTERFACE_VERSION
    );
    for minor in 11..=22 {
        let a = ReleaseAbi::of(4, minor).expect("a release ptguard speaks");
        assert_eq!(a.irq_permission_pirq_is_u8, minor < 16, "4.{minor}");
    }
    assert_eq!(ReleaseAbi::of(4, 10), None);
    assert!(ReleaseAbi::of(4, 21).is_some_and(|a| a.get_domain_state));
    assert!(ReleaseAbi::of(4, 20).is_some_and(|a| !a.get_domain_state));
    assert_eq!(ReleaseAbi::of(4, 23), None);
    assert_eq!(ReleaseAbi::of(5, 0), None);
    assert_eq!(ReleaseAbi::newest().minor, 22);
    assert!(RELEASE_ABIS
        .windows(2)
        .all(|w| w[0].domctl_version <= w[1].domctl_version));
}

/// The facts `tests/abi/derive.sh` printed from each release tag's own public headers
/// (`RELEASE-4.N.0.facts`), against the Rust ABI as `ReleaseAbi` says it differs on that
/// release: interface versions, the one-byte pirq before 4.16, and
/// `xen_domctl_get_domain_state` from 4.21. Any other size, offset or constant that moved
/// between releases fails here.
#[test]
fn release_abis_match_each_release_tags_headers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/abi");
    let mut seen = Vec::new();
    for abi in RELEASE_ABIS {
        let file = dir.join(format!("RELEASE-4.{}.0.facts", abi.minor));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (derive it: tests/abi/derive.sh)", file.display()));
        let facts: BTreeMap<String, i64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        let mut expected: BTreeMap<String, i64> = rust_values()
            .into_iter()
            // Linux's privcmd ABI is not in Xen's headers.
            .filter(|(k, _)| !k.contains("privcmd") && !k.contains("PRIVCMD"))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        expected.insert(
            "XEN_DOMCTL_INTERFACE_VERSION".into(),
            abi.domctl_version.into(),
        );
        expected.insert(
            "XEN_SYSCTL_INTERFACE_VERSION".into(),
            abi.sysctl_version.into(),
        );
        if abi.irq_permission_pirq_is_u8 {
            expected.insert("sizeof xen_domctl_irq_permission".into(), 2);
            expected.insert(
                "offsetof xen_domctl_irq_permission.pirq".into(),
                payload::IRQ_PERM_PIRQ_U8 as i64,
            );
            expected.insert(
                "offsetof xen_domctl_irq_permission.allow_access".into(),
                payload::IRQ_PERM_ALLOW_U8 as i64,
            );
        }
        if abi.get_domain_state {
            type St = xen_domctl_get_domain_state;
            for (k, v) in [
                (
                    "XEN_DOMCTL_get_domain_state",
                    XEN_DOMCTL_GET_DOMAIN_STATE as i64,
                ),
                ("sizeof xen_domctl_get_domain_state", size_of::<St>() as i64),
                (
                    "offsetof xen_domctl_get_domain_state.state",
                    payload::DOMSTATE_STATE as i64,
                ),
                (
                    "offsetof xen_domctl_get_domain_state.caps",
                    payload::DOMSTATE_CAPS as i64,
                ),
                (
                    "offsetof xen_domctl_get_domain_state.pad0",
                    payload::DOMSTATE_PAD0 as i64,
                ),
                (
                    "offsetof xen_domctl_get_domain_state.unique_id",
                    payload::DOMSTATE_UNIQUE_ID as i64,
                ),
                (
                    "XEN_DOMCTL_GETDOMSTATE_STATE_EXIST",
                    XEN_DOMCTL_GETDOMSTATE_STATE_EXIST.into(),
                ),
                (
                    "XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN",
                    XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN.into(),
                ),
                (
                    "XEN_DOMCTL_GETDOMSTATE_STATE_DYING",
                    XEN_DOMCTL_GETDOMSTATE_STATE_DYING.into(),
                ),
                (
                    "XEN_DOMCTL_GETDOMSTATE_STATE_DEAD",
                    XEN_DOMCTL_GETDOMSTATE_STATE_DEAD.into(),
                ),
            ] {
                expected.insert(k.into(), v);
            }
        }
        let mut wrong = Vec::new();
        for (k, v) in &expected {
            match facts.get(k) {
                Some(f) if f == v => {}
                Some(f) => wrong.push(format!("{k}: headers {f}, ptguard {v}")),
                None => wrong.push(format!("{k}: not in the headers' facts")),
            }
        }
        for k in facts.keys().filter(|k| !expected.contains_key(*k)) {
            wrong.push(format!("{k}: in the headers, unknown to ptguard"));
        }
        assert!(
            wrong.is_empty(),
            "Xen 4.{}:\n{}",
            abi.minor,
            wrong.join("\n")
        );
        seen.push(file);
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "facts"))
        })
        .count();
    assert_eq!(
        files,
        seen.len(),
        "a facts file for a release the table lacks"
    );
}

/// Xen 4.21's `do_domctl` takes `get_domain_state` only with interface version 0 (a
/// stable domctl) and refuses a non-zero `pad0`.
#[test]
fn get_domain_state_is_asked_as_a_stable_domctl() {
    let b = xen::privcmd::get_domain_state_domctl(xen::DomId(7)).to_bytes();
    assert_eq!(&b[0..4], &XEN_DOMCTL_GET_DOMAIN_STATE.to_ne_bytes());
    assert_eq!(&b[4..8], &0u32.to_ne_bytes());
    assert_eq!(&b[8..10], &7u16.to_ne_bytes());
    assert!(
        b[16..32].iter().all(|x| *x == 0),
        "state, caps, pad0, unique_id in: zero"
    );
}
