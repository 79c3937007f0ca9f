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
    PTGUARD_LOG        log filter, e.g. info, debug, xenstored=debug (default warn)
    PTGUARD_PROTECT    comma-separated domain ids never to touch (as --protect)
    PTGUARD_HOST       the host to act on (as --host), e.g. for a toolstack hook run
                       against a simulated host
    PTGUARD_METRICS_FILE  watch's Prometheus textfile (as watch --metrics-file)";

/// The version, the commit it was built from and the Xen releases it speaks (the ABI is
/// picked at run time from the hypervisor's version: `xen::abi::RELEASE_ABIS`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PTGUARD_GIT_COMMIT"),
    "; Xen 4.11 to 4.22: domctl interface 0x10 to 0x18, sysctl 0x11 to 0x16)"
);

/// ptguard keeps Xen PCI passthrough devices usable across guest reboot,
/// re-assignment and hot-unplug, by keeping a ledger of every IRQ binding in
/// Xenstore and force-unbinding leftovers before a device is reset.
#[derive(Debug, Parser)]
#[command(name = "ptguard", version = VERSION, after_help = AFTER_HELP)]
pub struct Cli {
    /// More log output on stderr (--verbose info, twice debug); PTGUARD_LOG overrides.
    #[arg(long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The host to act on: `real` (this dom0: /dev/xen/privcmd, /sys, xenstored) or
    /// `sim:DIR` (a simulated Xen host whose state is kept in DIR; create it with
    /// `ptguard --host sim:DIR sim init`).
    #[arg(
        long,
        global = true,
        value_name = "HOST",
        default_value = "real",
        env = "PTGUARD_HOST"
    )]
    pub host: daemon::host::HostSpec,

    /// Print the hypercalls and sysfs writes a mutating command would make, in order,
    /// without making them (nothing is written to Xenstore either).
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// After the command, print every hypercall and sysfs write it made, in order (also
    /// when the command fails).
    #[arg(long, global = true)]
    pub trace: bool,

    /// A domain ptguard must never touch (attach, tear down, sweep or serve), besides
    /// dom0, dom_io, dom_xen and the other reserved ids, which are always protected.
    /// Repeatable, or a comma-separated list; PTGUARD_PROTECT sets the same.
    #[arg(
        long = "protect",
        global = true,
        value_name = "DOMID",
        value_delimiter = ',',
        env = "PTGUARD_PROTECT"
    )]
    pub protect: Vec<u16>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// dom0 and the reserved ids are always protected; these are the operator's.
    pub fn protected(&self) -> engine::ProtectedDomains {
        let extra: Vec<xen::DomId> = self.protect.iter().map(|d| xen::DomId(*d)).collect();
        engine::ProtectedDomains::new(&extra)
    }

    /// Opens the host this command line names (`--host`, `--dry-run`), with its protected
    /// domains.
    pub fn open_host(&self) -> Result<daemon::host::HostCtx, daemon::DaemonError> {
        let mut ctx = daemon::host::HostCtx::open(&self.host, self.dry_run)?;
        ctx.protected = self.protected();
        Ok(ctx)
    }
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
    /// Seize a device into pciback and quarantine it in dom_io, ready for guests.
    ///
    /// Unbinds the device from its driver (remembered in the ledger), binds it to
    /// pciback (which prepares Xen's MSI-X state), assigns it to dom_io and records
    /// it in the ledger as assignable.
    #[command(name = "assignable-add")]
    AssignableAdd(SbdfArg),
    /// Return an assignable device to dom0 and its original driver.
    #[command(name = "assignable-remove")]
    AssignableRemove(SbdfArg),
    /// List the devices ptguard manages and what pciback holds.
    #[command(name = "assignable-list")]
    AssignableList(JsonArg),
    /// Give an assignable device to a domain.
    ///
    /// Checks the device is assignable and the domain exists and is not dying,
    /// resets the device, grants the BAR and IRQ permissions, maps the INTx pirq
    /// (recorded in the ledger), assigns the device and writes the PCI backend
    /// nodes as libxl does. Prints the epoch and the token of this assignment:
    /// the broker serves the domain's device model only when it is the process the
    /// toolstack recorded (device-model-pid) or presents this token, so hand it to
    /// the device model you start (its environment or a 0600 file), never to a log.
    Attach(AttachArgs),
    /// Record a device a guest already holds, so ptguard tears it down.
    ///
    /// For a device the toolstack gave (xl's pci=) or whose ledger entry was lost
    /// (`ptguard doctor` names the holder). Xen must say a guest holds it. Its
    /// interrupt bindings are unknown, so its teardown keeps it quarantined until
    /// that domain is gone, then makes it clean and assignable.
    Adopt(AttachArgs),
    /// Make a stuck device no guest holds usable again, in place.
    ///
    /// For a device in pciback whose MSI-X Function Mask Xen forced on (`lspci`:
    /// `MSI-X: Enable- ... Masked+`, every assign failing -EBUSY), without
    /// unbinding it from pciback: memory decoding on, release_msix then
    /// prepare_msix (Xen starts its MSI-X state afresh), Enable and Function Mask
    /// cleared, a reset if the mask survives, then verified. Refuses a device a
    /// guest holds (per Xen) or that ptguard has attached.
    Repair(SbdfArg),
    /// Hot-unplug: take a device from its (running) domain and make it clean.
    ///
    /// Runs the teardown: revoke permissions, force-unbind every binding in the
    /// ledger with memory decoding on, release_msix (quarantine on -EBUSY),
    /// deassign, reset, prepare_msix, verify.
    Detach(SbdfArg),
    /// List managed devices with state, owner, epoch and bindings.
    List(JsonArg),
    /// Show one device: ledger record and what the host says about it.
    Show(ShowArgs),
    /// Find stuck or dirty devices: what is wrong, why, and the fix.
    ///
    /// Reads, without changing anything, four views of every passthrough device:
    /// the ledger, sysfs and config space, Xen's own view (debug keys Q and i read
    /// back from its console: owners, leftover pirqs, zombie domains, the guests'
    /// pirq budget) and the toolstack's Xenstore nodes. Each finding has a stable
    /// code (docs/doctor.md). Exit 1 when an error is found.
    Doctor(DoctorArgs),
    /// Before a guest starts: will this device work for it?
    ///
    /// Checks the device (in pciback, no forced Function Mask, no pirqs or zombie
    /// left by a previous owner, a reset method, its vectors within a guest's pirq
    /// budget) and the guest (alive, or its xl config giving it an IOMMU context and
    /// not PVH). Exit 1 when it would fail.
    Preflight(PreflightArgs),
    /// Write what doctor reads as a report (lspci -vvv, xl info, xl dmesg after
    /// debug keys Q i M, xenstore-ls -f), for a bug report or `doctor --from-report`.
    Report(ReportArgs),
    /// The daemon: finish teardowns when domains go away, serve the broker.
    ///
    /// Follows @releaseDomain and tears down the devices of domains that are gone,
    /// resumes teardowns a crash left half done, retries quarantined devices
    /// whose owner is gone, and serves device models' bind/unbind requests on a
    /// unix socket (docs/broker.md).
    Watch(WatchArgs),
    /// Tear down every device of a domain that is gone (what `watch` does on
    /// @releaseDomain).
    #[command(name = "release-domain")]
    ReleaseDomain(DomidArg),
    /// Unmap every pirq a finished domain still holds in its MSI range.
    ///
    /// For bindings no ledger knows (a stock device model binds by direct hypercalls
    /// and never unmaps when it dies): PHYSDEVOP_unmap_pirq of each pirq from
    /// nr_pirqs-1 down to nr_irqs_gsi (learnt from Xen's boot line and its
    /// extra_guest_irqs= option). Refused for a domain that may still run (running,
    /// paused, suspended). Idempotent. `watch` and the teardown sweep by themselves;
    /// this is for hooks and by hand.
    Sweep(DomidArg),
    /// Serve one broker request here, as `ptguard watch` serves it on its socket, and print
    /// the reply line.
    ///
    /// The request is one line of the broker protocol (docs/broker.md: bind, unbind,
    /// map-pirq-msi, update-msi-irq, unbind-msi-irq, unmap-pirq), given as the argument or
    /// `-` for standard input. This process is not the domain's recorded device model, so
    /// the request must carry the assignment's token (`ptguard attach --json` prints it).
    /// For trying a device model's requests by hand, and for the real-Xen differential check
    /// (`--trace` lists the hypercalls the broker made). Exit 0 when the broker said ok.
    #[command(name = "broker-request")]
    BrokerRequest(BrokerRequestArgs),
    /// Entry points for a toolstack's hooks (companion mode).
    Hook(HookArgs),
    /// Drive the simulated host: create it, create domains, start guests.
    Sim(SimArgs),
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
    /// release+prepare alone, ptguard's companion mode beside a stock toolstack
    /// and device model (sweep), and ptguard with its ledger and broker. Prints
    /// whether the next guest's
    /// MSI-X interrupts arrive, stale bindings and forced masks at hand-over,
    /// quarantines, and the hypercalls and Xenstore requests/transactions spent.
    Scenario(ScenarioArgs),
    /// Crash ptguard at every step and check the invariants (docs/design.md, "The invariants").
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
    /// Xen release the simulated host behaves as: 4.11.0 (the seed's era: no quarantine, no
    /// assign-time MSI-X reset), 4.11.3 and 4.12.2 (both backported), 4.13.0, 4.17.0 (adds
    /// -ENODATA for unprepared maps), 4.17.5 (what the real-Xen test bed runs: also clears a
    /// Function Mask found at boot), 4.20.0 (Debian 13's line), 4.21.0 (adds
    /// get_domain_state: a unique domain id) or 4.22.0. A line alone (`4.17`, `4.20`) is
    /// taken as its first profile.
    #[arg(long, default_value = "4.11.0", value_parser = parse_xen)]
    pub xen: String,

    /// Linux pciback: old (before 7681f31ec9cd, Command:=0 on reset) or new.
    #[arg(long, default_value = "old", value_parser = ["old", "new"])]
    pub pciback: String,
}

impl SimProfileArgs {
    /// Every release profile with both pciback profiles.
    pub fn all() -> Vec<SimProfileArgs> {
        let mut v = Vec::new();
        for xen in sim::XenProfile::ALL {
            for pciback in ["old", "new"] {
                v.push(SimProfileArgs {
                    xen: xen.release().into(),
                    pciback: pciback.into(),
                });
            }
        }
        v
    }

    pub fn xen(&self) -> sim::XenProfile {
        sim::XenProfile::from_release(&self.xen).unwrap_or(sim::XenProfile::Xen4_11_0)
    }
    pub fn pciback(&self) -> sim::PcibackProfile {
        if self.pciback == "new" {
            sim::PcibackProfile::AfterCommandFix
        } else {
            sim::PcibackProfile::BeforeCommandFix
        }
    }
}

fn parse_xen(s: &str) -> Result<String, String> {
    match sim::XenProfile::from_release(s) {
        Some(p) => Ok(p.release().to_string()),
        None => Err(format!(
            "expected one of {}",
            sim::XenProfile::ALL.map(|p| p.release()).join(", ")
        )),
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
        .ok_or_else(|| "expected legacy, pciback-release-prepare, sweep or ptguard".to_string())
}

fn parse_explored_policy(s: &str) -> Result<crate::rig::Policy, String> {
    match parse_policy(s)? {
        p @ (crate::rig::Policy::Ptguard | crate::rig::Policy::Sweep) => Ok(p),
        _ => Err("only ptguard and sweep have crash points to explore".into()),
    }
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

    /// Teardown policy (legacy, pciback-release-prepare, sweep, ptguard); repeatable;
    /// default all.
    #[arg(long = "policy", value_name = "POLICY", value_parser = parse_policy)]
    pub policy: Vec<crate::rig::Policy>,

    #[command(flatten)]
    pub profile: SimProfileArgs,

    /// Run every release profile (Xen 4.11.0, 4.11.3, 4.12.2, 4.13.0, 4.17.0, 4.17.5,
    /// 4.20.0) with pciback old and new (overrides --xen and --pciback).
    #[arg(long)]
    pub all_profiles: bool,

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

    /// Whose crash points: ptguard with its exact ledger and broker (the default), or
    /// sweep, companion mode beside a stock toolstack and device model.
    #[arg(long, value_name = "POLICY", default_value = "ptguard", value_parser = parse_explored_policy)]
    pub policy: crate::rig::Policy,

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
    /// What to measure; without one, the engine benchmarks (teardown, bind, scale, one
    /// release beside a large ledger, reboot storm).
    #[command(subcommand)]
    pub what: Option<BenchWhat>,

    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,

    /// Smaller sizes (for a quick look; the published figures use the full sizes).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// The broker under attack: a real `ptguard watch` on a simulated host, a
    /// well-behaved device model binding and unbinding, and a flood of hostile
    /// connections; reports its slowdown against the same cycles alone and the
    /// daemon's peak memory.
    Broker(BenchBrokerArgs),
    /// Xenstore round-trip latency against a plain unix-socket echo server, and
    /// transaction commit throughput with 1, 4 and 16 clients.
    Xenstore(BenchXenstoreArgs),
}

#[derive(Debug, Args)]
pub struct BenchBrokerArgs {
    /// Hostile connections (silent, half-sent or oversized requests).
    #[arg(long, default_value_t = 10_000)]
    pub hostile: usize,
    /// How many of them send a 1 MiB line with no newline.
    #[arg(long, default_value_t = 500)]
    pub oversized: usize,
    /// Bind+unbind cycles of the well-behaved device model under attack.
    #[arg(long, default_value_t = 1_000)]
    pub cycles: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
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

#[derive(Debug, Args)]
pub struct SbdfArg {
    /// PCI address, SSSS:BB:DD.F or BB:DD.F.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    #[command(subcommand)]
    pub what: HookCommand,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Before the toolstack resets a device (xenopsd's pci-flr-script `flr-pre`, a
    /// libvirt hook, a wrapper around xl): if its guest is finished, sweep what that
    /// guest's device model left mapped (or run ptguard's teardown for a device in the
    /// ledger). Does nothing for a guest that may still run. Exit 0 unless the host
    /// could not be asked; safe to run twice and beside `ptguard watch`.
    #[command(name = "pre-reset")]
    PreReset(SbdfArg),
    /// Before the toolstack unplugs a device from a guest (`xl pci-detach`, xenopsd,
    /// libvirt): turn its memory decoding on (its physical function's, for a virtual
    /// function), so that Xen masks each vector in the MSI-X table when the vectors are
    /// torn down instead of forcing the Function Mask. It also notes the unplug
    /// (/ptguard/unplug/DEVICE): if the guest still has the device 15 s later (libxl's
    /// HVM unplug gives qemu 10 s, then gives up silently), `ptguard watch` logs it with
    /// the fix and `ptguard doctor` reports `unplug-stalled`. `ptguard watch` cleans the
    /// device once it has left the guest. Safe to run twice.
    #[command(name = "pre-unplug")]
    PreUnplug(SbdfArg),
    /// libvirt's libxl hook (installed as /etc/libvirt/hooks/libxl.d/ptguard, which libvirt
    /// 6.5 and later runs with these arguments and the domain's XML on stdin). On
    /// `prepare begin` (before libvirt detaches and resets the guest's devices) and
    /// `stopped end` (the guest is off; libvirt resets and reattaches its devices next),
    /// runs `hook pre-reset` for every PCI <hostdev> of the domain; every other operation
    /// is left alone. Always exits 0: a failure is said on stderr (libvirt logs it) and
    /// never stops the domain's start or cleanup.
    Libvirt(LibvirtHookArgs),
}

#[derive(Debug, Args)]
pub struct LibvirtHookArgs {
    /// The domain's name.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
    /// libvirt's operation: prepare, start, started, stopped, release, migrate, restore,
    /// reconnect, attach.
    #[arg(value_name = "OPERATION")]
    pub operation: String,
    /// Its sub-operation: begin, end or -.
    #[arg(value_name = "SUB-OPERATION", default_value = "-")]
    pub sub_operation: String,
    /// libvirt's extra argument (unused).
    #[arg(value_name = "EXTRA", default_value = "-")]
    pub extra: String,
}

#[derive(Debug, Args)]
pub struct BrokerRequestArgs {
    /// The request line (JSON), or `-` to read it from standard input.
    #[arg(value_name = "REQUEST")]
    pub request: String,
}

#[derive(Debug, Args)]
pub struct DomidArg {
    /// Domain id of a guest.
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// PCI address of an assignable device, SSSS:BB:DD.F or BB:DD.F.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// Domain id to give the device to (dom0, dom_io, dom_xen and --protect'ed domains
    /// are refused).
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// Print the result (device, domain, epoch) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// PCI address, SSSS:BB:DD.F or BB:DD.F.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// Print the ledger record and the host's view as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Only this device's findings (and those about no device in particular).
    #[arg(value_name = "SBDF")]
    pub sbdf: Option<pci::Sbdf>,
    /// Print the findings as JSON (code, severity, problem, evidence, why, fix).
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the findings in Prometheus' text format, for node_exporter's textfile
    /// collector (exits 0 whatever is found).
    #[arg(long)]
    pub prometheus: bool,
    /// Diagnose from a report instead of this host: `### COMMAND` lines each followed by
    /// that command's output (`lspci -vvv`, `xl dmesg` after `xl debug-keys Q i M`,
    /// `xl info`, `xenstore-ls -f`), as `ptguard report` writes it; sections may be
    /// missing.
    #[arg(long, value_name = "FILE")]
    pub from_report: Option<PathBuf>,
    /// Read these toolstack logs for known failure lines, each a finding with its cause
    /// and fix naming the device and the domain: xl's /var/log/xen/xl-NAME.log, qemu-xen's
    /// /var/log/xen/qemu-dm-NAME.log, libvirt's /var/log/libvirt/libxl/libxl-driver.log,
    /// `xl dmesg` saved to a file (docs/doctor.md, "From the toolstacks' logs"). Lines it
    /// does not know are ignored. With --log, doctor reads the logs (and a report given
    /// with --from-report), not this host. Repeatable, or several files after one --log.
    #[arg(long = "log", value_name = "FILE", num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// Root of the sysfs tree to inspect (real host).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The device the guest is to get.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// The guest's domain id (created, e.g. paused with `xl create -p`).
    #[arg(value_name = "DOMID", required_unless_present = "xl_config")]
    pub domid: Option<u16>,
    /// The guest's xl config, before it is created.
    #[arg(long, value_name = "FILE", conflicts_with = "domid")]
    pub xl_config: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Root of the sysfs tree to inspect (real host).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the report to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Where the toolstack's logs are: the report captures the last lines of each
    /// xl-NAME.log and qemu-dm-NAME.log there that names a PCI device (the guests that
    /// held one), and libvirt's libxl-driver.log when present.
    #[arg(long, value_name = "DIR", default_value = "/var/log/xen")]
    pub log_dir: PathBuf,
    /// Print the report as JSON: {"sections": [{"command", "output"}, ...]}.
    #[arg(long)]
    pub json: bool,
}

/// Where a real dom0's daemon serves the broker.
pub const DEFAULT_BROKER_SOCKET: &str = "/run/ptguard/broker.sock";

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Process what is pending (gone domains, half-done teardowns) and exit.
    #[arg(long)]
    pub once: bool,
    /// Unix socket for the broker protocol [default: /run/ptguard/broker.sock, or
    /// DIR/broker.sock with --host sim:DIR]. A lock file beside it (PATH.lock) keeps a
    /// second daemon from taking it over.
    #[arg(long, value_name = "PATH")]
    pub broker_socket: Option<PathBuf>,
    /// With --once: print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not adopt the devices the toolstack gives guests (libxl's PCI backend nodes):
    /// manage only what `ptguard attach` gave (companion mode off).
    #[arg(long)]
    pub no_adopt: bool,
    /// Report, do not cure: a device that left a running guest, or that no guest holds
    /// with its MSI-X left masked or enabled, is logged (WARN) with what was found and
    /// what would be done, and left as it is. Teardowns of gone domains still run.
    /// Also PTGUARD_REPORT_ONLY=1 (the Debian package's /etc/default/ptguard).
    #[arg(long, env = "PTGUARD_REPORT_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
    pub report_only: bool,
    /// Keep Prometheus metrics in PATH, a textfile for node_exporter's textfile collector
    /// (e.g. /var/lib/prometheus/node-exporter/ptguard.prom), rewritten atomically after
    /// every round: devices by state, teardowns by trigger and outcome, quarantines by
    /// reason, sweeps and pirqs swept, cures, adoptions, broker requests and refusals by
    /// code, errors and the last one (docs/metrics.md). With --once, written once. Also
    /// PTGUARD_METRICS_FILE (the Debian package's /etc/default/ptguard).
    #[arg(long, value_name = "PATH", env = "PTGUARD_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(subcommand)]
    pub what: SimCommand,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create a simulated host in the --host sim:DIR directory.
    Init(SimInitArgs),
    /// Create a domain (HVM unless --pv); prints its domid.
    Create(SimCreateArgs),
    /// Unpause a domain created with --paused (`xl unpause`).
    Unpause(DomidArg),
    /// Start a guest's use of a device: its device model binds through ptguard's
    /// broker and the guest driver enables MSI-X, then checks every vector.
    Start(SimStartArgs),
    /// Make each of the guest's vectors fire and report which arrived.
    Check(SimStartArgs),
    /// Reboot a guest as xl does: shutdown (the device model behaves as it was
    /// started), kill the device model, destroy the domain, create a new one.
    Reboot(DomidArg),
    /// Xen's and the hardware's view of a device.
    State(SbdfArg),
    /// The guest shuts itself down (SCHEDOP_shutdown) for REASON; the domain stays until
    /// `sim destroy` (as with xl's on_poweroff="preserve"). Its device model behaves as it
    /// was started (a well-behaved one unmaps, one that crashes dies now).
    Shutdown(SimShutdownArgs),
    /// `xl destroy`: the toolstack's forced detach of the devices it gave (`sim plug`,
    /// libxl's order), its device model killed, the domain destroyed, its Xenstore
    /// directory and PCI backend removed.
    Destroy(DomidArg),
    /// The toolstack's hot-plug (`xl pci-attach`): libxl's attach with a stock device model
    /// that binds by direct hypercalls (no broker), its PCI backend nodes, then the guest
    /// driver enabling MSI-X. A PV guest's vectors are mapped by dom0's pciback.
    Plug(SimStartArgs),
    /// The toolstack's hot-unplug (`xl pci-detach`, forced when the device model does not
    /// answer): libxl's order, its PCI backend nodes removed last. The guest runs on.
    Unplug(SimDeviceOfArgs),
    /// SIGKILL the guest's device model: whatever it mapped stays mapped.
    KillDm(DomidArg),
    /// Turn the device's memory decoding on or off (`setpci COMMAND`), as a guest or an
    /// old pciback leaves it.
    Decoding(SimDecodingArgs),
    /// A device model that bypasses ptguard maps one MSI-X entry of a device its guest
    /// holds straight through Xen (`xc_physdev_map_pirq_msi`) and binds it
    /// (`xc_domain_update_msi_irq`), or with --map-only never binds it; no ledger hears of
    /// it (the test bed's rogue_dm.py on real Xen). Prints the pirq.
    DmMap(SimDmMapArgs),
}

#[derive(Debug, Args)]
pub struct SimDmMapArgs {
    /// The guest's domain id.
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// The PCI address of the device.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// The MSI-X entry to map.
    #[arg(value_name = "ENTRY")]
    pub entry: u16,
    /// Map only: the pirq is never bound to the guest.
    #[arg(long)]
    pub map_only: bool,
}

/// `SHUTDOWN_*` reasons a guest gives (Xen's public sched.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    SoftReset,
}

impl ShutdownReason {
    /// The `SHUTDOWN_*` code.
    pub fn code(self) -> u8 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Suspend => 2,
            ShutdownReason::Crash => 3,
            ShutdownReason::SoftReset => 5,
        }
    }
}

#[derive(Debug, Args)]
pub struct SimShutdownArgs {
    /// The guest's domain id.
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// Why it shuts down.
    #[arg(long, value_enum, default_value = "poweroff")]
    pub reason: ShutdownReason,
}

#[derive(Debug, Args)]
pub struct SimDeviceOfArgs {
    /// The guest's domain id.
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// The PCI address of the device.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
}

#[derive(Debug, Args)]
pub struct SimDecodingArgs {
    /// The PCI address of the device.
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// on or off.
    #[arg(value_name = "STATE", value_parser = ["on", "off"])]
    pub state: String,
}

#[derive(Debug, Args)]
pub struct SimInitArgs {
    #[command(flatten)]
    pub profile: SimProfileArgs,
    /// Number of MSI-X NICs (0000:03:00.0, 0000:04:00.0, ...), 1 to 32.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub devices: u8,
    /// MSI-X table size of each device, 1 to 2048 (the PCI limit).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=2048))]
    pub entries: u16,
    /// Print what was created as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SimCreateArgs {
    /// The domain's name (as xl's `name=`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A PV guest (pcifront) instead of HVM.
    #[arg(long)]
    pub pv: bool,
    /// Without an IOMMU context (an xl config without `passthrough=` or `pci=`): Xen
    /// will refuse to assign it devices.
    #[arg(long)]
    pub no_passthrough: bool,
    /// Leave it paused (`xl create -p`): a PV guest's pcifront connects only once it
    /// runs (`sim unpause`).
    #[arg(long)]
    pub paused: bool,
    /// A PV guest built with the host's memory map, reserved regions included (xl's
    /// `e820_host = 1`, which xl also turns on for a PV guest with `pci=[...]`). Without
    /// it, as xl builds a PV guest with neither, `ptguard attach` refuses the guest: Linux
    /// 6.5+ sets up no swiotlb-xen for it and its devices' DMA misses the IOMMU.
    #[arg(long)]
    pub e820_host: bool,
    /// Print the new domain's id and name as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SimStartArgs {
    /// The guest's domain id.
    #[arg(value_name = "DOMID")]
    pub domid: u16,
    /// The PCI address of the device (for `start`, attached to the guest by `ptguard attach`).
    #[arg(value_name = "SBDF")]
    pub sbdf: pci::Sbdf,
    /// MSI-X vectors the guest driver enables.
    #[arg(long, default_value_t = 3)]
    pub vectors: u16,
    /// How the guest's device model behaves.
    #[arg(long, value_name = "BEHAVIOUR", value_parser = parse_dm, default_value = "well-behaved")]
    pub dm: sim::DmBehaviour,
    /// Print the interrupt report as JSON.
    #[arg(long)]
    pub json: bool,
    /// For `plug` of an HVM guest: run its device model in a stubdomain (created with the
    /// first plug, as libxl's device_model_stubdomain_override=1 does): libxl writes the
    /// PCI backend for the stubdomain, not the guest, and the model maps the guest's pirqs
    /// from there. `kill-dm` then kills the stubdomain; `destroy` destroys both.
    #[arg(long)]
    pub stubdom: bool,
}
