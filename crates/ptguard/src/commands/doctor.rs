//! `ptguard doctor`: stuck or dirty devices and the command that fixes each.

use std::io::Write;

use engine::doctor::{diagnose, reconcile, Finding, Severity};
use engine::Platform;
use pci::sysfs::SysfsHost;

use crate::cli::{Cli, DoctorArgs};
use crate::hostctx::{HostCtx, HostSpec};

fn ledger_findings(
    ctx: &mut HostCtx,
    findings: &mut Vec<Finding>,
) -> anyhow::Result<Vec<engine::DeviceRecord>> {
    let mut recs = Vec::new();
    for r in ctx.engine().list()? {
        match r {
            Ok(r) => recs.push(r),
            Err(e) => findings.push(Finding {
                sbdf: corrupt_entry_device(&e),
                severity: Severity::Error,
                problem: e.to_string(),
                fix: "repair the entry by hand (xenstore-write), or remove it (xenstore-rm) and, if a guest still holds the device, `ptguard adopt SBDF DOMID` (doctor then names the holder)".into(),
            }),
        }
    }
    Ok(recs)
}

/// The device a corrupt ledger entry is about, from its path.
fn corrupt_entry_device(e: &engine::EngineError) -> Option<pci::Sbdf> {
    let engine::EngineError::LedgerCorrupt { path, .. } = e else {
        return None;
    };
    let rest = path
        .strip_prefix(engine::ledger::DEVICES)?
        .strip_prefix('/')?;
    pci::Sbdf::from_xs_key(rest.split('/').next()?).ok()
}

/// The toolstack's view: every `dev-N` of libxl's PCI backends,
/// `/local/domain/0/backend/pci/<domid>/0/dev-<n>`.
fn toolstack_backends(xs: &mut xenstore::XsClient) -> Vec<(xen::DomId, pci::Sbdf)> {
    use xenstore::TxId;
    let base = "/local/domain/0/backend/pci";
    let mut out = Vec::new();
    for dom in xs.directory(TxId::NONE, base).unwrap_or_default() {
        let Ok(domid) = dom.parse::<u16>() else {
            continue;
        };
        let be = format!("{base}/{dom}/0");
        for node in xs.directory(TxId::NONE, &be).unwrap_or_default() {
            if !node.starts_with("dev-") {
                continue;
            }
            let Ok(Some(v)) = xs.read_optional(TxId::NONE, &format!("{be}/{node}")) else {
                continue;
            };
            if let Ok(s) = String::from_utf8_lossy(&v).trim().parse::<pci::Sbdf>() {
                out.push((xen::DomId(domid), s));
            }
        }
    }
    out
}

pub fn run(cli: &Cli, args: &DoctorArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut findings: Vec<Finding> = Vec::new();
    let sysfs = SysfsHost::new(&args.sysfs);
    // Doctor only reads: open as a dry run so nothing can be written.
    match HostCtx::open(&cli.host, true) {
        Ok(mut ctx) => {
            let records = ledger_findings(&mut ctx, &mut findings)?;
            let hv = ctx.platform.hypervisor();
            let alive = |d: xen::DomId| {
                hv.domain_info(d)
                    .ok()
                    .map(|i| i.is_some_and(|i| !i.dying && !i.shutdown))
            };
            let held = |s: pci::Sbdf| match hv.test_assign_device(s) {
                Ok(()) => Some(false),
                Err(e) if e.errno() == Some(xen::Errno::EBUSY) => Some(true),
                Err(_) => None,
            };
            let backends = toolstack_backends(&mut ctx.xs);
            let pci: &dyn pci::PciHost = if ctx.sim.is_some() {
                ctx.platform.pci()
            } else {
                &sysfs
            };
            findings.append(&mut diagnose(pci, &records, &alive));
            findings.append(&mut reconcile(pci, &records, &held, &backends));
        }
        Err(e) if cli.host == HostSpec::Real => {
            findings.push(Finding {
                sbdf: None,
                severity: Severity::Warning,
                problem: format!("cannot read the ledger or ask Xen: {e}"),
                fix: "run doctor as root on dom0 for the ledger checks; the sysfs checks follow"
                    .into(),
            });
            findings.append(&mut diagnose(&sysfs, &[], &|_| None));
        }
        Err(e) => return Err(e),
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &findings)?;
        writeln!(out)?;
    } else if findings.is_empty() {
        writeln!(out, "no stuck or dirty device found")?;
    } else {
        for f in &findings {
            writeln!(
                out,
                "{:<7} {}: {}\n        fix: {}",
                format!("{:?}", f.severity).to_uppercase(),
                f.sbdf.map_or("-".into(), |s| s.to_string()),
                f.problem,
                f.fix
            )?;
        }
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        anyhow::bail!("{errors} problems found");
    }
    Ok(())
}
