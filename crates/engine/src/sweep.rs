//! The sweep: unmapping whatever pirqs a finished domain still holds, for the bindings no
//! ledger knows (a stock device model binds by direct hypercalls and never unmaps on exit).
//!
//! Xen offers no call that lists a domain's pirqs, but `PHYSDEVOP_unmap_pirq` works on a
//! dying domain, force-unbinds a still-bound pirq and answers `-EINVAL` for one that is not
//! mapped. A guest's pirq space is `nr_irqs_gsi + extra_guest_irqs` and MSI pirqs are handed
//! out from the top down, so the MSI range is `[nr_irqs_gsi, nr_pirqs)`. Only a domain that
//! will never run again is swept: its pirqs are Xen's to free anyway; and only an HVM
//! one: a PV guest's pirqs are dom0's pciback's.

use serde::Serialize;
use xen::{DomId, Errno, Hypervisor, Pirq};

use crate::engine::Engine;
use crate::{EngineError, Liveness, NoticeKind};

type Result<T> = std::result::Result<T, EngineError>;

/// `DEFAULT_EXTRA_DOMU_IRQS` (xen/common/domain.c, the same from 4.11 to 4.22).
pub const DEFAULT_EXTRA_GUEST_IRQS: u32 = 32;
/// Since Xen 4.19 (commit 17f6d398f7, xen/common/domain.c at RELEASE-4.19.0)
/// `extra_guest_irqs=` is bounded: a domU's pirqs stop at `min(nr_irqs, PAGE_SIZE * 8)`,
/// the capacity of the pirq EOI bitmap, and Xen logs `domU IRQs bounded to N` when it cuts
/// a larger value. Earlier releases take any value.
pub const PIRQ_CAP_SINCE_4_19: u32 = 4096 * 8;

/// A guest's MSI pirq budget on the running Xen: `extra_guest_irqs=` (default 32), and
/// how far that option may be raised on this release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PirqBudget {
    /// `extra_guest_irqs=` from Xen's command line, `None` when not set.
    pub extra_guest_irqs: Option<u32>,
    /// The running Xen, when known (`XENVER_version`, or `xl info` in a report).
    pub xen: Option<xen::XenVersion>,
}

impl PirqBudget {
    /// A guest's MSI pirqs.
    pub fn budget(&self) -> u32 {
        self.extra_guest_irqs.unwrap_or(DEFAULT_EXTRA_GUEST_IRQS)
    }

    /// The most pirqs a domU can have in all on this release: `Some` from 4.19 on.
    pub fn cap(&self) -> Option<u32> {
        let v = self.xen?;
        ((v.major, v.minor) >= (4, 19)).then_some(PIRQ_CAP_SINCE_4_19)
    }

    /// What to tell an operator whose guest needs `want` MSI pirqs.
    pub fn advice(&self, want: u32) -> String {
        let raise = format!(
            "add `extra_guest_irqs={want}` (at least the total of a guest's vectors) to Xen's command line"
        );
        match (self.xen, self.cap()) {
            (Some(v), Some(cap)) if want > cap => format!(
                "enable fewer vectors: Xen {v} gives a guest at most {cap} pirqs in all (extra_guest_irqs= is bounded there since 4.19, by nr_irqs and the pirq EOI bitmap's {cap} bits)"
            ),
            (Some(v), Some(cap)) => format!(
                "{raise}; Xen {v} bounds it (since 4.19) to {cap} pirqs in all, fewer on a host with fewer IRQs, and says `domU IRQs bounded to N` when it cuts it"
            ),
            (Some(v), None) => format!("{raise} (Xen {v} takes any value)"),
            (None, _) => format!(
                "{raise}; Xen 4.19 and later bound it to {PIRQ_CAP_SINCE_4_19} pirqs in all"
            ),
        }
    }
}

/// When Xen's "IRQ limits" line has left the console ring: the sweep starts at pirq 0
/// (unmapping a finished domain's GSI pirqs is harmless) and covers this many GSIs, more
/// than any IO-APIC layout gives.
pub const FALLBACK_NR_IRQS_GSI: u32 = 1024;

/// The pirqs a sweep tries, and where the bounds came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PirqRange {
    pub first: u32,
    pub end: u32,
    /// `nr_irqs_gsi` from Xen's boot line, or `None` when it could not be read.
    pub nr_irqs_gsi: Option<u32>,
    pub extra_guest_irqs: u32,
}

impl PirqRange {
    /// From Xen's command line (`extra_guest_irqs=`) and console (`IRQ limits: N GSI`).
    pub fn learn(hv: &dyn Hypervisor) -> PirqRange {
        let extra = hv
            .command_line()
            .ok()
            .and_then(|c| crate::doctor::extra_guest_irqs(&c))
            .unwrap_or(DEFAULT_EXTRA_GUEST_IRQS);
        let gsi = hv.read_console().ok().and_then(|c| nr_irqs_gsi(&c));
        PirqRange::new(gsi, extra)
    }

    pub fn new(nr_irqs_gsi: Option<u32>, extra_guest_irqs: u32) -> PirqRange {
        let (first, gsis) = match nr_irqs_gsi {
            Some(n) => (n, n),
            None => (0, FALLBACK_NR_IRQS_GSI),
        };
        PirqRange {
            first,
            end: gsis.saturating_add(extra_guest_irqs),
            nr_irqs_gsi,
            extra_guest_irqs,
        }
    }
}

/// `nr_irqs_gsi` from the console line Xen 4.17 prints at boot (`arch/x86/io_apic.c`):
/// `IRQ limits: 24 GSI, 1528 MSI/MSI-X`. Only a line Xen printed counts (a guest's
/// `(d5) IRQ limits: 4000 GSI` must not move the sweep), and of those the newest: the
/// ring holds one boot, a capture may hold several.
pub fn nr_irqs_gsi(console: &str) -> Option<u32> {
    let lines: Vec<&str> = crate::xen_dump::xen_lines(console).collect();
    lines.into_iter().rev().find_map(|l| {
        let rest = l.strip_prefix("IRQ limits: ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// What a sweep did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub domid: DomId,
    pub range: PirqRange,
    /// The pirqs that were still mapped and are now unmapped.
    pub unmapped: Vec<Pirq>,
    /// The domain was already gone: Xen had freed everything.
    pub domain_gone: bool,
    /// A PV guest: its pirqs are pciback's, nothing was tried.
    pub pv: bool,
}

impl Engine<'_> {
    /// Unmaps every pirq in `domid`'s MSI range. Refused for a domain that may still run
    /// (running, paused, suspended): its pirqs are its own. Idempotent: a second sweep
    /// finds nothing, so a crash in the middle is cured by sweeping again.
    pub fn sweep(&mut self, domid: DomId) -> Result<SweepReport> {
        self.refuse_protected(domid, "sweep the pirqs of")?;
        let hv = self.platform.hypervisor();
        let range = PirqRange::learn(hv);
        match hv.domain_info(domid)? {
            None => {
                return Ok(SweepReport {
                    domid,
                    range,
                    unmapped: Vec::new(),
                    domain_gone: true,
                    pv: false,
                })
            }
            Some(i) if Liveness::of(Some(&i)).may_run() => {
                return Err(EngineError::SweepLiveDomain {
                    domid,
                    liveness: Liveness::of(Some(&i)),
                })
            }
            // A PV guest's MSI pirqs are mapped for it by dom0's kernel (pciback), which
            // unmaps them itself when it lets go of the device; unmapping them first makes
            // dom0's unmap fail (-EINVAL) and Linux then never frees those IRQs.
            Some(i) if !i.hvm => {
                self.say(NoticeKind::SweepSkippedPv { domid });
                return Ok(SweepReport {
                    domid,
                    range,
                    unmapped: Vec::new(),
                    domain_gone: false,
                    pv: true,
                });
            }
            Some(_) => {}
        }
        let mut unmapped = Vec::new();
        for p in (range.first..range.end).rev() {
            let pirq = Pirq(p as i32);
            match hv.unmap_pirq(domid, pirq) {
                Ok(()) => unmapped.push(pirq),
                // Not mapped (-EINVAL), beyond nr_pirqs (-EINVAL), the domain finished dying
                // meanwhile (-ESRCH).
                Err(e) if matches!(e.errno(), Some(Errno::EINVAL) | Some(Errno::ESRCH)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !unmapped.is_empty() {
            self.say(NoticeKind::Swept {
                domid,
                pirqs: unmapped.clone(),
            });
        }
        Ok(SweepReport {
            domid,
            range,
            unmapped,
            domain_gone: false,
            pv: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irq_limits_line_gives_nr_irqs_gsi() {
        let c = "(XEN) Using APIC driver default\n(XEN) IRQ limits: 24 GSI, 1528 MSI/MSI-X\n";
        assert_eq!(nr_irqs_gsi(c), Some(24));
        assert_eq!(nr_irqs_gsi("(XEN) nothing here\n"), None);
        assert_eq!(nr_irqs_gsi("(XEN) IRQ limits: many GSI"), None);
        // A guest's line is the guest's, whatever it says; Xen's timestamps are Xen's.
        let c = "(XEN) [    0.512000] IRQ limits: 24 GSI, 392 MSI/MSI-X\n(d5) IRQ limits: 4000 GSI\n(d5) (XEN) IRQ limits: 4000 GSI\n";
        assert_eq!(nr_irqs_gsi(c), Some(24));
        assert_eq!(nr_irqs_gsi("(d5) IRQ limits: 4000 GSI\n"), None);
        assert_eq!(
            nr_irqs_gsi("[2026-12-02 01:00:00] (XEN) IRQ limits: 48 GSI, 392 MSI/MSI-X\n"),
            Some(48)
        );
        let r = PirqRange::new(Some(24), 32);
        assert_eq!((r.first, r.end), (24, 56));
        let r = PirqRange::new(None, 64);
        assert_eq!((r.first, r.end), (0, 1088));
    }
}
