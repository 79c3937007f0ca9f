//! `ptguard scenario`: lifecycle scenarios × device-model behaviours × teardown policies on
//! the simulated host, side by side.

use std::io::Write;

use serde::Serialize;
use sim::dm::DmBehaviour;

use crate::cli::{ScenarioArgs, SimProfileArgs};
use crate::rig::{Policy, Rig, RunReport, Scenario, BUILTIN_SCENARIOS};

/// Loads the scenarios named on the command line (built-in names or files), or all built-ins.
pub fn load_scenarios(names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    let builtin = || {
        BUILTIN_SCENARIOS
            .iter()
            .map(|(f, t)| Scenario::parse(t).map_err(|e| anyhow::anyhow!("built-in {f}: {e}")))
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
            anyhow::anyhow!("{n}: not a built-in scenario (reboot, reassign, hot-unplug) and not a readable file: {e}")
        })?;
        out.push(Scenario::parse(&text).map_err(|e| anyhow::anyhow!("{n}: {e}"))?);
    }
    Ok(out)
}

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

pub fn run_matrix(
    scenarios: &[Scenario],
    behaviours: &[DmBehaviour],
    policies: &[Policy],
    profile: &SimProfileArgs,
) -> Vec<Row> {
    run_matrix_traced(scenarios, behaviours, policies, profile, false)
}

pub fn run_matrix_traced(
    scenarios: &[Scenario],
    behaviours: &[DmBehaviour],
    policies: &[Policy],
    profile: &SimProfileArgs,
    trace: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in scenarios {
        for b in behaviours {
            for p in policies {
                let mut rig = Rig::new(*p, *b, profile.xen(), profile.pciback(), s.vectors);
                if trace {
                    rig.trace();
                }
                let report = rig.run(s);
                rows.push(Row {
                    profile: format!("{}/{}", profile.xen().name(), profile.pciback().name()),
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

pub fn run(args: ScenarioArgs, trace: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let scenarios = load_scenarios(&args.scenario)?;
    let behaviours = if args.dm.is_empty() {
        DmBehaviour::ALL.to_vec()
    } else {
        args.dm.clone()
    };
    let policies = if args.policy.is_empty() {
        Policy::ALL.to_vec()
    } else {
        args.policy.clone()
    };
    let profiles = if args.all_profiles {
        SimProfileArgs::all()
    } else {
        vec![args.profile.clone()]
    };
    let rows: Vec<Row> = profiles
        .iter()
        .flat_map(|p| run_matrix_traced(&scenarios, &behaviours, &policies, p, trace))
        .collect();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    for p in &profiles {
        writeln!(
            out,
            "simulated host: {} with {} (device {})",
            p.xen().name(),
            p.pciback().name(),
            crate::rig::scenario_device()
        )?;
        writeln!(
            out,
            "{:<11} {:<13} {:<24} {:<12} {:>6} {:>6} {:>11} {:>10} {:>9}",
            "scenario",
            "device model",
            "policy",
            "next guest",
            "leaked",
            "forced",
            "quarantined",
            "hypercalls",
            "xs ops/tx"
        )?;
        let tag = format!("{}/{}", p.xen().name(), p.pciback().name());
        for r in rows.iter().filter(|r| r.profile == tag) {
            writeln!(
                out,
                "{:<11} {:<13} {:<24} {:<12} {:>6} {:>6} {:>11} {:>10} {:>9}",
                r.scenario,
                r.device_model.name(),
                r.policy.name(),
                if r.works { "works" } else { "NO IRQs" },
                r.report.leaked_bindings,
                if r.report.forced_mask { "yes" } else { "no" },
                if r.report.quarantined { "yes" } else { "no" },
                r.report.hypercalls,
                if matches!(r.policy, Policy::Ptguard | Policy::Sweep) {
                    format!(
                        "{}/{}",
                        r.report.xenstore_requests, r.report.xenstore_transactions
                    )
                } else {
                    "-".to_string()
                },
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "(xs ops/tx: ptguard's Xenstore requests/transactions; libxl's own Xenstore traffic is not simulated)"
    )?;
    let broken: Vec<&Row> = rows.iter().filter(|r| !r.works).collect();
    let ours = |p: Policy| matches!(p, Policy::Ptguard | Policy::Sweep);
    let ptguard_bad = rows
        .iter()
        .filter(|r| ours(r.policy) && (!r.report.violations.is_empty()))
        .count();
    let sweep_worse = sweep_worse_than_legacy(&rows).len();
    writeln!(
        out,
        "{} runs; next guest without interrupts: {} ({} under ptguard, where a quarantined device is kept from guests on purpose; {} under sweep); sweep rows worse than legacy (next guest broken, or more leaked bindings): {sweep_worse}; ptguard invariant violations: {ptguard_bad}",
        rows.len(),
        broken.len(),
        broken.iter().filter(|r| r.policy == Policy::Ptguard).count(),
        broken.iter().filter(|r| r.policy == Policy::Sweep).count(),
    )?;
    if trace {
        for r in &rows {
            writeln!(
                out,
                "\n== trace: {} {} {} {} ==",
                r.profile,
                r.scenario,
                r.device_model.name(),
                r.policy.name()
            )?;
            for l in &r.report.trace {
                writeln!(out, "  {l}")?;
            }
        }
    }
    if args.notices {
        for r in &rows {
            for n in r.report.notices.iter().chain(&r.report.violations) {
                writeln!(
                    out,
                    "  [{} {} {}] {n}",
                    r.scenario,
                    r.device_model.name(),
                    r.policy.name()
                )?;
            }
        }
    }
    Ok(())
}
