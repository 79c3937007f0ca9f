//! Config-space parsing: a real device's bytes, built devices, and every malformed shape.

use pci::builder::ConfigBuilder;
use pci::config::regs::*;
use pci::{ConfigError, ConfigSpace};
use proptest::prelude::*;

/// Config space of a virtio-net function read from a QEMU guest's sysfs (256 bytes).
const VIRTIO_NET: &[u8] = include_bytes!("data/virtio-net-00-03.0.config");

#[test]
fn parses_a_real_virtio_device() {
    let cs = ConfigSpace::new(VIRTIO_NET.to_vec()).unwrap();
    let c = cs.parse().unwrap();
    assert_eq!((c.vendor_id, c.device_id), (0x1af4, 0x1041));
    assert_eq!(c.class, 0x020000);
    assert!(c.command.memory() && c.command.bus_master() && c.command.intx_disabled());
    assert!(!c.command.io());
    let offsets: Vec<u16> = c.capabilities.iter().map(|c| c.offset).collect();
    assert_eq!(offsets, [0x40, 0x50, 0x60, 0x70, 0x84, 0x98]);
    let m = c.msix.unwrap();
    assert_eq!(m.offset, 0x98);
    assert_eq!(m.table_size, 3);
    assert!(m.enabled && !m.function_mask);
    assert_eq!((m.table_bir, m.table_offset), (0, 0x8000));
    assert_eq!((m.pba_bir, m.pba_offset), (0, 0x48000));
    assert_eq!(c.bars.len(), 1);
    assert_eq!(c.bars[0].address, 0x40_0010_0000);
    assert!(m.check_against_bars(&[512 * 1024]).is_ok());
    assert!(c.extended_capabilities.is_empty());
}

fn built() -> ConfigBuilder {
    ConfigBuilder::endpoint(0x8086, 0x1533)
        .bar32(0, 0xf000_0000, 0x2_0000)
        .bar64(3, 0x1_0000_0000, 0x4000)
        .io_bar(2, 0xe000, 0x20)
        .pm(false)
        .msi(3, true, true)
        .pcie(true)
        .msix(5, 3, 0x0, 3, 0x2000)
}

#[test]
fn parses_a_built_pcie_device_with_every_capability() {
    let b = built();
    let cs = b.build();
    assert_eq!(cs.len(), 4096);
    let c = cs.parse().unwrap();
    let msi = c.msi.unwrap();
    assert_eq!(msi.vectors_capable, 8);
    assert!(msi.is_64bit && msi.per_vector_masking && !msi.enabled);
    assert_eq!(msi.mask_bits_offset, Some(msi.offset + 0x10));
    let m = c.msix.unwrap();
    assert_eq!(
        (m.table_size, m.table_bir, m.pba_bir, m.pba_offset),
        (5, 3, 3, 0x2000)
    );
    assert!(c.pcie.unwrap().flr);
    assert!(!c.pm.unwrap().no_soft_reset);
    assert_eq!(c.config_reset_methods(), ["flr", "pm"]);
    assert_eq!(c.bars.len(), 3);
    assert_eq!(c.bars[2].kind, pci::config::BarKind::Memory64);
    assert_eq!(c.bars[2].address, 0x1_0000_0000);
    let sizes: Vec<u64> = b.resources().iter().map(|r| r.len()).collect();
    m.check_against_bars(&sizes).unwrap();
}

#[test]
fn msix_function_mask_and_enable_bits() {
    let mut cs = built().build();
    let m = cs.parse().unwrap().msix.unwrap();
    cs.write16(
        m.offset + MSIX_FLAGS,
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL | 4,
    )
    .unwrap();
    let m2 = cs.parse().unwrap().msix.unwrap();
    assert!(m2.enabled && m2.function_mask);
    assert_eq!(m2.table_size, 5);
}

#[test]
fn table_size_bounds_are_1_and_2048() {
    for (n, want) in [(1u16, 1u16), (2048, 2048)] {
        let c = ConfigBuilder::endpoint(1, 2)
            .bar64(0, 0x1000_0000, 0x10000)
            .msix(n, 0, 0, 0, 0x8000)
            .build()
            .parse()
            .unwrap();
        assert_eq!(c.msix.unwrap().table_size, want);
    }
}

#[test]
fn msix_bir_6_and_7_are_rejected() {
    for bir in [6u8, 7] {
        let e = ConfigBuilder::endpoint(1, 2)
            .msix(4, bir, 0, 0, 0x100)
            .build()
            .parse()
            .unwrap_err();
        assert_eq!(
            e,
            ConfigError::MsixBadBir {
                what: "table",
                bir,
                offset: 0x40
            }
        );
        assert!(e.to_string().contains("BIR"));
    }
    let e = ConfigBuilder::endpoint(1, 2)
        .msix(4, 0, 0, 7, 0x100)
        .build()
        .parse()
        .unwrap_err();
    assert!(matches!(
        e,
        ConfigError::MsixBadBir {
            what: "PBA",
            bir: 7,
            ..
        }
    ));
}

#[test]
fn msix_table_beyond_its_bar_is_rejected() {
    let b = ConfigBuilder::endpoint(1, 2)
        .bar32(0, 0xf000_0000, 0x1000)
        .msix(512, 0, 0, 0, 0x800);
    let m = b.build().parse().unwrap().msix.unwrap();
    let sizes: Vec<u64> = b.resources().iter().map(|r| r.len()).collect();
    let e = m.check_against_bars(&sizes).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::MsixBeyondBar {
                what: "table",
                len: 8192,
                bar_size: 4096,
                ..
            }
        ),
        "{e}"
    );
    // A table naming an unimplemented BAR lies beyond a 0-byte BAR.
    let b = ConfigBuilder::endpoint(1, 2).msix(4, 2, 0, 2, 0x40);
    let m = b.build().parse().unwrap().msix.unwrap();
    assert!(m.check_against_bars(&[0x1000]).is_err());
}

fn with_caps(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    b[6] = STATUS_CAP_LIST as u8;
    f(&mut b);
    b
}

#[test]
fn capability_loops_are_detected() {
    let bytes = with_caps(|b| {
        b[0x34] = 0x40;
        b[0x40] = 0x09;
        b[0x41] = 0x50;
        b[0x50] = 0x09;
        b[0x51] = 0x40;
    });
    let e = ConfigSpace::new(bytes).unwrap().parse().unwrap_err();
    assert_eq!(
        e,
        ConfigError::CapabilityLoop {
            at: 0x51,
            ptr: 0x40
        }
    );
    let self_loop = with_caps(|b| {
        b[0x34] = 0x40;
        b[0x41] = 0x40;
    });
    assert!(matches!(
        ConfigSpace::new(self_loop).unwrap().parse(),
        Err(ConfigError::CapabilityLoop { .. })
    ));
}

#[test]
fn pointers_into_the_header_or_outside_are_rejected() {
    let into_header = with_caps(|b| b[0x34] = 0x20);
    assert_eq!(
        ConfigSpace::new(into_header).unwrap().parse().unwrap_err(),
        ConfigError::CapabilityIntoHeader {
            at: 0x34,
            ptr: 0x20
        }
    );
    // A 64-byte (unprivileged) read cannot follow a pointer to 0x40.
    let mut short = with_caps(|b| b[0x34] = 0x40);
    short.truncate(64);
    assert!(matches!(
        ConfigSpace::new(short).unwrap().parse().unwrap_err(),
        ConfigError::CapabilityOutOfRange {
            ptr: 0x40,
            len: 64,
            ..
        }
    ));
    // The low two bits of a pointer are reserved: 0xff is followed as 0xfc, whose MSI-X
    // capability then runs past the end of the space.
    let at_end = with_caps(|b| {
        b[0x34] = 0x40;
        b[0x41] = 0xff;
        b[0xfc] = CAP_ID_MSIX;
    });
    assert_eq!(
        ConfigSpace::new(at_end).unwrap().parse().unwrap_err(),
        ConfigError::CapabilityTruncated {
            id: CAP_ID_MSIX,
            offset: 0xfc
        }
    );
}

#[test]
fn a_capability_running_past_the_end_is_rejected() {
    let bytes = with_caps(|b| {
        b[0x34] = 0xf8;
        b[0xf8] = CAP_ID_MSIX;
    });
    assert_eq!(
        ConfigSpace::new(bytes).unwrap().parse().unwrap_err(),
        ConfigError::CapabilityTruncated {
            id: CAP_ID_MSIX,
            offset: 0xf8
        }
    );
}

#[test]
fn truncated_spaces_are_rejected() {
    assert_eq!(
        ConfigSpace::new(vec![0; 63]).unwrap_err(),
        ConfigError::Truncated {
            len: 63,
            needed: 64
        }
    );
}

#[test]
fn extended_capability_walk_and_its_loops() {
    let mut cs = ConfigBuilder::endpoint(1, 2).pcie(false).build();
    // AER at 0x100 -> ACS at 0x148 -> end.
    cs.write32(0x100, 0x0001 | (1 << 16) | (0x148 << 20))
        .unwrap();
    cs.write32(0x148, 0x000d | (1 << 16)).unwrap();
    let ext = cs.extended_capabilities().unwrap();
    assert_eq!(
        ext.iter().map(|e| (e.id, e.offset)).collect::<Vec<_>>(),
        [(1, 0x100), (0xd, 0x148)]
    );
    cs.write32(0x148, 0x000d | (1 << 16) | (0x100 << 20))
        .unwrap();
    assert!(matches!(
        cs.extended_capabilities(),
        Err(ConfigError::CapabilityLoop { ptr: 0x100, .. })
    ));
    cs.write32(0x148, 0x000d | (0x40 << 20)).unwrap();
    assert!(matches!(
        cs.extended_capabilities(),
        Err(ConfigError::CapabilityIntoHeader { ptr: 0x40, .. })
    ));
}

#[test]
fn a_64bit_bar_in_the_last_slot_is_rejected() {
    let mut cs = ConfigBuilder::endpoint(1, 2).build();
    cs.write32(BAR0 + 20, 0x4).unwrap();
    assert_eq!(
        cs.parse().unwrap_err(),
        ConfigError::Bar64AtEnd { index: 5 }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Any bytes parse or fail with a typed error; never a panic or a hang.
    #[test]
    fn arbitrary_bytes_never_panic(len in prop_oneof![Just(64usize), Just(256), Just(4096), 0usize..300],
                                   seed in proptest::collection::vec(any::<u8>(), 0..64),
                                   fill in any::<u8>()) {
        let mut bytes = vec![fill; len];
        for (i, b) in seed.iter().enumerate() {
            if let Some(slot) = bytes.get_mut((i * 37 + usize::from(*b)) % len.max(1)) {
                *slot = *b;
            }
        }
        if let Ok(cs) = ConfigSpace::new(bytes) {
            let _ = cs.parse();
        }
    }

    /// What the builder lays out, the parser reads back.
    #[test]
    fn built_msix_round_trips(n in 1u16..=2048, bir in 0u8..6, off in 0u32..0x1000, pba_off in 0u32..0x1000, flr: bool) {
        let c = ConfigBuilder::endpoint(0x10ee, 0x7021)
            .pcie(flr)
            .msix(n, bir, off * 8, bir, pba_off * 8)
            .build()
            .parse()
            .unwrap();
        let m = c.msix.unwrap();
        prop_assert_eq!(m.table_size, n);
        prop_assert_eq!(m.table_bir, bir);
        prop_assert_eq!(m.table_offset, off * 8);
        prop_assert_eq!(m.pba_offset, pba_off * 8);
        prop_assert_eq!(c.pcie.unwrap().flr, flr);
    }
}
