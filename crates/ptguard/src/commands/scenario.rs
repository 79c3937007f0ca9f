//! `ptguard scenario`: the command line of the scenario matrix (`lab::matrix`): lifecycle
//! scenarios × device-model behaviours × teardown policies on the simulated host, side by
//! side.

use std::io::Write;

use sim::dm::DmBehaviour;

use crate::cli::{ScenarioArgs, SimProfileArgs};
use crate::rig::{Policy, Scenario};

pub use lab::matrix::{run_matrix, run_matrix_traced, sweep_worse_than_legacy, Row};

/// The scenarios named on the command line (built-in names or files), or all built-ins.
pub fn load_scenarios(names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    Ok(lab::matrix::load_scenarios(names)?)
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
        .flat_map(|p| {
            run_matrix_traced(
                &scenarios,
                &behaviours,
                &policies,
                (p.xen(), p.pciback()),
                trace,
            )
        })
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
