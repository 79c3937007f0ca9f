//! Bad hypercall arguments get Xen's error codes; random operation sequences never panic and
//! replay exactly from their journal.

use pci::Sbdf;
use proptest::prelude::*;
use sim::{DeviceSpec, Profile, SimHost, SimOp};
use xen::{DomId, Errno, Hypervisor, MapPirq, MapSource, Pirq, PtIrq};

fn f() -> Sbdf {
    "0000:03:00.0".parse().unwrap()
}

fn errno<T: std::fmt::Debug>(r: Result<T, xen::XenError>) -> Errno {
    r.unwrap_err().errno().unwrap()
}

fn msix(domid: DomId, entry: u16, table_base: u64) -> MapPirq {
    MapPirq {
        domid,
        source: MapSource::Msi {
            sbdf: f(),
            entry_nr: entry,
            table_base,
        },
        pirq: None,
    }
}

#[test]
fn bad_arguments_get_xens_error_codes() {
    let host = SimHost::new(Profile::default());
    host.add_device(DeviceSpec::nic(f(), 4));
    sim::libxl::assignable_add(&host, f()).unwrap();
    let tb = host.with_world(|w| w.device(f()).unwrap().hw.table_base());
    let a = host.create_domain("A", true);

    // Unknown domain.
    assert_eq!(errno(host.map_pirq(&msix(DomId(77), 0, tb))), Errno::ESRCH);
    assert_eq!(errno(host.unmap_pirq(DomId(77), Pirq(5))), Errno::ESRCH);
    assert_eq!(errno(host.assign_device(DomId(77), f(), 0)), Errno::ESRCH);
    // Device not assigned to the domain.
    assert_eq!(errno(host.map_pirq(&msix(a, 0, tb))), Errno::ENODEV);
    host.assign_device(a, f(), 0).unwrap();
    // entry_nr ≥ table size.
    assert_eq!(errno(host.map_pirq(&msix(a, 4, tb))), Errno::EINVAL);
    // Out-of-range pirq.
    let mut req = msix(a, 0, tb);
    req.pirq = Some(Pirq(5000));
    assert_eq!(errno(host.map_pirq(&req)), Errno::EINVAL);
    assert_eq!(errno(host.unmap_pirq(a, Pirq(-3))), Errno::EINVAL);
    // A good map, then a double unmap.
    let p = host.map_pirq(&msix(a, 0, tb)).unwrap();
    assert_eq!(p, Pirq(79));
    host.unmap_pirq(a, p).unwrap();
    assert_eq!(errno(host.unmap_pirq(a, p)), Errno::EINVAL);
    // Binding a pirq that is not mapped; unbinding one that is not bound.
    let bind = PtIrq::Msi {
        pirq: p,
        gvec: 0x40,
        gflags: 0,
        gtable: 0,
    };
    // Xen 4.17 arch/x86/domctl.c: a pirq that maps no IRQ fails the access check.
    assert_eq!(errno(host.bind_pt_irq(a, &bind)), Errno::EPERM);
    let p = host.map_pirq(&msix(a, 1, tb)).unwrap();
    let bind = PtIrq::Msi {
        pirq: p,
        gvec: 0x40,
        gflags: 0,
        gtable: 0,
    };
    assert_eq!(errno(host.unbind_pt_irq(a, &bind)), Errno::EINVAL);
    // bind_pt_irq on a PV domain.
    let pv = host.create_domain("pv", false);
    assert_eq!(errno(host.bind_pt_irq(pv, &bind)), Errno::EINVAL);
    // Devices Xen does not know.
    let ghost: Sbdf = "0000:09:00.0".parse().unwrap();
    assert_eq!(errno(host.prepare_msix(ghost)), Errno::ENODEV);
    assert_eq!(errno(host.assign_device(a, ghost, 0)), Errno::ENODEV);
    assert_eq!(errno(host.deassign_device(pv, f())), Errno::ENODEV);
    // Bad assign flags; dom0 as target.
    assert_eq!(errno(host.assign_device(a, f(), 2)), Errno::EINVAL);
    assert_eq!(
        errno(host.assign_device(DomId::DOM0, f(), 0)),
        Errno::EINVAL
    );
    // irq_permission on a pirq dom0 does not have.
    assert_eq!(errno(host.irq_permission(a, Pirq(900), true)), Errno::EPERM);
    // The error names the operation, the domain and the device.
    let e = host.map_pirq(&msix(a, 9, tb)).unwrap_err().to_string();
    assert!(
        e.contains("PHYSDEVOP_map_pirq") && e.contains("d1") && e.contains("0000:03:00.0"),
        "{e}"
    );
}

/// `get_free_pirq` for an MSI: the highest pirq below `nr_pirqs` that is neither mapped
/// nor force-unbound (4.17 arch/x86/irq.c), found through the simulator's free index.
#[test]
fn an_msi_map_gets_the_highest_free_pirq() {
    let host = SimHost::new(Profile::default());
    host.add_device(DeviceSpec::nic(f(), 4));
    sim::libxl::assignable_add(&host, f()).unwrap();
    let tb = host.with_world(|w| w.device(f()).unwrap().hw.table_base());
    let a = host.create_domain("A", true);
    host.assign_device(a, f(), 0).unwrap();
    let got: Vec<i32> = (0..3)
        .map(|e| host.map_pirq(&msix(a, e, tb)).unwrap().0)
        .collect();
    assert_eq!(got, [79, 78, 77], "nr_irqs_gsi 48 + 32 extra");
    // A pirq unmapped cleanly is free again, and the highest free.
    host.unmap_pirq(a, Pirq(78)).unwrap();
    assert_eq!(host.map_pirq(&msix(a, 1, tb)).unwrap(), Pirq(78));
    // One still bound by the guest's dpci when unmapped stays taken until the domain goes.
    let bind = PtIrq::Msi {
        pirq: Pirq(78),
        gvec: 0x40,
        gflags: 0,
        gtable: 0,
    };
    host.bind_pt_irq(a, &bind).unwrap();
    host.unmap_pirq(a, Pirq(78)).unwrap();
    assert_eq!(host.map_pirq(&msix(a, 1, tb)).unwrap(), Pirq(76));
}

#[test]
fn domain_lifecycle_fires_introduce_and_release() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);
    impl sim::DomainEventSink for Events {
        fn introduced(&self, d: DomId) {
            self.0.lock().unwrap().push(format!("+{d}"));
        }
        fn released(&self, d: DomId) {
            self.0.lock().unwrap().push(format!("-{d}"));
        }
    }
    let events = Arc::new(Events::default());
    let host = SimHost::new(Profile::default()).with_sink(events.clone());
    let a = host.create_domain("A", true);
    host.unpause(a).unwrap();
    host.shutdown(a).unwrap();
    host.destroy_domain(a).unwrap();
    assert!(host.domain_info(a).unwrap().is_none());
    assert_eq!(*events.0.lock().unwrap(), ["+d1", "-d1", "-d1"]);
}

fn arb_op() -> impl Strategy<Value = SimOp> {
    let dom = (0u16..4).prop_map(DomId);
    let sbdf = prop_oneof![Just(f()), Just("0000:04:00.0".parse::<Sbdf>().unwrap())];
    prop_oneof![
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0u16..4),
            proptest::option::of(0u8..2)
        )
            .prop_map(
                |(hvm, passthrough, host_memory_map, at, h)| SimOp::CreateDomain {
                    name: "g".into(),
                    hvm,
                    passthrough,
                    host_memory_map,
                    domid: at.map(DomId),
                    handle: h.map(|b| xen::DomainHandle([b; 16])),
                }
            ),
        dom.clone().prop_map(|domid| SimOp::Unpause { domid }),
        dom.clone().prop_map(|domid| SimOp::Destroy { domid }),
        dom.clone().prop_map(|domid| SimOp::HoldReference { domid }),
        dom.clone().prop_map(|domid| SimOp::DropReference { domid }),
        (
            dom.clone(),
            sbdf.clone(),
            0u16..6,
            any::<bool>(),
            prop::option::of(1000i32..1024)
        )
            .prop_map(|(domid, sbdf, entry_nr, msix, pirq)| SimOp::MapPirq {
                req: MapPirq {
                    domid,
                    source: MapSource::Msi {
                        sbdf,
                        entry_nr,
                        table_base: if msix { 0x40_0000_0000 } else { 0 },
                    },
                    pirq: pirq.map(Pirq),
                },
            }),
        (dom.clone(), 1000i32..1024).prop_map(|(domid, p)| SimOp::UnmapPirq {
            domid,
            pirq: Pirq(p)
        }),
        (dom.clone(), 1000i32..1024, any::<u32>()).prop_map(|(domid, p, gflags)| {
            SimOp::BindPtIrq {
                domid,
                bind: PtIrq::Msi {
                    pirq: Pirq(p),
                    gvec: 0x40,
                    gflags,
                    gtable: 0,
                },
            }
        }),
        (dom.clone(), 1000i32..1024).prop_map(|(domid, p)| SimOp::UnbindPtIrq {
            domid,
            bind: PtIrq::Msi {
                pirq: Pirq(p),
                gvec: 0,
                gflags: 0,
                gtable: 0
            }
        }),
        sbdf.clone().prop_map(|sbdf| SimOp::PrepareMsix { sbdf }),
        sbdf.clone().prop_map(|sbdf| SimOp::ReleaseMsix { sbdf }),
        (prop_oneof![dom.clone(), Just(DomId::IO)], sbdf.clone()).prop_map(|(domid, sbdf)| {
            SimOp::AssignDevice {
                domid,
                sbdf,
                flags: 0,
            }
        }),
        (prop_oneof![dom, Just(DomId::IO)], sbdf.clone())
            .prop_map(|(domid, sbdf)| SimOp::DeassignDevice { domid, sbdf }),
        (sbdf.clone(), 0u16..256, any::<u16>()).prop_map(|(sbdf, offset, v)| SimOp::ConfigWrite {
            sbdf,
            offset,
            data: v.to_le_bytes().to_vec()
        }),
        sbdf.clone().prop_map(|sbdf| SimOp::Reset { sbdf }),
        sbdf.clone().prop_map(|sbdf| SimOp::DriverBind {
            driver: "pciback".into(),
            sbdf
        }),
        sbdf.clone().prop_map(|sbdf| SimOp::DriverUnbind {
            driver: "pciback".into(),
            sbdf
        }),
        sbdf.clone().prop_map(|sbdf| SimOp::NewSlot { sbdf }),
        sbdf.prop_map(|sbdf| SimOp::PcibackPut { sbdf }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Any sequence of hypercalls and sysfs writes leaves Xen's accounting consistent and
    /// replays to the same state.
    #[test]
    fn random_sequences_keep_accounting_and_replay(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let profile = Profile::default();
        let host = SimHost::new(profile);
        host.add_device(DeviceSpec::nic(f(), 4));
        host.add_device(DeviceSpec::nic("0000:04:00.0".parse().unwrap(), 2));
        for op in &ops {
            let _ = host.apply(op.clone());
        }
        host.with_world(|w| {
            for (sbdf, d) in &w.devices {
                let descs = w.descs.values().filter(|x| x.sbdf == *sbdf).count() as u32;
                // used_entries = mapped vectors + prepare's pseudo entry (0 or 1).
                prop_assert!(d.xen.used_entries == descs || d.xen.used_entries == descs + 1,
                    "{sbdf}: used {} descs {}", d.xen.used_entries, descs);
                prop_assert_eq!(d.xen.table_recorded, d.xen.used_entries > 0);
            }
            for desc in w.descs.values() {
                let mapped = w.domains.get(&desc.domid).and_then(|d| d.pirqs.get(&desc.pirq)).map(|p| p.irq);
                prop_assert_eq!(mapped, Some(desc.irq));
            }
            Ok(())
        })?;
        let replayed = SimHost::replay(profile, &host.journal());
        prop_assert_eq!(format!("{:?}", replayed.snapshot().devices), format!("{:?}", host.snapshot().devices));
        prop_assert_eq!(format!("{:?}", replayed.snapshot().domains), format!("{:?}", host.snapshot().domains));
    }
}
