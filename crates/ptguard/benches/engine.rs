//! Criterion benchmarks of the engine on the simulated host, each next to its baseline in the
//! same run: a bind through the broker (ledger on the in-process xenstored) against the bare
//! map + bind hypercalls, and a teardown of 64 vectors against the bare force-unbind
//! hypercalls. `ptguard bench` reports the same with operation counts and the full sizes.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use engine::{BindKind, BindRequest, Engine};
use pci::Sbdf;
use ptguard::platform::SimPlatform;
use sim::{DeviceSpec, PcibackProfile, Profile, SimHost, XenProfile};
use xen::{DomId, Hypervisor, MapPirq, MapSource, PtIrq};
use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;

const VECTORS: u16 = 64;

fn dev() -> Sbdf {
    "0000:03:00.0".parse().expect("a valid address")
}

struct Setup {
    host: SimHost,
    xs: LocalXenstore,
    domid: DomId,
    epoch: u64,
    table_base: u64,
}

fn setup() -> Setup {
    let xs = LocalXenstore::new(Quotas::default());
    let host = SimHost::new(Profile::new(
        XenProfile::Xen4_17_0,
        PcibackProfile::AfterCommandFix,
    ))
    .with_sink(Arc::new(xs.clone()));
    host.add_device(DeviceSpec::nic(dev(), VECTORS));
    let platform = SimPlatform::new(host.clone(), xs.connect(0)).expect("pciback's watch");
    let mut c = xs.connect(0);
    let domid = host.create_domain("g", true);
    let mut e = Engine::new(&mut c, &platform);
    e.assignable_add(dev()).expect("assignable-add");
    let epoch = e.attach(dev(), domid).expect("attach");
    let table_base = host.with_world(|w| w.device(dev()).map_or(0, |d| d.hw.table_base()));
    Setup {
        host,
        xs,
        domid,
        epoch,
        table_base,
    }
}

fn req(s: &Setup, entry: u16) -> BindRequest {
    BindRequest {
        domid: s.domid,
        sbdf: dev(),
        epoch: s.epoch,
        kind: BindKind::Msix {
            entry,
            table_base: s.table_base,
        },
        gvec: 0x40,
        gflags: 0x10000,
        gtable: 0xf100_0000,
    }
}

fn bind_all(s: &Setup) {
    let platform = SimPlatform::new(s.host.clone(), s.xs.connect(0)).expect("pciback's watch");
    let mut c = s.xs.connect(0);
    let mut e = Engine::new(&mut c, &platform);
    for entry in 0..VECTORS {
        e.bind(&req(s, entry)).expect("bind");
    }
}

fn bare_bind_all(s: &Setup) {
    for entry in 0..VECTORS {
        let p = s
            .host
            .map_pirq(&MapPirq {
                domid: s.domid,
                source: MapSource::Msi {
                    sbdf: dev(),
                    entry_nr: entry,
                    table_base: s.table_base,
                },
                pirq: None,
            })
            .expect("map");
        s.host
            .bind_pt_irq(
                s.domid,
                &PtIrq::Msi {
                    pirq: p,
                    gvec: 0x40,
                    gflags: 0x10000,
                    gtable: 0xf100_0000,
                },
            )
            .expect("bind");
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("bind 64 vectors");
    g.bench_function("ptguard broker", |b| {
        b.iter_batched(setup, |s| bind_all(&s), BatchSize::LargeInput)
    });
    g.bench_function("bare hypercalls (baseline)", |b| {
        b.iter_batched(setup, |s| bare_bind_all(&s), BatchSize::LargeInput)
    });
    g.finish();

    let mut g = c.benchmark_group("teardown 64 vectors");
    g.bench_function("ptguard teardown", |b| {
        b.iter_batched(
            || {
                let s = setup();
                bind_all(&s);
                s
            },
            |s| {
                let platform =
                    SimPlatform::new(s.host.clone(), s.xs.connect(0)).expect("pciback's watch");
                let mut c = s.xs.connect(0);
                Engine::new(&mut c, &platform)
                    .detach(dev())
                    .expect("detach")
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("bare unbind + unmap (baseline)", |b| {
        b.iter_batched(
            || {
                let s = setup();
                bare_bind_all(&s);
                s
            },
            |s| {
                let pirqs: Vec<i32> = s
                    .host
                    .with_world(|w| w.descs.values().map(|d| d.pirq).collect());
                for p in pirqs {
                    let pt = PtIrq::Msi {
                        pirq: xen::Pirq(p),
                        gvec: 0,
                        gflags: 0,
                        gtable: 0,
                    };
                    let _ = s.host.unbind_pt_irq(s.domid, &pt);
                    let _ = s.host.unmap_pirq(s.domid, xen::Pirq(p));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(engine_benches, benches);
criterion_main!(engine_benches);
