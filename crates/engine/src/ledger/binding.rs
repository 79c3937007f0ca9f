//! A binding node: which interrupt (`intx`, `msix-<entry>`), where it is in its life, and
//! its value's `key=value` text.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use pci::Sbdf;
use serde::Serialize;
use xen::{GuestIntx, Pirq, PtIrq};

/// Which interrupt of a device a binding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum BindingKey {
    Intx,
    Msix(u16),
}

impl fmt::Display for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingKey::Intx => f.write_str("intx"),
            BindingKey::Msix(e) => write!(f, "msix-{e}"),
        }
    }
}

impl FromStr for BindingKey {
    type Err = ();
    fn from_str(s: &str) -> Result<BindingKey, ()> {
        if s == "intx" {
            return Ok(BindingKey::Intx);
        }
        let e = s.strip_prefix("msix-").ok_or(())?;
        if e.len() > 4 || e.starts_with('+') {
            return Err(());
        }
        let e: u16 = e.parse().map_err(|_| ())?;
        if e >= 2048 {
            return Err(());
        }
        Ok(BindingKey::Msix(e))
    }
}

/// Where a binding is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingState {
    /// Recorded before `map_pirq`; the pirq is not known yet.
    Intent,
    /// `map_pirq` succeeded; `bind_pt_irq` may not have.
    Mapped,
    Bound,
    /// Being unbound and unmapped.
    Unbinding,
}

/// One IRQ binding of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub key: BindingKey,
    pub state: BindingState,
    pub pirq: Option<Pirq>,
    pub gsi: u32,
    pub gvec: u8,
    pub gflags: u32,
    pub gtable: u64,
    /// INTx only: where the guest sees the line (unknown until the device model binds it;
    /// attach maps the pirq before that).
    pub guest_intx: Option<GuestIntx>,
}

impl Binding {
    /// The `bind_pt_irq`/`unbind_pt_irq` argument.
    pub fn pt_irq(&self, pirq: Pirq, sbdf: Sbdf) -> PtIrq {
        let source = match self.key {
            BindingKey::Intx => xen::IrqSource::Intx {
                gsi: self.gsi,
                guest: self.guest_intx,
            },
            BindingKey::Msix(entry) => xen::IrqSource::Msix {
                entry,
                table_base: 0,
            },
        };
        source.pt_irq(sbdf, pirq, self.gvec, self.gflags, self.gtable)
    }

    pub fn encode(&self) -> String {
        let state = match self.state {
            BindingState::Intent => "intent",
            BindingState::Mapped => "mapped",
            BindingState::Bound => "bound",
            BindingState::Unbinding => "unbinding",
        };
        let pirq = self.pirq.map_or("-".to_string(), |p| p.0.to_string());
        let mut text = format!(
            "state={state} pirq={pirq} gsi={} gvec={:#x} gflags={:#x} gtable={:#x}",
            self.gsi, self.gvec, self.gflags, self.gtable
        );
        if let Some(g) = self.guest_intx {
            text.push_str(&format!(
                " gbus={:#x} gdev={:#x} gintx={}",
                g.bus, g.device, g.intx
            ));
        }
        text
    }

    /// Parses a binding node; any deviation is an error (the ledger may be edited by hand).
    pub fn decode(key: BindingKey, text: &str) -> Result<Binding, String> {
        let mut fields = BTreeMap::new();
        for part in text.split_whitespace() {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("field {part:?} is not key=value"))?;
            if fields.insert(k, v).is_some() {
                return Err(format!("field {k:?} appears twice"));
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| format!("missing {k}="))
        };
        let num = |k: &str, v: &str| -> Result<u64, String> {
            let r = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            r.map_err(|_| format!("{k}={v:?} is not a number"))
        };
        let state = match get("state")? {
            "intent" => BindingState::Intent,
            "mapped" => BindingState::Mapped,
            "bound" => BindingState::Bound,
            "unbinding" => BindingState::Unbinding,
            s => return Err(format!("unknown binding state {s:?}")),
        };
        let pirq = match get("pirq")? {
            "-" => None,
            p => Some(Pirq(
                p.parse::<i32>()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("pirq={p:?} is not a pirq"))?,
            )),
        };
        if pirq.is_none() && state != BindingState::Intent {
            return Err(format!("a {state:?} binding must name its pirq"));
        }
        let gsi = num("gsi", get("gsi")?)?;
        let gvec = num("gvec", get("gvec")?)?;
        let gflags = num("gflags", get("gflags")?)?;
        let gtable = num("gtable", get("gtable")?)?;
        if gsi > 0xff || gvec > 0xff || gflags > u64::from(u32::MAX) {
            return Err("gsi, gvec or gflags out of range".into());
        }
        let guest_intx = match (fields.get("gbus"), fields.get("gdev"), fields.get("gintx")) {
            (None, None, None) => None,
            (Some(b), Some(d), Some(i)) if key == BindingKey::Intx => {
                let g = GuestIntx {
                    bus: u8::try_from(num("gbus", b)?).map_err(|_| "gbus out of range")?,
                    device: u8::try_from(num("gdev", d)?).map_err(|_| "gdev out of range")?,
                    intx: u8::try_from(num("gintx", i)?).map_err(|_| "gintx out of range")?,
                };
                if !g.is_valid() {
                    return Err("gdev or gintx out of range".into());
                }
                Some(g)
            }
            _ => return Err("gbus, gdev and gintx go together, on an intx binding".into()),
        };
        if fields.len() != 6 + if guest_intx.is_some() { 3 } else { 0 } {
            return Err("unexpected extra fields".into());
        }
        Ok(Binding {
            key,
            state,
            pirq,
            gsi: gsi as u32,
            gvec: gvec as u8,
            gflags: gflags as u32,
            gtable,
            guest_intx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{DeviceState, Step};
    use proptest::prelude::*;

    fn arb_binding() -> impl Strategy<Value = Binding> {
        (
            prop_oneof![
                Just(BindingKey::Intx),
                (0u16..2048).prop_map(BindingKey::Msix)
            ],
            prop_oneof![
                Just(BindingState::Intent),
                Just(BindingState::Mapped),
                Just(BindingState::Bound),
                Just(BindingState::Unbinding)
            ],
            0i32..1_000_000,
            0u32..256,
            any::<u8>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of((any::<u8>(), 0u8..32, 0u8..4)),
        )
            .prop_map(|(key, state, p, gsi, gvec, gflags, gtable, g)| Binding {
                key,
                state,
                pirq: (state != BindingState::Intent).then_some(Pirq(p)),
                gsi,
                gvec,
                gflags,
                gtable,
                guest_intx: g
                    .filter(|_| key == BindingKey::Intx)
                    .map(|(bus, device, intx)| GuestIntx { bus, device, intx }),
            })
    }

    proptest! {
        #[test]
        fn bindings_round_trip(b in arb_binding()) {
            prop_assert_eq!(Binding::decode(b.key, &b.encode()), Ok(b));
        }

        /// Hand-edited or garbage node values never panic and never parse into something
        /// that encodes differently.
        #[test]
        fn garbage_is_rejected_or_canonical(text in "[a-z=0-9x -]{0,80}") {
            if let Ok(b) = Binding::decode(BindingKey::Msix(0), &text) {
                prop_assert_eq!(Binding::decode(BindingKey::Msix(0), &b.encode()), Ok(b));
            }
        }
    }

    #[test]
    fn keys_and_states_parse_strictly() {
        assert_eq!("msix-7".parse(), Ok(BindingKey::Msix(7)));
        assert_eq!("intx".parse(), Ok(BindingKey::Intx));
        for bad in [
            "msix-2048",
            "msix-+1",
            "msix-",
            "msix-00001",
            "MSIX-1",
            "intx ",
        ] {
            assert!(bad.parse::<BindingKey>().is_err(), "{bad}");
        }
        for s in ["assignable", "attached", "tearing-down", "quarantined"] {
            assert_eq!(s.parse::<DeviceState>().map(|d| d.as_str()), Ok(s));
        }
        assert!("Attached".parse::<DeviceState>().is_err());
        // `failed` was a state nothing ever wrote; a ledger that says it is corrupt.
        assert!("failed".parse::<DeviceState>().is_err());
        for st in Step::TEARDOWN {
            assert_eq!(st.as_str().parse(), Ok(st));
        }
        assert!(Binding::decode(
            BindingKey::Intx,
            "state=bound pirq=- gsi=0 gvec=0 gflags=0 gtable=0"
        )
        .is_err());
        assert!(Binding::decode(
            BindingKey::Intx,
            "state=bound pirq=3 pirq=4 gsi=0 gvec=0 gflags=0 gtable=0"
        )
        .is_err());
        assert!(Binding::decode(
            BindingKey::Intx,
            "state=bound pirq=3 gsi=0 gvec=0x100 gflags=0 gtable=0"
        )
        .is_err());
    }
}
