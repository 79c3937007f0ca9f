//! What the command-line tests share: running the built `ptguard` against a simulated
//! host directory.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::{Command, Output};

/// `ptguard --host sim:DIR ARGS...` with `env` set, its log quiet unless `env` says.
pub fn ptguard_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ptguard"));
    c.arg("--host")
        .arg(format!("sim:{}", dir.display()))
        .args(args)
        .env("PTGUARD_LOG", "error");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn ptguard(dir: &Path, args: &[&str]) -> Output {
    ptguard_env(dir, args, &[])
}

/// Its standard output; the test fails with what it printed when it did not succeed.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let o = ptguard(dir, args);
    assert!(
        o.status.success(),
        "ptguard {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
