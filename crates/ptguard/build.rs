//! Tests that need Debian's xenstore-utils or pciutils are reported as ignored where those
//! are missing (build-support/prerequisites.rs).
include!("../../build-support/prerequisites.rs");

fn main() {
    check_prerequisites(&[
        (
            "missing_xenstore_utils",
            &["/usr/bin/xenstore-read", "/usr/bin/xenstore-ls"],
        ),
        ("missing_pciutils", &["/usr/bin/lspci"]),
    ]);
}
