//! PCI addresses: segment, bus, device, function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SbdfError;

/// A PCI function address, `SSSS:BB:DD.F`.
///
/// Ordered by segment, bus, device, function — the order `lspci` and sysfs list devices in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sbdf {
    seg: u16,
    bus: u8,
    dev: u8,
    func: u8,
}

impl Sbdf {
    /// Builds an address; `dev` must be below 32 and `func` below 8.
    pub fn new(seg: u16, bus: u8, dev: u8, func: u8) -> Result<Sbdf, SbdfError> {
        if dev >= 32 || func >= 8 {
            return Err(SbdfError {
                text: format!("{seg:04x}:{bus:02x}:{dev:02x}.{func:x}"),
                reason: if dev >= 32 {
                    "device number must be 00..1f"
                } else {
                    "function number must be 0..7"
                },
            });
        }
        Ok(Sbdf {
            seg,
            bus,
            dev,
            func,
        })
    }

    pub fn seg(self) -> u16 {
        self.seg
    }
    pub fn bus(self) -> u8 {
        self.bus
    }
    pub fn dev(self) -> u8 {
        self.dev
    }
    pub fn func(self) -> u8 {
        self.func
    }

    /// `dev << 3 | func`, the devfn of Linux and of `struct physdev_pci_device`.
    pub fn devfn(self) -> u8 {
        (self.dev << 3) | self.func
    }

    /// Rebuilds an address from a segment, bus and devfn.
    pub fn from_devfn(seg: u16, bus: u8, devfn: u8) -> Sbdf {
        Sbdf {
            seg,
            bus,
            dev: devfn >> 3,
            func: devfn & 7,
        }
    }

    /// `seg << 16 | bus << 8 | devfn`: `machine_sbdf` of `XEN_DOMCTL_assign_device` (libxl's
    /// `pci_encode_bdf`).
    pub fn machine_sbdf(self) -> u32 {
        (u32::from(self.seg) << 16) | (u32::from(self.bus) << 8) | u32::from(self.devfn())
    }

    /// Inverse of [`Sbdf::machine_sbdf`].
    pub fn from_machine_sbdf(v: u32) -> Sbdf {
        Sbdf::from_devfn((v >> 16) as u16, (v >> 8) as u8, v as u8)
    }

    /// `SSSS-BB-DD-F`: libxl's `PCI_BDF_XSPATH`, the form a PCI address takes in a Xenstore
    /// path (Xenstore allows no `:` or `.`).
    pub fn xs_key(self) -> String {
        format!(
            "{:04x}-{:02x}-{:02x}-{:x}",
            self.seg, self.bus, self.dev, self.func
        )
    }

    /// Parses [`Sbdf::xs_key`] back.
    pub fn from_xs_key(key: &str) -> Result<Sbdf, SbdfError> {
        let parts: Vec<&str> = key.split('-').collect();
        match parts.as_slice() {
            [s, b, d, f] if s.len() == 4 && b.len() == 2 && d.len() == 2 && f.len() == 1 => {
                format!("{s}:{b}:{d}.{f}")
                    .parse()
                    .map_err(|e: SbdfError| SbdfError {
                        text: key.to_string(),
                        reason: e.reason,
                    })
            }
            _ => Err(SbdfError {
                text: key.to_string(),
                reason: "expected SSSS-BB-DD-F (Xenstore form)",
            }),
        }
    }

    /// `seg << 16 | bus`: the `bus` field of `PHYSDEVOP_map_pirq` with `MAP_PIRQ_TYPE_MSI_SEG`.
    pub fn map_pirq_bus(self) -> i32 {
        ((u32::from(self.seg) << 16) | u32::from(self.bus)) as i32
    }
}

impl fmt::Display for Sbdf {
    /// `%04x:%02x:%02x.%01x`, libxl's `PCI_BDF` and the sysfs directory name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.seg, self.bus, self.dev, self.func
        )
    }
}

impl fmt::Debug for Sbdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex_field(field: &str, max_digits: usize) -> Option<u32> {
    if field.is_empty() || field.len() > max_digits || !field.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    u32::from_str_radix(field, 16).ok()
}

impl FromStr for Sbdf {
    type Err = SbdfError;

    /// Accepts `SSSS:BB:DD.F` and `BB:DD.F` (segment 0), hex digits of either case, as
    /// `xl pci-assignable-add` and sysfs do. Everything else is rejected with the text quoted.
    fn from_str(text: &str) -> Result<Sbdf, SbdfError> {
        let err = |reason: &'static str| SbdfError {
            text: text.to_string(),
            reason,
        };
        let (head, func) = text
            .rsplit_once('.')
            .ok_or_else(|| err("expected [SSSS:]BB:DD.F"))?;
        let parts: Vec<&str> = head.split(':').collect();
        let (seg, bus, dev) = match parts.as_slice() {
            [s, b, d] => (
                hex_field(s, 4).ok_or_else(|| err("segment must be 1-4 hex digits"))?,
                *b,
                *d,
            ),
            [b, d] => (0, *b, *d),
            _ => return Err(err("expected [SSSS:]BB:DD.F")),
        };
        let bus = hex_field(bus, 2).ok_or_else(|| err("bus must be 1-2 hex digits"))?;
        let dev = hex_field(dev, 2).ok_or_else(|| err("device must be 1-2 hex digits"))?;
        if func.len() != 1 {
            return Err(err("function must be one digit 0..7"));
        }
        let func = hex_field(func, 1).ok_or_else(|| err("function must be one digit 0..7"))?;
        if dev >= 32 {
            return Err(err("device number must be 00..1f"));
        }
        if func >= 8 {
            return Err(err("function number must be 0..7"));
        }
        Ok(Sbdf {
            seg: seg as u16,
            bus: bus as u8,
            dev: dev as u8,
            func: func as u8,
        })
    }
}

impl Serialize for Sbdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sbdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sbdf, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_xen_and_linux_use() {
        let a: Sbdf = "0000:03:00.0".parse().unwrap();
        assert_eq!((a.seg(), a.bus(), a.dev(), a.func()), (0, 3, 0, 0));
        assert_eq!("03:00.0".parse::<Sbdf>().unwrap(), a);
        let b: Sbdf = "00AB:Fe:1F.7".parse().unwrap();
        assert_eq!(b.to_string(), "00ab:fe:1f.7");
        assert_eq!(b.devfn(), 0xff);
        assert_eq!(b.machine_sbdf(), 0x00ab_feff);
        assert_eq!(Sbdf::from_machine_sbdf(b.machine_sbdf()), b);
        assert_eq!(b.map_pirq_bus(), 0x00ab_00fe);
        assert_eq!(b.xs_key(), "00ab-fe-1f-7");
        assert_eq!(Sbdf::from_xs_key("00ab-fe-1f-7").unwrap(), b);
        assert!(Sbdf::from_xs_key("00ab:fe:1f.7").is_err());
        assert!(Sbdf::from_xs_key("00ab-fe-1f-8").is_err());
    }

    #[test]
    fn rejects_with_the_text_quoted() {
        for bad in [
            "0000:03:00.8",
            "1:2:3",
            "0000:03:00.0x",
            "0000:03:00.0 ",
            "0000:03:20.0",
            "00000:03:00.0",
            "0000:103:00.0",
            "",
            ":03:00.0",
            "0000:03:00.",
            "0000:03:00.00",
            "0:0:0:0.0",
            "g000:03:00.0",
            "+0:03:00.0",
        ] {
            let e = bad.parse::<Sbdf>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
