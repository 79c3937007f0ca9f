//! The libxenctrl tests compile a C program against Debian's libxenctrl; they are reported
//! as ignored where libxen-dev is missing (build-support/prerequisites.rs).
include!("../../build-support/prerequisites.rs");

fn main() {
    check_prerequisites(&[("missing_libxenctrl", &["/usr/include/xenctrl.h"])]);
}
