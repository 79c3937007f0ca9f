//! `ptguard explore`: the command line of the crash explorer (`lab::explore`), which runs
//! every crash point of ptguard × every device-model behaviour × the lifecycle scenarios with
//! the invariants of docs/design.md checked, and prints what it found.

use std::io::{IsTerminal, Write};

use lab::explore::{explore, ExplorePlan, Seed};
use sim::dm::DmBehaviour;

use crate::cli::ExploreArgs;
use crate::commands::scenario::load_scenarios;
use crate::output::emit;

pub use lab::explore::{lost_map_by_design, ExploreSummary, Violation};

pub fn run(args: ExploreArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let scenarios = load_scenarios(&args.scenario)?;
    let behaviours = if args.dm.is_empty() {
        DmBehaviour::ALL.to_vec()
    } else {
        args.dm.clone()
    };
    let replay = args.replay.as_deref().map(str::parse::<Seed>).transpose()?;
    let plan = ExplorePlan {
        scenarios: &scenarios,
        behaviours: &behaviours,
        policy: args.policy,
        xen: args.profile.xen(),
        pciback: args.profile.pciback(),
        with_device_scenarios: replay.is_none() && args.dm.is_empty() && args.scenario.is_empty(),
        replay,
    };
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let mut replayed = Vec::new();
    let summary = explore(
        &plan,
        |r| {
            let mut lines = vec![match r.run.crashed_at {
                Some(at) => format!("replay {}: crashed at {at}", r.seed),
                None => format!("replay {}: no crash (the point is past the end)", r.seed),
            }];
            lines.push(format!("  end state: {}", r.run.end_state));
            lines.push(format!("  baseline:  {}", r.baseline.end_state));
            lines.extend(r.run.notices.iter().map(|n| format!("  notice: {n}")));
            replayed.extend(lines);
        },
        |cases, violations| {
            if show_progress {
                eprint!("\rexplore: {cases} cases, {violations} violations");
            }
        },
    );
    if show_progress {
        eprintln!();
    }
    for l in &replayed {
        writeln!(out, "{l}")?;
    }
    emit(out, args.json, &summary, |out| {
        writeln!(
            out,
            "explored {} cases ({} crash-free runs + {} crash points, over {} scenario x device-model combinations of {} scenarios and {} behaviours, and {} multi-device lifecycles) on {}",
            summary.cases,
            summary.combinations + summary.device_scenarios.len() as u64,
            summary.crash_points,
            summary.combinations,
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
