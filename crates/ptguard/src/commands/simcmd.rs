//! `ptguard sim ...`: drive the simulated host of `--host sim:DIR` — create it, create
//! domains, start guests whose device models bind through ptguard, reboot them as xl does.

use std::cell::RefCell;
use std::io::Write;

use anyhow::{bail, Context};
use pci::PciHost;
use pci::Sbdf;
use serde::Serialize;
use sim::dm::{check_interrupts, DeviceModel};
use sim::{DeviceSpec, SimHost};
use xen::{DomId, Hypervisor};

use crate::cli::{Cli, SimCommand};
use crate::commands::lifecycle::{open, print_log};
use crate::output::emit;
use crate::platform::{EngineAccess, EngineBroker};
use daemon::host::{sim_init, HostCtx, HostSpec};

/// A command's host context serving a device model started from the command line.
struct CtxAccess<'e, 'a>(RefCell<&'e mut engine::Engine<'a>>);

impl EngineAccess for CtxAccess<'_, '_> {
    fn with_engine<T>(
        &self,
        f: impl Fn(&mut engine::Engine) -> Result<T, engine::EngineError>,
    ) -> Result<T, engine::EngineError> {
        f(&mut self.0.borrow_mut())
    }
}

fn sim_host(ctx: &HostCtx) -> anyhow::Result<SimHost> {
    match &ctx.sim {
        Some((h, _, _)) => Ok(h.clone()),
        None => bail!("`ptguard sim` needs --host sim:DIR"),
    }
}

/// libxl records the pid of the device model it spawns for an HVM guest; the simulated
/// host's is a pid no real process can have.
fn record_device_model_pid(ctx: &mut HostCtx, domid: DomId) -> anyhow::Result<()> {
    ctx.xs.write(
        xenstore::TxId::NONE,
        &daemon::broker::device_model_pid_path(domid),
        daemon::host::simulated_device_model_pid(domid)
            .to_string()
            .as_bytes(),
    )?;
    Ok(())
}

/// Makes each of the guest's vectors fire and says which arrived (the guest driver's
/// check), as text or JSON.
fn report_interrupts(
    out: &mut dyn Write,
    json: bool,
    host: &SimHost,
    domid: DomId,
    sbdf: Sbdf,
    vectors: u16,
) -> anyhow::Result<()> {
    let rep = check_interrupts(host, domid, sbdf, vectors);
    emit(out, json, &rep, |out| {
        writeln!(
            out,
            "{domid}: {} of {vectors} MSI-X vectors of {sbdf} delivered",
            rep.delivered()
        )?;
        for (i, m) in rep.missing.iter().enumerate() {
            if let Some(why) = m {
                writeln!(out, "  vector {i}: no interrupt ({why})")?;
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// A guest's domid from the command line: a domain the simulated host has, not dom0.
fn guest_domid(host: &SimHost, domid: u16) -> anyhow::Result<DomId> {
    let d = DomId(domid);
    if d == DomId::DOM0 || d > DomId::MAX {
        bail!("{d} is not a guest (a domid from `sim create`)");
    }
    if !host.with_world(|w| w.domains.contains_key(&d)) {
        bail!("{d}: no such domain on the simulated host");
    }
    Ok(d)
}

/// The devices Xen shows assigned to `domid`.
fn held_devices(host: &SimHost, domid: DomId) -> Vec<Sbdf> {
    host.with_world(|w| {
        w.devices
            .iter()
            .filter(|(_, d)| d.xen.owner == domid)
            .map(|(s, _)| *s)
            .collect()
    })
}

fn toolstack_devices(ctx: &HostCtx, domid: DomId) -> Vec<Sbdf> {
    ctx.sim
        .as_ref()
        .and_then(|(_, _, s)| s.toolstack_devices.get(&domid.0))
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// The stubdomain running `guest`'s device model (`/local/domain/<guest>/image/
/// device-model-domid`, as libxl's `libxl_get_stubdom_id` reads it).
fn stubdomain_of(ctx: &mut HostCtx, guest: DomId) -> Option<DomId> {
    let path = format!("/local/domain/{}/image/device-model-domid", guest.0);
    let v = ctx.xs.read_optional(xenstore::TxId::NONE, &path).ok()??;
    String::from_utf8_lossy(&v).trim().parse().ok().map(DomId)
}

/// Creates the device-model stubdomain of `guest` (a PV domain) and the nodes libxl
/// writes for it: the guest's `image/device-model-domid` and the stubdomain's `target`.
fn create_stubdomain(ctx: &mut HostCtx, host: &SimHost, guest: DomId) -> anyhow::Result<DomId> {
    let name = host
        .with_world(|w| w.domains.get(&guest).map(|d| d.name.clone()))
        .unwrap_or_else(|| format!("d{}", guest.0));
    let s = host.create_domain_with(&format!("{name}-dm"), false, true);
    host.unpause(s)
        .map_err(|e| anyhow::anyhow!("unpause {s}: {e}"))?;
    let tx = xenstore::TxId::NONE;
    ctx.xs.write(
        tx,
        &format!("/local/domain/{}/target", s.0),
        guest.0.to_string().as_bytes(),
    )?;
    ctx.xs.write(
        tx,
        &format!("/local/domain/{}/image/device-model-domid", guest.0),
        s.0.to_string().as_bytes(),
    )?;
    Ok(s)
}

/// The stubdomain dies (killed, crashed, or destroyed with its guest): its domain goes,
/// its Xenstore directory with it; its PCI backend stays until the toolstack removes it.
fn stubdomain_dies(ctx: &mut HostCtx, host: &SimHost, s: DomId) -> anyhow::Result<()> {
    if host.domain_alive(s) {
        let _ = host.pause(s);
        host.destroy_domain(s)
            .map_err(|e| anyhow::anyhow!("destroy stubdomain {s}: {e}"))?;
    }
    match ctx
        .xs
        .rm(xenstore::TxId::NONE, &format!("/local/domain/{}", s.0))
    {
        Err(e) if e.code() != Some(xenstore::ErrorCode::Enoent) => Err(e.into()),
        _ => Ok(()),
    }
}

fn take_device_model(ctx: &mut HostCtx, domid: DomId) -> Option<DeviceModel> {
    ctx.sim
        .as_mut()
        .and_then(|(_, _, s)| s.device_models.remove(&domid.0))
}

/// Runs `f` with the guest's device model and the way it binds: directly for a device the
/// toolstack gave (`sim plug`), through ptguard's broker for one `ptguard attach` gave.
fn with_device_model(
    ctx: &mut HostCtx,
    host: &SimHost,
    domid: DomId,
    f: impl FnOnce(&mut DeviceModel, &dyn sim::dm::VectorBroker, &SimHost),
) {
    let Some(mut dm) = take_device_model(ctx, domid) else {
        return;
    };
    if !toolstack_devices(ctx, domid).is_empty() {
        f(&mut dm, &sim::dm::DirectBroker(host.clone()), host);
    } else {
        let epoch = ctx
            .sim
            .as_ref()
            .and_then(|(_, _, s)| s.dm_epochs.get(&domid.0).copied())
            .unwrap_or(0);
        match ctx.engine() {
            Ok(mut e) => {
                let broker = EngineBroker {
                    access: CtxAccess(RefCell::new(&mut e)),
                    epoch,
                };
                f(&mut dm, &broker, host);
            }
            Err(err) => tracing::warn!("{domid}'s device model cannot reach the broker: {err}"),
        }
    }
    if let Some((_, _, s)) = &mut ctx.sim {
        s.device_models.insert(domid.0, dm);
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
            let d = host.create_domain_mapped(&a.name, !a.pv, !a.no_passthrough, a.e820_host);
            if !a.paused {
                host.unpause(d)
                    .map_err(|e| anyhow::anyhow!("unpause {d}: {e}"))?;
            }
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
        SimCommand::Unpause(a) => {
            let d = guest_domid(&host, a.domid)?;
            host.unpause(d)
                .map_err(|e| anyhow::anyhow!("unpause {d}: {e}"))?;
            writeln!(out, "{d} unpaused")?;
        }
        SimCommand::Start(a) | SimCommand::Check(a) => {
            let sbdf: Sbdf = a.sbdf;
            let domid = DomId(a.domid);
            let starting = matches!(what, SimCommand::Start(_));
            if starting {
                let epoch = ctx
                    .engine()?
                    .record(sbdf)?
                    .filter(|r| r.owner == Some(domid))
                    .map(|r| r.epoch)
                    .with_context(|| format!("{sbdf} is not attached to {domid}; run `ptguard attach {sbdf} {}` first", domid.0))?;
                let pv = host.with_world(|w| w.domains.get(&domid).is_some_and(|d| !d.hvm));
                if pv {
                    // A PV guest has no device model: its pcifront asks dom0's pciback,
                    // which maps each vector for it, and the guest binds event channels.
                    if let Some(p) = ctx.sim_platform() {
                        p.dom0_runs();
                    }
                    // The guest driver's pci_enable_device and pci_set_master, written
                    // through pcifront by pciback's config space handlers.
                    let cmd = pci::config::regs::COMMAND_MEMORY | pci::config::regs::COMMAND_MASTER;
                    host.write_config(sbdf, pci::config::regs::COMMAND, &cmd.to_le_bytes())
                        .map_err(|e| anyhow::anyhow!("{domid}: enabling {sbdf}: {e}"))?;
                    let pirqs = host.pv_enable_msix(sbdf, a.vectors).map_err(|e| {
                        anyhow::anyhow!("{domid}: pcifront's enable_msix of {sbdf}: {e}")
                    })?;
                    for p in pirqs {
                        host.pv_bind_evtchn(domid, p).map_err(|e| {
                            anyhow::anyhow!("{domid}: binding pirq {p} of {sbdf}: {e}")
                        })?;
                    }
                } else {
                    let mut dm = DeviceModel::new(domid, a.dm);
                    {
                        let mut e = ctx.engine()?;
                        let broker = EngineBroker {
                            access: CtxAccess(RefCell::new(&mut e)),
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
                    if host.with_world(|w| w.domains.get(&domid).is_some_and(|d| d.hvm)) {
                        record_device_model_pid(&mut ctx, domid)?;
                    }
                }
            }
            report_interrupts(out, a.json, &host, domid, sbdf, a.vectors)?;
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
                let mut e = ctx.engine()?;
                let broker = EngineBroker {
                    access: CtxAccess(RefCell::new(&mut e)),
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
        SimCommand::Shutdown(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let devices = held_devices(&host, domid);
            with_device_model(&mut ctx, &host, domid, |dm, broker, host| {
                for s in &devices {
                    dm.guest_shutdown(host, broker, *s);
                }
            });
            host.shutdown_for(domid, a.reason.code())
                .map_err(|e| anyhow::anyhow!("shutdown {domid}: {e}"))?;
            writeln!(out, "{domid} shut down ({:?})", a.reason)?;
        }
        SimCommand::Destroy(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let given = toolstack_devices(&ctx, domid);
            // A PV guest has no device model: libxl's forced detach needs none.
            let mut dm = take_device_model(&mut ctx, domid).unwrap_or_else(|| {
                let mut none = DeviceModel::new(domid, sim::DmBehaviour::WellBehaved);
                none.kill();
                none
            });
            let direct = sim::dm::DirectBroker(host.clone());
            for s in &given {
                if let Err(e) = sim::libxl::detach(&host, domid, *s, &mut dm, &direct, true) {
                    writeln!(out, "libxl: forced detach of {s} from {domid}: {e}")?;
                }
            }
            dm.kill();
            // libxl__destroy_domid: the device model goes first (a stubdomain with it,
            // its backend removed), then the guest.
            let stubdomain = stubdomain_of(&mut ctx, domid);
            if let Some(s) = stubdomain {
                stubdomain_dies(&mut ctx, &host, s)?;
            }
            let _ = host.pause(domid);
            host.destroy_domain(domid)
                .map_err(|e| anyhow::anyhow!("destroy {domid}: {e}"))?;
            let mut paths = vec![
                format!("/local/domain/{}", domid.0),
                format!("{}/{}", engine::companion::TOOLSTACK_BACKENDS, domid.0),
            ];
            if let Some(s) = stubdomain {
                paths.push(format!("{}/{}", engine::companion::TOOLSTACK_BACKENDS, s.0));
            }
            for path in paths {
                match ctx.xs.rm(xenstore::TxId::NONE, &path) {
                    Err(e) if e.code() != Some(xenstore::ErrorCode::Enoent) => return Err(e.into()),
                    _ => {}
                }
            }
            if let Some((_, _, st)) = &mut ctx.sim {
                st.toolstack_devices.remove(&domid.0);
                st.dm_epochs.remove(&domid.0);
            }
            writeln!(out, "{domid} destroyed")?;
        }
        SimCommand::Plug(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let sbdf = a.sbdf;
            let hvm = host.with_world(|w| w.domains.get(&domid).is_some_and(|d| d.hvm));
            let direct = sim::dm::DirectBroker(host.clone());
            if hvm {
                // libxl with a device-model stubdomain: the PCI backend is the
                // stubdomain's (its pcifront serves the model), the assignment the guest's.
                let backend_of = match (a.stubdom, stubdomain_of(&mut ctx, domid)) {
                    (_, Some(s)) => s,
                    (true, None) => create_stubdomain(&mut ctx, &host, domid)?,
                    (false, None) => domid,
                };
                let mut dm = take_device_model(&mut ctx, domid)
                    .unwrap_or_else(|| DeviceModel::new(domid, a.dm));
                let r = sim::libxl::attach(&host, domid, sbdf, &mut dm, &direct)
                    .map_err(|e| anyhow::anyhow!("xl pci-attach {} {sbdf}: {e}", domid.0))
                    .and_then(|()| {
                        sim::libxl::backend_add(&mut ctx.xs, backend_of, sbdf)?;
                        dm.guest_enable_msix(&host, &direct, sbdf, a.vectors)
                            .map_err(|e| anyhow::anyhow!("guest enable MSI-X: {e}"))
                    });
                if let Some((_, _, st)) = &mut ctx.sim {
                    st.device_models.insert(domid.0, dm);
                }
                r?;
                if backend_of == domid {
                    record_device_model_pid(&mut ctx, domid)?;
                }
            } else {
                // libxl's PV attach: no device model; assign, pciback export, backend;
                // pcifront's enable_msix has dom0 map each vector for the guest.
                let fail = |what: &str, e: &dyn std::fmt::Display| {
                    anyhow::anyhow!("xl pci-attach {} {sbdf}: {what}: {e}", domid.0)
                };
                host.test_assign_device(sbdf)
                    .map_err(|e| fail("test_assign_device", &e))?;
                host.assign_device(domid, sbdf, 0)
                    .map_err(|e| fail("assign_device", &e))?;
                host.pciback_export(sbdf, domid)
                    .map_err(|e| fail("pciback export", &e))?;
                sim::libxl::backend_add(&mut ctx.xs, domid, sbdf)?;
                for p in host
                    .pv_enable_msix(sbdf, a.vectors)
                    .map_err(|e| fail("enable_msix", &e))?
                {
                    host.pv_bind_evtchn(domid, p)
                        .map_err(|e| fail("bind evtchn", &e))?;
                }
            }
            if let Some((_, _, st)) = &mut ctx.sim {
                st.toolstack_devices
                    .entry(domid.0)
                    .or_default()
                    .insert(sbdf);
            }
            if !a.json {
                writeln!(out, "{sbdf} given to {domid} by the toolstack")?;
            }
            report_interrupts(out, a.json, &host, domid, sbdf, a.vectors)?;
        }
        SimCommand::Unplug(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let sbdf = a.sbdf;
            let mut dm = take_device_model(&mut ctx, domid)
                .unwrap_or_else(|| DeviceModel::new(domid, sim::DmBehaviour::WellBehaved));
            let direct = sim::dm::DirectBroker(host.clone());
            let r = sim::libxl::detach(&host, domid, sbdf, &mut dm, &direct, false)
                .map(|()| "")
                .or_else(|_| {
                    sim::libxl::detach(&host, domid, sbdf, &mut dm, &direct, true)
                        .map(|()| " (forced: the device model did not answer device_del)")
                });
            if let Some((_, _, st)) = &mut ctx.sim {
                st.device_models.insert(domid.0, dm);
                if let Some(set) = st.toolstack_devices.get_mut(&domid.0) {
                    set.remove(&sbdf);
                }
            }
            let forced = r.map_err(|e| anyhow::anyhow!("xl pci-detach {} {sbdf}: {e}", domid.0))?;
            let backend_of = stubdomain_of(&mut ctx, domid).unwrap_or(domid);
            let simp = ctx.sim_platform();
            sim::libxl::backend_remove_with(&mut ctx.xs, backend_of, sbdf, &mut || {
                if let Some(p) = &simp {
                    p.dom0_runs();
                }
            })?;
            writeln!(out, "{sbdf} removed from {domid} by the toolstack{forced}")?;
        }
        SimCommand::KillDm(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let Some((_, _, st)) = &mut ctx.sim else {
                bail!("`ptguard sim` needs --host sim:DIR");
            };
            match st.device_models.get_mut(&domid.0) {
                Some(dm) => dm.crash(),
                None => bail!("{domid} has no device model (an HVM guest gets one from `sim start` or `sim plug`)"),
            }
            match stubdomain_of(&mut ctx, domid) {
                Some(s) => {
                    stubdomain_dies(&mut ctx, &host, s)?;
                    writeln!(
                        out,
                        "{domid}: device-model stubdomain {s} died; what it mapped for {domid} stays mapped"
                    )?;
                }
                None => writeln!(
                    out,
                    "{domid}: device model killed (SIGKILL); what it mapped stays mapped"
                )?,
            }
        }
        SimCommand::DmMap(a) => {
            let domid = guest_domid(&host, a.domid)?;
            let pirq = sim::dm::map_one_directly(&host, domid, a.sbdf, a.entry, a.map_only)
                .map_err(|e| {
                    anyhow::anyhow!("{domid}: mapping entry {} of {}: {e}", a.entry, a.sbdf)
                })?;
            let how = if a.map_only {
                "mapped, never bound"
            } else {
                "mapped and bound"
            };
            writeln!(
                out,
                "{domid}: entry {} of {} {how} as pirq {pirq}, behind ptguard's back",
                a.entry, a.sbdf
            )?;
        }
        SimCommand::Decoding(a) => {
            let sbdf = a.sbdf;
            let cfg = host
                .read_config(sbdf)
                .map_err(|e| anyhow::anyhow!("{sbdf}: {e}"))?;
            let cmd = u16::from_le_bytes([
                cfg.get(4).copied().unwrap_or(0),
                cfg.get(5).copied().unwrap_or(0),
            ]);
            let mem = pci::config::regs::COMMAND_MEMORY;
            let new = if a.state == "on" {
                cmd | mem
            } else {
                cmd & !mem
            };
            host.write_config(sbdf, pci::config::regs::COMMAND, &new.to_le_bytes())
                .map_err(|e| anyhow::anyhow!("{sbdf}: {e}"))?;
            writeln!(out, "{sbdf}: memory decoding {}", a.state)?;
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
