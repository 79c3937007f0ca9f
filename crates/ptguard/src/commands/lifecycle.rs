//! The xl-like lifecycle commands: assignable-add/-remove/-list, attach, detach, list, show,
//! release-domain.

use std::io::Write;

use anyhow::Context;
use engine::{DeviceRecord, Outcome};
use pci::Sbdf;
use serde::Serialize;
use xen::DomId;

use crate::cli::Cli;
use crate::output::emit;
use daemon::host::HostCtx;

/// Opens the host and, unless this is a dry run, finishes what a crash left undone on the
/// device the command is about to act on (`device`): its interrupted attach or teardown.
/// Other devices' unfinished work is the daemon's (`ptguard watch`), or their own commands'.
pub fn open(cli: &Cli, device: Option<Sbdf>) -> anyhow::Result<HostCtx> {
    let mut ctx = cli.open_host()?;
    if let (Some(s), false) = (device, cli.dry_run) {
        for (s, o) in ctx.engine()?.reconcile(engine::Trigger::Resume(s))? {
            tracing::warn!(
                "finished the pending teardown of {s} (owner gone or teardown interrupted): {o}"
            );
        }
    }
    Ok(ctx)
}

/// Prints the operation log after a dry run or with --trace.
pub fn print_log(cli: &Cli, ctx: &HostCtx, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut stderr = std::io::stderr();
    let out: &mut dyn Write = if crate::output::json_printed() {
        &mut stderr
    } else {
        out
    };
    if cli.dry_run || cli.trace {
        if cli.dry_run {
            writeln!(
                out,
                "dry run: nothing was changed; these would be made, in order:"
            )?;
        }
        for l in ctx.log.lines() {
            writeln!(out, "  {l}")?;
        }
    }
    Ok(())
}

fn finish(cli: &Cli, ctx: &mut HostCtx, out: &mut dyn Write) -> anyhow::Result<()> {
    ctx.save()?;
    print_log(cli, ctx, out)
}

/// `ptguard broker-request LINE`: one broker request served in this process.
pub fn broker_request(cli: &Cli, request: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let line = if request == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), wire::MAX_LINE as u64 + 1),
            &mut text,
        )?;
        text
    } else {
        request.to_string()
    };
    let mut ctx = cli.open_host()?;
    let me = i32::try_from(std::process::id()).ok();
    let reply = daemon::broker::handle_line(&mut ctx, line.trim_end_matches(['\n', '\r']), me);
    out.write_all(reply.to_line().as_bytes())?;
    ctx.save()?;
    match reply.failure_code() {
        // A refusal's trace is printed with the error (`ptguard::run`), once.
        None => print_log(cli, &ctx, out),
        Some(code) => anyhow::bail!(
            "the broker refused the request [{}]: {}",
            code.as_str(),
            reply.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

#[derive(Serialize)]
struct Done<'a, T: Serialize> {
    sbdf: Sbdf,
    action: &'a str,
    #[serde(flatten)]
    result: T,
}

pub fn assignable_add(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = open(cli, Some(s))?;
    let rec = ctx.engine()?.assignable_add(s)?;
    emit(out, json, &rec, |out| {
        writeln!(
            out,
            "{s}: assignable (seized into pciback from {}, quarantined in dom_io)",
            rec.driver.as_deref().unwrap_or("no driver")
        )?;
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}

pub fn assignable_remove(
    cli: &Cli,
    s: Sbdf,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut ctx = open(cli, Some(s))?;
    ctx.engine()?.assignable_remove(s)?;
    emit(
        out,
        json,
        &Done {
            sbdf: s,
            action: "assignable-remove",
            result: (),
        },
        |out| {
            writeln!(out, "{s}: returned to dom0")?;
            Ok(())
        },
    )?;
    finish(cli, &mut ctx, out)
}

pub fn attach(
    cli: &Cli,
    s: Sbdf,
    domid: u16,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut ctx = open(cli, Some(s))?;
    let token = fresh_token()?;
    let epoch = ctx
        .engine()?
        .attach_with_token(s, DomId(domid), Some(&token))?;
    #[derive(Serialize)]
    struct R {
        domid: u16,
        epoch: u64,
        /// The device model's credential for this assignment (docs/broker.md).
        token: String,
    }
    let token = token.to_string();
    emit(
        out,
        json,
        &Done {
            sbdf: s,
            action: "attach",
            result: R {
                domid,
                epoch,
                token: token.clone(),
            },
        },
        |out| {
            writeln!(
                out,
                "{s}: attached to d{domid} (epoch {epoch})\ntoken {token}"
            )?;
            Ok(())
        },
    )?;
    finish(cli, &mut ctx, out)
}

/// A new assignment token from the kernel's random pool.
fn fresh_token() -> anyhow::Result<engine::AssignmentToken> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the device model's token")?;
    Ok(engine::AssignmentToken::from_entropy(bytes))
}

pub fn repair(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = open(cli, Some(s))?;
    let done = ctx.engine()?.repair(s)?;
    let v = serde_json::json!({ "sbdf": s, "action": "repair", "done": done });
    emit(out, json, &v, |out| {
        for d in &done {
            writeln!(out, "{s}: {d}")?;
        }
        writeln!(out, "{s}: repaired")?;
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}

pub fn adopt(
    cli: &Cli,
    s: Sbdf,
    domid: u16,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut ctx = open(cli, Some(s))?;
    let epoch = ctx.engine()?.adopt(s, DomId(domid))?;
    let v = serde_json::json!({ "sbdf": s, "action": "adopt", "domid": domid, "epoch": epoch });
    emit(out, json, &v, |out| {
        writeln!(
            out,
            "{s}: adopted as attached to d{domid} (epoch {epoch}); its bindings are unknown, so its teardown waits for d{domid} to be gone"
        )?;
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}

/// How a teardown ended, in words.
pub fn outcome_text(o: &Outcome) -> String {
    o.to_string()
}

fn print_outcome(out: &mut dyn Write, s: Sbdf, o: &Outcome) -> std::io::Result<()> {
    writeln!(out, "{s}: {}", outcome_text(o))
}

pub fn detach(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = open(cli, None)?;
    let mut e = ctx.engine()?;
    let o = e.detach(s)?;
    let mut n = std::mem::take(&mut e.notices);
    drop(e);
    emit(
        out,
        json,
        &Done {
            sbdf: s,
            action: "detach",
            result: &o,
        },
        |out| {
            for l in n.drain(..) {
                writeln!(out, "NOTICE: {l}")?;
            }
            if cli.dry_run {
                write!(out, "would end: ")?;
            }
            print_outcome(out, s, &o)?;
            Ok(())
        },
    )?;
    finish(cli, &mut ctx, out)?;
    if matches!(o, Outcome::Assignable { .. }) {
        Ok(())
    } else {
        anyhow::bail!("{s} is not clean; it stays away from guests (see `ptguard show {s}`)")
    }
}

pub fn release_domain(
    cli: &Cli,
    domid: u16,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut ctx = open(cli, None)?;
    let mut e = ctx.engine()?;
    let done = e.reconcile(engine::Trigger::DomainReleased(DomId(domid)))?;
    let n = std::mem::take(&mut e.notices);
    drop(e);
    emit(out, json, &done, |out| {
        for l in n {
            writeln!(out, "NOTICE: {l}")?;
        }
        if done.is_empty() {
            writeln!(out, "d{domid} had no device managed by ptguard")?;
        }
        for (s, o) in &done {
            if cli.dry_run {
                write!(out, "would end: ")?;
            }
            print_outcome(out, *s, o)?;
        }
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}

fn records(ctx: &mut HostCtx) -> anyhow::Result<Vec<Result<DeviceRecord, String>>> {
    Ok(ctx
        .engine()?
        .list()?
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect())
}

fn print_record(out: &mut dyn Write, r: &DeviceRecord) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:<13} {:<6} {:>5} {:<9} {}",
        r.sbdf.to_string(),
        r.state.as_str(),
        r.owner.map_or("-".into(), |d| d.to_string()),
        r.epoch,
        r.step.map_or("-", |s| s.as_str()),
        r.bindings
            .iter()
            .map(|b| format!("{}={}", b.key, b.pirq.map_or("?".into(), |p| p.to_string())))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

pub fn list(cli: &Cli, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = cli.open_host()?;
    let recs = records(&mut ctx)?;
    if json {
        let v: Vec<serde_json::Value> = recs
            .iter()
            .map(|r| match r {
                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<13} {:<6} {:>5} {:<9} bindings (key=pirq)",
        "device", "state", "owner", "epoch", "step"
    )?;
    for r in &recs {
        match r {
            Ok(r) => print_record(out, r)?,
            Err(e) => writeln!(out, "CORRUPT: {e}")?,
        }
    }
    Ok(())
}

pub fn assignable_list(cli: &Cli, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = cli.open_host()?;
    let slots = engine::Platform::pci(&ctx.platform)
        .pciback_slots()
        .unwrap_or_default();
    let recs: Vec<DeviceRecord> = records(&mut ctx)?
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    if json {
        #[derive(Serialize)]
        struct L {
            managed: Vec<DeviceRecord>,
            pciback_slots: Vec<Sbdf>,
        }
        serde_json::to_writer_pretty(
            &mut *out,
            &L {
                managed: recs,
                pciback_slots: slots,
            },
        )?;
        writeln!(out)?;
        return Ok(());
    }
    for r in &recs {
        writeln!(out, "{} {}", r.sbdf, r.state)?;
    }
    for s in slots.iter().filter(|s| !recs.iter().any(|r| r.sbdf == **s)) {
        writeln!(out, "{s} (pciback slot, not managed by ptguard)")?;
    }
    Ok(())
}

pub fn show(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = cli.open_host()?;
    let rec = ctx
        .engine()?
        .record(s)
        .with_context(|| format!("cannot read the ledger entry of {s}"))?;
    let pci = engine::Platform::pci(&ctx.platform);
    if rec.is_none() && !pci.exists(s).unwrap_or(false) {
        return Err(engine::EngineError::NoSuchDevice { sbdf: s }.into());
    }
    let driver = pci.driver(s).ok().flatten();
    let msix = pci
        .read_config(s)
        .ok()
        .and_then(|b| pci::ConfigSpace::new(b).ok())
        .and_then(|c| c.parse().ok())
        .and_then(|c| c.msix);
    if json {
        #[derive(Serialize)]
        struct S {
            sbdf: Sbdf,
            ledger: Option<DeviceRecord>,
            driver: Option<String>,
            msix: Option<pci::MsixCap>,
        }
        serde_json::to_writer_pretty(
            &mut *out,
            &S {
                sbdf: s,
                ledger: rec,
                driver,
                msix,
            },
        )?;
        writeln!(out)?;
        return Ok(());
    }
    match &rec {
        None => writeln!(out, "{s}: not managed by ptguard")?,
        Some(r) => {
            writeln!(out, "{s}: {}", r.state)?;
            if let Some(o) = r.owner {
                writeln!(out, "  owner: {o}")?;
            }
            writeln!(out, "  epoch: {}", r.epoch)?;
            if let Some(st) = r.step {
                writeln!(out, "  teardown step: {}", st.as_str())?;
            }
            if let Some(why) = &r.reason {
                writeln!(out, "  reason: {why}")?;
            }
            for b in &r.bindings {
                writeln!(out, "  binding {}: {}", b.key, b.encode())?;
            }
        }
    }
    writeln!(out, "  driver: {}", driver.as_deref().unwrap_or("-"))?;
    if let Some(m) = msix {
        writeln!(
            out,
            "  MSI-X: {} entries, Enable{} Masked{}",
            m.table_size,
            if m.enabled { '+' } else { '-' },
            if m.function_mask { '+' } else { '-' }
        )?;
    }
    if let Some((host, _, _)) = &ctx.sim {
        host.with_world(|w| -> std::io::Result<()> {
            if let Some(d) = w.device(s) {
                writeln!(
                    out,
                    "  xen: owner {} used_entries {} host_maskall {} guest_maskall {} mapped vectors {}",
                    d.xen.owner,
                    d.xen.used_entries,
                    d.xen.host_maskall,
                    d.xen.guest_maskall,
                    w.descs.values().filter(|x| x.sbdf == s).count()
                )?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `ptguard sweep DOMID`.
pub fn sweep(cli: &Cli, domid: u16, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = open(cli, None)?;
    let report = ctx.engine()?.sweep(DomId(domid))?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else if report.domain_gone {
        writeln!(out, "d{domid} is gone: Xen has freed all its pirqs")?;
    } else if report.pv {
        writeln!(
            out,
            "d{domid} is a PV guest: its MSI pirqs are dom0's pciback's, which unmaps them itself; nothing was tried"
        )?;
    } else {
        let r = &report.range;
        let bounds = match r.nr_irqs_gsi {
            Some(g) => format!("nr_irqs_gsi {g} + extra_guest_irqs {}", r.extra_guest_irqs),
            None => format!(
                "Xen's 'IRQ limits' line is gone from its console: from 0, {} GSIs assumed + extra_guest_irqs {}",
                engine::sweep::FALLBACK_NR_IRQS_GSI,
                r.extra_guest_irqs
            ),
        };
        writeln!(
            out,
            "d{domid}: tried pirqs {}..{} ({bounds}); unmapped {}{}",
            r.first,
            r.end.saturating_sub(1),
            report.unmapped.len(),
            if report.unmapped.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    report
                        .unmapped
                        .iter()
                        .map(|p| p.0.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        )?;
    }
    finish(cli, &mut ctx, out)
}

/// `ptguard hook pre-unplug SBDF`.
pub fn hook_pre_unplug(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = open(cli, None)?;
    let done = ctx.engine()?.pre_unplug(s, daemon::watch::unix_now())?;
    emit(out, json, &done, |out| {
        writeln!(
            out,
            "{s}: memory decoding {}",
            if done.turned_on {
                "turned on"
            } else {
                "already on"
            }
        )?;
        if let Some(d) = done.watched_for {
            writeln!(
                out,
                "{s}: leaving {d}; `ptguard watch` reports it if the unplug has not finished in {} s",
                engine::companion::UNPLUG_STALL_SECS
            )?;
        }
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}

/// `ptguard hook pre-reset SBDF`.
pub fn hook_pre_reset(cli: &Cli, s: Sbdf, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    use engine::companion::PreReset;
    let mut ctx = open(cli, None)?;
    let done = ctx.engine()?.pre_reset(s)?;
    emit(out, json, &done, |out| {
        match &done {
            PreReset::NoOwner => writeln!(out, "{s}: no guest holds it; nothing to do")?,
            PreReset::OwnerRunning { domid } => writeln!(
                out,
                "{s}: {domid} may still run; its pirqs are its own, nothing swept"
            )?,
            PreReset::TornDown { outcome, .. } => print_outcome(out, s, outcome)?,
            PreReset::Swept { report } => writeln!(
                out,
                "{s}: swept {} pirq(s) of {}",
                report.unmapped.len(),
                report.domid
            )?,
        }
        Ok(())
    })?;
    finish(cli, &mut ctx, out)
}
