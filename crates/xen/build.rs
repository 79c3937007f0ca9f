//! The ABI layout test needs Xen's public headers; it is reported as ignored where
//! libxen-dev is missing (build-support/prerequisites.rs).
include!("../../build-support/prerequisites.rs");

fn main() {
    check_prerequisites(&[(
        "missing_libxen_dev",
        &["/usr/include/xen/domctl.h", "/usr/include/xen/io/xs_wire.h"],
    )]);
}
