//! `ptguard watch`: the daemon's command line. The rounds themselves are
//! [`daemon::watch`]; the broker's socket is [`daemon::broker`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pci::Sbdf;
use serde::Serialize;

use daemon::broker::{serve_broker, BrokerLimits, DaemonHost};
use daemon::host::HostSpec;
use daemon::metrics::MetricsFile;
use daemon::watch::{
    recover_pending, unless_busy, watch_loop, RoundPolicy, WatchMetrics, ADOPT_TOKEN,
};
use engine::Outcome;

use crate::cli::{Cli, WatchArgs};
use crate::output::emit;

/// What `watch --once` (and the start of `watch`) did.
#[derive(Serialize)]
struct Pending {
    notices: Vec<engine::Notice>,
    finished: Vec<Finished>,
    ledger_devices: usize,
}

#[derive(Serialize)]
struct Finished {
    sbdf: Sbdf,
    #[serde(flatten)]
    outcome: Outcome,
}

/// The broker socket: the one given, else beside a simulated host's state (never the real
/// host's `/run/ptguard/broker.sock` for a simulated host).
fn broker_socket(cli: &Cli, args: &WatchArgs) -> PathBuf {
    match (&args.broker_socket, &cli.host) {
        (Some(p), _) => p.clone(),
        (None, HostSpec::Sim(dir)) => dir.join("broker.sock"),
        (None, HostSpec::Real) => PathBuf::from(crate::cli::DEFAULT_BROKER_SOCKET),
    }
}

pub fn run(cli: &Cli, args: &WatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // At start too: another command's long hold delays the daemon, never stops it.
    let mut ctx = loop {
        if let Some(ctx) = unless_busy(cli.open_host())? {
            break ctx;
        }
    };
    // One device whose resumed teardown fails does not stop the daemon: the recovery
    // round quarantines it and reports it among the outcomes.
    let policy = RoundPolicy {
        adopt: !args.no_adopt,
        report_only: args.report_only,
    };
    let metrics = WatchMetrics {
        file: args.metrics_file.clone().map(|path| MetricsFile { path }),
        ..WatchMetrics::default()
    };
    let (done, notices) = recover_pending(&mut ctx, policy, true, &metrics.metrics)?;
    metrics.metrics.round("recover", daemon::watch::unix_now());
    ctx.save()?;
    let pending = Pending {
        notices,
        finished: done
            .into_iter()
            .map(|(sbdf, outcome)| Finished { sbdf, outcome })
            .collect(),
        ledger_devices: if args.once {
            ctx.engine()?.list()?.len()
        } else {
            0
        },
    };
    emit(out, args.json && args.once, &pending, |out| {
        for n in &pending.notices {
            writeln!(out, "NOTICE: {n}")?;
        }
        for f in &pending.finished {
            writeln!(
                out,
                "{}: {}",
                f.sbdf,
                crate::commands::lifecycle::outcome_text(&f.outcome)
            )?;
        }
        if args.once {
            writeln!(
                out,
                "ledger: {} devices; {} teardowns finished",
                pending.ledger_devices,
                pending.finished.len()
            )?;
        }
        Ok(())
    })?;
    if args.once {
        if let Some(file) = &metrics.file {
            let states = ctx.engine()?.list_heads()?.into_iter().flatten();
            metrics.metrics.devices(states.map(|r| r.state));
            file.write(&metrics.metrics.render())?;
        }
        return crate::commands::lifecycle::print_log(cli, &ctx, out);
    }
    out.flush()?;
    let socket = broker_socket(cli, args);
    let (host, mut watcher) = match &cli.host {
        HostSpec::Real => {
            let mut w = xenstore::XsClient::open()?;
            w.watch("@releaseDomain", "ptguard")?;
            if !args.no_adopt {
                // A toolstack giving a guest a device writes its PCI backend here.
                w.watch(engine::companion::TOOLSTACK_BACKENDS, ADOPT_TOKEN)?;
            }
            // A toolstack hook announcing an unplug (`hook pre-unplug`): the retry timer
            // must run until the unplug finishes or is reported as stalled.
            w.watch(engine::ledger::UNPLUGS, ADOPT_TOKEN)?;
            // The ledger lock is taken per piece of work from here on.
            let mut ctx = ctx;
            ctx.unlock();
            (DaemonHost::Held(Box::new(Mutex::new(ctx))), Some(w))
        }
        spec @ HostSpec::Sim(_) => {
            drop(ctx); // the directory stays free for other commands between rounds
            (DaemonHost::reopened(spec.clone(), cli.protected()), None)
        }
    };
    let host = Arc::new(host);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let broker = serve_broker(
        host.clone(),
        &socket,
        stop.clone(),
        BrokerLimits::default(),
        metrics.metrics.clone(),
    )?;
    tracing::info!(
        "watching @releaseDomain{}; broker on {}",
        if args.no_adopt {
            ""
        } else {
            " and the toolstack's PCI backends (companion mode)"
        },
        socket.display()
    );
    metrics.publish(&host);
    let r = watch_loop(&host, watcher.as_mut(), &stop, policy, &metrics, |_| {});
    stop.store(true, Ordering::Relaxed);
    broker.join();
    Ok(r?)
}
