//! Benchmarks of the engine on the simulated host: teardown cost against the minimum, bind
//! overhead against the bare hypercalls, ledger scale and crash recovery, a reboot storm.
//! Operation counts are exact; times are wall-clock on this machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::LabError;

type Result<T> = std::result::Result<T, LabError>;
use engine::{BindKind, BindRequest, Engine, Outcome};
use pci::Sbdf;
use serde::Serialize;
use sim::{DeviceSpec, PcibackProfile, Profile, SimHost, XenProfile};
use xen::{DomId, HypercallOp, Hypervisor, MapPirq, MapSource, PtIrq};
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;
use xenstore::XsClient;

use crate::platform::SimPlatform;

fn profile() -> Profile {
    let mut p = Profile::new(XenProfile::Xen4_17_0, PcibackProfile::AfterCommandFix);
    // A 2048-vector device in one domain needs more than the default 1024 pirqs.
    p.nr_pirqs = Some(4096);
    p
}

fn dev(i: usize) -> Sbdf {
    Sbdf::from_devfn(0, (1 + i / 32) as u8, ((i % 32) as u8) << 3)
}

fn req(domid: DomId, sbdf: Sbdf, epoch: u64, entry: u16, table_base: u64) -> BindRequest {
    BindRequest {
        domid,
        sbdf,
        epoch,
        kind: BindKind::Msix { entry, table_base },
        gvec: 0x40 + (entry % 0x80) as u8,
        gflags: xen::abi::XEN_DOMCTL_VMSI_X86_UNMASKED,
        gtable: 0xf100_0000,
    }
}

fn table_base(host: &SimHost, s: Sbdf) -> u64 {
    host.with_world(|w| w.device(s).map_or(0, |d| d.hw.table_base()))
}

fn delta(
    after: &BTreeMap<HypercallOp, u64>,
    before: &BTreeMap<HypercallOp, u64>,
) -> BTreeMap<HypercallOp, u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A device attached to a guest with `n` vectors bound through the broker.
fn bound_device(
    engine: &mut Engine,
    host: &SimHost,
    sbdf: Sbdf,
    domid: DomId,
    n: u16,
) -> Result<()> {
    if engine.record(sbdf)?.is_none() {
        engine.assignable_add(sbdf)?;
    }
    let epoch = engine.attach(sbdf, domid)?;
    let tb = table_base(host, sbdf);
    for e in 0..n {
        engine.bind(&req(domid, sbdf, epoch, e, tb))?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct TeardownRow {
    pub msix_vectors: u16,
    /// MSI-X vectors plus the INTx pirq.
    pub bindings: u32,
    pub hypercalls: BTreeMap<String, u64>,
    /// unbind_pt_irq + unmap_pirq + release_msix + prepare_msix made by the teardown.
    pub cleanup_hypercalls: u64,
    /// The minimum: one unbind and one unmap per binding, release, prepare.
    pub minimum_hypercalls: u64,
    pub ratio: f64,
    /// Detach bookkeeping (permission revokes, deassign, and the check that no guest holds
    /// the device once its owner let go).
    pub bookkeeping_hypercalls: u64,
    pub sysfs_writes: u64,
    pub xenstore_requests: u64,
    pub xenstore_transactions: u64,
    pub micros: f64,
}

pub fn teardown(vectors: u16) -> Result<TeardownRow> {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(profile()).with_sink(Arc::new(xs.clone()));
    let sbdf = dev(0);
    host.add_device(DeviceSpec::nic(sbdf, vectors.max(1)));
    let platform = SimPlatform::new(host.clone(), xs.connect(0))?;
    let mut c = xs.connect(0);
    let d = host.create_domain("g", true);
    bound_device(&mut Engine::new(&mut c, &platform), &host, sbdf, d, vectors)?;
    // The device model crashes; the guest goes away.
    host.shutdown(d)
        .map_err(|e| LabError::Host(e.to_string()))?;
    host.pause(d).map_err(|e| LabError::Host(e.to_string()))?;
    let hc0 = host.counters();
    let xs0 = c.stats();
    let t = Instant::now();
    let out = Engine::new(&mut c, &platform).reconcile(engine::Trigger::DomainReleased(d))?;
    let micros = t.elapsed().as_secs_f64() * 1e6;
    if !matches!(out.as_slice(), [(_, Outcome::Assignable { .. })]) {
        return Err(LabError::Unexpected(format!(
            "teardown of {vectors} vectors did not end assignable: {out:?}"
        )));
    }
    let hc1 = host.counters();
    let xs1 = c.stats();
    let hypercalls = delta(&hc1.hypercalls, &hc0.hypercalls);
    let get = |op: HypercallOp| hypercalls.get(&op).copied().unwrap_or(0);
    let bindings = u32::from(vectors) + 1;
    let cleanup = get(HypercallOp::UnbindPtIrq)
        + get(HypercallOp::UnmapPirq)
        + get(HypercallOp::ReleaseMsix)
        + get(HypercallOp::PrepareMsix);
    // Per vector an unbind and an unmap; attach's INTx pirq, mapped but never bound by a
    // device model, only an unmap (Xen 4.17.5 answers its unbind with -EINVAL and logs);
    // then release and prepare.
    let minimum = 2 * u64::from(vectors) + 1 + 2;
    let total: u64 = hypercalls.values().sum();
    Ok(TeardownRow {
        msix_vectors: vectors,
        bindings,
        bookkeeping_hypercalls: total - cleanup - get(HypercallOp::GetDomainInfo),
        hypercalls: hypercalls
            .iter()
            .map(|(op, n)| (op.name().to_string(), *n))
            .collect(),
        cleanup_hypercalls: cleanup,
        minimum_hypercalls: minimum,
        ratio: cleanup as f64 / minimum as f64,
        sysfs_writes: hc1.sysfs_writes - hc0.sysfs_writes,
        xenstore_requests: xs1.requests - xs0.requests,
        xenstore_transactions: xs1.transactions_started - xs0.transactions_started,
        micros,
    })
}

#[derive(Debug, Serialize)]
pub struct BindReport {
    pub binds: u32,
    pub ptguard_us_per_bind: f64,
    pub bare_us_per_bind: f64,
    pub ratio: f64,
    /// The bare hypercalls plus the Xenstore round trips a bind makes (two reads, two
    /// writes) over the same socket, measured in the same run: what any ledger kept in
    /// Xenstore must cost.
    pub bare_plus_round_trips_us_per_bind: f64,
    /// ptguard against that (goal ≤ 1.2): the broker's own work beyond its round trips.
    pub ratio_vs_bare_plus_round_trips: f64,
    pub xenstore_transactions_per_bind: f64,
    pub xenstore_requests_per_bind: f64,
    pub hypercalls_per_bind: f64,
    pub transport: &'static str,
}

pub fn bind_overhead(n: u16) -> Result<BindReport> {
    let dir = std::env::temp_dir().join(format!("ptguard-bench-bind-{}", std::process::id()));
    let server = xenstore::server::start(xenstore::server::ServerConfig::new(&dir))
        .map_err(|e| LabError::Host(format!("embedded xenstored: {e}")))?;
    let sbdf = dev(0);
    // ptguard: ledger transaction over the real unix socket + simulated hypercalls.
    let host = SimHost::new(profile());
    host.add_device(DeviceSpec::nic(sbdf, n));
    let platform = SimPlatform::new(host.clone(), XsClient::connect(server.socket_path())?)?;
    let mut c = XsClient::connect(server.socket_path())?;
    let d = host.create_domain("g", true);
    let epoch = {
        let mut e = Engine::new(&mut c, &platform);
        e.assignable_add(sbdf)?;
        e.attach(sbdf, d)?
    };
    let tb = table_base(&host, sbdf);
    let xs0 = c.stats();
    let hc0 = host.counters().total_hypercalls();
    let t = Instant::now();
    {
        let mut e = Engine::new(&mut c, &platform);
        for entry in 0..n {
            e.bind(&req(d, sbdf, epoch, entry, tb))?;
        }
    }
    let ours = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let xs1 = c.stats();
    let hc1 = host.counters().total_hypercalls();
    // Baseline: the same map + bind straight to the simulated hypervisor.
    let bare_host = SimHost::new(profile());
    bare_host.add_device(DeviceSpec::nic(sbdf, n));
    sim::libxl::assignable_add(&bare_host, sbdf)?;
    let bd = bare_host.create_domain("g", true);
    bare_host.assign_device(bd, sbdf, 0)?;
    let t = Instant::now();
    for entry in 0..n {
        let p = bare_host.map_pirq(&MapPirq {
            domid: bd,
            source: MapSource::Msi {
                sbdf,
                entry_nr: entry,
                table_base: tb,
            },
            pirq: None,
        })?;
        bare_host.bind_pt_irq(
            bd,
            &PtIrq::Msi {
                pirq: p,
                gvec: 0x40,
                gflags: 0x10000,
                gtable: 0xf100_0000,
            },
        )?;
    }
    let bare = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    // The same round trips a bind makes, on the same socket: read the head, read the
    // binding's node (absent), write the intent, write the confirmation — to nodes of
    // their own, so only the ledger's use of them differs.
    let head = engine::ledger::device_path(sbdf);
    let tx = xenstore::TxId::NONE;
    let t = Instant::now();
    for entry in 0..n {
        let node = format!("/bench/bind/{entry}");
        c.read(tx, &head)?;
        let _absent = c.read(tx, &node);
        c.write(tx, &node, b"state=intent")?;
        c.write(tx, &node, b"state=bound")?;
    }
    let round_trips = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    server.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BindReport {
        binds: u32::from(n),
        ptguard_us_per_bind: ours,
        bare_us_per_bind: bare,
        ratio: ours / bare,
        bare_plus_round_trips_us_per_bind: bare + round_trips,
        ratio_vs_bare_plus_round_trips: ours / (bare + round_trips),
        xenstore_transactions_per_bind: (xs1.transactions_started - xs0.transactions_started)
            as f64
            / f64::from(n),
        xenstore_requests_per_bind: (xs1.requests - xs0.requests) as f64 / f64::from(n),
        hypercalls_per_bind: (hc1 - hc0) as f64 / f64::from(n),
        transport: "unix socket to the embedded xenstored",
    })
}

#[derive(Debug, Serialize)]
pub struct ScaleRow {
    pub devices: usize,
    pub vectors_per_device: u16,
    pub guests: usize,
    pub ledger_nodes: usize,
    pub ledger_bytes: usize,
    pub ledger_bytes_per_binding: f64,
    /// Peak resident memory of this process after the run (an upper bound of what
    /// `ptguard watch` holds: it keeps no copy of the ledger between events).
    pub max_rss_kib: u64,
    /// Time for a restarted ptguard to scan the ledger and finish every teardown after
    /// all guests died while it was down.
    pub recover_ms: f64,
    pub recover_xenstore_requests: u64,
    pub teardowns: usize,
}

fn max_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub fn scale(devices: usize, vectors: u16) -> Result<ScaleRow> {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(profile()).with_sink(Arc::new(xs.clone()));
    for i in 0..devices {
        host.add_device(DeviceSpec::nic(dev(i), vectors));
    }
    let platform = SimPlatform::new(host.clone(), xs.connect(0))?;
    let mut c = xs.connect(0);
    let nodes0 = xs.with_store(|s| (s.node_count(), s.approx_bytes()));
    let guests = devices.div_ceil(4);
    let mut doms = Vec::new();
    {
        let mut e = Engine::new(&mut c, &platform);
        for g in 0..guests {
            let d = host.create_domain(&format!("g{g}"), true);
            doms.push(d);
            for i in (g * 4)..((g + 1) * 4).min(devices) {
                bound_device(&mut e, &host, dev(i), d, vectors)?;
            }
        }
    }
    let nodes1 = xs.with_store(|s| (s.node_count(), s.approx_bytes()));
    // ptguard is down; every guest dies.
    for d in &doms {
        host.shutdown(*d)
            .map_err(|e| LabError::Host(e.to_string()))?;
        host.destroy_domain(*d)
            .map_err(|e| LabError::Host(e.to_string()))?;
    }
    let xs0 = c.stats();
    let t = Instant::now();
    let done = Engine::new(&mut c, &platform).reconcile(engine::Trigger::Recover)?;
    let recover_ms = t.elapsed().as_secs_f64() * 1e3;
    let bindings = devices * (usize::from(vectors) + 1);
    Ok(ScaleRow {
        devices,
        vectors_per_device: vectors,
        guests,
        ledger_nodes: nodes1.0 - nodes0.0,
        ledger_bytes: nodes1.1 - nodes0.1,
        ledger_bytes_per_binding: (nodes1.1 - nodes0.1) as f64 / bindings as f64,
        max_rss_kib: max_rss_kib(),
        recover_ms,
        recover_xenstore_requests: c.stats().requests - xs0.requests,
        teardowns: done.len(),
    })
}

/// What one guest's release costs beside a ledger of other devices, against the same
/// release with the ledger holding only its own device: the reads must not grow with the
/// rest of the ledger.
#[derive(Debug, Serialize)]
pub struct ReleaseScaling {
    pub vectors_per_device: u16,
    /// Devices of other, running guests in the ledger beside the released one.
    pub other_devices: usize,
    /// `release-domain` (Trigger::DomainReleased): Xenstore requests alone, beside the
    /// others, and their ratio (goal ≤ 1.1).
    pub release_requests_alone: u64,
    pub release_requests_beside_others: u64,
    pub release_ratio: f64,
    /// The daemon's round after `@releaseDomain` (Trigger::Recover), the same way.
    pub round_requests_alone: u64,
    pub round_requests_beside_others: u64,
    pub round_ratio: f64,
    pub release_ms_alone: f64,
    pub release_ms_beside_others: f64,
}

/// Xenstore requests and milliseconds of releasing two guests (one by `release-domain`,
/// one by the daemon's round), each with one `vectors`-vector device, beside `others`
/// devices of running guests with as many vectors each.
fn release_costs(others: usize, vectors: u16) -> Result<(u64, u64, f64)> {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(profile()).with_sink(Arc::new(xs.clone()));
    for i in 0..others + 2 {
        host.add_device(DeviceSpec::nic(dev(i), vectors));
    }
    let platform = SimPlatform::new(host.clone(), xs.connect(0))?;
    let mut c = xs.connect(0);
    let (a, b) = (host.create_domain("a", true), host.create_domain("b", true));
    {
        let mut e = Engine::new(&mut c, &platform);
        bound_device(&mut e, &host, dev(0), a, vectors)?;
        bound_device(&mut e, &host, dev(1), b, vectors)?;
        // One device per running guest: a 2048-vector device fills half a guest's pirqs.
        for i in 0..others {
            let g = host.create_domain(&format!("g{i}"), true);
            bound_device(&mut e, &host, dev(i + 2), g, vectors)?;
        }
    }
    for d in [a, b] {
        host.shutdown(d)
            .map_err(|e| LabError::Host(e.to_string()))?;
    }
    let ended = |out: &[(Sbdf, Outcome)], what: &str| -> Result<()> {
        match out {
            [(_, Outcome::Assignable { .. })] => Ok(()),
            _ => Err(LabError::Unexpected(format!(
                "{what} beside {others} devices: {out:?}"
            ))),
        }
    };
    let r0 = c.stats().requests;
    let t = Instant::now();
    let out = Engine::new(&mut c, &platform).reconcile(engine::Trigger::DomainReleased(a))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ended(&out, "release-domain")?;
    let r1 = c.stats().requests;
    let out = Engine::new(&mut c, &platform).reconcile(engine::Trigger::Recover)?;
    ended(&out, "the daemon's round")?;
    let r2 = c.stats().requests;
    Ok((r1 - r0, r2 - r1, ms))
}

pub fn release_scaling(others: usize, vectors: u16) -> Result<ReleaseScaling> {
    let (release_alone, round_alone, ms_alone) = release_costs(0, vectors)?;
    let (release_beside, round_beside, ms_beside) = release_costs(others, vectors)?;
    Ok(ReleaseScaling {
        vectors_per_device: vectors,
        other_devices: others,
        release_requests_alone: release_alone,
        release_requests_beside_others: release_beside,
        release_ratio: release_beside as f64 / release_alone.max(1) as f64,
        round_requests_alone: round_alone,
        round_requests_beside_others: round_beside,
        round_ratio: round_beside as f64 / round_alone.max(1) as f64,
        release_ms_alone: ms_alone,
        release_ms_beside_others: ms_beside,
    })
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub guests: usize,
    pub devices_per_guest: usize,
    pub reboots_per_guest: usize,
    pub vectors_per_device: u16,
    pub device_teardowns: usize,
    pub seconds: f64,
    pub devices_ready_per_second: f64,
    pub slowest_device_ms: f64,
    pub hypercalls: u64,
    pub xenstore_transactions: u64,
    pub quarantined: usize,
}

pub fn reboot_storm(
    guests: usize,
    per_guest: usize,
    reboots: usize,
    vectors: u16,
) -> Result<StormReport> {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(profile()).with_sink(Arc::new(xs.clone()));
    for i in 0..guests * per_guest {
        host.add_device(DeviceSpec::nic(dev(i), vectors.max(4)));
    }
    let platform = SimPlatform::new(host.clone(), xs.connect(0))?;
    let mut c = xs.connect(0);
    let mut doms: Vec<DomId> = Vec::new();
    {
        let mut e = Engine::new(&mut c, &platform);
        for g in 0..guests {
            let d = host.create_domain(&format!("g{g}"), true);
            for i in 0..per_guest {
                bound_device(&mut e, &host, dev(g * per_guest + i), d, vectors)?;
            }
            doms.push(d);
        }
    }
    let hc0 = host.counters().total_hypercalls();
    let xs0 = c.stats();
    let mut slowest: f64 = 0.0;
    let mut teardowns = 0;
    let mut quarantined = 0;
    let start = Instant::now();
    for _ in 0..reboots {
        for (g, dom) in doms.iter_mut().enumerate() {
            let old = *dom;
            host.shutdown(old)
                .map_err(|e| LabError::Host(e.to_string()))?;
            host.pause(old).map_err(|e| LabError::Host(e.to_string()))?;
            let t = Instant::now();
            let out =
                Engine::new(&mut c, &platform).reconcile(engine::Trigger::DomainReleased(old))?;
            let per_device = t.elapsed().as_secs_f64() * 1e3;
            slowest = slowest.max(per_device);
            teardowns += out.len();
            quarantined += out
                .iter()
                .filter(|(_, o)| !matches!(o, Outcome::Assignable { .. }))
                .count();
            host.destroy_domain(old)
                .map_err(|e| LabError::Host(e.to_string()))?;
            let new = host.create_domain(&format!("g{g}"), true);
            let mut e = Engine::new(&mut c, &platform);
            for i in 0..per_guest {
                bound_device(&mut e, &host, dev(g * per_guest + i), new, vectors)?;
            }
            *dom = new;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(StormReport {
        guests,
        devices_per_guest: per_guest,
        reboots_per_guest: reboots,
        vectors_per_device: vectors,
        device_teardowns: teardowns,
        seconds,
        devices_ready_per_second: teardowns as f64 / seconds,
        // All devices of one guest are released together: the slowest device is ready when
        // its guest's whole release finishes.
        slowest_device_ms: slowest,
        hypercalls: host.counters().total_hypercalls() - hc0,
        xenstore_transactions: c.stats().transactions_started - xs0.transactions_started,
        quarantined,
    })
}

#[derive(Debug, Serialize)]
pub struct EngineReport {
    pub machine: String,
    pub teardown: Vec<TeardownRow>,
    pub bind: BindReport,
    /// The same binds with the process pinned to one CPU (filled by the caller, which owns
    /// the affinity): the Xenstore round trips then cost the work both sides do, not the
    /// wake-ups of an idle VM's other vCPU, which dominate the unpinned figure.
    pub bind_one_cpu: Option<BindReport>,
    pub scale: Vec<ScaleRow>,
    pub release_scaling: ReleaseScaling,
    pub storm: StormReport,
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} x {cpu}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// How many binds the bind overhead measures.
pub fn bind_count(quick: bool) -> u16 {
    if quick {
        256
    } else {
        2048
    }
}

pub fn run_all(quick: bool) -> Result<EngineReport> {
    let sizes: &[usize] = if quick { &[4, 16, 64] } else { &[16, 64, 256] };
    Ok(EngineReport {
        machine: machine(),
        teardown: [1u16, 64, 2048]
            .iter()
            .map(|n| teardown(*n))
            .collect::<Result<_>>()?,
        bind: bind_overhead(bind_count(quick))?,
        bind_one_cpu: None,
        scale: sizes.iter().map(|d| scale(*d, 64)).collect::<Result<_>>()?,
        release_scaling: if quick {
            release_scaling(31, 256)?
        } else {
            release_scaling(255, 2048)?
        },
        storm: if quick {
            reboot_storm(8, 4, 2, 3)?
        } else {
            reboot_storm(64, 4, 10, 3)?
        },
    })
}

pub fn print(r: &EngineReport, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "machine: {}", r.machine)?;
    writeln!(
        out,
        "\nteardown vs minimum (cleanup = unbind + unmap per binding, release, prepare):"
    )?;
    writeln!(
        out,
        "{:>8} {:>9} {:>8} {:>8} {:>6} {:>11} {:>6} {:>9} {:>7} {:>10}",
        "vectors",
        "bindings",
        "cleanup",
        "minimum",
        "ratio",
        "bookkeeping",
        "sysfs",
        "xs reqs",
        "xs txs",
        "time µs"
    )?;
    for t in &r.teardown {
        writeln!(
            out,
            "{:>8} {:>9} {:>8} {:>8} {:>6.2} {:>11} {:>6} {:>9} {:>7} {:>10.0}",
            t.msix_vectors,
            t.bindings,
            t.cleanup_hypercalls,
            t.minimum_hypercalls,
            t.ratio,
            t.bookkeeping_hypercalls,
            t.sysfs_writes,
            t.xenstore_requests,
            t.xenstore_transactions,
            t.micros
        )?;
    }
    let b = &r.bind;
    writeln!(
        out,
        "\nbind through the broker ({}), {} binds:",
        b.transport, b.binds
    )?;
    writeln!(out, "  ptguard {:.2} µs/bind vs bare hypercalls {:.2} µs/bind = {:.1}x; {:.2} Xenstore transactions, {:.2} requests, {:.2} hypercalls per bind", b.ptguard_us_per_bind, b.bare_us_per_bind, b.ratio, b.xenstore_transactions_per_bind, b.xenstore_requests_per_bind, b.hypercalls_per_bind)?;
    writeln!(
        out,
        "  vs bare hypercalls + the same {:.0} Xenstore round trips ({:.2} µs/bind): {:.2}x",
        b.xenstore_requests_per_bind,
        b.bare_plus_round_trips_us_per_bind,
        b.ratio_vs_bare_plus_round_trips
    )?;
    if let Some(p) = &r.bind_one_cpu {
        writeln!(out, "  pinned to one CPU: ptguard {:.2} µs/bind vs bare {:.2} µs/bind = {:.1}x; vs bare + round trips ({:.2} µs/bind) {:.2}x", p.ptguard_us_per_bind, p.bare_us_per_bind, p.ratio, p.bare_plus_round_trips_us_per_bind, p.ratio_vs_bare_plus_round_trips)?;
    }
    writeln!(out, "\nscale (64 vectors per device, 4 devices per guest):")?;
    writeln!(
        out,
        "{:>8} {:>7} {:>12} {:>12} {:>11} {:>12} {:>11} {:>10}",
        "devices",
        "guests",
        "ledger nodes",
        "ledger bytes",
        "bytes/bind",
        "max RSS KiB",
        "recover ms",
        "recover xs"
    )?;
    for s in &r.scale {
        writeln!(
            out,
            "{:>8} {:>7} {:>12} {:>12} {:>11.1} {:>12} {:>11.1} {:>10}",
            s.devices,
            s.guests,
            s.ledger_nodes,
            s.ledger_bytes,
            s.ledger_bytes_per_binding,
            s.max_rss_kib,
            s.recover_ms,
            s.recover_xenstore_requests
        )?;
    }
    let x = &r.release_scaling;
    writeln!(
        out,
        "\none guest's release ({} vectors) beside {} other such devices in the ledger, against the same release alone:",
        x.vectors_per_device, x.other_devices
    )?;
    writeln!(
        out,
        "  release-domain: {} Xenstore requests vs {} alone = {:.3}x ({:.1} ms vs {:.1} ms)",
        x.release_requests_beside_others,
        x.release_requests_alone,
        x.release_ratio,
        x.release_ms_beside_others,
        x.release_ms_alone
    )?;
    writeln!(
        out,
        "  the daemon's round: {} Xenstore requests vs {} alone = {:.3}x",
        x.round_requests_beside_others, x.round_requests_alone, x.round_ratio
    )?;
    let s = &r.storm;
    writeln!(
        out,
        "\nreboot storm: {} guests x {} devices x {} reboots ({} vectors each):",
        s.guests, s.devices_per_guest, s.reboots_per_guest, s.vectors_per_device
    )?;
    writeln!(out, "  {} device teardowns in {:.2} s = {:.0} devices ready/s; slowest device {:.2} ms; {} quarantined; {} hypercalls, {} Xenstore transactions", s.device_teardowns, s.seconds, s.devices_ready_per_second, s.slowest_device_ms, s.quarantined, s.hypercalls, s.xenstore_transactions)?;
    Ok(())
}
