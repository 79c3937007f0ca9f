//! The in-process xenstored answers as the socket server does: replies, watch events routed
//! to the right connection, transaction conflicts, permissions per domain.

use xenstore::local::LocalXenstore;
use xenstore::store::Quotas;
use xenstore::{ErrorCode, TxId};

#[test]
fn clients_share_one_store_with_watches_and_conflicts() {
    let xs = LocalXenstore::new(Quotas::default());
    let mut a = xs.connect(0);
    let mut b = xs.connect(0);
    b.watch("/ptguard", "tok").unwrap();
    let first = b.next_event(None).unwrap().unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        ("/ptguard", "tok")
    );
    a.write(TxId::NONE, "/ptguard/device/x/state", b"attached")
        .unwrap();
    let e = b
        .next_event(Some(std::time::Duration::ZERO))
        .unwrap()
        .unwrap();
    assert_eq!(e.path, "/ptguard/device/x/state");
    assert!(b
        .next_event(Some(std::time::Duration::ZERO))
        .unwrap()
        .is_none());

    let t1 = a.transaction_start().unwrap();
    let t2 = b.transaction_start().unwrap();
    a.read(t1, "/ptguard/device/x/state").unwrap();
    b.read(t2, "/ptguard/device/x/state").unwrap();
    a.write(t1, "/ptguard/device/x/state", b"tearing-down")
        .unwrap();
    b.write(t2, "/ptguard/device/x/state", b"attached").unwrap();
    a.transaction_end(t1, true).unwrap();
    let e = b.transaction_end(t2, true).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Eagain));
    assert_eq!(
        a.read_string(TxId::NONE, "/ptguard/device/x/state")
            .unwrap(),
        "tearing-down"
    );

    // A guest connection cannot read dom0's nodes.
    xs.introduce_domain(5);
    let mut guest = xs.connect(5);
    let e = guest
        .read(TxId::NONE, "/ptguard/device/x/state")
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Eacces));
    drop(guest);
    xs.release_domain(5);
}
