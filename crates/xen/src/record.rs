//! Counting, tracing and dry-running any [`Hypervisor`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use pci::Sbdf;

use crate::hypervisor::*;
use crate::{Errno, XenError};

/// One call as it was made (or, in a dry run, would have been made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypercallRecord {
    pub op: HypercallOp,
    /// Arguments, as `xl`-style text.
    pub args: String,
    /// `None`: success (or not performed in a dry run); otherwise the errno.
    pub errno: Option<Errno>,
    pub performed: bool,
}

impl std::fmt::Display for HypercallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.args)?;
        match (self.performed, self.errno) {
            (false, _) => write!(f, " (dry run)"),
            (true, None) => Ok(()),
            (true, Some(e)) => write!(f, " -> {e}"),
        }
    }
}

/// Wraps a hypervisor, recording every call; in dry-run mode mutating calls are recorded and
/// answered with success without reaching the hypervisor.
pub struct Recorder<H> {
    inner: H,
    dry_run: bool,
    log: Mutex<Vec<HypercallRecord>>,
    on_call: Option<CallSink>,
    /// In a dry run, what the assign/deassign calls not performed would have made of each
    /// device (`true`: a guest holds it), so that `test_assign_device` answers as Xen
    /// would after them and a dry-run teardown plans what the real one does.
    dry_assigned: Mutex<BTreeMap<Sbdf, bool>>,
}

/// Called with every record as it is made (to interleave it with other logs).
pub type CallSink = Box<dyn Fn(&HypercallRecord) + Send + Sync>;

impl<H: Hypervisor> Recorder<H> {
    pub fn new(inner: H) -> Recorder<H> {
        Recorder {
            inner,
            dry_run: false,
            log: Mutex::new(Vec::new()),
            on_call: None,
            dry_assigned: Mutex::new(BTreeMap::new()),
        }
    }
    pub fn on_call(mut self, sink: CallSink) -> Recorder<H> {
        self.on_call = Some(sink);
        self
    }
    pub fn dry_run(mut self, on: bool) -> Recorder<H> {
        self.dry_run = on;
        self
    }
    pub fn inner(&self) -> &H {
        &self.inner
    }
    pub fn records(&self) -> Vec<HypercallRecord> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
    pub fn take_records(&self) -> Vec<HypercallRecord> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
    /// Calls per operation.
    pub fn counts(&self) -> BTreeMap<HypercallOp, u64> {
        let mut m = BTreeMap::new();
        for r in self.records() {
            *m.entry(r.op).or_insert(0) += 1;
        }
        m
    }

    /// Remembers, in a dry run, what an assign or deassign not performed would have left.
    fn dry_assign(&self, sbdf: Sbdf, held: bool) {
        if self.dry_run {
            if let Ok(mut m) = self.dry_assigned.lock() {
                m.insert(sbdf, held);
            }
        }
    }

    fn call<T>(
        &self,
        op: HypercallOp,
        args: String,
        dry_value: T,
        f: impl FnOnce(&H) -> Result<T, XenError>,
    ) -> Result<T, XenError> {
        let performed = !(self.dry_run && op.mutates());
        let result = if performed {
            f(&self.inner)
        } else {
            Ok(dry_value)
        };
        let errno = result.as_ref().err().and_then(XenError::errno);
        let record = HypercallRecord {
            op,
            args,
            errno,
            performed,
        };
        if let Some(sink) = &self.on_call {
            sink(&record);
        }
        if let Ok(mut l) = self.log.lock() {
            l.push(record);
        }
        result
    }
}

impl<H: Hypervisor> Hypervisor for Recorder<H> {
    fn version(&self) -> Result<XenVersion, XenError> {
        self.inner.version()
    }
    fn map_pirq(&self, req: &MapPirq) -> Result<Pirq, XenError> {
        let args = match req.source {
            MapSource::Gsi { .. } => CallTarget::Map(req).to_string(),
            MapSource::Msi { table_base, .. } => {
                format!("{} table_base {table_base:#x}", CallTarget::Map(req))
            }
        };
        let args = match req.pirq {
            Some(p) => format!("{args} pirq {p}"),
            None => format!("{args} pirq auto"),
        };
        self.call(
            HypercallOp::MapPirq,
            args,
            req.pirq.unwrap_or(Pirq(-1)),
            |h| h.map_pirq(req),
        )
    }
    fn unmap_pirq(&self, domid: DomId, pirq: Pirq) -> Result<(), XenError> {
        self.call(
            HypercallOp::UnmapPirq,
            CallTarget::Pirq(domid, pirq).to_string(),
            (),
            |h| h.unmap_pirq(domid, pirq),
        )
    }
    fn prepare_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.call(
            HypercallOp::PrepareMsix,
            CallTarget::Device(sbdf).to_string(),
            (),
            |h| h.prepare_msix(sbdf),
        )
    }
    fn release_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        self.call(
            HypercallOp::ReleaseMsix,
            CallTarget::Device(sbdf).to_string(),
            (),
            |h| h.release_msix(sbdf),
        )
    }
    fn bind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        self.call(
            HypercallOp::BindPtIrq,
            format!("{domid} {bind:?}"),
            (),
            |h| h.bind_pt_irq(domid, bind),
        )
    }
    fn unbind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        self.call(
            HypercallOp::UnbindPtIrq,
            CallTarget::Pirq(domid, bind.pirq()).to_string(),
            (),
            |h| h.unbind_pt_irq(domid, bind),
        )
    }
    fn assign_device(&self, domid: DomId, sbdf: Sbdf, flags: u32) -> Result<(), XenError> {
        let r = self.call(
            HypercallOp::AssignDevice,
            format!("{} flags {flags}", CallTarget::DomainDevice(domid, sbdf)),
            (),
            |h| h.assign_device(domid, sbdf, flags),
        );
        self.dry_assign(sbdf, domid != DomId::IO);
        r
    }
    fn test_assign_device(&self, sbdf: Sbdf) -> Result<(), XenError> {
        let dry = self
            .dry_assigned
            .lock()
            .ok()
            .and_then(|m| m.get(&sbdf).copied());
        let target = CallTarget::Device(sbdf).to_string();
        self.call(HypercallOp::TestAssignDevice, target.clone(), (), |h| {
            match dry {
                // Xen's answer for a device a guest holds: "already assigned".
                Some(true) => Err(XenError::hypercall(
                    HypercallOp::TestAssignDevice,
                    target,
                    Errno::EINVAL,
                )),
                Some(false) => Ok(()),
                None => h.test_assign_device(sbdf),
            }
        })
    }
    fn deassign_device(&self, domid: DomId, sbdf: Sbdf) -> Result<(), XenError> {
        let r = self.call(
            HypercallOp::DeassignDevice,
            CallTarget::DomainDevice(domid, sbdf).to_string(),
            (),
            |h| h.deassign_device(domid, sbdf),
        );
        self.dry_assign(sbdf, false);
        r
    }
    fn iomem_permission(
        &self,
        domid: DomId,
        first_mfn: u64,
        nr_mfns: u64,
        allow: bool,
    ) -> Result<(), XenError> {
        self.call(
            HypercallOp::IomemPermission,
            format!(
                "{} {}",
                CallTarget::Iomem {
                    domid,
                    first: first_mfn,
                    nr: nr_mfns
                },
                allow_text(allow)
            ),
            (),
            |h| h.iomem_permission(domid, first_mfn, nr_mfns, allow),
        )
    }
    fn ioport_permission(
        &self,
        domid: DomId,
        first_port: u32,
        nr_ports: u32,
        allow: bool,
    ) -> Result<(), XenError> {
        self.call(
            HypercallOp::IoportPermission,
            format!(
                "{} {}",
                CallTarget::Ioport {
                    domid,
                    first: first_port,
                    nr: nr_ports
                },
                allow_text(allow)
            ),
            (),
            |h| h.ioport_permission(domid, first_port, nr_ports, allow),
        )
    }
    fn irq_permission(&self, domid: DomId, pirq: Pirq, allow: bool) -> Result<(), XenError> {
        self.call(
            HypercallOp::IrqPermission,
            format!("{} {}", CallTarget::Pirq(domid, pirq), allow_text(allow)),
            (),
            |h| h.irq_permission(domid, pirq, allow),
        )
    }
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, XenError> {
        self.call(HypercallOp::GetDomainInfo, domid.to_string(), None, |h| {
            h.domain_info(domid)
        })
    }
    fn debug_keys(&self, keys: &str) -> Result<(), XenError> {
        self.call(HypercallOp::DebugKeys, format!("{keys:?}"), (), |h| {
            h.debug_keys(keys)
        })
    }
    fn read_console(&self) -> Result<String, XenError> {
        self.call(
            HypercallOp::ReadConsole,
            String::new(),
            String::new(),
            |h| h.read_console(),
        )
    }
    fn command_line(&self) -> Result<String, XenError> {
        self.call(
            HypercallOp::CommandLine,
            String::new(),
            String::new(),
            |h| h.command_line(),
        )
    }
}

fn allow_text(allow: bool) -> &'static str {
    if allow {
        "allow"
    } else {
        "deny"
    }
}

impl<T: Hypervisor + ?Sized> Hypervisor for std::sync::Arc<T> {
    fn version(&self) -> Result<XenVersion, XenError> {
        (**self).version()
    }
    fn map_pirq(&self, req: &MapPirq) -> Result<Pirq, XenError> {
        (**self).map_pirq(req)
    }
    fn unmap_pirq(&self, domid: DomId, pirq: Pirq) -> Result<(), XenError> {
        (**self).unmap_pirq(domid, pirq)
    }
    fn prepare_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        (**self).prepare_msix(sbdf)
    }
    fn release_msix(&self, sbdf: Sbdf) -> Result<(), XenError> {
        (**self).release_msix(sbdf)
    }
    fn bind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        (**self).bind_pt_irq(domid, bind)
    }
    fn unbind_pt_irq(&self, domid: DomId, bind: &PtIrq) -> Result<(), XenError> {
        (**self).unbind_pt_irq(domid, bind)
    }
    fn assign_device(&self, domid: DomId, sbdf: Sbdf, flags: u32) -> Result<(), XenError> {
        (**self).assign_device(domid, sbdf, flags)
    }
    fn test_assign_device(&self, sbdf: Sbdf) -> Result<(), XenError> {
        (**self).test_assign_device(sbdf)
    }
    fn deassign_device(&self, domid: DomId, sbdf: Sbdf) -> Result<(), XenError> {
        (**self).deassign_device(domid, sbdf)
    }
    fn iomem_permission(&self, d: DomId, f: u64, n: u64, a: bool) -> Result<(), XenError> {
        (**self).iomem_permission(d, f, n, a)
    }
    fn ioport_permission(&self, d: DomId, f: u32, n: u32, a: bool) -> Result<(), XenError> {
        (**self).ioport_permission(d, f, n, a)
    }
    fn irq_permission(&self, domid: DomId, pirq: Pirq, allow: bool) -> Result<(), XenError> {
        (**self).irq_permission(domid, pirq, allow)
    }
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, XenError> {
        (**self).domain_info(domid)
    }
    fn debug_keys(&self, keys: &str) -> Result<(), XenError> {
        (**self).debug_keys(keys)
    }
    fn read_console(&self) -> Result<String, XenError> {
        (**self).read_console()
    }
    fn command_line(&self) -> Result<String, XenError> {
        (**self).command_line()
    }
}
