//! The daemon's side of ptguard: which host a command or the daemon acts on ([`host`]:
//! the real dom0 through privcmd, sysfs and xenstored's socket, or a simulated host kept
//! in a directory), the locks by which commands and the daemon take turns on the ledger,
//! the dry-run wrapper that records instead of acting, what libxl recorded of a domain it
//! built ([`libxl_record`], read only), and the broker's socket ([`broker`]) on which
//! device models ask for their bindings. It owns I/O and
//! scheduling, never policy: what a teardown does, who may bind what and when a device is
//! clean are the engine's, the protocol's shapes are `wire`'s, and command-line parsing
//! and printing are the binary's. It must not depend on the test lab.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;

pub mod broker;
pub mod host;
pub mod libxl_record;
pub mod metrics;
pub mod sim_platform;
pub mod watch;

pub use host::HostBusy;

/// What went wrong opening, locking, saving or serving a host, with the file or socket it
/// happened at.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Busy(#[from] HostBusy),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// "open", "write", "replace", "remove stale", "listen on", ...
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("{} holds no simulated host; create one with `ptguard --host sim:{} sim init`", dir.display(), dir.display())]
    NoSimHost { dir: PathBuf },
    #[error("{} already holds a simulated host (remove the directory to start over)", dir.display())]
    SimHostExists { dir: PathBuf },
    #[error("{} is not a simulated host state: {source}", path.display())]
    SimStateCorrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode the simulated host's state: {0}")]
    SimStateEncode(serde_json::Error),
    /// A bug: the daemon asked for the engine between rounds, without the host's lock.
    #[error("internal error: the ledger was about to be changed without the host's lock (ptguard let go of it between rounds); nothing was changed")]
    LedgerNotLocked,
    #[error("the host's state lock is poisoned (a thread panicked holding it)")]
    Poisoned,
    #[error("cannot start the broker: {what}: {source}")]
    BrokerStart {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Claim(#[from] xenstore::instance::ClaimError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Xen(#[from] xen::XenError),
    #[error(transparent)]
    Xenstore(#[from] xenstore::XenstoreError),
}

impl DaemonError {
    /// Another ptguard process holds the host: the daemon tries again next round.
    pub fn is_busy(&self) -> bool {
        matches!(self, DaemonError::Busy(_))
    }

    fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> DaemonError {
        let path = path.to_path_buf();
        move |source| DaemonError::Io { what, path, source }
    }
}
