//! Arbitrary bytes from two connections (a dom0 socket and a guest) through the frame
//! decoder into the xenstored state machine. Must never panic; every request must get
//! exactly one reply, first, addressed to its sender, within the payload limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::store::{Action, Store};
use xenstore::wire::{FrameDecoder, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let mut store = Store::default();
    store.introduce_domain(7);
    let domids = [0, 7];
    let mut conns = [store.connect(domids[0]), store.connect(domids[1])];
    let mut decoders = [FrameDecoder::new(), FrameDecoder::new()];
    // First byte of each chunk picks the connection; chunks are split at 0xff bytes so
    // frames from both connections interleave.
    for chunk in data.split(|b| *b == 0xff) {
        let Some((&sel, bytes)) = chunk.split_first() else { continue };
        let i = usize::from(sel & 1);
        decoders[i].push(bytes);
        loop {
            match decoders[i].next_message() {
                Ok(Some(m)) => {
                    let req = m.req_id;
                    let actions = store.handle(conns[i], m);
                    match actions.first() {
                        Some(Action::Send(c, reply)) => {
                            assert_eq!(*c, conns[i]);
                            assert_eq!(reply.req_id, req);
                        }
                        other => panic!("first action is not the reply: {other:?}"),
                    }
                    for a in &actions {
                        if let Action::Send(_, m) = a {
                            assert!(m.payload.len() <= PAYLOAD_MAX);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // xenstored closes the connection; the client opens a fresh one.
                    store.disconnect(conns[i]);
                    conns[i] = store.connect(domids[i]);
                    decoders[i] = FrameDecoder::new();
                    break;
                }
            }
        }
    }
});
