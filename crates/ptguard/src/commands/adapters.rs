//! The toolstacks' own hook points, met where they call: libvirt's libxl hook (`hook
//! libvirt`, arguments and the domain XML on stdin as libvirt passes them). xenopsd's
//! `pci-flr-script` is a shell script in `packaging/` that calls `hook pre-reset`.

use std::io::{Read, Write};

use pci::Sbdf;

use crate::cli::{Cli, LibvirtHookArgs};

/// The most domain XML read from stdin: libvirt's own limit for a domain definition is
/// 10 MiB (`VIR_DOMAIN_XML_MAX`-sized buffers); anything longer is not one.
const MAX_DOMAIN_XML: u64 = 16 << 20;

/// The PCI devices a libvirt domain definition gives its guest: each `<hostdev
/// mode='subsystem' type='pci'>` and each `<interface type='hostdev'>` (an SR-IOV VF given
/// as a NIC), by their `<source><address domain= bus= slot= function=/>`.
pub fn libvirt_pci_devices(xml: &str) -> Result<Vec<Sbdf>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(format!(
            "not a libvirt domain definition (its root is <{}>)",
            root.tag_name().name()
        ));
    }
    let mut out = Vec::new();
    let Some(devices) = root.children().find(|n| n.has_tag_name("devices")) else {
        return Ok(out);
    };
    for d in devices.children().filter(roxmltree::Node::is_element) {
        let pci = match d.tag_name().name() {
            "hostdev" => {
                d.attribute("mode") == Some("subsystem") && d.attribute("type") == Some("pci")
            }
            "interface" => d.attribute("type") == Some("hostdev"),
            _ => false,
        };
        if !pci {
            continue;
        }
        let Some(address) = d
            .children()
            .find(|n| n.has_tag_name("source"))
            .and_then(|s| s.children().find(|n| n.has_tag_name("address")))
        else {
            return Err(format!(
                "a PCI <{}> without <source><address/>",
                d.tag_name().name()
            ));
        };
        // An <interface>'s address may name another bus type (usb): only PCI is ours.
        if address.attribute("type").is_some_and(|t| t != "pci") {
            continue;
        }
        let field = |name: &str, max: u32| -> Result<u32, String> {
            let text = address
                .attribute(name)
                .ok_or_else(|| format!("<address> without {name}="))?;
            let v = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .map_err(|_| format!("<address {name}='{text}'>: not a number"))?;
            if v > max {
                return Err(format!("<address {name}='{text}'>: more than {max:#x}"));
            }
            Ok(v)
        };
        let (dom, bus, slot, func) = (
            field("domain", 0xffff)?,
            field("bus", 0xff)?,
            field("slot", 0x1f)?,
            field("function", 7)?,
        );
        // The bounds were checked above, so each fits its field.
        let sbdf = Sbdf::new(dom as u16, bus as u8, slot as u8, func as u8)
            .map_err(|e| format!("<address>: {e}"))?;
        if !out.contains(&sbdf) {
            out.push(sbdf);
        }
    }
    Ok(out)
}

/// Whether ptguard acts on this libvirt operation: before libvirt resets the devices it
/// is about to give (`prepare begin`) and before it resets and reattaches those of a
/// guest that is off (`stopped end`).
pub fn libvirt_acts_on(operation: &str, sub_operation: &str) -> bool {
    matches!(
        (operation, sub_operation),
        ("prepare", "begin") | ("stopped", "end")
    )
}

/// `ptguard hook libvirt DOMAIN OPERATION SUB-OPERATION EXTRA < domain.xml`.
pub fn libvirt(cli: &Cli, a: &LibvirtHookArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if !libvirt_acts_on(&a.operation, &a.sub_operation) {
        return Ok(());
    }
    let mut xml = String::new();
    let read = std::io::stdin()
        .take(MAX_DOMAIN_XML + 1)
        .read_to_string(&mut xml);
    let devices = match read {
        Ok(n) if n as u64 > MAX_DOMAIN_XML => Err(format!(
            "more than {MAX_DOMAIN_XML} bytes on stdin: not a domain definition"
        )),
        Ok(_) => libvirt_pci_devices(&xml),
        Err(e) => Err(format!("cannot read the domain XML on stdin: {e}")),
    };
    let devices = match devices {
        Ok(d) => d,
        Err(e) => {
            // Never stop libvirt's start or cleanup for ptguard's sake: say it, exit 0.
            eprintln!(
                "ptguard: libvirt hook for {} ({} {}): {e}; nothing done",
                a.domain, a.operation, a.sub_operation
            );
            return Ok(());
        }
    };
    for sbdf in devices {
        if let Err(e) = crate::commands::lifecycle::hook_pre_reset(cli, sbdf, false, out) {
            eprintln!(
                "ptguard: libvirt hook for {} ({} {}): {sbdf}: {e:#}",
                a.domain, a.operation, a.sub_operation
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='xen'>
  <name>guest1</name>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/g.img'/></disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x1234'/><product id='0xbeef'/></source>
    </hostdev>
    <interface type='hostdev' managed='yes'>
      <source><address type='pci' domain='0x0001' bus='0x81' slot='0x10' function='0x2'/></source>
    </interface>
    <interface type='bridge'><source bridge='xenbr0'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn the_pci_devices_of_a_domain_are_its_pci_hostdevs_and_vf_interfaces() {
        let got = libvirt_pci_devices(DOMAIN).unwrap();
        let want: Vec<Sbdf> = ["0000:03:00.0", "0001:81:10.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            libvirt_pci_devices("<domain type='xen'><name>x</name></domain>").unwrap(),
            vec![]
        );
    }

    #[test]
    fn bad_domain_xml_is_a_clear_error() {
        for (xml, says) in [
            ("not xml", "not XML"),
            ("<network/>", "not a libvirt domain definition"),
            (
                "<domain><devices><hostdev mode='subsystem' type='pci'/></devices></domain>",
                "without <source><address/>",
            ),
            (
                "<domain><devices><hostdev mode='subsystem' type='pci'><source><address domain='0x0' bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>",
                "bus='0x100'",
            ),
            (
                "<domain><devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0'/></source></hostdev></devices></domain>",
                "without function=",
            ),
            (
                "<domain><devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='x3' slot='0' function='0'/></source></hostdev></devices></domain>",
                "not a number",
            ),
        ] {
            let e = libvirt_pci_devices(xml).unwrap_err();
            assert!(e.contains(says), "{xml}: {e}");
        }
    }

    proptest::proptest! {
        /// libvirt's XML comes from whoever defined the domain: any address attributes,
        /// any text, never panic; what is accepted is a device address in range.
        #[test]
        fn any_domain_xml_reads_without_panic(
            dom in "(0x)?[0-9a-fA-F]{0,6}|[0-9]{0,7}|.{0,4}",
            bus in "(0x)?[0-9a-fA-F]{0,4}|.{0,4}",
            slot in "(0x)?[0-9a-fA-F]{0,3}",
            func in "(0x)?[0-9]{0,2}",
            junk in "\\PC{0,40}",
        ) {
            let esc = |v: &str| v.replace('&', "&amp;").replace('\'', "&apos;").replace('<', "&lt;");
            let xml = format!(
                "<domain><devices><hostdev mode='subsystem' type='pci'><source><address domain='{}' bus='{}' slot='{}' function='{}'/></source></hostdev></devices></domain>",
                esc(&dom), esc(&bus), esc(&slot), esc(&func)
            );
            if let Ok(devices) = libvirt_pci_devices(&xml) {
                proptest::prop_assert_eq!(devices.len(), 1);
            }
            let _ = libvirt_pci_devices(&junk);
            let _ = libvirt_pci_devices(&format!("<domain>{junk}</domain>"));
        }
    }

    #[test]
    fn only_the_operations_before_a_reset_are_acted_on() {
        assert!(libvirt_acts_on("prepare", "begin"));
        assert!(libvirt_acts_on("stopped", "end"));
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("release", "end"),
            ("migrate", "begin"),
            ("reconnect", "begin"),
            ("prepare", "end"),
        ] {
            assert!(!libvirt_acts_on(op, sub), "{op} {sub}");
        }
    }
}
