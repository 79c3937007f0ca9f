//! The `ptguard` command line: argument parsing, output (text and `--json`), and the
//! entry points of the daemon (`watch`, `xenstored`), the explorer and the benchmarks. Logic lives in
//! the library crates (the engine decides, `daemon` opens hosts and runs the rounds and the
//! broker, `lab` proves); this crate wires them to a terminal, is the only one that uses
//! `anyhow`, and must stay thin enough that every command is reachable from tests through
//! [`run`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod cli;
pub mod commands;
pub mod journal;
pub mod output;

// The proving harness lives in crates/lab; these paths stay for the commands and tests.
pub use lab::{bench_engine, broker_load, platform, rig};

pub use cli::{Cli, Command};

/// Exit codes, documented in `ptguard --help`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The command failed (the message says why).
    pub const FAILURE: i32 = 1;
    /// The command line was invalid.
    pub const USAGE: i32 = 2;
}

/// Runs a parsed command line, writing its normal output to `out`. With `--trace`, what
/// the command did is printed even when it fails (that is when it matters most), on
/// stderr beside the error.
pub fn run(cli: Cli, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let trace = cli.trace && !cli.dry_run;
    let r = dispatch(cli, out);
    if r.is_err() && trace {
        let lines = daemon::host::last_op_log();
        if !lines.is_empty() {
            use std::io::Write as _;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "trace of the failed command, in order:");
            for l in lines {
                let _ = writeln!(err, "  {l}");
            }
        }
    }
    r
}

fn dispatch(cli: Cli, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    use commands::lifecycle as lc;
    match &cli.command {
        Command::AssignableAdd(a) => lc::assignable_add(&cli, a.sbdf, a.json, out),
        Command::AssignableRemove(a) => lc::assignable_remove(&cli, a.sbdf, a.json, out),
        Command::AssignableList(a) => lc::assignable_list(&cli, a.json, out),
        Command::Attach(a) => lc::attach(&cli, a.sbdf, a.domid, a.json, out),
        Command::Repair(a) => lc::repair(&cli, a.sbdf, a.json, out),
        Command::Adopt(a) => lc::adopt(&cli, a.sbdf, a.domid, a.json, out),
        Command::Detach(a) => lc::detach(&cli, a.sbdf, a.json, out),
        Command::List(a) => lc::list(&cli, a.json, out),
        Command::Show(a) => lc::show(&cli, a.sbdf, a.json, out),
        Command::ReleaseDomain(a) => lc::release_domain(&cli, a.domid, a.json, out),
        Command::Sweep(a) => lc::sweep(&cli, a.domid, a.json, out),
        Command::BrokerRequest(a) => lc::broker_request(&cli, &a.request, out),
        Command::Hook(h) => match &h.what {
            crate::cli::HookCommand::PreReset(a) => lc::hook_pre_reset(&cli, a.sbdf, a.json, out),
            crate::cli::HookCommand::PreUnplug(a) => lc::hook_pre_unplug(&cli, a.sbdf, a.json, out),
            crate::cli::HookCommand::Libvirt(a) => commands::adapters::libvirt(&cli, a, out),
        },
        Command::Doctor(a) => commands::doctor::run(&cli, a, out),
        Command::Preflight(a) => commands::doctor::preflight(&cli, a, out),
        Command::Report(a) => commands::doctor::report(&cli, a, out),
        Command::Watch(a) => commands::watch::run(&cli, a, out),
        Command::Sim(a) => commands::simcmd::run(&cli, &a.what, out),
        _ => run_owned(cli, out),
    }
}

fn run_owned(cli: Cli, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Xenstored(args) => commands::xenstored::run(args, out),
        Command::Lspci(args) => commands::lspci::run(args, &cli.host, out),
        Command::Scenario(args) => commands::scenario::run(args, cli.trace, out),
        Command::Explore(args) => commands::explore::run(args, out),
        Command::Bench(args) => bench::run(args, out),
        _ => Ok(()),
    }
}
