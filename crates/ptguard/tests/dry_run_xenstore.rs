//! A dry run on a real host works on an in-process copy of the ledger: the real xenstored
//! (here the embedded one over its socket) is read, never written.

use daemon::host::copy_to_local;
use xenstore::server::{start, ServerConfig};
use xenstore::{Access, Perm, PermList, TxId, XsClient};

#[test]
fn the_copy_holds_the_ledger_and_writes_stay_local() {
    let tmp = tempfile::tempdir().unwrap();
    let h = start(ServerConfig::new(tmp.path())).unwrap();
    let mut real = XsClient::connect(h.socket_path()).unwrap();
    real.write(
        TxId::NONE,
        "/ptguard/device/0000-03-00-0/state",
        b"attached",
    )
    .unwrap();
    real.write(
        TxId::NONE,
        "/ptguard/device/0000-03-00-0/binding/msix-0",
        b"state=bound pirq=1023 gsi=0 gvec=0x40 gflags=0x0 gtable=0x0",
    )
    .unwrap();
    real.set_perms(
        TxId::NONE,
        "/ptguard",
        &PermList::from_vec(vec![Perm::new(Access::None, 0)]).unwrap(),
    )
    .unwrap();
    real.write(TxId::NONE, "/unrelated", b"x").unwrap();
    let mut copy = copy_to_local(&mut real, &["/ptguard", "/local/domain/0/backend/pci"]).unwrap();
    assert_eq!(
        copy.read_string(TxId::NONE, "/ptguard/device/0000-03-00-0/state")
            .unwrap(),
        "attached"
    );
    assert!(copy
        .read_string(TxId::NONE, "/ptguard/device/0000-03-00-0/binding/msix-0")
        .unwrap()
        .contains("pirq=1023"));
    assert_eq!(
        copy.get_perms(TxId::NONE, "/ptguard").unwrap().to_string(),
        "n0"
    );
    assert!(
        copy.read_optional(TxId::NONE, "/unrelated")
            .unwrap()
            .is_none(),
        "only the asked subtrees"
    );
    copy.write(
        TxId::NONE,
        "/ptguard/device/0000-03-00-0/state",
        b"tearing-down",
    )
    .unwrap();
    copy.rm(TxId::NONE, "/ptguard/device/0000-03-00-0/binding")
        .unwrap();
    assert_eq!(
        real.read_string(TxId::NONE, "/ptguard/device/0000-03-00-0/state")
            .unwrap(),
        "attached"
    );
    assert!(real
        .read_optional(TxId::NONE, "/ptguard/device/0000-03-00-0/binding/msix-0")
        .unwrap()
        .is_some());
    h.shutdown().unwrap();
}
