//! `ptguard watch`: the daemon. Follows `@releaseDomain`, finishes interrupted teardowns and
//! quarantines whose owner is gone, and serves the broker protocol (docs/broker.md) on a
//! unix socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use engine::BindRequest;
use serde::{Deserialize, Serialize};
use xen::Pirq;

use crate::cli::{Cli, WatchArgs};
use crate::hostctx::HostCtx;

/// One broker request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BrokerRequest {
    Bind(BindRequest),
    Unbind {
        #[serde(flatten)]
        req: BindRequest,
        pirq: i32,
    },
}

/// One broker reply line.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pirq: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pid libxl records for a domain's device model, if any.
fn device_model_pid(ctx: &mut HostCtx, domid: xen::DomId) -> Option<i32> {
    let path = format!("/local/domain/{}/image/device-model-pid", domid.0);
    let v = ctx
        .xs
        .read_optional(xenstore::TxId::NONE, &path)
        .ok()
        .flatten()?;
    String::from_utf8_lossy(&v).trim().parse().ok()
}

/// Answers one request line from a peer whose pid the socket reported (`None`: unknown).
pub fn handle_line(ctx: &mut HostCtx, line: &str, peer_pid: Option<i32>) -> BrokerReply {
    let fail = |e: String| BrokerReply {
        ok: false,
        pirq: None,
        error: Some(e),
    };
    if line.len() > 4096 {
        return fail("request longer than 4096 bytes".into());
    }
    let req: BrokerRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return fail(format!("malformed request: {e}")),
    };
    let claimed = match &req {
        BrokerRequest::Bind(b) => b.domid,
        BrokerRequest::Unbind { req, .. } => req.domid,
    };
    // A device model may only speak for its own domain: when libxl recorded the model's pid,
    // the connecting process must be it.
    if let (Some(peer), Some(dm)) = (peer_pid, device_model_pid(ctx, claimed)) {
        if peer != dm {
            return fail(format!(
                "request for {claimed} from pid {peer}, but {claimed}'s device model is pid {dm}"
            ));
        }
    }
    let r = match req {
        BrokerRequest::Bind(b) => ctx.engine().bind(&b).map(|p| Some(p.0)),
        BrokerRequest::Unbind { req, pirq } => ctx.engine().unbind(&req, Pirq(pirq)).map(|_| None),
    };
    let _ = ctx.save();
    match r {
        Ok(pirq) => BrokerReply {
            ok: true,
            pirq,
            error: None,
        },
        Err(e) => fail(e.to_string()),
    }
}

fn serve_conn(ctx: &Mutex<HostCtx>, stream: UnixStream) {
    let peer_pid =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .map(|c| c.pid());
    let Ok(read) = stream.try_clone() else { return };
    let mut write = stream;
    for line in BufReader::new(read.take(1 << 20)).lines() {
        let Ok(line) = line else { return };
        let reply = match ctx.lock() {
            Ok(mut c) => handle_line(&mut c, &line, peer_pid),
            Err(_) => return,
        };
        let Ok(text) = serde_json::to_string(&reply) else {
            return;
        };
        if writeln!(write, "{text}").is_err() {
            return;
        }
    }
}

/// Serves the broker socket until `stop` is set.
pub fn serve_broker(
    ctx: Arc<Mutex<HostCtx>>,
    path: &Path,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Device models run as root in dom0; nobody else may ask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    // One thread per device model; requests are serialised by the lock.
                    let ctx = ctx.clone();
                    std::thread::spawn(move || serve_conn(&ctx, s));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }))
}

/// The daemon's loop: on every `@releaseDomain` (or every 500 ms when `poll_always`), finish
/// the teardowns of devices whose owner is gone and retry quarantines; `on_done` sees each
/// outcome. Returns when `stop` is set.
pub fn watch_loop(
    ctx: &Mutex<HostCtx>,
    watcher: &mut xenstore::XsClient,
    stop: &AtomicBool,
    poll_always: bool,
    mut on_done: impl FnMut(&(pci::Sbdf, engine::Outcome)),
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let ev = watcher.next_event(Some(Duration::from_millis(500)))?;
        if ev.is_none() && !poll_always {
            // An in-process watcher returns at once when nothing is queued.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut c = ctx
            .lock()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
        for done in c.engine().recover()? {
            tracing::warn!("{}: {:?}", done.0, done.1);
            on_done(&done);
        }
        c.save()?;
        drop(c);
        if ev.is_none() {
            // Nothing queued in-process: wait a little before polling again.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

pub fn run(cli: &Cli, args: &WatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut ctx = HostCtx::open(&cli.host, cli.dry_run)?;
    let mut e = ctx.engine();
    let done = e.recover()?;
    let notices = std::mem::take(&mut e.notices);
    drop(e);
    ctx.save()?;
    for n in notices {
        writeln!(out, "NOTICE: {n}")?;
    }
    for (s, o) in &done {
        writeln!(
            out,
            "{s}: {}",
            match o {
                engine::Outcome::Assignable { epoch } =>
                    format!("teardown finished; clean and assignable (epoch {epoch})"),
                engine::Outcome::Quarantined { reason } => format!("QUARANTINED: {reason}"),
                engine::Outcome::Failed { reason } => format!("FAILED: {reason}"),
            }
        )?;
    }
    if args.once {
        let n = ctx.engine().list()?.len();
        writeln!(
            out,
            "ledger: {n} devices; {} teardowns finished",
            done.len()
        )?;
        return crate::commands::lifecycle::print_log(cli, &ctx, out);
    }
    let mut watcher = match &ctx.sim {
        Some((_, xs, _)) => xs.connect(0),
        None => xenstore::XsClient::open()?,
    };
    watcher.watch("@releaseDomain", "ptguard")?;
    let ctx = Arc::new(Mutex::new(ctx));
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let broker = serve_broker(ctx.clone(), &args.broker_socket, stop.clone())?;
    tracing::info!(
        "watching @releaseDomain; broker on {}",
        args.broker_socket.display()
    );
    let poll_always = matches!(&cli.host, crate::hostctx::HostSpec::Sim(_));
    watch_loop(&ctx, &mut watcher, &stop, poll_always, |_| {})?;
    let _ = broker.join();
    let _ = std::fs::remove_file(&args.broker_socket);
    Ok(())
}
