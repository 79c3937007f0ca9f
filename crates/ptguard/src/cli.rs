//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
EXIT STATUS:
    0  success
    1  the command failed; the message on stderr says why and what to do
    2  invalid command line

ENVIRONMENT:
    XENSTORED_RUNDIR   directory of the xenstored socket (default /run/xenstored)
    XENSTORED_PATH     full path of the xenstored socket (overrides XENSTORED_RUNDIR)
    PTGUARD_LOG        log filter, e.g. info, debug, xenstored=debug (default warn)";

/// ptguard keeps Xen PCI passthrough devices usable across guest reboot,
/// re-assignment and hot-unplug, by keeping a ledger of every IRQ binding in
/// Xenstore and force-unbinding leftovers before a device is reset.
#[derive(Debug, Parser)]
#[command(name = "ptguard", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// More log output on stderr (--verbose info, twice debug); PTGUARD_LOG overrides.
    #[arg(long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded Xenstore server (foreground).
    ///
    /// Serves the Xenstore wire protocol of Xen 4.17 on DIR/socket, so Xen's own
    /// tools (xenstore-read, xenstore-write, xenstore-ls, ... with
    /// XENSTORED_RUNDIR=DIR) and ptguard itself can use it. Logs go to stderr;
    /// SIGTERM or SIGINT stop it cleanly and remove the socket.
    Xenstored(XenstoredArgs),
    /// List PCI devices with driver, reset methods, MSI and MSI-X state.
    ///
    /// Reads SYSFS/bus/pci/devices (config space, driver link, reset_method,
    /// irq, msi_irqs). With -v prints, per device, the Command register, the
    /// reset methods and every capability; MSI-X lines use lspci's words
    /// (Enable, Count, Masked = Function Mask, Vector table / PBA BAR and
    /// offset). Config space beyond 64 bytes is readable only by root.
    Lspci(LspciArgs),
    /// Measure ptguard against baselines taken in the same run.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct LspciArgs {
    /// Only this device (SSSS:BB:DD.F or BB:DD.F).
    #[arg(value_name = "SBDF")]
    pub sbdf: Option<String>,

    /// Show capabilities, Command register, reset methods and IRQs.
    #[arg(short = 'v', long = "details")]
    pub details: bool,

    /// Print as JSON (every field, whatever -v says).
    #[arg(long)]
    pub json: bool,

    /// Root of the sysfs tree.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
}

#[derive(Debug, Args)]
pub struct XenstoredArgs {
    /// Directory for the socket (created if missing).
    #[arg(long, value_name = "DIR")]
    pub rundir: PathBuf,

    /// Start, exercise the server through its socket (write, read, list,
    /// permissions, watch, transaction), print what it answered and stop.
    #[arg(long)]
    pub self_test: bool,

    /// Print the self-test as JSON.
    #[arg(long, requires = "self_test")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Xenstore round-trip latency against a plain unix-socket echo server, and
    /// transaction commit throughput with 1, 4 and 16 clients.
    Xenstore(BenchXenstoreArgs),
}

#[derive(Debug, Args)]
pub struct BenchXenstoreArgs {
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: u32,

    /// Seconds of each commit-throughput measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,

    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}
