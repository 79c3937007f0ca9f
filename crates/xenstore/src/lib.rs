//! Xenstore, the database ptguard keeps its binding ledger in.
//!
//! This crate owns the wire protocol of `xen/io/xs_wire.h` ([`wire`]), path and permission
//! rules ([`path`], [`perms`]), a blocking client ([`client::XsClient`]) that talks to any
//! xenstored — the real one on a Xen host or ours — and an embedded xenstored: a sans-I/O
//! state machine ([`store::Store`]: tree, transactions with conflict detection, watches,
//! permissions, quotas) served over a unix socket by [`server`] so that Xen's own
//! `xenstore-*` tools can talk to it. It knows nothing about PCI, Xen hypercalls or ptguard's
//! ledger, and must not: it is a general Xenstore.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod instance;
pub mod local;
pub mod path;
pub mod perms;
pub mod server;
pub mod store;
pub mod wire;

use std::path::PathBuf;

pub use client::{TxId, WatchEvent, XsClient};
pub use perms::{Access, Perm, PermList};
pub use wire::{ErrorCode, Op};

/// Everything that can go wrong talking to or running a xenstored.
#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    /// The daemon answered with an error reply.
    #[error("xenstore {op} {path:?}: {code}")]
    Remote {
        op: Op,
        path: String,
        code: ErrorCode,
    },
    #[error("cannot connect to xenstored at {path}: {source} (is xenstored running? set XENSTORED_RUNDIR or XENSTORED_PATH)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("xenstore I/O during {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("xenstored closed the connection during {context}")]
    Closed { context: String },
    #[error("malformed reply to {op}: {reason}")]
    Protocol { op: Op, reason: String },
    #[error(transparent)]
    Frame(#[from] wire::FrameError),
    #[error("{op} {path:?}: request payload of {len} bytes exceeds the 4096-byte limit")]
    TooLarge { op: Op, path: String, len: usize },
    #[error(transparent)]
    Claim(#[from] instance::ClaimError),
    #[error("transaction still conflicting after {attempts} attempts")]
    TooManyConflicts { attempts: usize },
    #[error("this connection was not opened from a socket path and cannot be reopened")]
    NotReconnectable,
    #[error("the embedded xenstored has stopped")]
    ServerGone,
}

impl XenstoreError {
    /// The Xenstore error code, if the daemon answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            XenstoreError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}
