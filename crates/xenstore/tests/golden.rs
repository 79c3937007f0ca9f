//! Golden byte-level tests: literal request frames in, literal reply frames out, for every
//! operation of the Xen 4.17 wire protocol. Type codes are written as numbers, not through
//! the crate's enum, so a wrong code in the enum fails here.

use xenstore::store::{Action, Store};
use xenstore::wire::FrameDecoder;

/// Builds a frame from literal parts: header words little-endian, then the payload.
fn frame(msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    for w in [msg_type, req_id, tx_id, payload.len() as u32] {
        f.extend_from_slice(&w.to_le_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Feeds raw bytes as connection `conn` and returns the raw bytes sent to each connection.
fn exchange(store: &mut Store, conn: u64, bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next_message().expect("well-formed test frame") {
        for a in store.handle(conn, m) {
            match a {
                Action::Send(c, m) => out.push((c, m.encode())),
                Action::Close(c) => out.push((c, b"<close>".to_vec())),
            }
        }
    }
    out
}

fn only_reply(store: &mut Store, conn: u64, bytes: &[u8]) -> Vec<u8> {
    let mut r = exchange(store, conn, bytes);
    assert_eq!(r.len(), 1, "expected exactly one message, got {r:?}");
    let (c, b) = r.remove(0);
    assert_eq!(c, conn);
    b
}

#[test]
fn header_layout_is_four_little_endian_words() {
    let mut s = Store::default();
    let c = s.connect(0);
    // WRITE (11), req_id 0x01020304, tx 0, len 7, "/a\0xyz\0" minus last NUL -> "/a\0xyzw"
    let req: [u8; 23] = [
        0x0b, 0x00, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00,
        0x00, b'/', b'a', 0x00, b'x', b'y', b'z', b'w',
    ];
    let reply = only_reply(&mut s, c, &req);
    let expect: [u8; 19] = [
        0x0b, 0x00, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x00, b'O', b'K', 0x00,
    ];
    assert_eq!(reply, expect);
    // READ (2) of it: the value comes back without a NUL added.
    let reply = only_reply(&mut s, c, &frame(2, 9, 0, b"/a\0"));
    assert_eq!(reply, frame(2, 9, 0, b"xyzw"));
}

#[test]
fn error_reply_is_type_16_with_the_errno_name() {
    let mut s = Store::default();
    let c = s.connect(0);
    let reply = only_reply(&mut s, c, &frame(2, 5, 0, b"/missing\0"));
    let expect: [u8; 23] = [
        0x10, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00,
        0x00, b'E', b'N', b'O', b'E', b'N', b'T', 0x00,
    ];
    assert_eq!(reply, expect);
}

#[test]
fn every_operation_request_and_reply() {
    let mut s = Store::default();
    let c = s.connect(0);
    let ok = |t: u32, r: u32| frame(t, r, 0, b"OK\0");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("WRITE", frame(11, 1, 0, b"/g/k\0v1"), ok(11, 1)),
        ("READ", frame(2, 2, 0, b"/g/k\0"), frame(2, 2, 0, b"v1")),
        ("MKDIR", frame(12, 3, 0, b"/g/d\0"), ok(12, 3)),
        ("MKDIR existing", frame(12, 4, 0, b"/g/k\0"), ok(12, 4)),
        (
            "DIRECTORY",
            frame(1, 5, 0, b"/g\0"),
            frame(1, 5, 0, b"k\0d\0"),
        ),
        (
            "DIRECTORY empty",
            frame(1, 6, 0, b"/g/d\0"),
            frame(1, 6, 0, b""),
        ),
        (
            "GET_PERMS",
            frame(3, 7, 0, b"/g/k\0"),
            frame(3, 7, 0, b"n0\0"),
        ),
        ("SET_PERMS", frame(14, 8, 0, b"/g/k\0r3\0b4\0"), ok(14, 8)),
        (
            "GET_PERMS after",
            frame(3, 9, 0, b"/g/k\0"),
            frame(3, 9, 0, b"r3\0b4\0"),
        ),
        (
            "SET_PERMS bad",
            frame(14, 10, 0, b"/g/k\0q3\0"),
            frame(16, 10, 0, b"EINVAL\0"),
        ),
        (
            "GET_DOMAIN_PATH",
            frame(10, 11, 0, b"12\0"),
            frame(10, 11, 0, b"/local/domain/12\0"),
        ),
        (
            "IS_DOMAIN_INTRODUCED 0",
            frame(17, 12, 0, b"0\0"),
            frame(17, 12, 0, b"T\0"),
        ),
        (
            "IS_DOMAIN_INTRODUCED 4",
            frame(17, 13, 0, b"4\0"),
            frame(17, 13, 0, b"F\0"),
        ),
        (
            "INTRODUCE",
            frame(8, 14, 0, b"4\x00123456\x001\x00"),
            ok(8, 14),
        ),
        (
            "IS_DOMAIN_INTRODUCED 4 now",
            frame(17, 15, 0, b"4\0"),
            frame(17, 15, 0, b"T\0"),
        ),
        ("RESUME", frame(18, 16, 0, b"4\0"), ok(18, 16)),
        (
            "RESUME unknown",
            frame(18, 17, 0, b"5\0"),
            frame(16, 17, 0, b"ENOENT\0"),
        ),
        (
            "INTRODUCE 5",
            frame(8, 18, 0, b"5\x00-1\x002\x00"),
            ok(8, 18),
        ),
        ("SET_TARGET", frame(19, 19, 0, b"5\x004\x00"), ok(19, 19)),
        ("RELEASE", frame(9, 20, 0, b"5\0"), ok(9, 20)),
        (
            "RELEASE again",
            frame(9, 21, 0, b"5\0"),
            frame(16, 21, 0, b"ENOENT\0"),
        ),
        ("RM", frame(13, 22, 0, b"/g/d\0"), ok(13, 22)),
        ("RM absent", frame(13, 23, 0, b"/g/d\0"), ok(13, 23)),
        (
            "RM absent parent",
            frame(13, 24, 0, b"/nope/d\0"),
            frame(16, 24, 0, b"ENOENT\0"),
        ),
        (
            "RM root",
            frame(13, 25, 0, b"/\0"),
            frame(16, 25, 0, b"EINVAL\0"),
        ),
        (
            "UNWATCH unknown",
            frame(5, 26, 0, b"/g\0t\0"),
            frame(16, 26, 0, b"ENOENT\0"),
        ),
        ("RESET_WATCHES", frame(21, 27, 0, b"\0"), ok(21, 27)),
        (
            "CONTROL print",
            frame(0, 28, 0, b"print\0hello\0"),
            ok(0, 28),
        ),
        (
            "CONTROL unknown",
            frame(0, 29, 0, b"frobnicate\0"),
            frame(16, 29, 0, b"EINVAL\0"),
        ),
        (
            "WATCH_EVENT from a client",
            frame(15, 30, 0, b"/g\0t\0"),
            frame(16, 30, 0, b"ENOSYS\0"),
        ),
        (
            "ERROR from a client",
            frame(16, 31, 0, b"EINVAL\0"),
            frame(16, 31, 0, b"ENOSYS\0"),
        ),
        (
            "removed RESTRICT (20)",
            frame(20, 32, 0, b"1\0"),
            frame(16, 32, 0, b"ENOSYS\0"),
        ),
        (
            "XS_INVALID",
            frame(0xffff, 33, 0, b""),
            frame(16, 33, 0, b"ENOSYS\0"),
        ),
        // The reply's generation varies; checked field by field below.
        (
            "DIRECTORY_PART",
            frame(22, 34, 0, b"/g\x000\x00"),
            Vec::new(),
        ),
    ];
    for (name, req, expect) in cases {
        if name == "DIRECTORY_PART" {
            let reply = only_reply(&mut s, c, &req);
            // Header: type 22, req 34, tx 0.
            assert_eq!(&reply[..12], &frame(22, 34, 0, b"")[..12], "{name}");
            let body = &reply[16..];
            let nul = body.iter().position(|b| *b == 0).expect("generation");
            assert!(
                body[..nul].iter().all(u8::is_ascii_digit),
                "{name}: {body:?}"
            );
            assert_eq!(
                &body[nul + 1..],
                b"k\0\0",
                "{name}: children then end marker"
            );
            continue;
        }
        let reply = only_reply(&mut s, c, &req);
        assert_eq!(reply, expect, "{name}");
    }
}

#[test]
fn transaction_start_and_end_frames() {
    let mut s = Store::default();
    let c = s.connect(0);
    let start = only_reply(&mut s, c, &frame(6, 1, 0, b"\0"));
    assert_eq!(&start[..12], &frame(6, 1, 0, b"")[..12]);
    let body = &start[16..];
    assert_eq!(body.last(), Some(&0u8));
    let txid: u32 = std::str::from_utf8(&body[..body.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(txid, 0);
    assert_eq!(
        only_reply(&mut s, c, &frame(11, 2, txid, b"/t\0in-tx")),
        frame(11, 2, txid, b"OK\0")
    );
    // Invisible outside the transaction until commit.
    assert_eq!(
        only_reply(&mut s, c, &frame(2, 3, 0, b"/t\0")),
        frame(16, 3, 0, b"ENOENT\0")
    );
    assert_eq!(
        only_reply(&mut s, c, &frame(6, 4, txid, b"\0")),
        frame(16, 4, txid, b"EBUSY\0"),
        "nested start"
    );
    assert_eq!(
        only_reply(&mut s, c, &frame(7, 5, txid, b"X\0")),
        frame(16, 5, txid, b"EINVAL\0")
    );
    assert_eq!(
        only_reply(&mut s, c, &frame(7, 6, txid, b"T\0")),
        frame(7, 6, txid, b"OK\0")
    );
    assert_eq!(
        only_reply(&mut s, c, &frame(2, 7, 0, b"/t\0")),
        frame(2, 7, 0, b"in-tx")
    );
    assert_eq!(
        only_reply(&mut s, c, &frame(7, 8, txid, b"T\0")),
        frame(16, 8, txid, b"ENOENT\0"),
        "ended transaction id is invalid"
    );
}

#[test]
fn watch_reply_then_initial_event_then_change_events() {
    let mut s = Store::default();
    let c = s.connect(0);
    let r = exchange(&mut s, c, &frame(4, 1, 0, b"/w\0tok\0"));
    assert_eq!(
        r,
        vec![
            (c, frame(4, 1, 0, b"OK\0")),
            (c, frame(15, 0, 0, b"/w\0tok\0")),
        ]
    );
    let r = exchange(&mut s, c, &frame(11, 2, 0, b"/w/x\0v"));
    assert_eq!(
        r,
        vec![
            (c, frame(11, 2, 0, b"OK\0")),
            (c, frame(15, 0, 0, b"/w/x\0tok\0")),
        ]
    );
    assert_eq!(
        exchange(&mut s, c, &frame(4, 3, 0, b"/w\0tok\0")),
        vec![(c, frame(16, 3, 0, b"EEXIST\0"))]
    );
    assert_eq!(
        exchange(&mut s, c, &frame(5, 4, 0, b"/w\0tok\0")),
        vec![(c, frame(5, 4, 0, b"OK\0"))]
    );
    assert_eq!(
        exchange(&mut s, c, &frame(11, 5, 0, b"/w/x\0v2")),
        vec![(c, frame(11, 5, 0, b"OK\0"))],
        "no event after UNWATCH"
    );
}
