//! The broker's line protocol (`docs/broker.md`): one JSON request per line from a device
//! model (qemu-xen through the preload library, or a ptguard-aware one), one JSON reply
//! line back. This crate owns the shapes of those lines and the stable reply codes, and
//! nothing else: it holds no policy (who may ask, what is granted: the daemon and the
//! engine decide), opens no socket and is shared by the daemon and the preload library so
//! the two cannot drift apart. It must stay small enough to link into a process it is
//! loaded into (qemu).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;
use std::str::FromStr;

use pci::Sbdf;
use serde::{Deserialize, Serialize};
use xen::{DomId, IrqSource};

/// The longest request line the broker reads (without its newline).
pub const MAX_LINE: usize = 4096;

/// What a ptguard-aware device model asks to bind: its INTx line or one MSI-X entry of one
/// device of its domain, for the assignment (`epoch`) it was started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRequest {
    pub domid: DomId,
    pub sbdf: Sbdf,
    /// The epoch the device model was started with.
    pub epoch: u64,
    /// `{"kind":"msix","entry":N,"table_base":A}` or `{"kind":"intx","gsi":N,"guest":..}`.
    pub kind: IrqSource,
    pub gvec: u8,
    pub gflags: u32,
    pub gtable: u64,
}

/// One request line. Every request may carry the `token` `ptguard attach` printed for the
/// device's assignment; without one, the broker serves only the process the toolstack
/// recorded as the domain's device model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Bind {
        #[serde(flatten)]
        req: BindRequest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Unbind {
        #[serde(flatten)]
        req: BindRequest,
        pirq: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// `xc_physdev_map_pirq_msi` of a stock device model (the preload library).
    MapPirqMsi {
        domid: DomId,
        sbdf: Sbdf,
        entry: u16,
        table_base: u64,
        /// The pirq the guest chose (pirq routing); absent: Xen chooses.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pirq: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// `xc_domain_update_msi_irq`.
    UpdateMsiIrq {
        domid: DomId,
        pirq: i32,
        gvec: u8,
        gflags: u32,
        gtable: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// `xc_domain_unbind_msi_irq`.
    UnbindMsiIrq {
        domid: DomId,
        pirq: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// `xc_physdev_unmap_pirq`.
    UnmapPirq {
        domid: DomId,
        pirq: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

/// Why a request line was not taken as a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_LINE`].
    TooLong { limit: usize },
    /// Not JSON, or not one of the requests (the parser's words).
    Malformed { detail: String },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { limit } => write!(f, "a line longer than {limit} bytes"),
            LineError::Malformed { detail } => write!(f, "not a protocol line: {detail}"),
        }
    }
}

impl std::error::Error for LineError {}

impl Request {
    /// Reads one request line (without its newline).
    pub fn parse_line(line: &str) -> Result<Request, LineError> {
        if line.len() > MAX_LINE {
            return Err(LineError::TooLong { limit: MAX_LINE });
        }
        serde_json::from_str(line).map_err(|e| LineError::Malformed {
            detail: e.to_string(),
        })
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        line_of(self)
    }

    /// The request's `op`, as on the wire (metrics label it so).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Bind { .. } => "bind",
            Request::Unbind { .. } => "unbind",
            Request::MapPirqMsi { .. } => "map-pirq-msi",
            Request::UpdateMsiIrq { .. } => "update-msi-irq",
            Request::UnbindMsiIrq { .. } => "unbind-msi-irq",
            Request::UnmapPirq { .. } => "unmap-pirq",
        }
    }

    /// The domain the request speaks for.
    pub fn domid(&self) -> DomId {
        match self {
            Request::Bind { req, .. } | Request::Unbind { req, .. } => req.domid,
            Request::MapPirqMsi { domid, .. }
            | Request::UpdateMsiIrq { domid, .. }
            | Request::UnbindMsiIrq { domid, .. }
            | Request::UnmapPirq { domid, .. } => *domid,
        }
    }

    /// The token the request carries, if any.
    pub fn token(&self) -> Option<&str> {
        self.token_slot().as_deref()
    }

    /// The same request carrying `token` (the preload library adds the one its device
    /// model was started with).
    pub fn with_token(mut self, token: Option<String>) -> Request {
        *self.token_slot_mut() = token;
        self
    }

    fn token_slot(&self) -> &Option<String> {
        match self {
            Request::Bind { token, .. }
            | Request::Unbind { token, .. }
            | Request::MapPirqMsi { token, .. }
            | Request::UpdateMsiIrq { token, .. }
            | Request::UnbindMsiIrq { token, .. }
            | Request::UnmapPirq { token, .. } => token,
        }
    }

    fn token_slot_mut(&mut self) -> &mut Option<String> {
        match self {
            Request::Bind { token, .. }
            | Request::Unbind { token, .. }
            | Request::MapPirqMsi { token, .. }
            | Request::UpdateMsiIrq { token, .. }
            | Request::UnbindMsiIrq { token, .. }
            | Request::UnmapPirq { token, .. } => token,
        }
    }
}

/// The stable reason a request was not done: the refusals the engine gives (their meaning
/// never changes, a device model may match on them), the pirq budget, and `error` for a
/// failure of the host (a hypercall, Xenstore). A code this build does not know reads as
/// [`ReplyCode::Unknown`], so an older library facing a newer daemon still fails closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyCode {
    NotManaged,
    NotAttached,
    AttachInProgress,
    TearingDown,
    WrongDomain,
    StaleIncarnation,
    RequesterFinished,
    StaleEpoch,
    EntryBeyondTable,
    WrongTableBase,
    NotDeviceGsi,
    BadGuestIntx,
    AlreadyBound,
    NoSuchBinding,
    ProtectedDomain,
    NotDeviceModel,
    CredentialRequired,
    CredentialRejected,
    PirqInUse,
    Malformed,
    TooLong,
    /// The domain has no free pirq (`extra_guest_irqs`): the call fails with `ENOSPC`.
    PirqBudget,
    /// The host failed; the reply's `errno` says how, when Xen answered one.
    Error,
    #[serde(other)]
    Unknown,
}

impl ReplyCode {
    /// Every code this build knows, in protocol order (`Unknown` last).
    pub const ALL: [ReplyCode; 24] = [
        ReplyCode::NotManaged,
        ReplyCode::NotAttached,
        ReplyCode::AttachInProgress,
        ReplyCode::TearingDown,
        ReplyCode::WrongDomain,
        ReplyCode::StaleIncarnation,
        ReplyCode::RequesterFinished,
        ReplyCode::StaleEpoch,
        ReplyCode::EntryBeyondTable,
        ReplyCode::WrongTableBase,
        ReplyCode::NotDeviceGsi,
        ReplyCode::BadGuestIntx,
        ReplyCode::AlreadyBound,
        ReplyCode::NoSuchBinding,
        ReplyCode::ProtectedDomain,
        ReplyCode::NotDeviceModel,
        ReplyCode::CredentialRequired,
        ReplyCode::CredentialRejected,
        ReplyCode::PirqInUse,
        ReplyCode::Malformed,
        ReplyCode::TooLong,
        ReplyCode::PirqBudget,
        ReplyCode::Error,
        ReplyCode::Unknown,
    ];

    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyCode::NotManaged => "not-managed",
            ReplyCode::NotAttached => "not-attached",
            ReplyCode::AttachInProgress => "attach-in-progress",
            ReplyCode::TearingDown => "tearing-down",
            ReplyCode::WrongDomain => "wrong-domain",
            ReplyCode::StaleIncarnation => "stale-incarnation",
            ReplyCode::RequesterFinished => "requester-finished",
            ReplyCode::StaleEpoch => "stale-epoch",
            ReplyCode::EntryBeyondTable => "entry-beyond-table",
            ReplyCode::WrongTableBase => "wrong-table-base",
            ReplyCode::NotDeviceGsi => "not-device-gsi",
            ReplyCode::BadGuestIntx => "bad-guest-intx",
            ReplyCode::AlreadyBound => "already-bound",
            ReplyCode::NoSuchBinding => "no-such-binding",
            ReplyCode::ProtectedDomain => "protected-domain",
            ReplyCode::NotDeviceModel => "not-device-model",
            ReplyCode::CredentialRequired => "credential-required",
            ReplyCode::CredentialRejected => "credential-rejected",
            ReplyCode::PirqInUse => "pirq-in-use",
            ReplyCode::Malformed => "malformed",
            ReplyCode::TooLong => "too-long",
            ReplyCode::PirqBudget => "pirq-budget",
            ReplyCode::Error => "error",
            ReplyCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplyCode {
    type Err = std::convert::Infallible;
    /// Any text: a code this build does not know is [`ReplyCode::Unknown`].
    fn from_str(s: &str) -> Result<ReplyCode, Self::Err> {
        Ok(ReplyCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ReplyCode::Unknown))
    }
}

/// One reply line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pirq: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReplyCode>,
    /// What was wrong, in words that disclose nothing of the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `error` and `pirq-budget`: the errno Xen answered, so a library standing in for
    /// libxenctrl can return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

impl Reply {
    /// A request done; `pirq` for a map or a bind.
    pub fn done(pirq: Option<i32>) -> Reply {
        Reply {
            ok: true,
            pirq,
            ..Reply::default()
        }
    }

    /// A request not done, for `code`, in `text`.
    pub fn failed(code: ReplyCode, text: String, errno: Option<i32>) -> Reply {
        Reply {
            ok: false,
            code: Some(code),
            error: Some(text),
            errno,
            ..Reply::default()
        }
    }

    /// Reads one reply line.
    pub fn parse_line(line: &str) -> Result<Reply, LineError> {
        serde_json::from_str(line.trim_end()).map_err(|e| LineError::Malformed {
            detail: e.to_string(),
        })
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> String {
        line_of(self)
    }

    /// The code of a reply that is not `ok` (`error` when a broker sent none).
    pub fn failure_code(&self) -> Option<ReplyCode> {
        (!self.ok).then(|| self.code.unwrap_or(ReplyCode::Error))
    }
}

fn line_of<T: Serialize>(v: &T) -> String {
    // Serialising these types cannot fail (no maps with non-string keys, no custom
    // serialisers that error); were it to, the line would be a malformed request the
    // broker refuses, never a panic in the process the library is loaded into.
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_documented_lines_parse() {
        let bind = r#"{"op":"bind","domid":5,"sbdf":"0000:03:00.0","epoch":3,"kind":{"kind":"msix","entry":2,"table_base":4026531840},"gvec":64,"gflags":0,"gtable":0}"#;
        let Ok(Request::Bind { req, token: None }) = Request::parse_line(bind) else {
            panic!("bind did not parse");
        };
        assert_eq!(req.domid, DomId(5));
        assert_eq!(
            req.kind,
            IrqSource::Msix {
                entry: 2,
                table_base: 0xf000_0000
            }
        );
        let map = r#"{"op":"map-pirq-msi","domid":5,"sbdf":"0000:03:00.0","entry":0,"table_base":274877906944,"token":"t"}"#;
        let r = Request::parse_line(map).unwrap();
        assert_eq!(r.domid(), DomId(5));
        assert_eq!(r.token(), Some("t"));
        let reply = Reply::parse_line(
            r#"{"ok":false,"code":"stale-epoch","error":"epoch 2 is not the device's current assignment"}"#,
        )
        .unwrap();
        assert_eq!(reply.failure_code(), Some(ReplyCode::StaleEpoch));
    }

    #[test]
    fn op_names_are_the_wire_tags() {
        let bind = r#"{"op":"bind","domid":5,"sbdf":"0000:03:00.0","epoch":3,"kind":{"kind":"msix","entry":2,"table_base":4026531840},"gvec":64,"gflags":0,"gtable":0}"#;
        let lines = [
            bind.to_string(),
            bind.replace(r#""op":"bind""#, r#""op":"unbind","pirq":7"#),
            r#"{"op":"map-pirq-msi","domid":5,"sbdf":"0000:03:00.0","entry":0,"table_base":0}"#
                .into(),
            r#"{"op":"update-msi-irq","domid":5,"gvec":64,"pirq":7,"gflags":0,"gtable":0}"#.into(),
            r#"{"op":"unbind-msi-irq","domid":5,"pirq":7}"#.into(),
            r#"{"op":"unmap-pirq","domid":5,"pirq":7}"#.into(),
        ];
        for l in &lines {
            let r = Request::parse_line(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let v: serde_json::Value = serde_json::from_str(r.to_line().trim_end()).unwrap();
            assert_eq!(v["op"], r.op(), "{l}");
        }
    }

    #[test]
    fn a_code_this_build_does_not_know_fails_closed() {
        let r = Reply::parse_line(r#"{"ok":false,"code":"from-the-future"}"#).unwrap();
        assert_eq!(r.failure_code(), Some(ReplyCode::Unknown));
        assert_eq!(
            "from-the-future".parse::<ReplyCode>(),
            Ok(ReplyCode::Unknown)
        );
        // A reply without ok is not a reply.
        assert!(Reply::parse_line(r#"{"pirq":3}"#).is_err());
        // A failed reply without a code is a host error.
        let r = Reply::parse_line(r#"{"ok":false}"#).unwrap();
        assert_eq!(r.failure_code(), Some(ReplyCode::Error));
    }

    #[test]
    fn every_code_round_trips_by_name_and_by_serde() {
        for c in ReplyCode::ALL {
            assert_eq!(c.as_str().parse::<ReplyCode>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ReplyCode>(&json).unwrap(), c);
        }
    }

    #[test]
    fn lines_that_are_not_requests_are_told_apart() {
        let long = format!(
            r#"{{"op":"unmap-pirq","domid":1,"pirq":1,"token":"{}"}}"#,
            "x".repeat(MAX_LINE)
        );
        assert_eq!(
            Request::parse_line(&long),
            Err(LineError::TooLong { limit: MAX_LINE })
        );
        for bad in [
            "",
            "{}",
            r#"{"op":"unmap-pirq","domid":70000,"pirq":1}"#,
            r#"{"op":"map-pirq-msi","domid":1,"sbdf":"0000:03:00.8","entry":0,"table_base":1}"#,
            r#"{"op":"reboot-host"}"#,
        ] {
            assert!(
                matches!(Request::parse_line(bad), Err(LineError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    fn request() -> impl Strategy<Value = Request> {
        let token = proptest::option::of("[a-z0-9]{1,12}");
        (
            any::<u16>(),
            any::<i32>(),
            any::<u8>(),
            any::<u32>(),
            any::<u64>(),
            token,
            0u8..4,
        )
            .prop_map(|(d, pirq, gvec, gflags, gtable, token, op)| {
                let domid = DomId(d);
                let sbdf = Sbdf::new(0, 3, 0, 0).unwrap();
                let req = BindRequest {
                    domid,
                    sbdf,
                    epoch: gtable,
                    kind: IrqSource::Msix {
                        entry: u16::from(gvec),
                        table_base: gtable,
                    },
                    gvec,
                    gflags,
                    gtable,
                };
                match op {
                    0 => Request::Bind { req, token },
                    1 => Request::Unbind { req, pirq, token },
                    2 => Request::MapPirqMsi {
                        domid,
                        sbdf,
                        entry: u16::from(gvec),
                        table_base: gtable,
                        pirq: (pirq >= 0).then_some(pirq),
                        token,
                    },
                    _ => Request::UpdateMsiIrq {
                        domid,
                        pirq,
                        gvec,
                        gflags,
                        gtable,
                        token,
                    },
                }
            })
    }

    proptest! {
        #[test]
        fn every_request_survives_its_line(r in request()) {
            let line = r.to_line();
            prop_assert!(line.ends_with('\n'));
            prop_assert_eq!(Request::parse_line(line.trim_end()), Ok(r));
        }

        #[test]
        fn no_line_panics_the_parser(s in ".{0,200}") {
            let _ = Request::parse_line(&s);
            let _ = Reply::parse_line(&s);
        }
    }
}
