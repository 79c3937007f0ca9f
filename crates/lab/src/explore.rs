//! The crash explorer: every crash point of ptguard × every device-model behaviour × the
//! lifecycle scenarios, each run on a fresh simulated host with the invariants of
//! docs/design.md ("The invariants") checked after each step (by [`crate::rig`]), and
//! invariant 4 here: a run crashed at any point ends as the run without a crash does,
//! save the map→record window's quarantine, which is by design.

use serde::Serialize;
use sim::dm::DmBehaviour;
use sim::{PcibackProfile, XenProfile};

use crate::explore_devices::{self, DeviceScenarioSummary};
use crate::rig::{Policy, Rig, RunReport, Scenario};
use crate::LabError;

/// One violation with what replays it.
#[derive(Debug, Serialize)]
pub struct Violation {
    /// `scenario/behaviour/crash-point`: pass to `--replay`.
    pub seed: String,
    pub what: String,
}

/// What an exploration found.
#[derive(Debug, Default, Serialize)]
pub struct ExploreSummary {
    pub profile: String,
    pub cases: u64,
    pub crash_points: u64,
    /// Scenario × behaviour combinations run.
    pub combinations: u64,
    pub violations: Vec<Violation>,
    pub quarantined_runs: u64,
    /// Crashes between `map_pirq` returning and its pirq being recorded (with the bind's
    /// confirmation) while the owner runs: the mapping cannot be named, so the device is
    /// quarantined until the owner is gone and a guest asking for it meanwhile is refused;
    /// it ends as clean as the crash-free run (docs/ledger.md, "The map→record window").
    pub lost_map_quarantines: u64,
    /// The lifecycles with several devices or domains ([`explore_devices`]), explored
    /// under the ptguard policy when no scenario, behaviour or replay narrows the run.
    pub device_scenarios: Vec<DeviceScenarioSummary>,
}

/// One case to replay: `scenario/behaviour/crash-point` (`none`: the crash-free run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub scenario: String,
    pub behaviour: DmBehaviour,
    pub crash_point: Option<u64>,
}

impl std::str::FromStr for Seed {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Seed, LabError> {
        let bad = |why: String| LabError::BadSeed {
            seed: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split('/').collect();
        let [scenario, dm, k] = parts.as_slice() else {
            return Err(bad("expected SCENARIO/BEHAVIOUR/CRASH-POINT".into()));
        };
        let behaviour = DmBehaviour::ALL
            .into_iter()
            .find(|b| b.name() == *dm)
            .ok_or_else(|| bad(format!("unknown behaviour {dm:?}")))?;
        let crash_point = match *k {
            "none" => None,
            k => Some(
                k.parse()
                    .map_err(|_| bad(format!("bad crash point {k:?}")))?,
            ),
        };
        Ok(Seed {
            scenario: scenario.to_string(),
            behaviour,
            crash_point,
        })
    }
}

/// What to explore.
pub struct ExplorePlan<'a> {
    pub scenarios: &'a [Scenario],
    pub behaviours: &'a [DmBehaviour],
    pub policy: Policy,
    pub xen: XenProfile,
    pub pciback: PcibackProfile,
    /// Only this case.
    pub replay: Option<Seed>,
    /// Also the multi-device lifecycles (under the ptguard policy).
    pub with_device_scenarios: bool,
}

/// A replayed case, for the caller to print.
pub struct Replayed<'a> {
    pub seed: &'a str,
    pub run: &'a RunReport,
    pub baseline: &'a RunReport,
}

/// Whether a crashed run that ends differently from the crash-free one differs only as the
/// map→record window is designed to: a guest refused while the device waited in quarantine
/// for the owner to go, and otherwise the same end state.
pub fn lost_map_by_design(r: &RunReport, baseline: &RunReport) -> bool {
    let strip = |s: &str| s.split(" works=").next().unwrap_or_default().to_string();
    r.crashed_at.is_some_and(|at| at.in_map_record_window())
        && r.quarantined
        && r.quarantines
            .iter()
            .any(|q| matches!(q, engine::QuarantineReason::LostMappings { .. }))
        && strip(&r.end_state) == strip(&baseline.end_state)
}

/// Runs the plan: each combination crash-free, then crashed at each of its crash points.
/// `on_replay` sees each replayed case; `progress` the cases and violations so far.
pub fn explore(
    plan: &ExplorePlan,
    mut on_replay: impl FnMut(Replayed),
    mut progress: impl FnMut(u64, usize),
) -> ExploreSummary {
    let (xen, pciback, policy) = (plan.xen, plan.pciback, plan.policy);
    let mut summary = ExploreSummary {
        profile: format!("{} {} ({})", xen.name(), pciback.name(), policy.name()),
        ..Default::default()
    };
    for s in plan.scenarios {
        for b in plan.behaviours {
            if let Some(seed) = &plan.replay {
                if seed.scenario != s.name || seed.behaviour != *b {
                    continue;
                }
            }
            summary.combinations += 1;
            let baseline = Rig::new(policy, *b, xen, pciback, s.vectors).run(s);
            summary.cases += 1;
            for v in &baseline.violations {
                summary.violations.push(Violation {
                    seed: format!("{}/{}/none", s.name, b.name()),
                    what: v.clone(),
                });
            }
            let points: Vec<u64> = match plan.replay.as_ref().and_then(|r| r.crash_point) {
                Some(k) => vec![k],
                None => (0..baseline.checkpoints).collect(),
            };
            summary.crash_points += points.len() as u64;
            for k in points {
                let mut rig = Rig::new(policy, *b, xen, pciback, s.vectors);
                rig.crash_at(k);
                let r = rig.run(s);
                summary.cases += 1;
                if r.quarantined {
                    summary.quarantined_runs += 1;
                }
                let seed = format!("{}/{}/{k}", s.name, b.name());
                for v in &r.violations {
                    summary.violations.push(Violation {
                        seed: seed.clone(),
                        what: v.clone(),
                    });
                }
                if r.crashed_at.is_some() && r.end_state != baseline.end_state {
                    if lost_map_by_design(&r, &baseline) {
                        summary.lost_map_quarantines += 1;
                    } else {
                        summary.violations.push(Violation {
                            seed: seed.clone(),
                            what: invariant_4(&r, &baseline),
                        });
                    }
                }
                if plan.replay.is_some() {
                    on_replay(Replayed {
                        seed: &seed,
                        run: &r,
                        baseline: &baseline,
                    });
                }
                if summary.cases.is_multiple_of(16) {
                    progress(summary.cases, summary.violations.len());
                }
            }
        }
    }
    if plan.with_device_scenarios && policy == Policy::Ptguard {
        for name in explore_devices::SCENARIOS {
            let d = explore_devices::explore(name, xen, pciback);
            summary.cases += d.crash_points + 1;
            summary.crash_points += d.crash_points;
            for v in &d.violations {
                summary.violations.push(Violation {
                    seed: format!("{name} (crates/lab/tests/explore_devices.rs)"),
                    what: v.clone(),
                });
            }
            summary.device_scenarios.push(d);
        }
    }
    progress(summary.cases, summary.violations.len());
    summary
}

/// Invariant 4's violation: the crashed run's end is not the crash-free run's.
fn invariant_4(r: &RunReport, baseline: &RunReport) -> String {
    let at = r.crashed_at.map_or_else(
        || "no point (it ran to the end)".to_string(),
        |p| p.to_string(),
    );
    format!(
        "invariant 4: crash at {at} ends in {} instead of {}",
        r.end_state, baseline.end_state
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_printed_and_bad_ones_say_why() {
        let b = DmBehaviour::ALL[0];
        let s: Seed = format!("reboot/{}/7", b.name()).parse().unwrap();
        assert_eq!(
            s,
            Seed {
                scenario: "reboot".into(),
                behaviour: b,
                crash_point: Some(7)
            }
        );
        let none: Seed = format!("reboot/{}/none", b.name()).parse().unwrap();
        assert_eq!(none.crash_point, None);
        for bad in ["reboot", "reboot/nobody/1", "a/b/c/d"] {
            let e = bad.parse::<Seed>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let e = format!("reboot/{}/x", b.name())
            .parse::<Seed>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad crash point"), "{e}");
    }
}
