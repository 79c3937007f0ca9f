//! `ptguard xenstored`: the embedded Xenstore server in the foreground.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;
use xenstore::server::{self, ServerConfig};
use xenstore::{Access, Perm, PermList, TxId, XsClient};

use crate::cli::XenstoredArgs;
use crate::output::emit;

pub fn run(args: XenstoredArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = ServerConfig::new(&args.rundir);
    let handle = server::start(config)
        .with_context(|| format!("cannot start xenstored in {}", args.rundir.display()))?;
    if args.self_test {
        let report = self_test(handle.socket_path())?;
        handle.shutdown()?;
        emit(out, args.json, &report, |out| {
            writeln!(out, "embedded xenstored at {}", report.socket)?;
            for step in &report.steps {
                writeln!(out, "  {:<44} -> {}", step.request, step.answer)?;
            }
            writeln!(
                out,
                "all {} requests answered as xenstored answers them",
                report.steps.len()
            )?;
            Ok(())
        })?;
        return Ok(());
    }
    let trigger = handle.shutdown_trigger();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install SIGTERM/SIGINT handlers")?;
    let signal_thread = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(target: "xenstored", signal = sig, "shutting down");
            trigger.trigger();
        }
    });
    eprintln!(
        "ptguard xenstored: listening on {} (XENSTORED_RUNDIR={}); SIGTERM or Ctrl-C stops it",
        handle.socket_path().display(),
        args.rundir.display()
    );
    handle.join().context("xenstored loop failed")?;
    drop(signal_thread);
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct SelfTestStep {
    pub request: String,
    pub answer: String,
}

#[derive(Debug, Serialize)]
pub struct SelfTestReport {
    pub socket: String,
    pub steps: Vec<SelfTestStep>,
}

/// Drives a server through its socket with the client and records what it answered.
pub fn self_test(socket: &std::path::Path) -> anyhow::Result<SelfTestReport> {
    let mut c = XsClient::connect(socket)?;
    let mut w = c.reconnect()?;
    let mut steps = Vec::new();
    let mut log = |request: &str, answer: String| {
        steps.push(SelfTestStep {
            request: request.to_string(),
            answer,
        })
    };
    w.watch("/ptguard", "selftest")?;
    let first = w.next_event(Some(std::time::Duration::from_secs(5)))?;
    log(
        "WATCH /ptguard selftest",
        format!("OK, then event {:?}", first.map(|e| e.path)),
    );
    c.write(TxId::NONE, "/ptguard/selftest/hello", b"world")?;
    log("WRITE /ptguard/selftest/hello world", "OK".into());
    let v = c.read_string(TxId::NONE, "/ptguard/selftest/hello")?;
    log("READ /ptguard/selftest/hello", format!("{v:?}"));
    let ev = w.next_event(Some(std::time::Duration::from_secs(5)))?;
    log(
        "(watch event)",
        format!("{:?}", ev.map(|e| (e.path, e.token))),
    );
    let d = c.directory(TxId::NONE, "/ptguard/selftest")?;
    log("DIRECTORY /ptguard/selftest", format!("{d:?}"));
    let perms = PermList::from_vec(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 5)])
        .context("building a permission list")?;
    c.set_perms(TxId::NONE, "/ptguard/selftest/hello", &perms)?;
    let got = c.get_perms(TxId::NONE, "/ptguard/selftest/hello")?;
    log("SET_PERMS n0 r5; GET_PERMS", got.to_string());
    let tx = c.transaction_start()?;
    c.write(tx, "/ptguard/selftest/tx", b"1")?;
    c.write(TxId::NONE, "/ptguard/selftest/hello", b"changed")?;
    let _ = c.read(tx, "/ptguard/selftest/hello")?;
    let conflict = c.transaction_end(tx, true);
    log(
        "TRANSACTION with a conflicting write",
        match conflict {
            Err(e) => e.code().map(|c| c.name()).unwrap_or("?").to_string(),
            Ok(()) => "committed (unexpected)".into(),
        },
    );
    let missing = c.read(TxId::NONE, "/ptguard/selftest/tx");
    log(
        "READ /ptguard/selftest/tx (aborted write)",
        match missing {
            Err(e) => e
                .code()
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| e.to_string()),
            Ok(v) => format!("{:?} (unexpected)", String::from_utf8_lossy(&v)),
        },
    );
    let path = c.get_domain_path(7)?;
    log("GET_DOMAIN_PATH 7", path);
    c.rm(TxId::NONE, "/ptguard/selftest")?;
    log("RM /ptguard/selftest", "OK".into());
    Ok(SelfTestReport {
        socket: socket.display().to_string(),
        steps,
    })
}
