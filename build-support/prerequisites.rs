// Marks the tests whose Debian tools are missing on this machine as ignored, with the
// package to install, so `cargo test` reports them as ignored instead of passed. Under CI
// (`CI` set) nothing is marked: the tests run and fail loudly if `.ci/run` did not
// install what they need.
use std::path::Path;

fn check_prerequisites(prerequisites: &[(&str, &[&str])]) {
    println!("cargo::rerun-if-env-changed=CI");
    // Installing a package rewrites dpkg's status file: look again then.
    println!("cargo::rerun-if-changed=/var/lib/dpkg/status");
    let ci = std::env::var_os("CI").is_some();
    for (cfg, paths) in prerequisites {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        for p in *paths {
            println!("cargo::rerun-if-changed={p}");
        }
        if !ci && !paths.iter().all(|p| Path::new(p).exists()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
