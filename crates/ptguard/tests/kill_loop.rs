//! Issue 11 (4): one SIGKILL split the simulated hypervisor from the ledger (two files saved
//! one after the other). A bounded kill loop: random ptguard commands on one simulated
//! host, each SIGKILLed at a random instant; after every kill the hypervisor and the ledger
//! agree, and `watch --once` leaves nothing half done (doctor clean).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon::host::{HostCtx, HostSpec};
use engine::DeviceState;
use xen::DomId;

fn ptguard(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .arg("--host")
        .arg(format!("sim:{}", dir.display()))
        .args(args)
        .env("PTGUARD_LOG", "off")
        .output()
        .unwrap()
}

/// A small deterministic generator (the seed is printed with any failure).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What the hypervisor and the ledger say of each device must agree.
fn agree(dir: &Path) -> Result<(), String> {
    let mut ctx =
        HostCtx::open(&HostSpec::Sim(dir.to_path_buf()), true).map_err(|e| e.to_string())?;
    let recs = ctx
        .engine()
        .map_err(|e| e.to_string())?
        .list()
        .map_err(|e| e.to_string())?;
    let host = ctx
        .sim
        .as_ref()
        .map(|(h, _, _)| h.clone())
        .ok_or("not a sim host")?;
    for r in recs {
        let r = r.map_err(|e| format!("corrupt ledger: {e}"))?;
        let xen_owner = host.with_world(|w| w.device(r.sbdf).map(|d| d.xen.owner));
        let ok = match r.state {
            DeviceState::Assignable => xen_owner == Some(DomId::IO),
            DeviceState::Attached => xen_owner == r.owner,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{}: ledger {} (owner {:?}) but Xen's owner is {:?}",
                r.sbdf, r.state, r.owner, xen_owner
            ));
        }
    }
    Ok(())
}

#[test]
fn random_kills_never_split_the_hypervisor_from_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("host");
    for args in [
        vec!["sim", "init", "--xen", "4.17", "--pciback", "new"],
        vec!["assignable-add", "0000:03:00.0"],
        vec!["assignable-add", "0000:04:00.0"],
        vec!["sim", "create", "g1"],
        vec!["sim", "create", "g2"],
    ] {
        assert!(ptguard(&d, &args).status.success(), "{args:?}");
    }
    let commands: [&[&str]; 7] = [
        &["attach", "0000:03:00.0", "1"],
        &["attach", "0000:04:00.0", "2"],
        &["attach", "0000:03:00.0", "2"],
        &["detach", "0000:03:00.0"],
        &["detach", "0000:04:00.0"],
        &["sim", "start", "1", "0000:03:00.0"],
        &["watch", "--once"],
    ];
    let seed = 0x5eed_u64;
    let mut rng = Lcg(seed);
    let host = format!("sim:{}", d.display());
    let rounds = 120;
    let mut killed_mid_run = 0;
    // Kills are timed against how long a command takes on this machine (the last round's
    // `watch --once`), not a fixed span: on a fast machine a fixed span would let most
    // commands finish before the kill, on a slow one it would kill them all at start.
    let mut span = {
        let t = std::time::Instant::now();
        assert!(ptguard(&d, &["watch", "--once"]).status.success());
        t.elapsed()
    };
    for round in 0..rounds {
        let cmd = commands[rng.next(commands.len() as u64) as usize];
        let mut child = Command::new(env!("CARGO_BIN_EXE_ptguard"))
            .args(["--host", &host])
            .args(cmd)
            .env("PTGUARD_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let span_us = u64::try_from(span.as_micros()).unwrap_or(u64::MAX).max(1);
        std::thread::sleep(Duration::from_micros(rng.next(span_us)));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let why = |what: String| format!("seed {seed:#x} round {round} ({cmd:?}): {what}");
        if let Err(e) = agree(&d) {
            panic!("{}", why(e));
        }
        let t = std::time::Instant::now();
        let w = ptguard(&d, &["watch", "--once"]);
        span = t.elapsed();
        assert!(
            w.status.success(),
            "{}",
            why(String::from_utf8_lossy(&w.stderr).into())
        );
        let doc = ptguard(&d, &["doctor"]);
        assert!(
            doc.status.success(),
            "{}",
            why(String::from_utf8_lossy(&doc.stdout).into())
        );
    }
    // The loop must really have interrupted commands, not only waited for them.
    assert!(
        killed_mid_run > rounds / 4,
        "only {killed_mid_run} kills landed mid-run"
    );
}
