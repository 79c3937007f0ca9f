//! Arbitrary config-space bytes through the parser. Must never panic or hang; whatever parses
//! must be self-consistent (capabilities inside the space and outside the header, MSI-X table
//! size 1..=2048 with BIRs 0..=5).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pci::ConfigSpace;

fuzz_target!(|data: &[u8]| {
    let Ok(cs) = ConfigSpace::new(data.to_vec()) else { return };
    let Ok(c) = cs.parse() else { return };
    for cap in &c.capabilities {
        assert!(cap.offset >= 0x40 && usize::from(cap.offset) + 2 <= data.len().min(256));
    }
    for e in &c.extended_capabilities {
        assert!(e.offset >= 0x100 && usize::from(e.offset) + 4 <= data.len());
    }
    if let Some(m) = c.msix {
        assert!((1..=2048).contains(&m.table_size));
        assert!(m.table_bir <= 5 && m.pba_bir <= 5);
        let _ = m.check_against_bars(&[0, 4096, u64::MAX / 2]);
    }
});
