//! The benchmarks' operation counts, asserted exactly (times are never asserted).

use lab::bench_engine::{bind_overhead, reboot_storm, release_scaling, teardown};

#[test]
fn teardown_makes_exactly_the_minimum_hypercalls_and_constant_transactions() {
    for n in [1u16, 8, 64, 300] {
        let t = teardown(n).unwrap();
        assert_eq!(t.bindings, u32::from(n) + 1);
        assert_eq!(
            t.cleanup_hypercalls, t.minimum_hypercalls,
            "{n} vectors: {:?}",
            t.hypercalls
        );
        assert_eq!(t.minimum_hypercalls, 2 * u64::from(n) + 3);
        // Two BAR revokes, the deassign, and test_assign_device after it (no other guest
        // may hold the device before its reset).
        assert_eq!(t.bookkeeping_hypercalls, 5);
        assert_eq!(t.xenstore_transactions, 4, "{n} vectors");
        // The release reads the owner index (its marker, the owner's DIRECTORY) and the
        // head it lists, the teardown's transaction reads that head again, then one
        // DIRECTORY of the bindings (paged past 4 KiB) and one READ per binding node, once;
        // one WRITE of the head per journaled step; the INTx line's index costs 4 (a
        // DIRECTORY to decide the unmap, then RM, DIRECTORY and RM of the emptied line in
        // the forget transaction), the owner's note 3 at the end (RM, DIRECTORY, RM).
        assert_eq!(t.xenstore_requests, 35 + u64::from(n), "{n} vectors");
        assert_eq!(t.sysfs_writes, 2);
    }
}

#[test]
fn a_small_reboot_storm_readies_every_device() {
    let s = reboot_storm(2, 2, 3, 3).unwrap();
    assert_eq!(s.device_teardowns, 2 * 2 * 3);
    assert_eq!(s.quarantined, 0);
}

/// Issue 13: a device model's bind costs at most 4 Xenstore requests and no transaction
/// (the head, the binding, the intent before the map, the confirmation after the bind),
/// over the real wire protocol to the embedded xenstored.
#[test]
fn a_bind_costs_four_xenstore_requests_and_three_hypercalls() {
    for n in [1u16, 16] {
        let b = bind_overhead(n).unwrap();
        assert_eq!(b.binds, u32::from(n));
        assert_eq!(b.xenstore_requests_per_bind, 4.0, "{n} binds");
        assert_eq!(b.xenstore_transactions_per_bind, 0.0, "{n} binds");
        // getdomaininfo for the requester's incarnation, map_pirq, bind_pt_irq.
        assert_eq!(b.hypercalls_per_bind, 3.0, "{n} binds");
    }
}

/// Issue 26: a guest's release reads only its own devices (the owner index), and the
/// daemon's round only the other devices' heads, never their bindings (a release once read
/// every binding of every device: O(D²·V) to release D guests).
#[test]
fn a_release_reads_no_other_devices_records() {
    let x = release_scaling(15, 64).unwrap();
    assert_eq!(
        x.release_requests_beside_others, x.release_requests_alone,
        "{x:?}"
    );
    assert_eq!(x.release_ratio, 1.0);
    assert_eq!(
        x.round_requests_beside_others,
        x.round_requests_alone + 15,
        "one head per other device: {x:?}"
    );
}
