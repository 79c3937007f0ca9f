//! Readers for what Xen and dom0 tools print about passthrough devices: the `xl dmesg`
//! dumps of debug keys `Q` (PCI devices: owner and MSI IRQs), `i` (IRQ bindings:
//! domain and pirq) and `M` (MSI state: per-vector masks), lspci's MSI-X line, and the
//! report format `### COMMAND` + output that `ptguard doctor --from-report` will read.
//!
//! Pure text in, values out: lines they do not recognise are skipped, never guessed at, so
//! a truncated or foreign paste gives fewer facts, not wrong ones. Tested on dumps captured
//! from real Xen 4.17.5 by the test bed (`tests/fixtures/xen-4.17.5/`).

use pci::Sbdf;
use serde::Serialize;
use xen::DomId;

/// Who owns a device, as the `Q` dump names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "domid", rename_all = "lowercase")]
pub enum DumpOwner {
    /// `DomIO` (quarantine).
    Io,
    /// `DomXEN` (hidden from dom0).
    Xen,
    Domain(DomId),
}

/// One line of the `Q` dump: `0000:00:05.0 - d4 - node -1  - MSIs < 25 26 27 >`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciDumpEntry {
    pub sbdf: Sbdf,
    pub owner: DumpOwner,
    /// Xen's IRQ numbers of the device's MSI/MSI-X vectors.
    pub msi_irqs: Vec<u32>,
}

/// One line of the `i` dump for a guest-bound IRQ: `IRQ: 25 vec:81 PCI-MSI/-X ... d4: 55(-M-)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IrqBinding {
    pub irq: u32,
    pub msi: bool,
    /// (domain, pirq) pairs the IRQ is bound to.
    pub guests: Vec<(DomId, i32)>,
}

/// One line of the `M` dump: ` MSI-X   25 vec=81 ... mask=1/ G/?`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MsiDumpEntry {
    pub irq: u32,
    pub msix: bool,
    /// The vector can be masked individually.
    pub maskbit: bool,
    pub host_masked: bool,
    pub guest_masked: bool,
    /// The hardware mask bit as Xen last read it (`None`: `?`, not readable).
    pub hw_masked: Option<bool>,
}

/// The body of each line Xen itself printed, without its `(XEN) ` prefix, its console
/// timestamp and leading blanks. Xen starts every line it prints with `(XEN) ` and every
/// line a guest prints (`console_io`, the HVM debug port) with `(dN) `
/// (`xen/drivers/char/console.c`: `printk`, `guest_printk`), and strips a guest's
/// non-printable characters, so a guest cannot start a line of its own with `(XEN)`.
/// A line counts only when `(XEN)` opens it (after a timestamp a log collector put in
/// front, `[...]`): a guest line that merely contains `(XEN)` is the guest's.
pub fn xen_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let l = l.trim_end_matches('\r');
        let l = strip_timestamp(l);
        let body = strip_timestamp(l.strip_prefix("(XEN)")?.trim_start());
        Some(body.trim())
    })
}

/// `l` without one leading `[...] ` timestamp (Xen's `console_timestamps=`, or a log
/// collector's).
fn strip_timestamp(l: &str) -> &str {
    match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if !stamp.contains(['(', ')']) => rest,
        _ => l,
    }
}

/// The newest `Q` dump's entries (a console ring holds several; the last line seen for a
/// device wins).
pub fn pci_devices(text: &str) -> Vec<PciDumpEntry> {
    let mut out: Vec<PciDumpEntry> = Vec::new();
    for l in xen_lines(text) {
        let Some(e) = parse_pci_line(l) else { continue };
        out.retain(|x| x.sbdf != e.sbdf);
        out.push(e);
    }
    out
}

fn parse_pci_line(l: &str) -> Option<PciDumpEntry> {
    let mut parts = l.split(" - ");
    let sbdf: Sbdf = parts.next()?.trim().parse().ok()?;
    let owner_text = parts.next()?.trim();
    let owner = if owner_text.starts_with("DomIO") {
        DumpOwner::Io
    } else if owner_text.starts_with("DomXEN") {
        DumpOwner::Xen
    } else {
        DumpOwner::Domain(DomId(owner_text.strip_prefix('d')?.parse().ok()?))
    };
    let msi_irqs = match l.split_once("MSIs <") {
        Some((_, rest)) => rest
            .split('>')
            .next()?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .ok()?,
        None => Vec::new(),
    };
    Some(PciDumpEntry {
        sbdf,
        owner,
        msi_irqs,
    })
}

/// The guest bindings of the newest `i` dump: only the lines after the last
/// `IRQ information:` header count (an IRQ freed since an older dump, or one now
/// `mapped, unbound`, must not keep an older dump's binding). Without a header, every
/// line (a pasted fragment).
pub fn irq_bindings(text: &str) -> Vec<IrqBinding> {
    let lines: Vec<&str> = xen_lines(text).collect();
    let from = lines
        .iter()
        .rposition(|l| *l == "IRQ information:")
        .map_or(0, |i| i + 1);
    let mut out: Vec<IrqBinding> = Vec::new();
    for l in &lines[from..] {
        let Some(b) = parse_irq_line(l) else { continue };
        out.retain(|x| x.irq != b.irq);
        out.push(b);
    }
    out
}

fn parse_irq_line(l: &str) -> Option<IrqBinding> {
    let rest = l.strip_prefix("IRQ:")?.trim_start();
    let (irq, rest) = rest.split_once(' ')?;
    let irq = irq.parse().ok()?;
    let msi = rest.contains("PCI-MSI");
    // Xen prints the guests after the in-flight count as `d%d:%3d(%c%c%c)`, comma
    // separated: `d4: 55(-M-)`, `d0:412(---)`.
    let (_, guests_text) = rest.split_once("in-flight=")?;
    let (_, guests_text) = guests_text.split_once(' ')?;
    let mut guests = Vec::new();
    for g in guests_text.split(',') {
        let Some((d, p)) = g.trim().strip_prefix('d').and_then(|g| g.split_once(':')) else {
            continue;
        };
        let Some(p) = p.trim_start().split('(').next() else {
            continue;
        };
        if let (Ok(d), Ok(p)) = (d.parse::<u16>(), p.parse::<i32>()) {
            guests.push((DomId(d), p));
        }
    }
    (!guests.is_empty()).then_some(IrqBinding { irq, msi, guests })
}

/// The entries of the newest `M` dump.
pub fn msi_state(text: &str) -> Vec<MsiDumpEntry> {
    let mut out: Vec<MsiDumpEntry> = Vec::new();
    for l in xen_lines(text) {
        let Some(e) = parse_msi_line(l) else { continue };
        out.retain(|x| x.irq != e.irq);
        out.push(e);
    }
    out
}

fn parse_msi_line(l: &str) -> Option<MsiDumpEntry> {
    let (msix, rest) = if let Some(r) = l.strip_prefix("MSI-X") {
        (true, r)
    } else {
        (false, l.strip_prefix("MSI")?)
    };
    let mut words = rest.split_whitespace();
    let irq = words.next()?.parse().ok()?;
    let mask = rest.split("mask=").nth(1)?;
    // "1/HG/1": maskbit / host and guest flags (two characters) / hardware bit.
    let mut fields = mask.splitn(3, '/');
    let maskbit = fields.next()?.trim() == "1";
    let flags = fields.next()?;
    let hw = fields.next()?.chars().next()?;
    Some(MsiDumpEntry {
        irq,
        msix,
        maskbit,
        host_masked: flags.contains('H'),
        guest_masked: flags.contains('G'),
        hw_masked: match hw {
            '1' => Some(true),
            '0' => Some(false),
            _ => None,
        },
    })
}

/// lspci's MSI-X capability line: (Enable, Count, Masked), e.g.
/// `Capabilities: [a0] MSI-X: Enable- Count=5 Masked+`.
pub fn lspci_msix(line: &str) -> Option<(bool, u16, bool)> {
    let rest = line.split("MSI-X: ").nth(1)?;
    let mut enable = None;
    let mut count = None;
    let mut masked = None;
    for w in rest.split_whitespace() {
        if let Some(v) = w.strip_prefix("Enable") {
            enable = Some(v == "+");
        } else if let Some(v) = w.strip_prefix("Count=") {
            count = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("Masked") {
            masked = Some(v == "+");
        }
    }
    Some((enable?, count?, masked?))
}

/// The MSI-X state lspci shows for each device of an `lspci -vvv` output (addresses as
/// lspci prints them, with or without the domain).
pub fn lspci_devices(text: &str) -> Vec<(Sbdf, (bool, u16, bool))> {
    let mut out = Vec::new();
    let mut current: Option<Sbdf> = None;
    for l in text.lines() {
        if !l.starts_with(char::is_whitespace) {
            current = l.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let (Some(s), Some(m)) = (current, lspci_msix(l)) {
            out.push((s, m));
        }
    }
    out
}

/// Splits a report into its sections: `### COMMAND` lines, each followed by that
/// command's output. Text before the first header is ignored.
pub fn report_sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for l in text.lines() {
        if let Some(cmd) = l.strip_prefix("### ") {
            out.push((cmd.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(l);
            body.push('\n');
        }
    }
    out
}
