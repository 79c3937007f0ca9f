//! The client finds the daemon where libxenstore does. Its own test binary (process)
//! because it changes environment variables.

use std::path::PathBuf;

use xenstore::client::default_socket_path;

#[test]
fn xenstored_path_then_rundir_then_default() {
    std::env::remove_var("XENSTORED_PATH");
    std::env::remove_var("XENSTORED_RUNDIR");
    assert_eq!(
        default_socket_path(),
        PathBuf::from("/run/xenstored/socket")
    );
    std::env::set_var("XENSTORED_RUNDIR", "/tmp/rd");
    assert_eq!(default_socket_path(), PathBuf::from("/tmp/rd/socket"));
    std::env::set_var("XENSTORED_PATH", "/tmp/exact.sock");
    assert_eq!(default_socket_path(), PathBuf::from("/tmp/exact.sock"));
    // A missing daemon is a Connect error naming the path and the variables to set.
    let err = match xenstore::XsClient::open() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to a socket that does not exist"),
    };
    assert!(err.contains("/tmp/exact.sock"), "{err}");
    assert!(err.contains("XENSTORED_RUNDIR"), "{err}");
}
