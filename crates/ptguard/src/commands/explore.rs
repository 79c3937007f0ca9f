//! `ptguard explore`: every crash point of ptguard × every device-model behaviour × the
//! lifecycle scenarios, with the invariants of docs/design.md checked after each step and the end
//! state compared with the run without a crash.

use std::io::{IsTerminal, Write};

use serde::Serialize;
use sim::dm::DmBehaviour;

use crate::cli::ExploreArgs;
use crate::commands::scenario::load_scenarios;
use crate::output::emit;
use crate::rig::Rig;

/// One violation with what replays it.
#[derive(Debug, Serialize)]
pub struct Violation {
    /// `scenario/behaviour/crash-point`: pass to `--replay`.
    pub seed: String,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ExploreSummary {
    pub profile: String,
    pub cases: u64,
    pub crash_points: u64,
    pub violations: Vec<Violation>,
    pub quarantined_runs: u64,
    /// Crashes between `map_pirq` returning and its pirq being recorded (with the bind's
    /// confirmation) while the owner
    /// runs: the mapping cannot be named, so the device is quarantined until the owner is
    /// gone and a guest asking for it meanwhile is refused; it ends as clean as the
    /// crash-free run (docs/ledger.md, "The map→record window").
    pub lost_map_quarantines: u64,
    /// The lifecycles with several devices or domains (`explore_devices`), explored under
    /// the ptguard policy when no scenario, behaviour or replay narrows the run.
    pub device_scenarios: Vec<crate::commands::explore_devices::DeviceScenarioSummary>,
}

/// Whether a crash point lies between a bind's `map_pirq` and the write recording its pirq
/// (the broker's bind confirms after `bind_pt_irq`; a device model's separate map records
/// at once).
fn in_map_confirm_window(at: &str) -> bool {
    let bind =
        at.contains(" bind ") && (at.ends_with(": bind_pt_irq") || at.ends_with(": confirm"));
    bind || at.ends_with(": record pirq")
}

/// Whether a crashed run that ends differently from the crash-free one differs only as the
/// map→record window is designed to: a guest refused while the device waited in quarantine
/// for the owner to go, and otherwise the same end state.
pub fn lost_map_by_design(r: &crate::rig::RunReport, baseline: &crate::rig::RunReport) -> bool {
    let strip = |s: &str| s.split(" works=").next().unwrap_or_default().to_string();
    r.crashed_at.as_deref().is_some_and(in_map_confirm_window)
        && r.quarantined
        && r.notices
            .iter()
            .any(|n| n.contains("interrupted by a crash between map_pirq"))
        && strip(&r.end_state) == strip(&baseline.end_state)
}

pub fn run(args: ExploreArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let scenarios = load_scenarios(&args.scenario)?;
    let behaviours = if args.dm.is_empty() {
        DmBehaviour::ALL.to_vec()
    } else {
        args.dm.clone()
    };
    let (xen, pciback) = (args.profile.xen(), args.profile.pciback());
    let policy = args.policy;
    let mut summary = ExploreSummary {
        profile: format!("{} {} ({})", xen.name(), pciback.name(), policy.name()),
        ..Default::default()
    };
    let replay = args.replay.as_deref().map(parse_seed).transpose()?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let mut combos = 0usize;
    for s in &scenarios {
        for b in &behaviours {
            if let Some((rs, rb, _)) = &replay {
                if rs != &s.name || rb != b {
                    continue;
                }
            }
            combos += 1;
            let mut base = Rig::new(policy, *b, xen, pciback, s.vectors);
            let baseline = base.run(s);
            summary.cases += 1;
            for v in &baseline.violations {
                summary.violations.push(Violation {
                    seed: format!("{}/{}/none", s.name, b.name()),
                    what: v.clone(),
                });
            }
            let points: Vec<u64> = match &replay {
                Some((_, _, Some(k))) => vec![*k],
                _ => (0..baseline.checkpoints).collect(),
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
                if r.crashed_at.is_some()
                    && r.end_state != baseline.end_state
                    && lost_map_by_design(&r, &baseline)
                {
                    summary.lost_map_quarantines += 1;
                } else if r.crashed_at.is_some() && r.end_state != baseline.end_state {
                    summary.violations.push(Violation {
                        seed: seed.clone(),
                        what: format!(
                            "invariant 4: crash at {} ends in {} instead of {}",
                            r.crashed_at
                                .as_deref()
                                .unwrap_or("no point (it ran to the end)"),
                            r.end_state,
                            baseline.end_state
                        ),
                    });
                }
                if args.replay.is_some() {
                    match &r.crashed_at {
                        Some(at) => writeln!(out, "replay {seed}: crashed at {at}")?,
                        None => {
                            writeln!(out, "replay {seed}: no crash (the point is past the end)")?
                        }
                    }
                    writeln!(out, "  end state: {}", r.end_state)?;
                    writeln!(out, "  baseline:  {}", baseline.end_state)?;
                    for n in &r.notices {
                        writeln!(out, "  notice: {n}")?;
                    }
                }
                if progress && summary.cases.is_multiple_of(16) {
                    eprint!(
                        "\rexplore: {} cases, {} violations",
                        summary.cases,
                        summary.violations.len()
                    );
                }
            }
        }
    }
    let whole = args.replay.is_none() && args.dm.is_empty() && args.scenario.is_empty();
    if whole && policy == crate::rig::Policy::Ptguard {
        for name in crate::commands::explore_devices::SCENARIOS {
            let d = crate::commands::explore_devices::explore(name, xen, pciback);
            summary.cases += d.crash_points + 1;
            summary.crash_points += d.crash_points;
            for v in &d.violations {
                summary.violations.push(Violation {
                    seed: format!("{name} (tests/explore_devices.rs)"),
                    what: v.clone(),
                });
            }
            summary.device_scenarios.push(d);
        }
    }
    if progress {
        eprintln!(
            "\rexplore: {} cases, {} violations",
            summary.cases,
            summary.violations.len()
        );
    }
    emit(out, args.json, &summary, |out| {
        writeln!(
            out,
            "explored {} cases ({} crash-free runs + {} crash points, over {combos} scenario x device-model combinations of {} scenarios and {} behaviours, and {} multi-device lifecycles) on {}",
            summary.cases,
            combos + summary.device_scenarios.len(),
            summary.crash_points,
            scenarios.len(),
            behaviours.len(),
            summary.device_scenarios.len(),
            summary.profile
        )?;
        for d in &summary.device_scenarios {
            writeln!(
                out,
                "multi-device lifecycle {}: {} crash points, {} violations",
                d.scenario,
                d.crash_points,
                d.violations.len()
            )?;
        }
        writeln!(
            out,
            "runs ending with the device quarantined: {}",
            summary.quarantined_runs
        )?;
        writeln!(
            out,
            "crashes between map_pirq and recording its pirq, quarantined until the owner went, as designed: {}",
            summary.lost_map_quarantines
        )?;
        writeln!(out, "invariant violations: {}", summary.violations.len())?;
        for v in summary.violations.iter().take(20) {
            writeln!(
                out,
                "  {}  (replay: ptguard explore --policy {} --replay {})",
                v.what,
                args.policy.name(),
                v.seed
            )?;
        }
        Ok(())
    })?;
    if !summary.violations.is_empty() {
        anyhow::bail!("{} invariant violations", summary.violations.len());
    }
    Ok(())
}

fn parse_seed(s: &str) -> anyhow::Result<(String, DmBehaviour, Option<u64>)> {
    let parts: Vec<&str> = s.split('/').collect();
    let [scn, dm, k] = parts.as_slice() else {
        anyhow::bail!("replay seed {s:?}: expected SCENARIO/BEHAVIOUR/CRASH-POINT");
    };
    let b = DmBehaviour::ALL
        .into_iter()
        .find(|b| b.name() == *dm)
        .ok_or_else(|| anyhow::anyhow!("replay seed {s:?}: unknown behaviour {dm:?}"))?;
    let k = if *k == "none" {
        None
    } else {
        Some(
            k.parse()
                .map_err(|_| anyhow::anyhow!("replay seed {s:?}: bad crash point {k:?}"))?,
        )
    };
    Ok((scn.to_string(), b, k))
}
