//! Without Xen, opening the real backend fails fast and names the missing device node.

use xen::privcmd::Privcmd;
use xen::XenError;

#[test]
fn missing_privcmd_is_a_clear_error() {
    if std::path::Path::new("/dev/xen/privcmd").exists() {
        eprintln!("SKIPPED: this machine runs on Xen");
        return;
    }
    let e = Privcmd::open().err().expect("no Xen here");
    assert!(matches!(e, XenError::NoXen { .. }));
    let msg = e.to_string();
    assert!(msg.contains("/dev/xen/privcmd"), "{msg}");
    assert!(msg.contains("--host sim:DIR"), "{msg}");
}

#[test]
fn a_file_that_is_not_privcmd_is_refused_by_the_version_check() {
    // /dev/null opens but rejects the ioctl: the error names XENVER_version and the errno.
    let e = Privcmd::open_at("/dev/null".as_ref(), "/nonexistent".as_ref())
        .err()
        .expect("/dev/null is not privcmd");
    assert!(e.to_string().contains("XENVER_version"), "{e}");
    assert!(e.errno().is_some());
}
