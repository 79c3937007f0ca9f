//! What the daemon has done, as Prometheus metrics: a textfile for node_exporter's textfile
//! collector (`watch --metrics-file PATH`), rewritten atomically after every round. The
//! counters are fed by the watch loop (rounds, teardowns and the engine's typed notices)
//! and by the broker (requests and refusals); the ledger's devices by state are read at
//! each write. Names and labels follow Prometheus' conventions (`ptguard_` prefix,
//! `_total` counters, base units, snake_case labels); docs/metrics.md lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use engine::{CureResult, DeviceState, Notice, NoticeKind, Outcome};

use crate::DaemonError;

/// What one teardown was started by, as the daemon saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TeardownTrigger {
    /// A device left a guest that still runs (an unplug), followed by the daemon.
    Departure,
    /// The daemon's recovery round (`@releaseDomain`, the retry timer, a restart).
    Recover,
}

impl TeardownTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            TeardownTrigger::Departure => "departure",
            TeardownTrigger::Recover => "recover",
        }
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Assignable { .. } => "assignable",
        Outcome::Quarantined { .. } => "quarantined",
        Outcome::HandedOver { .. } => "handed-over",
    }
}

#[derive(Debug, Default)]
struct Counters {
    rounds: BTreeMap<&'static str, u64>,
    last_round_unix: u64,
    teardowns: BTreeMap<(&'static str, &'static str), u64>,
    quarantines: BTreeMap<&'static str, u64>,
    sweeps: u64,
    swept_pirqs: u64,
    orphan_releases: u64,
    orphan_pirqs: u64,
    owner_vectors_unmapped: u64,
    cures: BTreeMap<&'static str, u64>,
    adoptions: u64,
    handovers: u64,
    stalled_unplugs: u64,
    broker_requests: BTreeMap<&'static str, u64>,
    broker_refusals: BTreeMap<&'static str, u64>,
    errors: u64,
    last_error: Option<(u64, String)>,
    devices: Option<BTreeMap<&'static str, u64>>,
}

/// The daemon's counters, shared by the watch loop and the broker thread.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    fn update(&self, f: impl FnOnce(&mut Counters)) {
        // A poisoned lock only means a panicking thread held it: the counts are still
        // counts, and metrics must never stop the daemon.
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// A round ran (`recover` or `adopt`) at `now` (Unix seconds).
    pub fn round(&self, kind: &'static str, now: u64) {
        self.update(|c| {
            *c.rounds.entry(kind).or_default() += 1;
            c.last_round_unix = now;
        });
    }

    /// A teardown ended.
    pub fn teardown(&self, trigger: TeardownTrigger, outcome: &Outcome) {
        self.update(|c| {
            *c.teardowns
                .entry((trigger.as_str(), outcome_label(outcome)))
                .or_default() += 1
        });
    }

    /// What the engine said: quarantines by reason, sweeps, cures, adoptions, hand-overs.
    pub fn notice(&self, n: &Notice) {
        self.update(|c| match &n.kind {
            NoticeKind::Quarantined { reason, .. } => {
                *c.quarantines.entry(reason.code()).or_default() += 1
            }
            NoticeKind::Swept { pirqs, .. } => {
                c.sweeps += 1;
                c.swept_pirqs += pirqs.len() as u64;
            }
            NoticeKind::OrphansReleased { pirqs, .. } => {
                c.orphan_releases += 1;
                c.orphan_pirqs += pirqs.len() as u64;
            }
            NoticeKind::OwnerVectorsUnmapped { pirqs, .. } => {
                c.owner_vectors_unmapped += pirqs.len() as u64
            }
            NoticeKind::Dirty { cure, .. } => {
                let result = match cure {
                    CureResult::NotTried => "not-cured",
                    CureResult::Cured { .. } => "cured",
                    CureResult::Failed { .. } => "failed",
                };
                *c.cures.entry(result).or_default() += 1;
            }
            NoticeKind::Adopted { .. } => c.adoptions += 1,
            NoticeKind::HandedOver { .. } => c.handovers += 1,
            NoticeKind::UnplugStalled { .. } => c.stalled_unplugs += 1,
            _ => {}
        });
    }

    /// A broker request (`op`: the wire's, or `malformed`) and its refusal code, if refused.
    pub fn broker(&self, op: &'static str, refused: Option<&'static str>) {
        self.update(|c| {
            *c.broker_requests.entry(op).or_default() += 1;
            if let Some(code) = refused {
                *c.broker_refusals.entry(code).or_default() += 1;
            }
        });
    }

    /// Something failed that the daemon logged and went on from.
    pub fn error(&self, what: &str, now: u64) {
        self.update(|c| {
            c.errors += 1;
            c.last_error = Some((now, what.to_string()));
        });
    }

    /// The ledger's devices by state, as last read.
    pub fn devices(&self, states: impl IntoIterator<Item = DeviceState>) {
        let mut by: BTreeMap<&'static str, u64> =
            DeviceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for s in states {
            *by.entry(s.as_str()).or_default() += 1;
        }
        self.update(|c| c.devices = Some(by));
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        let by = |label: &str, m: &BTreeMap<&'static str, u64>| {
            m.iter()
                .map(|(k, v)| (format!("{{{label}=\"{}\"}}", escape(k)), *v))
                .collect::<Vec<_>>()
        };
        if let Some(d) = &c.devices {
            family(
                "ptguard_devices",
                "gauge",
                "Devices in ptguard's ledger, by state.",
                by("state", d),
            );
        }
        family(
            "ptguard_rounds_total",
            "counter",
            "Rounds the daemon ran, by kind (recover: domain events, the retry timer; adopt: the toolstack's backends changed).",
            by("round", &c.rounds),
        );
        family(
            "ptguard_last_round_timestamp_seconds",
            "gauge",
            "When the daemon last ran a round (Unix time).",
            one(c.last_round_unix),
        );
        family(
            "ptguard_teardowns_total",
            "counter",
            "Teardowns the daemon finished, by what started them and how they ended.",
            c.teardowns
                .iter()
                .map(|((t, o), v)| (format!("{{trigger=\"{t}\",outcome=\"{o}\"}}"), *v))
                .collect(),
        );
        family(
            "ptguard_quarantines_total",
            "counter",
            "Devices kept from every guest, by reason.",
            by("reason", &c.quarantines),
        );
        family(
            "ptguard_sweeps_total",
            "counter",
            "Sweeps of a finished domain's pirqs its device model left mapped.",
            one(c.sweeps),
        );
        family(
            "ptguard_swept_pirqs_total",
            "counter",
            "Pirqs unmapped by sweeps.",
            one(c.swept_pirqs),
        );
        family(
            "ptguard_orphan_releases_total",
            "counter",
            "Releases of what a dead device model left bound while its guest runs.",
            one(c.orphan_releases),
        );
        family(
            "ptguard_orphan_pirqs_total",
            "counter",
            "Pirqs unbound and unmapped by those releases.",
            one(c.orphan_pirqs),
        );
        family(
            "ptguard_owner_vectors_unmapped_total",
            "counter",
            "Pirqs a running owner still had bound to a departing device, unmapped by its teardown.",
            one(c.owner_vectors_unmapped),
        );
        family(
            "ptguard_cures_total",
            "counter",
            "Devices no guest held found with MSI-X left dirty, by what was done.",
            by("result", &c.cures),
        );
        family(
            "ptguard_adoptions_total",
            "counter",
            "Devices adopted from the toolstack (companion mode).",
            one(c.adoptions),
        );
        family(
            "ptguard_handovers_total",
            "counter",
            "Devices the toolstack gave on before ptguard could clean them.",
            one(c.handovers),
        );
        family(
            "ptguard_stalled_unplugs_total",
            "counter",
            "Announced unplugs reported as not finished.",
            one(c.stalled_unplugs),
        );
        family(
            "ptguard_broker_requests_total",
            "counter",
            "Requests the broker answered, by operation.",
            by("op", &c.broker_requests),
        );
        family(
            "ptguard_broker_refusals_total",
            "counter",
            "Broker requests refused or failed, by reply code.",
            by("code", &c.broker_refusals),
        );
        family(
            "ptguard_errors_total",
            "counter",
            "Failures the daemon logged and went on from.",
            one(c.errors),
        );
        if let Some((at, what)) = &c.last_error {
            family(
                "ptguard_last_error_timestamp_seconds",
                "gauge",
                "When the last such failure happened (Unix time).",
                one(*at),
            );
            family(
                "ptguard_last_error_info",
                "gauge",
                "The last such failure, as logged.",
                vec![(format!("{{error=\"{}\"}}", escape(&truncate(what))), 1)],
            );
        }
        out
    }
}

/// A label value as the exposition format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A label value short enough for a time-series database.
fn truncate(v: &str) -> String {
    const MAX: usize = 200;
    match v.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &v[..i]),
        None => v.to_string(),
    }
}

/// Where the daemon keeps its metrics textfile.
#[derive(Clone, Debug)]
pub struct MetricsFile {
    pub path: PathBuf,
}

impl MetricsFile {
    /// Writes `text` to the file atomically: a reader (node_exporter) sees the old file or
    /// the new one, never half of one. The temporary file sits beside it and does not end
    /// in `.prom`, so the textfile collector never reads it.
    pub fn write(&self, text: &str) -> Result<(), DaemonError> {
        write_atomically(&self.path, text)
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), DaemonError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // Named by the file the operator gave, not the temporary one beside it.
    std::fs::write(&tmp, text).map_err(DaemonError::io("write the metrics file", path))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DaemonError::io("replace the metrics file", path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::QuarantineReason;
    use pci::Sbdf;
    use xen::{DomId, Pirq};

    /// Every sample line: NAME{LABELS} VALUE, each family with HELP and TYPE first.
    fn parse(text: &str) -> BTreeMap<String, u64> {
        let mut samples = BTreeMap::new();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(
                    kind != "counter" || name.ends_with("_total"),
                    "a counter's name ends in _total: {line}"
                );
                typed.push(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{line}"
            );
            assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
            samples.insert(series.to_string(), value.parse().unwrap());
        }
        samples
    }

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        let sbdf = Sbdf::new(0, 3, 0, 0).unwrap();
        m.round("recover", 1_700_000_000);
        m.round("recover", 1_700_000_001);
        m.teardown(TeardownTrigger::Recover, &Outcome::Assignable { epoch: 2 });
        m.notice(&Notice::new(NoticeKind::Swept {
            domid: DomId(4),
            pirqs: vec![Pirq(55), Pirq(54)],
        }));
        m.notice(&Notice::new(NoticeKind::Quarantined {
            sbdf,
            reason: QuarantineReason::UnknownBindings { owner: DomId(4) },
        }));
        m.notice(&Notice::new(NoticeKind::Dirty {
            sbdf,
            found: "MSI-X Function Mask set (Xen forced it)",
            cure: CureResult::Cured { done: vec![] },
        }));
        m.broker("bind", None);
        m.broker("bind", Some("stale-epoch"));
        m.devices([DeviceState::Assignable, DeviceState::Quarantined]);
        m.error("a \"quoted\"\nline", 1_700_000_002);
        let s = parse(&m.render());
        assert_eq!(s["ptguard_rounds_total{round=\"recover\"}"], 2);
        assert_eq!(s["ptguard_last_round_timestamp_seconds"], 1_700_000_001);
        assert_eq!(
            s["ptguard_teardowns_total{trigger=\"recover\",outcome=\"assignable\"}"],
            1
        );
        assert_eq!(s["ptguard_sweeps_total"], 1);
        assert_eq!(s["ptguard_swept_pirqs_total"], 2);
        assert_eq!(
            s["ptguard_quarantines_total{reason=\"unknown-bindings\"}"],
            1
        );
        assert_eq!(s["ptguard_cures_total{result=\"cured\"}"], 1);
        assert_eq!(s["ptguard_broker_requests_total{op=\"bind\"}"], 2);
        assert_eq!(s["ptguard_broker_refusals_total{code=\"stale-epoch\"}"], 1);
        assert_eq!(s["ptguard_devices{state=\"assignable\"}"], 1);
        assert_eq!(s["ptguard_devices{state=\"attached\"}"], 0);
        assert_eq!(s["ptguard_errors_total"], 1);
        assert_eq!(
            s["ptguard_last_error_info{error=\"a \\\"quoted\\\"\\nline\"}"],
            1
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("ptguard-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = MetricsFile {
            path: dir.join("ptguard.prom"),
        };
        f.write("a 1\n").unwrap();
        f.write("b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), "b 2\n");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left beside it");
        // A directory that does not exist: a clear error naming the file.
        let bad = MetricsFile {
            path: dir.join("no/such/dir/ptguard.prom"),
        };
        let e = bad.write("x 1\n").unwrap_err().to_string();
        assert!(e.contains("no/such/dir"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
