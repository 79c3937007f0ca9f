//! The `ptguard` command line: argument parsing, output (text and `--json`), the daemons
//! and the benchmarks' entry points. Logic lives in the library crates; this crate wires
//! them to a terminal and must stay thin enough that every command is reachable from tests
//! through [`run`].

pub mod bench;
pub mod cli;
pub mod commands;
pub mod platform;
pub mod rig;

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

/// Runs a parsed command line, writing its normal output to `out`.
pub fn run(cli: Cli, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Xenstored(args) => commands::xenstored::run(args, out),
        Command::Lspci(args) => commands::lspci::run(args, out),
        Command::Scenario(args) => commands::scenario::run(args, out),
        Command::Explore(args) => commands::explore::run(args, out),
        Command::Bench(args) => bench::run(args, out),
    }
}
