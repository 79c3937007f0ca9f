//! Tests that need Debian's xenstore-utils or pciutils are reported as ignored where those
//! are missing (build-support/prerequisites.rs).
include!("../../build-support/prerequisites.rs");

fn main() {
    println!("cargo::rerun-if-changed=../../.git/HEAD");
    println!("cargo::rerun-if-changed=../../.git/refs/heads");
    println!("cargo::rustc-env=PTGUARD_GIT_COMMIT={}", git_commit());
    check_prerequisites(&[
        (
            "missing_xenstore_utils",
            &["/usr/bin/xenstore-read", "/usr/bin/xenstore-ls"],
        ),
        ("missing_pciutils", &["/usr/bin/lspci"]),
    ]);
}

/// `ptguard --version` names the commit it was built from (or "unknown" outside git).
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
