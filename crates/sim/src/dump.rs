//! Xen's debug-key dumps of the simulated host, in the text Xen 4.17.5 prints (compared
//! with dumps captured from real Xen: `crates/engine/tests/fixtures/xen-4.17.5/`):
//! `Q` the PCI devices with owner and MSI IRQs, `i` the IRQs bound to guests, `M` the
//! per-vector MSI state. Unknown keys print nothing, as Xen ignores unbound keys.

use pci::Sbdf;
use xen::DomId;

use crate::world::World;

impl World {
    /// The lines `keys` would add to Xen's console, without the `(XEN) ` prefix.
    pub fn debug_dump(&self, keys: &str) -> Vec<String> {
        let mut out = Vec::new();
        for k in keys.chars() {
            match k {
                'Q' => self.dump_pci(&mut out),
                'i' => self.dump_irqs(&mut out),
                'M' => self.dump_msi(&mut out),
                _ => {}
            }
        }
        out
    }

    fn msi_irqs_of(&self, sbdf: Sbdf) -> Vec<u32> {
        self.descs
            .values()
            .filter(|d| d.sbdf == sbdf)
            .map(|d| d.irq)
            .collect()
    }

    fn dump_pci(&self, out: &mut Vec<String>) {
        out.push("==== PCI devices ====".into());
        out.push("==== segment 0000 ====".into());
        for (sbdf, dev) in self.devices.iter().rev() {
            let owner = match dev.xen.owner {
                DomId::IO => "DomIO:8002".to_string(),
                d => d.to_string(),
            };
            let irqs = self.msi_irqs_of(*sbdf);
            let msis = if irqs.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = irqs.iter().map(u32::to_string).collect();
                format!(" - MSIs < {} >", list.join(" "))
            };
            out.push(format!("{sbdf} - {owner} - node -1 {msis}"));
        }
    }

    fn dump_irqs(&self, out: &mut Vec<String>) {
        out.push("IRQ information:".into());
        for d in self.descs.values() {
            let bound = self
                .domains
                .get(&d.domid)
                .and_then(|dom| dom.pirqs.get(&d.pirq))
                // Xen names the guest only once the IRQ has a guest action
                // (`pirq_guest_bind`: an HVM dpci bind or a PV event channel); a pirq
                // that is only mapped prints `mapped, unbound` (4.17 `dump_irqs`).
                .filter(|p| p.dpci.is_some() || p.evtchn)
                .map(|p| if p.dpci.is_some() { "-M-" } else { "---" });
            let tail = match bound {
                Some(flags) => format!("in-flight=0 {}:{:>3}({flags})", d.domid, d.pirq),
                None => "mapped, unbound".into(),
            };
            out.push(format!(
                "   IRQ: {:>3} vec:{:02x} PCI-MSI/-X      status=030 aff:{{0}}/{{0-1}} {tail}",
                d.irq,
                vector(d.irq)
            ));
        }
    }

    fn dump_msi(&self, out: &mut Vec<String>) {
        out.push("MSI information:".into());
        for d in self.descs.values() {
            let dev = self.devices.get(&d.sbdf);
            // Xen reads the table's mask bit only while the device is the hardware
            // domain's: a guest's shows `?`.
            let hw = match dev {
                Some(dev) if dev.xen.owner == DomId::DOM0 => dev
                    .hw
                    .table
                    .get(usize::from(d.entry))
                    .map_or('?', |e| if e.masked { '1' } else { '0' }),
                _ => '?',
            };
            out.push(format!(
                " MSI-X  {:>3} vec={:02x} lowest  edge   assert  log lowest dest=00000001 mask=1/{}{}/{hw}",
                d.irq,
                vector(d.irq),
                if d.host_masked { 'H' } else { ' ' },
                if d.guest_masked { 'G' } else { ' ' },
            ));
        }
    }
}

impl World {
    /// Whether Xen's and the hardware's MSI-X state of `sbdf` is what a fresh guest needs:
    /// no forced mask (Xen's `host_maskall`, the hardware Function Mask), only pciback's
    /// prepare reference in `used_entries`, no vector still mapped. The truth of the
    /// simulated host, read by the invariant checker directly.
    pub fn msix_clean(&self, sbdf: Sbdf) -> Result<(), String> {
        let d = self.device(sbdf).ok_or("device vanished")?;
        if d.hw.msix.is_none() {
            return Ok(());
        }
        if d.xen.host_maskall {
            return Err("Xen's host_maskall is set".into());
        }
        if d.hw.function_mask() {
            return Err("Function Mask is set in hardware".into());
        }
        if d.xen.used_entries != 1 {
            return Err(format!("used_entries is {}, not 1", d.xen.used_entries));
        }
        let stale = self.descs.values().filter(|x| x.sbdf == sbdf).count();
        if stale > 0 {
            return Err(format!("{stale} vectors still mapped"));
        }
        Ok(())
    }
}

/// A plausible vector for an IRQ (Xen's are assigned at run time; nothing reads them).
fn vector(irq: u32) -> u32 {
    0x30 + irq % 0xc0
}
