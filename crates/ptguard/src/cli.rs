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
    /// Compare teardown policies on the simulated host (the main job).
    ///
    /// Runs lifecycle scenarios (guest reboot, re-assignment, hot-unplug) with
    /// each device-model behaviour (well-behaved, crashes, killed-early,
    /// hostile) under each policy: the legacy libxl order, pciback's
    /// release+prepare alone, and ptguard. Prints whether the next guest's
    /// MSI-X interrupts arrive, stale bindings and forced masks at hand-over,
    /// quarantines, and the hypercalls and Xenstore requests/transactions spent.
    Scenario(ScenarioArgs),
    /// Crash ptguard at every step and check DESIGN.md's five invariants.
    ///
    /// For each scenario and device-model behaviour, runs ptguard once without a
    /// crash, then once per crash point with a crash injected there (ptguard
    /// restarts and recovers from the ledger), checks the invariants after every
    /// step and compares the end state with the crash-free run. Exits 1 if any
    /// invariant is violated; each violation prints a seed for --replay.
    Explore(ExploreArgs),
    /// Measure ptguard against baselines taken in the same run.
    Bench(BenchArgs),
}

/// Which Xen and which pciback the simulated host behaves as.
#[derive(Debug, Clone, Args)]
pub struct SimProfileArgs {
    /// Xen version profile: 4.11.0 (the seed's era) or 4.17.
    #[arg(long, default_value = "4.11.0", value_parser = ["4.11.0", "4.17"])]
    pub xen: String,

    /// Linux pciback: old (before 7681f31ec9cd, Command:=0 on reset) or new.
    #[arg(long, default_value = "old", value_parser = ["old", "new"])]
    pub pciback: String,
}

impl SimProfileArgs {
    pub fn xen(&self) -> sim::XenProfile {
        if self.xen == "4.17" {
            sim::XenProfile::Xen4_17
        } else {
            sim::XenProfile::Xen4_11_0
        }
    }
    pub fn pciback(&self) -> sim::PcibackProfile {
        if self.pciback == "new" {
            sim::PcibackProfile::AfterCommandFix
        } else {
            sim::PcibackProfile::BeforeCommandFix
        }
    }
}

fn parse_dm(s: &str) -> Result<sim::DmBehaviour, String> {
    sim::DmBehaviour::ALL
        .into_iter()
        .find(|b| b.name() == s)
        .ok_or_else(|| "expected well-behaved, crashes, killed-early or hostile".to_string())
}

fn parse_policy(s: &str) -> Result<crate::rig::Policy, String> {
    crate::rig::Policy::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| "expected legacy, pciback-release-prepare or ptguard".to_string())
}

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Scenario: a built-in name (reboot, reassign, hot-unplug) or a .scn file;
    /// repeatable; default all built-ins.
    #[arg(long = "scenario", value_name = "NAME|FILE")]
    pub scenario: Vec<String>,

    /// Device-model behaviour; repeatable; default all.
    #[arg(long = "dm", value_name = "BEHAVIOUR", value_parser = parse_dm)]
    pub dm: Vec<sim::DmBehaviour>,

    /// Teardown policy; repeatable; default all.
    #[arg(long = "policy", value_name = "POLICY", value_parser = parse_policy)]
    pub policy: Vec<crate::rig::Policy>,

    #[command(flatten)]
    pub profile: SimProfileArgs,

    /// Print every run as JSON (with notices and counters).
    #[arg(long)]
    pub json: bool,

    /// Also print each run's notices (quarantines, refused requests).
    #[arg(short = 'v', long = "notices")]
    pub notices: bool,
}

#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// Scenario name or file; repeatable; default all built-ins.
    #[arg(long = "scenario", value_name = "NAME|FILE")]
    pub scenario: Vec<String>,

    /// Device-model behaviour; repeatable; default all.
    #[arg(long = "dm", value_name = "BEHAVIOUR", value_parser = parse_dm)]
    pub dm: Vec<sim::DmBehaviour>,

    #[command(flatten)]
    pub profile: SimProfileArgs,

    /// Replay one case: SCENARIO/BEHAVIOUR/CRASH-POINT as printed with a violation.
    #[arg(long, value_name = "SEED")]
    pub replay: Option<String>,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
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
