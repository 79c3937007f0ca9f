//! Untrusted ledger and broker input: record heads and binding node values (the ledger may
//! be edited by hand), binding keys, device states, steps, and broker request lines from device models. Must
//! never panic; whatever parses must re-encode to itself.
#![no_main]

use engine::{Binding, BindingKey, BindRequest, DeviceRecord, DeviceState, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, tail) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(key) = head.trim().parse::<BindingKey>() {
        assert_eq!(key.to_string().parse::<BindingKey>(), Ok(key));
    }
    let key = BindingKey::Msix(3);
    if let Ok(b) = Binding::decode(key, tail) {
        assert_eq!(Binding::decode(key, &b.encode()), Ok(b));
    }
    let sbdf = pci::Sbdf::from_devfn(0, 3, 0);
    if let Ok(r) = DeviceRecord::decode_head(sbdf, text) {
        assert_eq!(DeviceRecord::decode_head(sbdf, &r.encode_head()), Ok(r));
    }
    if let Ok(s) = text.parse::<DeviceState>() {
        assert_eq!(s.as_str(), text);
    }
    if let Ok(s) = text.parse::<Step>() {
        assert_eq!(s.as_str(), text);
    }
    if let Ok(r) = serde_json::from_str::<BindRequest>(text) {
        let again: BindRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
});
