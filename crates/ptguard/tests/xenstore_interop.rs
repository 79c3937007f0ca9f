//! Interop: `ptguard xenstored` driven by Debian's xenstore-utils (Xen 4.17's own
//! libxenstore clients) and by our client, against the same running server.
//!
//! CI installs xenstore-utils; elsewhere, if the tools are missing, the test says so and is
//! skipped — unless `CI` is set, where a missing tool is a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xenstore::{Access, Perm, PermList, TxId, XsClient};

fn tools_present() -> bool {
    let present = Command::new("xenstore-read")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "xenstore-utils is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: xenstore-utils not installed (apt-get install xenstore-utils)");
    }
    present
}

struct Daemon {
    child: Child,
    rundir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let rundir = dir.path().join("run");
        let child = Command::new(env!("CARGO_BIN_EXE_ptguard"))
            .args(["xenstored", "--rundir"])
            .arg(&rundir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ptguard xenstored");
        let sock = rundir.join("socket");
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            rundir,
            _dir: dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.rundir.join("socket")
    }

    fn tool(&self, name: &str, args: &[&str]) -> Output {
        Command::new(name)
            .args(args)
            .env("XENSTORED_RUNDIR", &self.rundir)
            .env_remove("XENSTORED_PATH")
            .output()
            .unwrap_or_else(|e| panic!("running {name}: {e}"))
    }

    fn ok(&self, name: &str, args: &[&str]) -> String {
        let o = self.tool(name, args);
        assert!(
            o.status.success(),
            "{name} {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// SIGTERM, then the daemon must exit 0 and remove its socket.
    fn stop(mut self) {
        let pid = self.child.id() as i32;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "xenstored exited with {s}");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!self.socket().exists(), "socket left behind");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
#[cfg_attr(
    missing_xenstore_utils,
    ignore = "needs Debian's xenstore-utils (apt-get install xenstore-utils)"
)]
fn debian_xenstore_utils_against_ptguard_xenstored() {
    if !tools_present() {
        return;
    }
    let d = Daemon::start();
    let mut ours = XsClient::connect(d.socket()).unwrap();

    // write / read, both directions
    d.ok(
        "xenstore-write",
        &["/interop/a", "hello", "/interop/b", "world"],
    );
    assert_eq!(d.ok("xenstore-read", &["/interop/a"]), "hello\n");
    assert_eq!(ours.read(TxId::NONE, "/interop/b").unwrap(), b"world");
    ours.write(TxId::NONE, "/interop/c/deep", b"from-rust")
        .unwrap();
    assert_eq!(d.ok("xenstore-read", &["/interop/c/deep"]), "from-rust\n");
    // implicit parent has an empty value
    assert_eq!(d.ok("xenstore-read", &["/interop/c"]), "\n");

    // exists: 0 for present, non-zero for absent
    assert!(d.tool("xenstore-exists", &["/interop/a"]).status.success());
    assert!(!d
        .tool("xenstore-exists", &["/interop/nope"])
        .status
        .success());
    let missing = d.tool("xenstore-read", &["/interop/nope"]);
    assert!(!missing.status.success());

    // list keeps creation order; ls shows values
    assert_eq!(
        lines(&d.ok("xenstore-list", &["/interop"])),
        vec!["a", "b", "c"]
    );
    let ls = d.ok("xenstore-ls", &["/interop"]);
    assert!(ls.contains("a = \"hello\""), "{ls}");
    assert!(ls.contains("deep = \"from-rust\""), "{ls}");

    // chmod, seen by our client and by xenstore-ls -p
    d.ok("xenstore-chmod", &["/interop/a", "n0", "r5"]);
    assert_eq!(
        ours.get_perms(TxId::NONE, "/interop/a").unwrap(),
        PermList::from_vec(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 5)]).unwrap()
    );
    let lsp = d.ok("xenstore-ls", &["-p", "/interop"]);
    assert!(lsp.contains("(n0,r5)"), "{lsp}");
    ours.set_perms(
        TxId::NONE,
        "/interop/b",
        &PermList::from_vec(vec![Perm::new(Access::Both, 3)]).unwrap(),
    )
    .unwrap();
    assert!(d.ok("xenstore-ls", &["-p", "/interop"]).contains("(b3)"));

    // rm (recursive)
    d.ok("xenstore-rm", &["/interop/c"]);
    assert!(ours
        .read_optional(TxId::NONE, "/interop/c/deep")
        .unwrap()
        .is_none());
    assert_eq!(lines(&d.ok("xenstore-list", &["/interop"])), vec!["a", "b"]);

    // A directory longer than one payload: libxenstore falls back to DIRECTORY_PART.
    ours.transaction(|c, tx| -> Result<(), xenstore::XenstoreError> {
        for i in 0..600 {
            c.write(tx, &format!("/interop/big/entry-number-{i:04}"), b"")?;
        }
        Ok(())
    })
    .unwrap();
    let big = d.ok("xenstore-list", &["/interop/big"]);
    let names = lines(&big);
    assert_eq!(names.len(), 600);
    assert_eq!(names[0], "entry-number-0000");
    assert_eq!(names[599], "entry-number-0599");
    assert_eq!(
        ours.directory(TxId::NONE, "/interop/big").unwrap().len(),
        600
    );

    // watch: the initial event, then one per change, from another process
    let mut watch = Command::new("xenstore-watch")
        .args(["-n", "3", "/interop/w"])
        .env("XENSTORED_RUNDIR", &d.rundir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim_end(), "/interop/w", "initial event");
    ours.write(TxId::NONE, "/interop/w/x", b"1").unwrap();
    ours.rm(TxId::NONE, "/interop/w").unwrap();
    let mut rest = String::new();
    for _ in 0..2 {
        out.read_line(&mut rest).unwrap();
    }
    assert_eq!(lines(&rest), vec!["/interop/w/x", "/interop/w"]);
    assert!(watch.wait().unwrap().success());

    d.stop();
}

#[test]
fn self_test_reports_each_answer_as_json_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let rundir = dir.path().join("rd");
    let out = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["xenstored", "--rundir"])
        .arg(&rundir)
        .args(["--self-test", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10);
    let answer = |req: &str| {
        steps
            .iter()
            .find(|s| s["request"].as_str().unwrap().starts_with(req))
            .unwrap()["answer"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(answer("READ /ptguard/selftest/hello"), "\"world\"");
    assert_eq!(answer("TRANSACTION"), "EAGAIN");
    assert_eq!(answer("READ /ptguard/selftest/tx"), "ENOENT");
    assert_eq!(answer("SET_PERMS"), "n0,r5");
    assert!(
        !rundir.join("socket").exists(),
        "socket removed on shutdown"
    );
}

#[test]
fn bad_command_line_exits_2_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_ptguard"))
        .args(["xenstored"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rundir"));
}
