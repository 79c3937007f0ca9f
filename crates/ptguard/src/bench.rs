//! `ptguard bench`: the command line of the measurements in `crates/lab` (the engine's,
//! the broker under attack, Xenstore's), each against a baseline taken in the same run.

use std::io::Write;

use lab::bench_xenstore::{pin_to_one_cpu, restore_affinity, xenstore_bench, XenstoreReport};

use crate::cli::{BenchArgs, BenchWhat};
use crate::output::emit;

pub fn run(args: BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match args.what {
        None => {
            let mut r = crate::bench_engine::run_all(args.quick)?;
            let old_affinity = pin_to_one_cpu()?;
            let pinned =
                crate::bench_engine::bind_overhead(crate::bench_engine::bind_count(args.quick));
            restore_affinity(&old_affinity)?;
            r.bind_one_cpu = Some(pinned?);
            emit(out, args.json, &r, |out| {
                crate::bench_engine::print(&r, out)?;
                Ok(())
            })?;
            Ok(())
        }
        Some(BenchWhat::Broker(a)) => {
            let exe = std::env::current_exe()?;
            let r = lab::broker_load::run(
                &exe,
                lab::broker_load::LoadSizes {
                    hostile_connections: a.hostile,
                    oversized_lines: a.oversized,
                    cycles: a.cycles,
                },
            )?;
            emit(out, a.json, &r, |out| {
                writeln!(out, "broker under attack ({} hostile connections, {} of them 1 MiB lines, {} bind+unbind cycles of a well-behaved device model):", a.hostile, a.oversized, a.cycles)?;
                writeln!(out, "  well-behaved failures     {}", r.good_failures)?;
                writeln!(
                    out,
                    "  cycle alone / attacked    {:.0} us / {:.0} us ({:.2}x)",
                    r.cycle_us_alone, r.cycle_us_under_attack, r.slowdown
                )?;
                writeln!(
                    out,
                    "  daemon RSS peak / after   {} KiB / {} KiB",
                    r.daemon_peak_rss_kib, r.daemon_rss_after_kib
                )?;
                writeln!(out, "  hostile refused by kernel {}", r.hostile_refused)?;
                writeln!(out, "  clean exit on SIGTERM     {}", r.clean_exit)?;
                Ok(())
            })?;
            if r.good_failures > 0 {
                anyhow::bail!(
                    "the well-behaved device model was refused: {:?}",
                    r.first_failure
                );
            }
            Ok(())
        }
        Some(BenchWhat::Xenstore(a)) => {
            let report = xenstore_bench(a.iterations, a.seconds)?;
            emit(out, a.json, &report, |out| {
                print_xenstore(&report, out)?;
                Ok(())
            })?;
            Ok(())
        }
    }
}

fn print_xenstore(r: &XenstoreReport, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "Xenstore round trip over a unix socket (same client code, same run, one CPU)"
    )?;
    writeln!(
        out,
        "  {:<6} {:>10} {:>12} {:>10} {:>12} {:>8}",
        "op", "xs mean", "xs p99", "echo mean", "echo p99", "ratio"
    )?;
    for l in &r.latency {
        writeln!(
            out,
            "  {:<6} {:>8.2}us {:>10.2}us {:>8.2}us {:>10.2}us {:>7.2}x{}",
            l.operation,
            l.xenstored_mean_us,
            l.xenstored_p99_us,
            l.echo_mean_us,
            l.echo_p99_us,
            l.ratio,
            if l.ratio <= r.goal_ratio {
                ""
            } else {
                "  (over the 1.5x goal)"
            }
        )?;
    }
    writeln!(
        out,
        "Transaction commit throughput (read + write + commit, disjoint keys)"
    )?;
    for t in &r.commit_throughput {
        writeln!(
            out,
            "  {:>2} clients: {:>9.0} commits/s  ({} commits, {} conflicts, {:.2} requests/commit)",
            t.clients, t.commits_per_second, t.commits, t.conflicts, t.requests_per_commit
        )?;
    }
    Ok(())
}
