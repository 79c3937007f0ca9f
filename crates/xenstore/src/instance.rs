//! One daemon per unix socket: a lock file beside the socket, held for the daemon's life,
//! and removal of only the socket this daemon created.
//!
//! Without it a second daemon silently replaced the first one's socket, and the first one's
//! exit then deleted the second's.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a socket could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "{socket} is already served by another instance (pid {pid}, lock {lock}); stop it first"
    )]
    Held {
        socket: PathBuf,
        lock: PathBuf,
        pid: String,
    },
    #[error("cannot use the lock file {lock}: {source}")]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The claim on one socket path. Dropping it removes the socket if it is still the one this
/// process bound, and releases the lock.
#[derive(Debug)]
pub struct SocketClaim {
    _lock: File,
    socket: PathBuf,
    identity: Option<(u64, u64)>,
}

/// `SOCKET.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl SocketClaim {
    /// Takes the lock beside `socket` (creating its directory) and writes our pid into it.
    /// A stale socket file with no live holder may then be replaced.
    pub fn acquire(socket: &Path) -> Result<SocketClaim, ClaimError> {
        let lock = lock_path(socket);
        let io = |source| ClaimError::Io {
            lock: lock.clone(),
            source,
        };
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(ClaimError::Held {
                    socket: socket.to_path_buf(),
                    lock: lock.clone(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(SocketClaim {
            _lock: file,
            socket: socket.to_path_buf(),
            identity: None,
        })
    }

    /// Records the socket just bound, so that only it is removed at the end.
    pub fn bound(&mut self) {
        self.identity = std::fs::symlink_metadata(&self.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SocketClaim {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.identity {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Binds a unix socket at `socket` that only this process's user can connect to, whatever
/// the umask: it is bound inside a fresh directory of mode 0700, made 0600, and only then
/// renamed into place, so there is no moment at which another user could connect.
pub fn bind_owner_only(socket: &Path) -> std::io::Result<mio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = socket.parent().unwrap_or(Path::new("."));
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "socket".into());
    let private = parent.join(format!(".{name}.{}.bind", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let result = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let staged = private.join("s");
        let listener = mio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, socket)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Whether the peer of a unix-socket connection runs as this process's effective user
/// (`SO_PEERCRED`); a peer the kernel cannot name is not.
pub fn peer_is_owner(stream: &impl std::os::fd::AsFd) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials)
        .map(|c| c.uid() == nix::unistd::geteuid().as_raw())
        .unwrap_or(false)
}
