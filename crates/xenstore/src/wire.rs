//! The Xenstore wire format of `xen/io/xs_wire.h` (Xen 4.17): the 16-byte little-endian
//! header, operation codes, error names, size limits and an incremental frame decoder.

use std::fmt;

/// Bytes in a message header: four little-endian `uint32`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;

/// `enum xsd_sockmsg_type`. Code 20 (`XS_RESTRICT`) was removed from Xen and is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Op {
    /// `XS_CONTROL`, alias `XS_DEBUG`.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

/// `XS_TYPE_COUNT`: one past the highest code.
pub const TYPE_COUNT: u32 = 23;
/// `XS_INVALID`: guaranteed never to be a valid type.
pub const INVALID_TYPE: u32 = 0xffff;

impl Op {
    /// Every operation of Xen 4.17, in code order.
    pub const ALL: [Op; 22] = [
        Op::Control,
        Op::Directory,
        Op::Read,
        Op::GetPerms,
        Op::Watch,
        Op::Unwatch,
        Op::TransactionStart,
        Op::TransactionEnd,
        Op::Introduce,
        Op::Release,
        Op::GetDomainPath,
        Op::Write,
        Op::Mkdir,
        Op::Rm,
        Op::SetPerms,
        Op::WatchEvent,
        Op::Error,
        Op::IsDomainIntroduced,
        Op::Resume,
        Op::SetTarget,
        Op::ResetWatches,
        Op::DirectoryPart,
    ];

    pub fn from_code(code: u32) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| *op as u32 == code)
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    /// The name `xs_wire.h` gives the operation, without the `XS_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Op::Control => "CONTROL",
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            Op::GetPerms => "GET_PERMS",
            Op::Watch => "WATCH",
            Op::Unwatch => "UNWATCH",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::Introduce => "INTRODUCE",
            Op::Release => "RELEASE",
            Op::GetDomainPath => "GET_DOMAIN_PATH",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
            Op::WatchEvent => "WATCH_EVENT",
            Op::Error => "ERROR",
            Op::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            Op::Resume => "RESUME",
            Op::SetTarget => "SET_TARGET",
            Op::ResetWatches => "RESET_WATCHES",
            Op::DirectoryPart => "DIRECTORY_PART",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The errors of `xsd_errors[]`, sent on the wire by name (`E<NAME>\0` in an `ERROR` reply).
/// There is no `EQUOTA`: quota overruns answer `ENOSPC` or `E2BIG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Einval,
    Eacces,
    Eexist,
    Eisdir,
    Enoent,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    Eagain,
    Eisconn,
    E2big,
    Eperm,
}

impl ErrorCode {
    /// In the order of `xsd_errors[]`.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::Einval,
        ErrorCode::Eacces,
        ErrorCode::Eexist,
        ErrorCode::Eisdir,
        ErrorCode::Enoent,
        ErrorCode::Enomem,
        ErrorCode::Enospc,
        ErrorCode::Eio,
        ErrorCode::Enotempty,
        ErrorCode::Enosys,
        ErrorCode::Erofs,
        ErrorCode::Ebusy,
        ErrorCode::Eagain,
        ErrorCode::Eisconn,
        ErrorCode::E2big,
        ErrorCode::Eperm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Einval => "EINVAL",
            ErrorCode::Eacces => "EACCES",
            ErrorCode::Eexist => "EEXIST",
            ErrorCode::Eisdir => "EISDIR",
            ErrorCode::Enoent => "ENOENT",
            ErrorCode::Enomem => "ENOMEM",
            ErrorCode::Enospc => "ENOSPC",
            ErrorCode::Eio => "EIO",
            ErrorCode::Enotempty => "ENOTEMPTY",
            ErrorCode::Enosys => "ENOSYS",
            ErrorCode::Erofs => "EROFS",
            ErrorCode::Ebusy => "EBUSY",
            ErrorCode::Eagain => "EAGAIN",
            ErrorCode::Eisconn => "EISCONN",
            ErrorCode::E2big => "E2BIG",
            ErrorCode::Eperm => "EPERM",
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The Linux errno value of the same name.
    pub fn errno(self) -> i32 {
        match self {
            ErrorCode::Einval => 22,
            ErrorCode::Eacces => 13,
            ErrorCode::Eexist => 17,
            ErrorCode::Eisdir => 21,
            ErrorCode::Enoent => 2,
            ErrorCode::Enomem => 12,
            ErrorCode::Enospc => 28,
            ErrorCode::Eio => 5,
            ErrorCode::Enotempty => 39,
            ErrorCode::Enosys => 38,
            ErrorCode::Erofs => 30,
            ErrorCode::Ebusy => 16,
            ErrorCode::Eagain => 11,
            ErrorCode::Eisconn => 106,
            ErrorCode::E2big => 7,
            ErrorCode::Eperm => 1,
        }
    }

    /// The payload of the `ERROR` reply carrying this code.
    pub fn payload(self) -> Vec<u8> {
        let mut p = self.name().as_bytes().to_vec();
        p.push(0);
        p
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `struct xsd_sockmsg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw type code; may be one no [`Op`] names (the server answers those with `ENOSYS`).
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// One whole message: header fields and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn new(op: Op, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            msg_type: op.code(),
            req_id,
            tx_id,
            payload,
        }
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.msg_type)
    }

    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            // Payloads are bounded by PAYLOAD_MAX wherever they are built; saturate rather
            // than wrap if a caller ever exceeds u32.
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        }
    }

    /// Header followed by payload, as sent on the socket.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
    }

    /// An `ERROR` reply to this request.
    pub fn error_reply(&self, code: ErrorCode) -> Message {
        Message {
            msg_type: Op::Error.code(),
            req_id: self.req_id,
            tx_id: self.tx_id,
            payload: code.payload(),
        }
    }

    /// A reply of the request's own type.
    pub fn reply(&self, payload: Vec<u8>) -> Message {
        Message {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            payload,
        }
    }

    /// If this is an `ERROR` reply, the code it carries (`None` if the name is unknown).
    pub fn error_code(&self) -> Option<ErrorCode> {
        if self.msg_type != Op::Error.code() {
            return None;
        }
        let name = self.payload.strip_suffix(b"\0").unwrap_or(&self.payload);
        std::str::from_utf8(name)
            .ok()
            .and_then(ErrorCode::from_name)
    }
}

/// Why a byte stream is not a valid sequence of frames. Xenstored closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload length {len} exceeds XENSTORE_PAYLOAD_MAX ({PAYLOAD_MAX})")]
    PayloadTooLong { len: u32 },
}

/// Incremental decoder: feed bytes as they arrive, take whole messages out.
#[derive(Default, Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let avail = &self.buf[self.start..];
        let Some(head) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head);
        if header.len as usize > PAYLOAD_MAX {
            return Err(FrameError::PayloadTooLong { len: header.len });
        }
        let total = HEADER_LEN + header.len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }))
    }
}

/// Splits a payload made of NUL-terminated strings. `None` if the payload does not end
/// with a NUL (a string without its terminator) — xenstored answers such requests `EINVAL`.
pub fn split_strings(payload: &[u8]) -> Option<Vec<&[u8]>> {
    let body = payload.strip_suffix(b"\0")?;
    Some(body.split(|b| *b == 0).collect())
}

/// Joins strings into a payload, each followed by a NUL.
pub fn join_strings<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_match_xs_wire_h() {
        assert_eq!(Op::Control.code(), 0);
        assert_eq!(Op::SetTarget.code(), 19);
        assert_eq!(Op::from_code(20), None, "XS_RESTRICT was removed");
        assert_eq!(Op::ResetWatches.code(), 21);
        assert_eq!(Op::DirectoryPart.code(), 22);
        assert_eq!(Op::from_code(TYPE_COUNT), None);
        assert_eq!(Op::from_code(INVALID_TYPE), None);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
    }

    #[test]
    fn decoder_handles_split_and_coalesced_frames() {
        let a = Message::new(Op::Read, 7, 0, b"/a\0".to_vec()).encode();
        let b = Message::new(Op::Write, 8, 3, b"/b\0xy".to_vec()).encode();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = FrameDecoder::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
        }
        let m1 = d.next_message().unwrap().unwrap();
        let m2 = d.next_message().unwrap().unwrap();
        assert_eq!(m1.op(), Some(Op::Read));
        assert_eq!(m2.payload, b"/b\0xy");
        assert_eq!(m2.tx_id, 3);
        assert_eq!(d.next_message().unwrap(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn decoder_rejects_oversized_len_before_reading_payload() {
        let h = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        };
        let mut d = FrameDecoder::new();
        d.push(&h.encode());
        assert_eq!(
            d.next_message(),
            Err(FrameError::PayloadTooLong { len: 4097 })
        );
    }

    #[test]
    fn split_requires_terminator() {
        assert_eq!(split_strings(b"a\0b\0"), Some(vec![&b"a"[..], &b"b"[..]]));
        assert_eq!(split_strings(b"a\0b"), None);
        assert_eq!(split_strings(b""), None);
        assert_eq!(split_strings(b"\0"), Some(vec![&b""[..]]));
    }
}
