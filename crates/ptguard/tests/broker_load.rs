//! Issue 11 (2): the broker died under 100 connections, 500 half-sent 1 MiB lines took the
//! daemon to 161 MB. Now: a real `ptguard watch` process, a well-behaved device model
//! binding and unbinding while hostile clients flood the socket (a bounded form of
//! `ptguard bench broker`, whose full-size figures are in docs/PERFORMANCE.md).

use ptguard::broker_load::{run, LoadSizes};

#[test]
fn a_well_behaved_device_model_is_served_through_a_flood() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ptguard"));
    let r = run(
        exe,
        LoadSizes {
            hostile_connections: 2_000,
            oversized_lines: 200,
            cycles: 100,
        },
    )
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.good_failures, 0, "{:?}", r.first_failure);
    assert_eq!(r.cycles_done, 25 + 100 + 1);
    // 200 MiB of oversized lines went in; the daemon never buffered them.
    assert!(
        r.daemon_peak_rss_kib < 64 * 1024,
        "peak RSS {} KiB",
        r.daemon_peak_rss_kib
    );
    assert!(
        r.clean_exit,
        "watch exits on SIGTERM and removes its socket"
    );
}
