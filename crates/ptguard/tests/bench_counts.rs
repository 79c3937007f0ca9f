//! The benchmarks' operation counts, asserted exactly (times are never asserted).

use ptguard::bench_engine::{reboot_storm, teardown};

#[test]
fn teardown_makes_exactly_the_minimum_hypercalls_and_constant_transactions() {
    for n in [1u16, 8, 64] {
        let t = teardown(n).unwrap();
        assert_eq!(t.bindings, u32::from(n) + 1);
        assert_eq!(
            t.cleanup_hypercalls, t.minimum_hypercalls,
            "{n} vectors: {:?}",
            t.hypercalls
        );
        assert_eq!(t.minimum_hypercalls, 2 * u64::from(n) + 3);
        assert_eq!(t.bookkeeping_hypercalls, 4);
        assert_eq!(t.xenstore_transactions, 4, "{n} vectors");
        // One read per binding node and one DIRECTORY listing them (paged past 4 KiB); the
        // INTx line's index costs 4 (a DIRECTORY to decide the unmap, then RM, DIRECTORY and
        // RM of the emptied line in the forget transaction); the `mode` node (companion or
        // not) one READ and one RM.
        assert_eq!(t.xenstore_requests, 63 + 2 * u64::from(n), "{n} vectors");
        assert_eq!(t.sysfs_writes, 2);
    }
}

#[test]
fn a_small_reboot_storm_readies_every_device() {
    let s = reboot_storm(2, 2, 3, 3).unwrap();
    assert_eq!(s.device_teardowns, 2 * 2 * 3);
    assert_eq!(s.quarantined, 0);
}
