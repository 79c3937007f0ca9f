//! The scenario matrix: lifecycle scenarios (built-in or from files) × device-model
//! behaviours × teardown policies on the simulated host, one fresh host per run, and the
//! comparison companion mode must win (never worse than the toolstack alone).
//! `ptguard scenario` prints it; the behaviour tests assert on it.

use serde::Serialize;
use sim::dm::DmBehaviour;
use sim::{PcibackProfile, XenProfile};

use crate::rig::{Policy, Rig, RunReport, Scenario, BUILTIN_SCENARIOS};
use crate::LabError;

/// The scenarios named (built-in names or files), or every built-in one.
pub fn load_scenarios(names: &[String]) -> Result<Vec<Scenario>, LabError> {
    let bad = |what: String| LabError::BadScenario { what };
    let builtin = || {
        BUILTIN_SCENARIOS
            .iter()
            .map(move |(f, t)| Scenario::parse(t).map_err(|e| bad(format!("built-in {f}: {e}"))))
    };
    if names.is_empty() {
        return builtin().collect();
    }
    let mut out = Vec::new();
    for n in names {
        if let Some(s) = builtin().filter_map(Result::ok).find(|s| s.name == *n) {
            out.push(s);
            continue;
        }
        let text = std::fs::read_to_string(n).map_err(|e| {
            bad(format!("{n}: not a built-in scenario (reboot, reassign, hot-unplug) and not a readable file: {e}"))
        })?;
        out.push(Scenario::parse(&text).map_err(|e| bad(format!("{n}: {e}")))?);
    }
    Ok(out)
}

/// Every simulated Xen release with both pciback profiles.
pub fn all_profiles() -> Vec<(XenProfile, PcibackProfile)> {
    XenProfile::ALL
        .into_iter()
        .flat_map(|x| {
            [
                (x, PcibackProfile::BeforeCommandFix),
                (x, PcibackProfile::AfterCommandFix),
            ]
        })
        .collect()
}

/// One run of the matrix.
#[derive(Serialize)]
pub struct Row {
    /// `xen-4.11.0/pciback-old` etc.
    pub profile: String,
    pub scenario: String,
    pub device_model: DmBehaviour,
    pub policy: Policy,
    pub works: bool,
    #[serde(flatten)]
    pub report: RunReport,
}

/// The `sweep` rows that do worse than the `legacy` row of the same profile, scenario and
/// device model: the next guest broken where legacy's works, or more bindings leaked to an
/// old guest. Companion mode must never be worse than the toolstack alone.
pub fn sweep_worse_than_legacy(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.policy == Policy::Sweep)
        .filter(|s| {
            rows.iter()
                .find(|l| {
                    l.policy == Policy::Legacy
                        && l.profile == s.profile
                        && l.scenario == s.scenario
                        && l.device_model == s.device_model
                })
                .is_some_and(|l| {
                    (l.works && !s.works) || s.report.leaked_bindings > l.report.leaked_bindings
                })
        })
        .collect()
}

/// Every scenario × behaviour × policy on one simulated host profile, each run on a fresh
/// host.
pub fn run_matrix(
    scenarios: &[Scenario],
    behaviours: &[DmBehaviour],
    policies: &[Policy],
    profile: (XenProfile, PcibackProfile),
) -> Vec<Row> {
    run_matrix_traced(scenarios, behaviours, policies, profile, false)
}

/// [`run_matrix`], each row with the simulated host's trace when `trace`.
pub fn run_matrix_traced(
    scenarios: &[Scenario],
    behaviours: &[DmBehaviour],
    policies: &[Policy],
    (xen, pciback): (XenProfile, PcibackProfile),
    trace: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in scenarios {
        for b in behaviours {
            for p in policies {
                let mut rig = Rig::new(*p, *b, xen, pciback, s.vectors);
                if trace {
                    rig.trace();
                }
                let report = rig.run(s);
                rows.push(Row {
                    profile: format!("{}/{}", xen.name(), pciback.name()),
                    scenario: s.name.clone(),
                    device_model: *b,
                    policy: *p,
                    works: report.works(),
                    report,
                });
            }
        }
    }
    rows
}
