//! The daemon's rounds (`ptguard watch`): follow `@releaseDomain` and the toolstack's PCI
//! backends, finish interrupted teardowns and quarantines whose owner is gone, unbind what
//! a dead device model left, and cure devices no guest holds. What each round does to a
//! device is the engine's; this module decides when rounds run and keeps the daemon
//! running through another process's hold on the host.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use engine::Outcome;
use pci::Sbdf;

use crate::broker::DaemonHost;
use crate::host::HostCtx;
use crate::metrics::{Metrics, MetricsFile, TeardownTrigger};
use crate::DaemonError;

/// How often a simulated host's daemon looks for work (it has no event to wait on: other
/// commands change the directory from other processes).
const SIM_POLL: Duration = Duration::from_millis(500);

/// Teardowns finished, and the notices raised on the way.
pub type Recovered = (Vec<(Sbdf, Outcome)>, Vec<engine::Notice>);

/// The watch token of the toolstack's PCI backends: its events adopt and follow
/// devices that left a guest.
pub const ADOPT_TOKEN: &str = "ptguard-adopt";

/// How often quarantined or unfinished teardowns are retried when no domain event comes
/// (a PV guest's pciback letting go of its vectors raises none).
const RETRY_UNFINISHED: Duration = Duration::from_secs(3);

/// What one round of the daemon does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing happened.
    Idle,
    /// A backend changed: follow devices that left a running guest, adopt what the
    /// toolstack gave, cure unrecorded devices. No recovery of unfinished teardowns here:
    /// ptguard's own attach and detach write backends too, and must not see their work
    /// in progress taken for an interrupted one.
    Adopt,
    /// `@releaseDomain` (or a simulated host's poll, or the retry timer): all of the
    /// above, then finish teardowns.
    Recover,
}

/// What the daemon's rounds may do.
#[derive(Clone, Copy, Debug)]
pub struct RoundPolicy {
    /// Adopt the toolstack's devices (companion mode).
    pub adopt: bool,
    /// Report, do not cure, devices that left a running guest or that no guest holds
    /// unclean.
    pub report_only: bool,
}

/// One round: devices that left a running guest are followed (cleaned, or handed over to
/// the guest the toolstack gave them to), the toolstack's new devices adopted, and with
/// `recover` every unfinished teardown and gone owner finished; then devices no guest
/// holds that Xen left masked are cured. Each part's failure is logged (and counted in
/// `metrics`) and the rest runs; each teardown is counted by what started it.
pub fn recover_pending(
    ctx: &mut HostCtx,
    policy: RoundPolicy,
    recover: bool,
    metrics: &Metrics,
) -> Result<Recovered, DaemonError> {
    let failed = |what: &str, err: &dyn std::fmt::Display| {
        tracing::warn!("{what}: {err}");
        metrics.error(&format!("{what}: {err}"), unix_now());
    };
    let mut e = ctx.engine()?;
    let mut done = Vec::new();
    match e.follow_departures(policy.report_only) {
        Ok(d) => {
            for (sbdf, outcome) in d.into_iter().filter_map(|d| Some((d.sbdf, d.outcome?))) {
                metrics.teardown(TeardownTrigger::Departure, &outcome);
                done.push((sbdf, outcome));
            }
        }
        Err(err) => failed("following devices that left a running guest", &err),
    }
    if policy.adopt {
        // Companion mode: devices the toolstack gave since the last round. A failure here
        // (Xenstore, the hypervisor) must not stop the teardowns below.
        if let Err(err) = e.adopt_from_toolstack() {
            failed("adoption from the toolstack's backends", &err);
        }
    }
    if recover {
        for (sbdf, outcome) in e.reconcile(engine::Trigger::Recover)? {
            metrics.teardown(TeardownTrigger::Recover, &outcome);
            done.push((sbdf, outcome));
        }
    }
    if let Err(err) = e.cure_unrecorded(policy.report_only) {
        failed("checking the devices no guest holds", &err);
    }
    if let Err(err) = e.check_unplugs(unix_now()) {
        failed("checking the unplugs toolstack hooks announced", &err);
    }
    let notices = std::mem::take(&mut e.notices);
    notices.iter().for_each(|n| metrics.notice(n));
    Ok((done, notices))
}

/// The daemon's metrics, and where it keeps them as a textfile (none: counted only).
#[derive(Debug, Default)]
pub struct WatchMetrics {
    pub metrics: std::sync::Arc<Metrics>,
    pub file: Option<MetricsFile>,
}

impl WatchMetrics {
    /// Rewrites the textfile, with the ledger's devices by state read now. A failure is
    /// logged and counted; the daemon goes on.
    pub fn publish(&self, host: &DaemonHost) {
        let Some(file) = &self.file else {
            return;
        };
        let states = host.with(|c| {
            Ok(c.engine()?
                .list_heads()?
                .into_iter()
                .flatten()
                .map(|r| r.state)
                .collect::<Vec<_>>())
        });
        match states {
            Ok(s) => self.metrics.devices(s),
            // Busy: the last count stands until the next round.
            Err(e) if e.is_busy() => {}
            Err(e) => self
                .metrics
                .error(&format!("reading the ledger for metrics: {e}"), unix_now()),
        }
        if let Err(e) = file.write(&self.metrics.render()) {
            tracing::warn!("metrics: {e}");
            self.metrics.error(&format!("metrics: {e}"), unix_now());
        }
    }
}

/// Logs a notice at its level: once, INFO for routine steps, WARN for cures and
/// quarantines.
pub fn log_notice(n: &engine::Notice) {
    match n.level {
        engine::NoticeLevel::Info => tracing::info!("{n}"),
        engine::NoticeLevel::Warn => tracing::warn!("{n}"),
    }
}

/// How often the daemon checks that the device models of guests the ledger has devices
/// attached to are still alive.
const DEVICE_MODEL_CHECK: Duration = Duration::from_secs(1);

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn process_alive(pid: i32) -> bool {
    // /proc/PID/stat is "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, None | Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// A guest and the pid of its device model, as libxl recorded it.
type DeviceModelOf = (xen::DomId, i32);

/// Guests the ledger has devices attached to whose device model (libxl's
/// `device-model-pid`) is no longer alive.
fn dead_device_models(ctx: &mut HostCtx) -> Vec<DeviceModelOf> {
    let Ok(owners) = ctx.engine().and_then(|mut e| Ok(e.attached_owners()?)) else {
        return Vec::new();
    };
    let recorded: Vec<DeviceModelOf> = owners
        .into_iter()
        .filter_map(|d| crate::broker::device_model_pid(ctx, d).map(|p| (d, p)))
        .collect();
    recorded
        .into_iter()
        .filter(|(d, p)| !device_model_alive(ctx, *d, *p))
        .collect()
}

/// Whether the device model recorded for `domid` as `pid` still runs: a live process; or,
/// for the pid a simulated host recorded for the model it started, that simulated model
/// (it crashes, or the toolstack kills it, in the simulation).
fn device_model_alive(ctx: &HostCtx, domid: xen::DomId, pid: i32) -> bool {
    match &ctx.sim {
        Some((_, _, state)) if pid == crate::host::simulated_device_model_pid(domid) => {
            state.device_models.get(&domid.0).is_some_and(|dm| dm.alive)
        }
        _ => process_alive(pid),
    }
}

/// Unbinds what dead device models of running guests left bound (engine `orphaned`), once
/// per dead model: `released` remembers them (and forgets guests the ledger no longer has).
fn release_orphans(
    ctx: &mut HostCtx,
    released: &mut BTreeSet<DeviceModelOf>,
) -> Vec<engine::Notice> {
    let dead = dead_device_models(ctx);
    released.retain(|d| dead.contains(d));
    let mut said = Vec::new();
    for (domid, pid) in dead {
        if released.contains(&(domid, pid)) {
            continue;
        }
        let mut e = match ctx.engine() {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(
                    "{domid}: its device model is gone, but the ledger cannot be reached: {err}"
                );
                continue;
            }
        };
        match e.release_orphaned_bindings(domid) {
            Ok(_) => {
                released.insert((domid, pid));
            }
            Err(err) => tracing::warn!(
                "{domid}: its device model is gone, but unbinding what it left failed: {err}"
            ),
        }
        said.append(&mut e.notices);
    }
    said
}

/// The daemon's loop: on every `@releaseDomain` seen by `watcher` (or every
/// `SIM_POLL` (500 ms) without one), finish the teardowns of devices whose owner is gone and retry
/// quarantines; on every change of the toolstack's backends, follow and adopt devices;
/// every `RETRY_UNFINISHED` while a teardown is quarantined or unfinished, retry it.
/// `on_done` sees each outcome. Returns when `stop` is set.
pub fn watch_loop(
    host: &DaemonHost,
    mut watcher: Option<&mut xenstore::XsClient>,
    stop: &AtomicBool,
    policy: RoundPolicy,
    metrics: &WatchMetrics,
    mut on_done: impl FnMut(&(Sbdf, Outcome)),
) -> Result<(), DaemonError> {
    let m = &metrics.metrics;
    let mut last_dm_check = std::time::Instant::now();
    let mut last_retry = std::time::Instant::now();
    // Whether the last recovery left a teardown to retry (quarantined, unfinished).
    let mut unfinished = true;
    let mut released = BTreeSet::new();
    // A round another process's lock kept from running, run as soon as the lock is free.
    let mut owed: Option<Round> = None;
    while !stop.load(Ordering::Relaxed) {
        if last_dm_check.elapsed() >= DEVICE_MODEL_CHECK {
            last_dm_check = std::time::Instant::now();
            if let Some(said) = unless_busy(host.with(|c| Ok(release_orphans(c, &mut released))))? {
                said.iter().for_each(log_notice);
                said.iter().for_each(|n| m.notice(n));
            }
        }
        let round = match watcher.as_deref_mut() {
            Some(w) => match w.next_event(Some(Duration::from_millis(500)))? {
                None => Round::Idle,
                Some(ev) if ev.token == ADOPT_TOKEN => Round::Adopt,
                Some(_) => Round::Recover,
            },
            None => {
                std::thread::sleep(SIM_POLL);
                Round::Recover
            }
        };
        let retry = unfinished && last_retry.elapsed() >= RETRY_UNFINISHED;
        let round = match (owed.take(), round) {
            (Some(Round::Recover), _) | (_, Round::Recover) => Round::Recover,
            _ if retry => Round::Recover,
            (Some(Round::Adopt), _) | (_, Round::Adopt) => Round::Adopt,
            _ => Round::Idle,
        };
        if round == Round::Idle {
            // An in-process watcher returns at once when nothing is queued.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let recover = round == Round::Recover;
        let Some((done, notices)) =
            unless_busy(host.with(|c| recover_pending(c, policy, recover, m)))?
        else {
            owed = Some(round);
            continue;
        };
        m.round(if recover { "recover" } else { "adopt" }, unix_now());
        notices.iter().for_each(log_notice);
        for d in &done {
            match &d.1 {
                Outcome::Assignable { .. } | Outcome::HandedOver { .. } => {
                    tracing::info!("{}: {}", d.0, d.1)
                }
                // The quarantine's own notice said it (WARN), once: a retried round that
                // finds the same reason logs nothing.
                Outcome::Quarantined { .. } => {}
            }
            on_done(d);
        }
        if recover {
            last_retry = std::time::Instant::now();
        }
        unfinished = unless_busy(host.with(|c| Ok(c.engine()?.has_unfinished()?)))?.unwrap_or(true);
        metrics.publish(host);
    }
    Ok(())
}

/// One piece of the daemon's work: `None` when another ptguard process held the host's
/// lock for longer than the daemon waits (a long command, a stuck one). The daemon never
/// stops for that: it says so and tries again on its next round.
pub fn unless_busy<T>(r: Result<T, DaemonError>) -> Result<Option<T>, DaemonError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_busy() => {
            tracing::warn!("{e}; the daemon keeps serving and tries again");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
