//! The toolstacks' own logs, read as findings: what users paste into bug reports. libxl's
//! messages (xl's `/var/log/xen/xl-NAME.log`, libvirt's `libxl/libxl-driver.log`: the same
//! `libxl: error: FILE:LINE:FUNC: Domain N:MESSAGE` lines), qemu-xen's
//! `/var/log/xen/qemu-dm-NAME.log` (`[BB:DD.F] FUNC: Error: MESSAGE`, the guest's slot) and
//! Xen's console (`xl dmesg`, `(XEN) ...`). Each known failure line becomes a finding with
//! its cause and fix, naming the device and the domain the line names; every other line is
//! ignored, never guessed at. The messages are the ones libxl (tools/libs/light/libxl_pci.c),
//! qemu-xen (hw/xen/xen_pt_msi.c) and Xen (xen/arch/x86/msi.c, xen/drivers/passthrough/pci.c)
//! print in the releases ptguard speaks.

use pci::Sbdf;

use super::Finding;

/// Which log a file is, by its name as the toolstack writes it (the content decides for
/// anything else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// xl's per-domain log (`xl-NAME.log`): libxl's lines for domain NAME.
    Xl { domain: String },
    /// qemu-xen's log (`qemu-dm-NAME.log`): the device model of domain NAME.
    QemuDm { domain: String },
    /// Anything else: libvirt's `libxl-driver.log`, `xl dmesg` output, a paste.
    Other,
}

impl LogSource {
    /// From a file's name (its last path component).
    pub fn of_file(path: &str) -> LogSource {
        let name = path.rsplit('/').next().unwrap_or(path);
        let strip = |prefix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(".log")
                .or_else(|| name.strip_prefix(prefix)?.split(".log.").next())
                .filter(|d| !d.is_empty())
                .map(str::to_string)
        };
        if let Some(domain) = strip("qemu-dm-") {
            return LogSource::QemuDm { domain };
        }
        if let Some(domain) = strip("xl-") {
            return LogSource::Xl { domain };
        }
        LogSource::Other
    }

    fn domain_name(&self) -> Option<&str> {
        match self {
            LogSource::Xl { domain } | LogSource::QemuDm { domain } => Some(domain),
            LogSource::Other => None,
        }
    }
}

/// The findings a log's known failure lines name; unknown lines are ignored. `file` is
/// the path the text came from (its name says whose log it is).
pub fn log_findings(file: &str, text: &str) -> Vec<Finding> {
    let source = LogSource::of_file(file);
    let mut out: Vec<Finding> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let Some(f) = libxl_line(line)
            .or_else(|| xen_line(line))
            .or_else(|| qemu_line(line, &source))
        else {
            continue;
        };
        let evidence = format!("{file}:{}: {}", n + 1, line.trim());
        // The same failure repeated (a retried start): one finding, each line as evidence.
        if let Some(prev) = out
            .iter_mut()
            .find(|p| p.code == f.code && p.sbdf == f.sbdf && p.problem == f.problem)
        {
            if prev.evidence.len() < 5 {
                prev.evidence.push(evidence);
            }
            continue;
        }
        let mut f = f;
        f.evidence.insert(0, evidence);
        out.push(f);
    }
    out
}

/// The log findings a present-state finding already explains: a forced mask Xen logged is
/// the `function-mask-forced` config space shows; a refused assign, the mask or the holder.
fn explains(present: &str, logged: &str) -> bool {
    matches!(
        (logged, present),
        ("mask-forced-logged", "function-mask-forced")
            | (
                "assign-refused",
                "function-mask-forced"
                    | "held-by-guest"
                    | "zombie-owner"
                    | "ledger-assignable-xen-held"
            )
    )
}

/// Xen's console lines as evidence for what the host shows now: each log finding joins
/// the present finding on the same device that explains it, as more evidence; one that
/// nothing present explains is history (a mask since repaired, a start since retried) and
/// is dropped. For a live host and a report's `xl dmesg`, whose console ring outlives
/// what it describes; the logs an operator names (`--log`) are read as findings instead.
pub fn merge_evidence(findings: &mut [Finding], logged: Vec<Finding>) {
    for l in logged {
        if let Some(f) = findings
            .iter_mut()
            .find(|f| f.sbdf.is_some() && f.sbdf == l.sbdf && explains(f.code, l.code))
        {
            for e in l.evidence {
                if !f.evidence.contains(&e) {
                    f.evidence.push(e);
                }
            }
        }
    }
}

/// `Domain N:` as libxl prefixes its per-domain messages.
fn libxl_domain(line: &str) -> Option<u32> {
    let rest = &line[line.find("Domain ")? + "Domain ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..]
        .starts_with(':')
        .then(|| digits.parse().ok())?
}

fn who(domain: Option<u32>) -> String {
    domain.map_or_else(|| "the guest".to_string(), |d| format!("d{d}"))
}

/// libxl prints a BDF as `%x:%x:%x.%x` (segment and bus unpadded) in some messages and
/// `%04x:%02x:%02x.%u` in others: either, as an `Sbdf`.
fn libxl_bdf(text: &str) -> Option<Sbdf> {
    let t = text.trim_matches(|c: char| !c.is_ascii_hexdigit());
    let (head, func) = t.rsplit_once('.')?;
    let mut parts = head.split(':');
    let (seg, bus, dev) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let (seg, bus, dev, func) = (hex(seg)?, hex(bus)?, hex(dev)?, func.parse::<u32>().ok()?);
    Sbdf::new(
        u16::try_from(seg).ok()?,
        u8::try_from(bus).ok()?,
        u8::try_from(dev).ok()?,
        u8::try_from(func).ok()?,
    )
    .ok()
}

/// The first word of `text` after `marker` that reads as a device address.
fn bdf_after(text: &str, marker: &str) -> Option<Sbdf> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.split_whitespace().find_map(libxl_bdf)
}

fn libxl_line(line: &str) -> Option<Finding> {
    // libxl's own lines name their source file (`libxl_pci.c:1802:device_pci_add_done:`).
    if !(line.contains("libxl") && line.contains(".c:")) {
        return None;
    }
    let d = libxl_domain(line);
    if line.contains("libxl__device_pci_add failed for PCI device") {
        let sbdf = bdf_after(line, "PCI device");
        let rc = line
            .rsplit_once("(rc ")
            .and_then(|(_, r)| r.trim_end_matches(')').parse::<i32>().ok());
        return Some(Finding::new(
            "toolstack-pci-add-failed",
            sbdf,
            format!(
                "libxl could not give {} to {}{}",
                sbdf.map_or("a PCI device".to_string(), |s| s.to_string()),
                who(d),
                rc.map_or(String::new(), |r| format!(" (rc {r})"))
            ),
            vec![],
            format!(
                "the lines before this one in the same log say which step failed; `ptguard doctor{}` checks the device, `ptguard preflight` the guest",
                sbdf.map_or(String::new(), |s| format!(" {s}"))
            ),
        ));
    }
    if line.contains("The kernel doesn't support reset from sysfs for PCI device") {
        let sbdf = bdf_after(line, "PCI device");
        // libxl__device_pci_reset passes the PCI segment where others pass the domain:
        // its `Domain N:` is not a domain.
        return Some(Finding::new(
            "no-reset-method",
            sbdf,
            format!(
                "libxl could not reset {}: it has no reset method Linux offers",
                sbdf.map_or("the device".to_string(), |s| s.to_string()),
            ),
            vec![],
            "the device goes from guest to guest unreset; `ptguard lspci --details` shows its reset methods; ptguard's teardown still releases and prepares Xen's MSI-X state".into(),
        ));
    }
    if line.contains(" is not assignable") && line.contains("PCI device") {
        let sbdf = bdf_after(line, "PCI device");
        return Some(Finding::new(
            "not-assignable",
            sbdf,
            format!(
                "libxl refused to give {} to {}: it is not assignable",
                sbdf.map_or("the device".to_string(), |s| s.to_string()),
                who(d)
            ),
            vec![],
            format!(
                "`xl pci-assignable-add {0}` (or `ptguard assignable-add {0}`) before giving it to a guest",
                sbdf.map_or("SBDF".to_string(), |s| s.to_string())
            ),
        ));
    }
    if line.contains("already assigned to a different guest?") {
        let sbdf = bdf_after(line, "PCI device");
        return Some(Finding::new(
            "held-by-guest",
            sbdf,
            format!(
                "libxl could not give {} to {}: Xen says another guest holds it",
                sbdf.map_or("the device".to_string(), |s| s.to_string()),
                who(d)
            ),
            vec![],
            format!(
                "`ptguard doctor{}` names the holder (a zombie domain, or a device given twice); detach it there first",
                sbdf.map_or(String::new(), |s| format!(" {s}"))
            ),
        ));
    }
    if line.contains("cannot be assigned - no IOMMU?") {
        let sbdf = bdf_after(line, "PCI device");
        return Some(Finding::new(
            "no-passthrough",
            sbdf,
            format!("{} has no IOMMU context for {}", who(d), sbdf.map_or("the device".to_string(), |s| s.to_string())),
            vec![],
            "create the domain with passthrough=\"enabled\" (or its pci=[...] list) in its xl config; check that Xen booted with the IOMMU on (`xl info`: virt_caps hvm_directio)".into(),
        ));
    }
    if line.contains("xc_physdev_map_pirq irq=") {
        return Some(Finding::new(
            "toolstack-map-failed",
            None,
            format!("libxl could not map a device's INTx for {}", who(d)),
            vec![],
            "the device's legacy interrupt is not routed to the guest; see `xl dmesg` for Xen's reason, and `ptguard doctor` for the device".into(),
        ));
    }
    None
}

/// Xen's console lines (`(XEN) ...`, with or without a timestamp): only a line Xen opened
/// counts, never a guest's that merely contains `(XEN)` (`crate::xen_dump::xen_lines`).
fn xen_line(line: &str) -> Option<Finding> {
    let msg = crate::xen_dump::xen_lines(line).next()?;
    // `d9: assign (0000:00:05.0) failed (-16)`: the toolstack's XEN_DOMCTL_assign_device.
    if let Some(rest) = msg.strip_prefix('d') {
        let (dom, rest) = rest.split_once(": assign (")?;
        let dom: u32 = dom.parse().ok()?;
        let (dev, rest) = rest.split_once(") failed (")?;
        let errno: i32 = rest.trim_end_matches(')').parse().ok()?;
        let sbdf: Option<Sbdf> = dev.parse().ok();
        let (cause, fix) = if errno == -16 {
            ("-EBUSY: on Xen 4.13 and later, most often the device's MSI-X Function Mask is set (Xen forced it when the last guest's vectors were torn down with memory decoding off), or another domain still holds it",
             format!("`ptguard doctor {0}` says which: `ptguard repair {0}` clears a forced mask; a holder must let go first", sbdf.map_or("SBDF".into(), |s| s.to_string())))
        } else {
            (
                "Xen refused the assignment",
                format!(
                    "`ptguard doctor {}` and `xl dmesg` around this line",
                    sbdf.map_or("SBDF".into(), |s| s.to_string())
                ),
            )
        };
        return Some(Finding::new(
            "assign-refused",
            sbdf,
            format!("Xen refused to assign {dev} to d{dom} ({errno}): {cause}"),
            vec![],
            fix,
        ));
    }
    // `cannot mask IRQ 25: masking MSI-X on Dom32753's 0000:00:05.0`
    if msg.starts_with("cannot mask IRQ ") && msg.contains("masking MSI-X on ") {
        let dev = msg.rsplit(' ').next().unwrap_or_default();
        let sbdf: Option<Sbdf> = dev.parse().ok();
        return Some(Finding::new(
            "mask-forced-logged",
            sbdf,
            format!("Xen could not mask a vector of {dev} in its MSI-X table (memory decoding was off) and set the device's Function Mask instead"),
            vec![],
            format!(
                "the next guest gets no interrupt from it (or, on Xen 4.13+, cannot be given it): `ptguard repair {0}`; `ptguard watch` (or `hook pre-unplug`) turns decoding on before vectors are torn down",
                sbdf.map_or("SBDF".into(), |s| s.to_string())
            ),
        ));
    }
    None
}

/// qemu-xen's passthrough errors (`[00:05.0] FUNC: Error: ...`, the guest's slot).
fn qemu_line(line: &str, source: &LogSource) -> Option<Finding> {
    let msg = &line[line.find(": Error: ")? + ": Error: ".len()..];
    let slot = line
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map(|(s, _)| s.to_string());
    let whose = source
        .domain_name()
        .map_or_else(|| "a guest".to_string(), |n| format!("domain {n}"));
    let at = slot.map_or_else(String::new, |s| format!(" (guest slot {s})"));
    if msg.starts_with("Mapping of MSI") {
        return Some(Finding::new(
            "dm-map-failed",
            None,
            format!("qemu-xen could not map an MSI/MSI-X vector of {whose}'s device{at}: that vector never interrupts"),
            vec![],
            "`xl dmesg` says why: no pirq left (`ptguard doctor` reports pirq-budget: raise extra_guest_irqs=), or a device Xen holds masked (`ptguard doctor` reports function-mask-forced)".into(),
        ));
    }
    if msg.starts_with("Unmapping of MSI") {
        let pirq = msg
            .split_whitespace()
            .skip_while(|w| *w != "pirq")
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        return Some(Finding::new(
            "dm-unmap-failed",
            None,
            format!(
                "qemu-xen could not unmap{} of {whose}'s device{at}: it stays mapped until the domain is destroyed, and release_msix answers -EBUSY until then",
                pirq.map_or(" a pirq".to_string(), |p| format!(" pirq {p}"))
            ),
            vec![],
            "once the guest is shut down for good, `ptguard sweep DOMID` (or `ptguard watch`, which does it) unmaps it before the device is reset".into(),
        ));
    }
    if msg.starts_with("Updating of MSI") || msg.starts_with("Unbinding of MSI") {
        return Some(Finding::new(
            "dm-bind-failed",
            None,
            format!("qemu-xen could not bind (or unbind) an MSI/MSI-X vector of {whose}'s device{at} to the guest"),
            vec![],
            "`xl dmesg` says why; a vector bound and never unbound stays so until the domain is destroyed: `ptguard watch` unbinds what a dead device model left".into(),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_are_known_by_their_names() {
        assert_eq!(
            LogSource::of_file("/var/log/xen/xl-web1.log"),
            LogSource::Xl {
                domain: "web1".into()
            }
        );
        assert_eq!(
            LogSource::of_file("qemu-dm-web1.log.1"),
            LogSource::QemuDm {
                domain: "web1".into()
            }
        );
        assert_eq!(LogSource::of_file("libxl-driver.log"), LogSource::Other);
        assert_eq!(LogSource::of_file("xl-.log"), LogSource::Other);
    }

    #[test]
    fn libxl_writes_bdfs_both_ways() {
        let s: Sbdf = "0000:03:00.0".parse().unwrap();
        assert_eq!(libxl_bdf("0:3:0.0"), Some(s));
        assert_eq!(libxl_bdf("0000:03:00.0?"), Some(s));
        assert_eq!(libxl_bdf("'0:3:0.0'"), Some(s));
        assert_eq!(libxl_bdf("3:0.0"), None);
        assert_eq!(libxl_bdf("0:3:0.9"), None);
    }

    proptest::proptest! {
        /// Logs are pasted by anyone: any text, pieces of the known lines included, never
        /// panics, and yields only findings of known codes naming well-formed devices.
        #[test]
        fn any_text_reads_without_panic_and_only_known_codes(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("libxl: error: libxl_pci.c:1803:f: Domain ".to_string()),
                    proptest::strategy::Just("libxl__device_pci_add failed for PCI device ".to_string()),
                    proptest::strategy::Just(" is not assignable".to_string()),
                    proptest::strategy::Just("The kernel doesn't support reset from sysfs for PCI device ".to_string()),
                    proptest::strategy::Just("(XEN) d".to_string()),
                    proptest::strategy::Just(": assign (".to_string()),
                    proptest::strategy::Just(") failed (".to_string()),
                    proptest::strategy::Just("cannot mask IRQ 3: masking MSI-X on Dom1's ".to_string()),
                    proptest::strategy::Just("[00:05.0] f: Error: ".to_string()),
                    proptest::strategy::Just("Unmapping of MSI-X pirq ".to_string()),
                    proptest::strategy::Just("Mapping of MSI".to_string()),
                    proptest::strategy::Just("\n".to_string()),
                    "[0-9a-f:.()-]{0,12}",
                    "\\PC{0,8}",
                ],
                0..24,
            ),
            name in "(xl-|qemu-dm-)?[a-z]{0,6}(\\.log)?",
        ) {
            let text: String = pieces.concat();
            for f in log_findings(&name, &text) {
                proptest::prop_assert!(
                    super::super::CODES.iter().any(|(c, _, _)| *c == f.code),
                    "{}", f.code
                );
                proptest::prop_assert!(!f.evidence.is_empty());
            }
        }
    }

    #[test]
    fn lines_nobody_knows_are_ignored() {
        let text = "libxl: debug: libxl_pci.c:1:whatever: Domain 3:something\n\
                    (XEN) d3: something else\n\
                    [00:05.0] xen_pt_realize: Assigning real physical device 03:00.0\n\
                    random text with PCI device 0:3:0.0 is not assignable but no libxl\n";
        assert!(log_findings("x.log", text).is_empty());
    }
}
