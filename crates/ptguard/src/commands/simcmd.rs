//! `ptguard sim ...`: drive the simulated host of `--host sim:DIR` — create it, create
//! domains, start guests whose device models bind through ptguard, reboot them as xl does.

use std::cell::RefCell;
use std::io::Write;

use anyhow::{bail, Context};
use pci::Sbdf;
use serde::Serialize;
use sim::dm::{check_interrupts, DeviceModel};
use sim::{DeviceSpec, SimHost};
use xen::DomId;

use crate::cli::{Cli, SimCommand};
use crate::commands::lifecycle::{open, print_log};
use crate::hostctx::{sim_init, HostCtx, HostSpec};
use crate::output::emit;
use crate::platform::{EngineAccess, EngineBroker};

/// A command's host context serving a device model started from the command line.
struct CtxAccess<'c>(&'c RefCell<&'c mut HostCtx>);

impl EngineAccess for CtxAccess<'_> {
    fn with_engine<T>(
        &self,
        f: impl Fn(&mut engine::Engine) -> Result<T, engine::EngineError>,
    ) -> Result<T, engine::EngineError> {
        f(&mut self.0.borrow_mut().engine())
    }
}

fn sim_host(ctx: &HostCtx) -> anyhow::Result<SimHost> {
    match &ctx.sim {
        Some((h, _, _)) => Ok(h.clone()),
        None => bail!("`ptguard sim` needs --host sim:DIR"),
    }
}

pub fn run(cli: &Cli, what: &SimCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    if let SimCommand::Init(a) = what {
        let HostSpec::Sim(dir) = &cli.host else {
            bail!("`ptguard sim init` needs --host sim:DIR");
        };
        let devices: Vec<DeviceSpec> = (0..a.devices)
            .map(|i| DeviceSpec::nic(Sbdf::from_devfn(0, 3 + i, 0), a.entries))
            .collect();
        if !cli.dry_run {
            sim_init(dir, a.profile.xen(), a.profile.pciback(), &devices)?;
        }
        let sbdfs: Vec<String> = devices.iter().map(|d| d.sbdf.to_string()).collect();
        if a.json {
            let v = serde_json::json!({
                "dir": dir,
                "xen": a.profile.xen().name(),
                "pciback": a.profile.pciback().name(),
                "devices": sbdfs,
                "msix_entries": a.entries,
                "created": !cli.dry_run,
            });
            serde_json::to_writer_pretty(&mut *out, &v)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{}simulated host in {}: {} with {}, devices {}",
                if cli.dry_run {
                    "dry run, nothing written: would create a "
                } else {
                    ""
                },
                dir.display(),
                a.profile.xen().name(),
                a.profile.pciback().name(),
                sbdfs.join(", ")
            )?;
        }
        return Ok(());
    }
    let mut ctx = open(cli, None)?;
    let host = sim_host(&ctx)?;
    match what {
        SimCommand::Init(_) => {}
        SimCommand::Create(a) => {
            let d = host.create_domain_with(&a.name, !a.pv, !a.no_passthrough);
            host.unpause(d)
                .map_err(|e| anyhow::anyhow!("unpause {d}: {e}"))?;
            if a.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "domid": d.0, "name": a.name })
                )?;
            } else {
                writeln!(out, "{}", d.0)?;
            }
        }
        SimCommand::Start(a) | SimCommand::Check(a) => {
            let sbdf: Sbdf = a.sbdf;
            let domid = DomId(a.domid);
            let starting = matches!(what, SimCommand::Start(_));
            if starting {
                let epoch = ctx
                    .engine()
                    .record(sbdf)?
                    .filter(|r| r.owner == Some(domid))
                    .map(|r| r.epoch)
                    .with_context(|| format!("{sbdf} is not attached to {domid}; run `ptguard attach {sbdf} {}` first", domid.0))?;
                let mut dm = DeviceModel::new(domid, a.dm);
                {
                    let cell = RefCell::new(&mut ctx);
                    let broker = EngineBroker {
                        access: CtxAccess(&cell),
                        epoch,
                    };
                    dm.plug(&host, &broker, sbdf)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    dm.guest_enable_msix(&host, &broker, sbdf, a.vectors)
                        .map_err(|e| anyhow::anyhow!(e))?;
                }
                if let Some((_, _, state)) = &mut ctx.sim {
                    state.device_models.insert(domid.0, dm);
                    state.dm_epochs.insert(domid.0, epoch);
                }
                // libxl records the pid of the device model it spawns for an HVM guest.
                if host.with_world(|w| w.domains.get(&domid).is_some_and(|d| d.hvm)) {
                    ctx.xs.write(
                        xenstore::TxId::NONE,
                        &crate::broker::device_model_pid_path(domid),
                        crate::hostctx::simulated_device_model_pid(domid)
                            .to_string()
                            .as_bytes(),
                    )?;
                }
            }
            let rep = check_interrupts(&host, domid, sbdf, a.vectors);
            emit(out, a.json, &rep, |out| {
                writeln!(
                    out,
                    "{domid}: {} of {} MSI-X vectors of {sbdf} delivered",
                    rep.delivered(),
                    a.vectors
                )?;
                for (i, m) in rep.missing.iter().enumerate() {
                    if let Some(why) = m {
                        writeln!(out, "  vector {i}: no interrupt ({why})")?;
                    }
                }
                Ok(())
            })?;
        }
        SimCommand::Reboot(a) => {
            let domid = DomId(a.domid);
            if domid == DomId::DOM0 || domid > DomId::MAX {
                bail!("{domid} is not a guest: `sim reboot` restarts a guest as xl does (its domid from `sim create`)");
            }
            let (name, hvm) = host
                .with_world(|w| w.domains.get(&domid).map(|d| (d.name.clone(), d.hvm)))
                .with_context(|| format!("{domid}: no such domain"))?;
            let mut dm = ctx
                .sim
                .as_mut()
                .and_then(|(_, _, s)| s.device_models.remove(&domid.0));
            let epoch = ctx
                .sim
                .as_ref()
                .and_then(|(_, _, s)| s.dm_epochs.get(&domid.0).copied())
                .unwrap_or(0);
            let devices: Vec<Sbdf> = host.with_world(|w| {
                w.devices
                    .iter()
                    .filter(|(_, d)| d.xen.owner == domid)
                    .map(|(s, _)| *s)
                    .collect()
            });
            if let Some(dm) = &mut dm {
                let cell = RefCell::new(&mut ctx);
                let broker = EngineBroker {
                    access: CtxAccess(&cell),
                    epoch,
                };
                for s in &devices {
                    dm.guest_shutdown(&host, &broker, *s);
                }
                dm.kill();
            }
            host.shutdown(domid).map_err(|e| anyhow::anyhow!("{e}"))?;
            host.pause(domid).map_err(|e| anyhow::anyhow!("{e}"))?;
            host.destroy_domain(domid)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // libxl removes the domain's Xenstore directory when it destroys it.
            match ctx
                .xs
                .rm(xenstore::TxId::NONE, &format!("/local/domain/{}", domid.0))
            {
                Err(e) if e.code() != Some(xenstore::ErrorCode::Enoent) => return Err(e.into()),
                _ => {}
            }
            let new = host.create_domain(&name, hvm);
            host.unpause(new).map_err(|e| anyhow::anyhow!("{e}"))?;
            if a.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "old": domid.0, "new": new.0 })
                )?;
            } else {
                writeln!(out, "{domid} destroyed; {name} restarted as {new}")?;
                writeln!(out, "{}", new.0)?;
            }
        }
        SimCommand::State(a) => {
            let sbdf: Sbdf = a.sbdf;
            #[derive(Serialize)]
            struct St {
                sbdf: Sbdf,
                owner: DomId,
                used_entries: u32,
                host_maskall: bool,
                guest_maskall: bool,
                function_mask: bool,
                msix_enabled: bool,
                memory_decoding: bool,
                mapped_vectors: Vec<(DomId, i32, u16)>,
                console: Vec<String>,
            }
            let st = host
                .with_world(|w| {
                    w.device(sbdf).map(|d| St {
                        sbdf,
                        owner: d.xen.owner,
                        used_entries: d.xen.used_entries,
                        host_maskall: d.xen.host_maskall,
                        guest_maskall: d.xen.guest_maskall,
                        function_mask: d.hw.function_mask(),
                        msix_enabled: d.hw.msix_enabled(),
                        memory_decoding: d.hw.memory_decoding(),
                        mapped_vectors: w
                            .descs
                            .values()
                            .filter(|x| x.sbdf == sbdf)
                            .map(|x| (x.domid, x.pirq, x.entry))
                            .collect(),
                        console: w
                            .console
                            .iter()
                            .filter(|l| l.contains(&sbdf.to_string()))
                            .cloned()
                            .collect(),
                    })
                })
                .with_context(|| format!("{sbdf}: no such device on the simulated host"))?;
            emit(out, a.json, &st, |out| {
                writeln!(
                    out,
                    "{sbdf}: owner {} used_entries {} host_maskall {} guest_maskall {}",
                    st.owner, st.used_entries, st.host_maskall, st.guest_maskall
                )?;
                writeln!(
                    out,
                    "  hardware: MSI-X Enable {} Function Mask {} memory decoding {}",
                    st.msix_enabled, st.function_mask, st.memory_decoding
                )?;
                for (d, p, e) in &st.mapped_vectors {
                    writeln!(out, "  mapped: {d} pirq {p} -> entry {e}")?;
                }
                for l in &st.console {
                    writeln!(out, "  (XEN) {l}")?;
                }
                Ok(())
            })?;
        }
    }
    ctx.save()?;
    print_log(cli, &ctx, out)
}
