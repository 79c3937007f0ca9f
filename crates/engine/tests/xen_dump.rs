//! The dump readers on what real Xen 4.17.5 printed in the test bed (fixtures captured by
//! realxen/run: a clean boot, an HVM guest with three vectors bound through the broker,
//! and the device after the seed's failure).

use engine::xen_dump::*;
use pci::Sbdf;
use proptest::prelude::*;
use xen::DomId;

fn fixture(name: &str) -> String {
    let p = format!(
        "{}/tests/fixtures/xen-4.17.5/{name}/report.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn section<'a>(sections: &'a [(String, String)], cmd: &str) -> &'a str {
    sections
        .iter()
        .find(|(c, _)| c == cmd)
        .map(|(_, b)| b.as_str())
        .unwrap_or_else(|| panic!("no {cmd} section"))
}

fn dev() -> Sbdf {
    "0000:00:05.0".parse().unwrap()
}

#[test]
fn a_clean_boot_dom0_owns_the_nic_and_its_vectors() {
    let r = fixture("clean-boot");
    let s = report_sections(&r);
    let names: Vec<&str> = s.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        ["lspci -vvv", "xl info", "xl dmesg", "xenstore-ls -f"]
    );
    let q = pci_devices(section(&s, "xl dmesg"));
    let nic = q.iter().find(|e| e.sbdf == dev()).unwrap();
    assert_eq!(nic.owner, DumpOwner::Domain(DomId(0)));
    assert_eq!(nic.msi_irqs.len(), 3, "{nic:?}");
    // dom0's e1000e is bound but its interface is down: every vector masked by Xen, by
    // the driver and in the table (`mask=1/HG/1`).
    let m = msi_state(section(&s, "xl dmesg"));
    for irq in &nic.msi_irqs {
        let e = m.iter().find(|e| e.irq == *irq).unwrap();
        assert!(
            e.msix && e.maskbit && e.host_masked && e.guest_masked,
            "{e:?}"
        );
        assert_eq!(e.hw_masked, Some(true));
    }
    let l = lspci_devices(section(&s, "lspci -vvv"));
    let (_, (enable, count, masked)) = *l.iter().find(|(a, _)| *a == dev()).unwrap();
    assert_eq!((enable, count, masked), (true, 5, false));
}

#[test]
fn three_vectors_bound_to_an_hvm_guest_show_in_q_i_and_m() {
    let r = fixture("hvm-guest-3-vectors-bound");
    let dmesg = section(&report_sections(&r), "xl dmesg").to_string();
    let nic = pci_devices(&dmesg)
        .into_iter()
        .find(|e| e.sbdf == dev())
        .unwrap();
    let DumpOwner::Domain(guest) = nic.owner else {
        panic!("{nic:?}")
    };
    assert_eq!(nic.msi_irqs.len(), 3);
    let bound = irq_bindings(&dmesg);
    let mut pirqs: Vec<i32> = nic
        .msi_irqs
        .iter()
        .map(|irq| {
            let b = bound.iter().find(|b| b.irq == *irq).unwrap();
            assert!(b.msi);
            assert_eq!(b.guests.len(), 1);
            assert_eq!(b.guests[0].0, guest);
            b.guests[0].1
        })
        .collect();
    pirqs.sort_unstable();
    // Xen hands MSI pirqs out from the top of the guest's range down.
    assert_eq!(pirqs, [53, 54, 55]);
}

#[test]
fn after_the_seed_failure_the_nic_is_quarantined_and_masked() {
    let r = fixture("seed-function-mask-forced");
    let s = report_sections(&r);
    let nic = pci_devices(section(&s, "xl dmesg"))
        .into_iter()
        .find(|e| e.sbdf == dev())
        .unwrap();
    assert_eq!(nic.owner, DumpOwner::Io);
    assert!(nic.msi_irqs.is_empty());
    let l = lspci_devices(section(&s, "lspci -vvv"));
    let (_, m) = *l.iter().find(|(a, _)| *a == dev()).unwrap();
    assert_eq!(m, (false, 5, true), "Enable- Count=5 Masked+");
}

/// Xen prints a guest as `d%d:%3d(...)`: a pirq of three digits or more follows the
/// colon without a blank, and several guests are comma separated. Only the newest `i`
/// dump counts: an IRQ now `mapped, unbound` keeps no binding from an older one.
#[test]
fn irq_lines_name_every_guest_and_only_the_newest_dump_counts() {
    let b = irq_bindings(
        "(XEN)    IRQ:  28 vec:31 PCI-MSI         status=010 aff:{0}/{0-1} in-flight=0 d0:412(---)\n(XEN)    IRQ:  40 vec:49 PCI-MSI/-X      status=030 aff:{0}/{0-1} in-flight=0 d4: 55(-M-),d5:1024(P--)\n",
    );
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].guests, [(DomId(0), 412)]);
    assert_eq!(b[1].guests, [(DomId(4), 55), (DomId(5), 1024)]);
    let two = "(XEN) IRQ information:\n(XEN)    IRQ:  40 vec:49 PCI-MSI/-X      status=030 aff:{0}/{0-1} in-flight=0 d4: 55(-M-)\n(XEN) IRQ information:\n(XEN)    IRQ:  40 vec:49 PCI-MSI/-X      status=002 aff:{0}/{0-1} mapped, unbound\n";
    assert!(irq_bindings(two).is_empty(), "{:?}", irq_bindings(two));
}

#[test]
fn lines_of_other_shapes_are_skipped() {
    assert!(pci_devices("(XEN) 0000:zz:05.0 - d4 - node -1\n(XEN) hello").is_empty());
    assert!(msi_state("(XEN)  MSI-X  x vec=81 mask=1/ G/?").is_empty());
    assert!(irq_bindings("(XEN)    IRQ:  21 vec:c0 IO-APIC-level mapped, unbound").is_empty());
    assert_eq!(lspci_msix("MSI-X: Enable+ Count=x Masked-"), None);
    assert!(report_sections("no header\nat all").is_empty());
}

proptest! {
    /// Pasted text is untrusted: the readers never panic, whatever they are given.
    #[test]
    fn readers_never_panic(text in "(\\PC|\n|\\(XEN\\) |MSI-X|IRQ:|MSIs <|### | - d|mask=)*") {
        let _ = pci_devices(&text);
        let _ = irq_bindings(&text);
        let _ = msi_state(&text);
        let _ = lspci_devices(&text);
        let _ = report_sections(&text);
    }
}
