//! `ptguard doctor`: what is wrong with each passthrough device, why, and the fix — on this
//! host (ledger, sysfs, Xen's dumps, Xenstore) or from a pasted report; `ptguard report`
//! writes such a report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use engine::doctor::{
    diagnose, dying_domains, extra_guest_irqs, reconcile, xen_view, Finding, Severity,
};
use engine::xen_dump::{self, DumpOwner};
use engine::{Liveness, Platform};
use pci::sysfs::SysfsHost;
use pci::Sbdf;
use xen::DomId;

use crate::cli::{Cli, DoctorArgs, ReportArgs};
use crate::output::emit;
use daemon::host::{HostCtx, HostSpec};
use serde::Serialize;

/// The device a corrupt ledger entry is about, from its path.
fn corrupt_entry_device(e: &engine::EngineError) -> Option<Sbdf> {
    let engine::EngineError::LedgerCorrupt { path, .. } = e else {
        return None;
    };
    let rest = path
        .strip_prefix(engine::ledger::DEVICES)?
        .strip_prefix('/')?;
    Sbdf::from_xs_key(rest.split('/').next()?).ok()
}

fn ledger_findings(
    ctx: &mut HostCtx,
    findings: &mut Vec<Finding>,
) -> anyhow::Result<Vec<engine::DeviceRecord>> {
    let mut recs = Vec::new();
    for r in ctx.engine()?.list()? {
        match r {
            Ok(r) => recs.push(r),
            Err(e) => findings.push(Finding::new(
                "ledger-corrupt",
                corrupt_entry_device(&e),
                e.to_string(),
                vec!["Xenstore: the ledger entry does not parse".into()],
                "repair the entry by hand (xenstore-write), or remove it (xenstore-rm) and, if a guest still holds the device, `ptguard adopt SBDF DOMID` (doctor then names the holder)".into(),
            )),
        }
    }
    Ok(recs)
}

fn missing(what: &str, unknown: &str, fix: &str) -> Finding {
    Finding::new(
        "view-missing",
        None,
        format!("{what} could not be read: {unknown} not checked"),
        vec![],
        fix.into(),
    )
}

/// How long a real Xen is given to finish its dumps in the console ring before it is read
/// back; the simulated host writes them before `debug_keys` returns.
fn console_settle(sim: bool) -> std::time::Duration {
    std::time::Duration::from_millis(if sim { 0 } else { 200 })
}

/// Xen's dumps on this host: `Q` and `i` through `XEN_SYSCTL_debug_keys`, read back from
/// the console ring; the newest dump of each kind counts.
fn live_xen_view(
    settle: std::time::Duration,
    hv: &dyn xen::Hypervisor,
    pci: &dyn pci::PciHost,
    known_domains: &[DomId],
    records: &[engine::DeviceRecord],
    backends: &[(DomId, Sbdf)],
    findings: &mut Vec<Finding>,
) {
    let dumped = hv.debug_keys("Qi").and_then(|_| {
        std::thread::sleep(settle);
        hv.read_console()
    });
    let text = match dumped {
        Ok(t) => t,
        Err(e) => {
            findings.push(missing(
                &format!("Xen's debug-key dumps ({e})"),
                "zombie owners, leftover pirqs",
                "run doctor as root on dom0",
            ));
            return;
        }
    };
    let logged = engine::doctor::logs::log_findings("xl dmesg", &text);
    let q = xen_dump::pci_devices(&text);
    let i = xen_dump::irq_bindings(&text);
    let mut life = BTreeMap::new();
    let mut domains: Vec<DomId> = i
        .iter()
        .flat_map(|b| b.guests.iter().map(|g| g.0))
        .collect();
    domains.extend(q.iter().filter_map(|e| match e.owner {
        DumpOwner::Domain(d) => Some(d),
        _ => None,
    }));
    domains.extend_from_slice(known_domains);
    for d in domains {
        if let Ok(Some(info)) = hv.domain_info(d) {
            life.insert(d, Liveness::of(Some(&info)));
        }
    }
    let sizes = table_sizes_live(pci, &q);
    let pirqs = engine::sweep::PirqBudget {
        extra_guest_irqs: hv.command_line().ok().and_then(|c| extra_guest_irqs(&c)),
        xen: hv.version().ok(),
    };
    findings.append(&mut xen_view(&q, &i, &life, &sizes, &pirqs));
    findings.append(&mut engine::doctor::holder_checks(&q, records, backends));
    findings.append(&mut dying_domains(&life));
    // Xen's own failure lines still in the ring (a refused assign, a forced mask), as
    // evidence of what the host shows now.
    engine::doctor::logs::merge_evidence(findings, logged);
}

/// The Xen release `xl info` names (`xen_major`, `xen_minor`).
fn xen_version_of(major: Option<String>, minor: Option<String>) -> Option<xen::XenVersion> {
    Some(xen::XenVersion {
        major: major?.parse().ok()?,
        minor: minor?.parse().ok()?,
    })
}

/// Domain ids Xenstore knows (`/local/domain/N`).
fn xenstore_domains(xs: &mut xenstore::XsClient) -> Vec<DomId> {
    xs.directory(xenstore::TxId::NONE, "/local/domain")
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.parse().ok().map(DomId))
        .collect()
}

/// MSI-X table sizes of the devices a guest may get: bound to pciback, or (per Xen) in
/// dom_io or a guest.
fn table_sizes_live(pci: &dyn pci::PciHost, q: &[xen_dump::PciDumpEntry]) -> Vec<(Sbdf, u16)> {
    let mut out = Vec::new();
    for s in pci.list_devices().unwrap_or_default() {
        let guestish = q
            .iter()
            .any(|e| e.sbdf == s && !matches!(e.owner, DumpOwner::Domain(DomId::DOM0)));
        if pci.driver(s).ok().flatten().as_deref() != Some(pci::host::PCIBACK) && !guestish {
            continue;
        }
        if let Some(m) = pci
            .read_config(s)
            .ok()
            .and_then(|b| pci::ConfigSpace::new(b).ok())
            .and_then(|c| c.parse().ok())
            .and_then(|c| c.msix)
        {
            out.push((s, m.table_size));
        }
    }
    out
}

fn live_findings(cli: &Cli, args: &DoctorArgs) -> anyhow::Result<Vec<Finding>> {
    let mut findings: Vec<Finding> = Vec::new();
    let sysfs = SysfsHost::new(&args.sysfs);
    // Doctor only reads: open as a dry run so nothing can be written.
    match HostCtx::open(&cli.host, true) {
        Ok(mut ctx) => {
            let records = ledger_findings(&mut ctx, &mut findings)?;
            match ctx.engine()?.pending_unplugs(daemon::watch::unix_now()) {
                Ok(p) => findings.append(&mut engine::doctor::unplug_findings(&p)),
                Err(e) => findings.push(missing(
                    &format!("the announced unplugs ({e})"),
                    "unplugs that never finished",
                    "run doctor as root on dom0",
                )),
            }
            let hv = ctx.platform.hypervisor();
            let owner_life = |r: &engine::DeviceRecord| {
                let d = r.owner?;
                hv.domain_info(d)
                    .ok()
                    .map(|i| Liveness::of_owner(r, i.as_ref()))
            };
            let held = |s: Sbdf| {
                engine::engine::held_by_guest(hv, s)
                    .ok()
                    .map(|h| h.is_some())
            };
            // Only backends of domains that exist and are not dying are evidence: libxl's
            // nodes of a guest long gone say nothing about the device now.
            let backends: Vec<(DomId, Sbdf)> = engine::companion::toolstack_backends(&mut ctx.xs)
                .into_iter()
                .filter(|(d, _)| {
                    Liveness::ask(hv, *d).is_ok_and(|l| l.exists() && l != Liveness::Dying)
                })
                .collect();
            let pci: &dyn pci::PciHost = if ctx.sim.is_some() {
                ctx.platform.pci()
            } else {
                &sysfs
            };
            findings.append(&mut diagnose(pci, &records, &owner_life));
            findings.append(&mut reconcile(pci, &records, &held, &backends));
            // A PV guest holding a device (ptguard's or the toolstack's) without the host's
            // memory map: stock `xl pci-attach` gives it one all the same.
            let holders: std::collections::BTreeSet<(DomId, Sbdf)> = backends
                .iter()
                .copied()
                .chain(records.iter().filter_map(|r| Some((r.owner?, r.sbdf))))
                .collect();
            findings.extend(
                holders
                    .into_iter()
                    .filter_map(|(d, s)| pv_memory_map_check(&ctx.platform, d, s, true)),
            );
            // Doctor's own Xenstore is a dry-run copy of ptguard's subtrees on a real host:
            // the domains are listed from the real one.
            let mut known = match &cli.host {
                HostSpec::Real => xenstore::XsClient::open()
                    .map(|mut real| xenstore_domains(&mut real))
                    .unwrap_or_default(),
                HostSpec::Sim(_) => xenstore_domains(&mut ctx.xs),
            };
            known.extend(records.iter().filter_map(|r| r.owner));
            live_xen_view(
                console_settle(ctx.sim.is_some()),
                hv,
                pci,
                &known,
                &records,
                &backends,
                &mut findings,
            );
        }
        Err(e) if cli.host == HostSpec::Real => {
            findings.push(missing(
                &format!("the ledger and Xen ({e})"),
                "ledger states, Xen's view and the toolstack's nodes",
                "run doctor as root on dom0; the sysfs checks follow",
            ));
            findings.append(&mut diagnose(&sysfs, &[], &|_| None));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(findings)
}

/// Findings from a report: `### COMMAND` sections of `lspci -vvv`, `xl dmesg` (after
/// `xl debug-keys Q i M`), `xl info` and `xenstore-ls -f`, any of them missing.
pub fn report_findings(text: &str) -> anyhow::Result<Vec<Finding>> {
    let sections = xen_dump::report_sections(text);
    if sections.is_empty() {
        anyhow::bail!(
            "not a report: no `### COMMAND` line (see `ptguard report --help` for the format)"
        );
    }
    let get = |prefix: &str| {
        sections
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, b)| b.as_str())
    };
    let mut out = Vec::new();
    // The toolstack's logs the report captured, and Xen's own failure lines.
    for (command, body) in &sections {
        if let Some(path) = command.strip_prefix("log ") {
            out.append(&mut engine::doctor::logs::log_findings(path, body));
        }
    }
    let lspci = get("lspci");
    let dmesg = get("xl dmesg");
    let info = get("xl info");
    let xenstore = get("xenstore-ls");
    let drivers = lspci.map(lspci_drivers).unwrap_or_default();
    let msix = lspci.map(xen_dump::lspci_devices).unwrap_or_default();
    if lspci.is_none() {
        out.push(missing(
            "`lspci -vvv`",
            "forced Function Masks, MSI-X table sizes",
            "add `### lspci -vvv` and its output",
        ));
    }
    for (s, (enable, count, masked)) in &msix {
        let driver = drivers
            .iter()
            .find(|(d, _)| d == s)
            .map(|(_, n)| n.as_str());
        if !enable && *masked && driver == Some(pci::host::PCIBACK) {
            out.push(Finding::new(
                "function-mask-forced",
                Some(*s),
                "MSI-X Function Mask is set on a device no driver uses (Enable-, Masked+): Xen forced it".into(),
                vec![format!("lspci: MSI-X: Enable- Count={count} Masked+"), "lspci: Kernel driver in use: pciback".into()],
                format!("ptguard repair {s}"),
            ));
        }
    }
    // Domains alive per Xenstore (`/local/domain/N` present); a domain Xen still shows but
    // Xenstore has forgotten is dying.
    // A report says only which domains Xenstore lists: each is taken as running (a
    // zombie's Q line still names it; a gone one is absent).
    let xs_domains: Option<BTreeMap<DomId, Liveness>> = xenstore.map(|x| {
        x.lines()
            .filter_map(|l| {
                l.strip_prefix("/local/domain/")?
                    .split([' ', '/'])
                    .next()?
                    .parse()
                    .ok()
            })
            .map(|d: u16| (DomId(d), Liveness::Running))
            .collect()
    });
    match dmesg {
        Some(d) if d.contains("==== PCI devices ====") => {
            let q = xen_dump::pci_devices(d);
            let i = xen_dump::irq_bindings(d);
            let life = xs_domains.clone().unwrap_or_default();
            let guestish: Vec<(Sbdf, u16)> = msix
                .iter()
                .filter(|(s, _)| {
                    drivers
                        .iter()
                        .any(|(d, n)| d == s && n == pci::host::PCIBACK)
                        || q.iter().any(|e| {
                            e.sbdf == *s && !matches!(e.owner, DumpOwner::Domain(DomId::DOM0))
                        })
                })
                .map(|(s, (_, n, _))| (*s, *n))
                .collect();
            let info_field = |name: &str| {
                info.and_then(|i| {
                    i.lines()
                        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_string())
                })
            };
            let pirqs = engine::sweep::PirqBudget {
                extra_guest_irqs: info_field("xen_commandline").and_then(|c| extra_guest_irqs(&c)),
                xen: xen_version_of(info_field("xen_major"), info_field("xen_minor")),
            };
            if xs_domains.is_none() {
                out.push(missing(
                    "`xenstore-ls -f`",
                    "which domains are alive (zombie owners)",
                    "add `### xenstore-ls -f`",
                ));
            } else {
                out.append(&mut xen_view(&q, &i, &life, &guestish, &pirqs));
            }
            if let Some(x) = xenstore {
                out.append(&mut report_ledger_findings(x, &q));
            }
        }
        _ => out.push(missing(
            "Xen's dumps (`xl dmesg` after `xl debug-keys Q i M`)",
            "zombie owners, leftover pirqs, devices the ledger lost",
            "run `xl debug-keys Q; xl debug-keys i; xl debug-keys M` then add `### xl dmesg`",
        )),
    }
    if info.is_none() {
        out.push(missing(
            "`xl info`",
            "the guests' pirq budget (extra_guest_irqs)",
            "add `### xl info`",
        ));
    }
    if let Some(d) = dmesg {
        engine::doctor::logs::merge_evidence(
            &mut out,
            engine::doctor::logs::log_findings("xl dmesg", d),
        );
    }
    Ok(out)
}

/// `Kernel driver in use:` of each device of an `lspci -vvv` output.
fn lspci_drivers(text: &str) -> Vec<(Sbdf, String)> {
    let mut out = Vec::new();
    let mut current = None;
    for l in text.lines() {
        if !l.starts_with(char::is_whitespace) {
            current = l
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<Sbdf>().ok());
            // `ptguard lspci` names the driver on the device's own line.
            if let (Some(s), Some(d)) = (
                current,
                l.split_whitespace().find_map(|w| w.strip_prefix("driver=")),
            ) {
                out.push((s, d.to_string()));
            }
        } else if let (Some(s), Some(d)) = (current, l.trim().strip_prefix("Kernel driver in use:"))
        {
            out.push((s, d.trim().to_string()));
        }
    }
    out
}

/// Devices a guest holds (Xen's `Q`) that the ledger in the report does not know.
fn report_ledger_findings(xenstore: &str, q: &[xen_dump::PciDumpEntry]) -> Vec<Finding> {
    let ledger: Vec<&str> = xenstore
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}/", engine::ledger::DEVICES)))
        .filter_map(|l| l.split([' ', '/']).next())
        .collect();
    let mut out = Vec::new();
    for e in q {
        let DumpOwner::Domain(d) = e.owner else {
            continue;
        };
        if d == DomId::DOM0 || ledger.contains(&e.sbdf.xs_key().as_str()) {
            continue;
        }
        out.push(Finding::new(
            "held-unknown-to-ledger",
            Some(e.sbdf),
            format!("{d} holds it, but the ledger does not know it: its interrupt bindings are unrecorded"),
            vec![format!("Xen (Q): owner {d}"), "Xenstore: no /ptguard entry".into()],
            format!("`ptguard adopt {} {}` on the host", e.sbdf, d.0),
        ));
    }
    out
}

fn print(findings: &[Finding], args: &DoctorArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.prometheus {
        writeln!(out, "# HELP ptguard_doctor_finding A problem ptguard doctor found (1 per finding), by code, severity and device.")?;
        writeln!(out, "# TYPE ptguard_doctor_finding gauge")?;
        for f in findings {
            writeln!(
                out,
                "ptguard_doctor_finding{{code=\"{}\",severity=\"{}\",sbdf=\"{}\"}} 1",
                f.code,
                format!("{:?}", f.severity).to_lowercase(),
                f.sbdf.map_or(String::new(), |s| s.to_string())
            )?;
        }
        writeln!(
            out,
            "# HELP ptguard_doctor_errors Findings of severity error."
        )?;
        writeln!(out, "# TYPE ptguard_doctor_errors gauge")?;
        writeln!(
            out,
            "ptguard_doctor_errors {}",
            findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count()
        )?;
    } else if args.json {
        serde_json::to_writer_pretty(&mut *out, findings)?;
        writeln!(out)?;
    } else if findings.is_empty() {
        writeln!(out, "no stuck or dirty device found")?;
    } else {
        for f in findings {
            writeln!(
                out,
                "{:<7} {} [{}]: {}",
                format!("{:?}", f.severity).to_uppercase(),
                f.sbdf.map_or("-".into(), |s| s.to_string()),
                f.code,
                f.problem
            )?;
            for e in &f.evidence {
                writeln!(out, "        seen: {e}")?;
            }
            writeln!(out, "        why:  {}", f.why)?;
            writeln!(out, "        fix:  {}", f.fix)?;
        }
    }
    Ok(())
}

/// The largest report `doctor --from-report` reads: `ptguard report` writes lspci, a
/// console ring (Xen's is at most a few MiB) and ptguard's Xenstore subtrees.
pub const MAX_REPORT: u64 = 16 << 20;
/// The largest xl config `preflight --xl-config` reads.
const MAX_XL_CONFIG: u64 = 1 << 20;

/// `path`'s bytes, refusing a file larger than `cap` (a report pointed at `/dev/zero`, or
/// a log mistaken for one) before holding more than `cap` of it.
fn read_capped(path: &std::path::Path, cap: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        anyhow::bail!(
            "{} is larger than {} MiB, more than {what} can be; nothing was read past that",
            path.display(),
            cap >> 20
        );
    }
    Ok(bytes)
}

pub fn run(cli: &Cli, args: &DoctorArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut findings = match &args.from_report {
        Some(path) => {
            let text = read_capped(path, MAX_REPORT, "a report")?;
            report_findings(&String::from_utf8_lossy(&text))?
        }
        None if !args.logs.is_empty() => Vec::new(),
        None => live_findings(cli, args)?,
    };
    for path in &args.logs {
        let text = read_capped(path, MAX_REPORT, "a log")?;
        findings.append(&mut engine::doctor::logs::log_findings(
            &path.display().to_string(),
            &String::from_utf8_lossy(&text),
        ));
    }
    if let Some(s) = args.sbdf {
        findings.retain(|f| f.sbdf.is_none_or(|x| x == s));
    }
    print(&findings, args, out)?;
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 && !args.prometheus {
        anyhow::bail!("{errors} problems found");
    }
    Ok(())
}

/// `ptguard report`: what doctor reads, in the report format, for a bug report or for
/// `doctor --from-report` elsewhere.
pub fn report(cli: &Cli, args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut sections: Vec<ReportSection> = Vec::new();
    let mut section = |cmd: &str, output: String| {
        sections.push(ReportSection {
            command: cmd.to_string(),
            output,
        })
    };
    let run = |prog: &str, argv: &[&str]| match std::process::Command::new(prog).args(argv).output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(not run: {e})\n"),
    };
    match &cli.host {
        HostSpec::Real => section("lspci -vvv", run("lspci", &["-vvv"])),
        HostSpec::Sim(_) => {
            let mut buf = Vec::new();
            let lspci = crate::cli::LspciArgs {
                sbdf: None,
                details: true,
                json: false,
                sysfs: "/sys".into(),
            };
            crate::commands::lspci::run(lspci, &cli.host, &mut buf)?;
            section("lspci -vvv", String::from_utf8_lossy(&buf).into_owned());
        }
    }
    let mut ctx = HostCtx::open(&cli.host, true)?;
    let hv = ctx.platform.hypervisor();
    let cmdline = hv.command_line().unwrap_or_default();
    let version = hv.version().ok();
    section(
        "xl info",
        format!(
            "xen_major              : {}\nxen_minor              : {}\nxen_version            : {}\nxen_commandline        : {cmdline}\n",
            version.map(|v| v.major.to_string()).unwrap_or_default(),
            version.map(|v| v.minor.to_string()).unwrap_or_default(),
            version.map(|v| v.to_string()).unwrap_or_default()
        ),
    );
    hv.debug_keys("QiM")?;
    std::thread::sleep(console_settle(ctx.sim.is_some()));
    section("xl dmesg", hv.read_console()?);
    let mut nodes = String::new();
    match &cli.host {
        // The context's Xenstore is a dry-run copy of ptguard's subtrees: walk the real one
        // (read only).
        HostSpec::Real => xenstore_ls(&mut xenstore::XsClient::open()?, "/", &mut nodes),
        HostSpec::Sim(_) => xenstore_ls(&mut ctx.xs, "/", &mut nodes),
    }
    section("xenstore-ls -f", nodes);
    for (path, tail) in toolstack_logs(&args.log_dir) {
        section(&format!("log {}", path.display()), tail);
    }
    let report = Report { sections };
    let mut bytes = Vec::new();
    emit(&mut bytes, args.json, &report, |out| {
        out.write_all(report.text().as_bytes())?;
        Ok(())
    })?;
    match &args.output {
        Some(p) => std::fs::write(p, &bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
        None => out.write_all(&bytes)?,
    }
    Ok(())
}

/// The lines of a log a report keeps: its newest.
const LOG_TAIL_LINES: usize = 400;

/// The toolstack's logs worth a report: each `xl-NAME.log` and `qemu-dm-NAME.log` in `dir`
/// that names a PCI device (libxl's `PCI device`, qemu-xen's passthrough lines), and
/// libvirt's libxl driver log; the last [`LOG_TAIL_LINES`] of each, newest file first.
fn toolstack_logs(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with("xl-") || n.starts_with("qemu-dm-")) && n.ends_with(".log")
            })
        })
        .map(|p| {
            let t = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    found.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    let libvirt = PathBuf::from("/var/log/libvirt/libxl/libxl-driver.log");
    let mut out = Vec::new();
    for p in found
        .into_iter()
        .map(|(_, p)| p)
        .chain(libvirt.exists().then_some(libvirt))
    {
        let Ok(bytes) = read_capped(&p, MAX_REPORT, "a log") else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if !(text.contains("PCI device") || text.contains("xen_pt") || text.contains("msi_msix")) {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        out.push((p, tail + "\n"));
    }
    out
}

/// One command's output in a report.
#[derive(Serialize)]
struct ReportSection {
    command: String,
    output: String,
}

/// What `ptguard report` captures: as JSON, or in the text form `doctor --from-report`
/// reads (`### COMMAND` then its output).
#[derive(Serialize)]
struct Report {
    sections: Vec<ReportSection>,
}

impl Report {
    fn text(&self) -> String {
        let mut text = String::new();
        for s in &self.sections {
            text.push_str(&format!("### {}\n{}", s.command, s.output));
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }
}

/// `xenstore-ls -f`: every node as `path = "value"`.
fn xenstore_ls(xs: &mut xenstore::XsClient, path: &str, out: &mut String) {
    for child in xs.directory(xenstore::TxId::NONE, path).unwrap_or_default() {
        let p = if path == "/" {
            format!("/{child}")
        } else {
            format!("{path}/{child}")
        };
        let v = xs
            .read_optional(xenstore::TxId::NONE, &p)
            .ok()
            .flatten()
            .unwrap_or_default();
        out.push_str(&format!(
            "{p} = \"{}\"\n",
            String::from_utf8_lossy(&v).escape_default()
        ));
        xenstore_ls(xs, &p, out);
    }
}

/// pv-memory-map when `d` is a PV guest its builder's record says has RAM only (`holds`:
/// it has the device already).
fn pv_memory_map_check(
    platform: &dyn engine::Platform,
    d: DomId,
    s: Sbdf,
    holds: bool,
) -> Option<Finding> {
    let info = platform.hypervisor().domain_info(d).ok()??;
    (!info.hvm && platform.pv_memory_map(&info) == engine::PvMemoryMap::RamOnly).then(|| {
        let holder = if holds {
            format!("{d} holds it; ")
        } else {
            String::new()
        };
        pv_memory_map_finding(
            s,
            vec![format!(
                "{holder}libxl: {d}'s saved configuration has no e820_host"
            )],
        )
    })
}

/// A PV guest whose memory map has no reserved region: its devices' DMA misses the IOMMU.
fn pv_memory_map_finding(s: Sbdf, evidence: Vec<String>) -> Finding {
    Finding::new(
        "pv-memory-map",
        Some(s),
        "a PV guest built without the host's memory map: Linux 6.5+ sets up no swiotlb-xen, so the device's DMA would use pseudo-physical addresses, which the IOMMU refuses (ptguard attach refuses such a guest)".into(),
        evidence,
        "add `e820_host = 1` to the guest's xl config (xl turns it on itself when `pci = [...]` lists a device)".into(),
    )
}

/// `ptguard preflight`: before a guest starts, whether this device will work for it.
pub fn preflight(
    cli: &Cli,
    args: &crate::cli::PreflightArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let s = args.sbdf;
    let mut findings = Vec::new();
    let doctor_args = DoctorArgs {
        sbdf: Some(s),
        json: args.json,
        prometheus: false,
        from_report: None,
        logs: Vec::new(),
        sysfs: args.sysfs.clone(),
    };
    // What is wrong with the device itself (forced mask, leftovers, zombie owner, budget).
    findings.extend(
        live_findings(cli, &doctor_args)?
            .into_iter()
            .filter(|f| f.sbdf == Some(s) || f.code == "view-missing"),
    );
    let ctx = HostCtx::open(&cli.host, true)?;
    let pci = ctx.platform.pci();
    let hv = ctx.platform.hypervisor();
    if !pci.exists(s).unwrap_or(false) {
        anyhow::bail!("{s}: no such PCI device on this host (see `ptguard lspci`)");
    }
    let driver = pci.driver(s).ok().flatten();
    if driver.as_deref() != Some(pci::host::PCIBACK) {
        findings.push(Finding::new(
            "not-assignable",
            Some(s),
            format!(
                "bound to {}, not pciback",
                driver.as_deref().unwrap_or("no driver")
            ),
            vec![format!(
                "sysfs: driver {}",
                driver.as_deref().unwrap_or("none")
            )],
            format!("ptguard assignable-add {s} (or `xl pci-assignable-add {s}`)"),
        ));
    }
    if let Ok(Some(errno)) = engine::engine::held_by_guest(hv, s) {
        if !findings.iter().any(|f| f.code == "zombie-owner") {
            findings.push(Finding::new(
                "held-by-guest",
                Some(s),
                "another domain holds it".into(),
                vec![format!("Xen: test_assign_device -{}", errno.name())],
                format!("detach it there first (`xl pci-detach`, or `ptguard detach {s}`)"),
            ));
        }
    }
    match (&args.xl_config, args.domid) {
        (Some(path), _) => {
            let text = String::from_utf8_lossy(&read_capped(path, MAX_XL_CONFIG, "an xl config")?)
                .into_owned();
            let value = |key: &str| -> Option<String> {
                text.lines().find_map(|l| {
                    let l = l.split('#').next()?.trim();
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_string())
                })
            };
            let evidence = |k: &str| {
                vec![format!(
                    "{}: {k} = {}",
                    path.display(),
                    value(k).unwrap_or_else(|| "(not set)".into())
                )]
            };
            if value("type").as_deref() == Some("pvh") {
                findings.push(Finding::new(
                    "pvh-guest",
                    Some(s),
                    "the guest is PVH".into(),
                    evidence("type"),
                    "use type = \"hvm\" or \"pv\" for a guest that takes devices".into(),
                ));
            }
            // xl builds a PV guest (its default type) with the host's memory map only for
            // `e820_host = 1` or a non-empty `pci=[...]` (xl_parse.c); Linux 6.5+ sets up
            // swiotlb-xen only with one (arch/x86/xen/setup.c, `xen_pv_pci_possible`).
            let pv = match value("type").as_deref() {
                Some(t) => t == "pv",
                None => value("builder").as_deref() != Some("hvm"),
            };
            let truthy = |v: Option<String>| {
                v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            };
            let pci_listed = value("pci").is_some_and(|v| v.contains(':'));
            if pv && !pci_listed && !truthy(value("e820_host")) {
                findings.push(pv_memory_map_finding(s, evidence("e820_host")));
            }
            let pt = value("passthrough");
            if pt.as_deref() == Some("disabled") || (pt.is_none() && value("pci").is_none()) {
                findings.push(Finding::new(
                    "no-passthrough",
                    Some(s),
                    "the guest's config gives it no IOMMU context".into(),
                    evidence("passthrough"),
                    "add `passthrough = \"enabled\"` (or list the device in `pci = [...]`)".into(),
                ));
            }
        }
        (None, Some(d)) => match Liveness::ask(hv, DomId(d)) {
            Ok(l) if l.may_run() => {
                findings.extend(pv_memory_map_check(&ctx.platform, DomId(d), s, false));
            }
            other => findings.push(Finding::new(
                "guest-missing",
                Some(s),
                format!(
                    "d{d} is {}",
                    match other {
                        Ok(Liveness::Gone) | Err(_) => "not running".to_string(),
                        Ok(l) => l.to_string(),
                    }
                ),
                vec![format!("Xen: getdomaininfo d{d}")],
                "start the guest (paused: `xl create -p`) first".into(),
            )),
        },
        (None, None) => anyhow::bail!("preflight needs a DOMID or --xl-config FILE"),
    }
    let verdict = !findings.iter().any(|f| f.severity == Severity::Error);
    print(&findings, &doctor_args, out)?;
    if !args.json {
        writeln!(
            out,
            "{s}: {}",
            if verdict {
                "ready for the guest"
            } else {
                "NOT ready: fix the errors above first"
            }
        )?;
    }
    if !verdict {
        anyhow::bail!("{s} is not ready");
    }
    Ok(())
}
