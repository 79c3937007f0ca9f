//! `ptguard doctor`: stuck or dirty devices and the command that fixes each.

use std::io::Write;

use engine::doctor::{diagnose, Finding, Severity};
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
                sbdf: None,
                severity: Severity::Error,
                problem: e.to_string(),
                fix: "repair or remove the entry by hand (xenstore-rm)".into(),
            }),
        }
    }
    Ok(recs)
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
            let mut more = if ctx.sim.is_some() {
                diagnose(ctx.platform.pci(), &records, &alive)
            } else {
                diagnose(&sysfs, &records, &alive)
            };
            findings.append(&mut more);
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
