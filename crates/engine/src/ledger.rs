//! The binding ledger's schema in Xenstore (documented in `docs/ledger.md`).
//!
//! ```text
//! /ptguard                                   n0 (dom0 only)
//! /ptguard/device/<SSSS-BB-DD-F>                     the record's head, one node, space-separated key=value:
//!     state=assignable|attached|tearing-down|quarantined|failed  epoch=<assignments so far>
//!     [owner=<domid> [handle=<uuid>]]  [step=attach|revoke|unbind|release|deassign|reset|prepare|verify]
//!     [mode=companion|companion-keep]  [driver=<name>]  msix-size=<n>  [table-base=<hex>]
//!     [reason=<free text to the end of the value>]
//! /ptguard/device/<SSSS-BB-DD-F>/binding/<key>       intx | msix-<entry>: "state=… pirq=… gsi=… gvec=… gflags=… gtable=…"
//! /ptguard/device/<SSSS-BB-DD-F>/binding/lost        binds a crash interrupted between map_pirq and recording its pirq, then retried
//! /ptguard/intx/<domid>/<gsi>/<SSSS-BB-DD-F>         which attached devices of a guest share one machine INTx line
//! ```
//!
//! The head is one node so that reading or changing a record's state is one request
//! (xenstored applies each request atomically): the broker's check before a bind reads it
//! once.
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, DomainHandle, GuestIntx, Pirq, PtIrq};

pub const ROOT: &str = "/ptguard";
pub const DEVICES: &str = "/ptguard/device";

/// Devices are keyed by libxl's Xenstore form of the address, `SSSS-BB-DD-F`.
pub fn device_path(sbdf: Sbdf) -> String {
    format!("{DEVICES}/{}", sbdf.xs_key())
}
/// The directory of a device's bindings.
pub fn bindings_path(sbdf: Sbdf) -> String {
    format!("{}/binding", device_path(sbdf))
}
pub fn binding_path(sbdf: Sbdf, key: &BindingKey) -> String {
    format!("{}/binding/{key}", device_path(sbdf))
}

/// A device's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    Assignable,
    Attached,
    TearingDown,
    Quarantined,
    Failed,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Assignable => "assignable",
            DeviceState::Attached => "attached",
            DeviceState::TearingDown => "tearing-down",
            DeviceState::Quarantined => "quarantined",
            DeviceState::Failed => "failed",
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceState {
    type Err = ();
    fn from_str(s: &str) -> Result<DeviceState, ()> {
        Ok(match s {
            "assignable" => DeviceState::Assignable,
            "attached" => DeviceState::Attached,
            "tearing-down" => DeviceState::TearingDown,
            "quarantined" => DeviceState::Quarantined,
            "failed" => DeviceState::Failed,
            _ => return Err(()),
        })
    }
}

/// The journaled steps of attach and teardown, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Attach,
    Revoke,
    Unbind,
    Release,
    Deassign,
    Reset,
    Prepare,
    Verify,
}

impl Step {
    pub const TEARDOWN: [Step; 7] = [
        Step::Revoke,
        Step::Unbind,
        Step::Release,
        Step::Deassign,
        Step::Reset,
        Step::Prepare,
        Step::Verify,
    ];
    /// The step a teardown journals after this one (`None` after `verify`; an interrupted
    /// attach is torn down as from `revoke`).
    pub fn next(self) -> Option<Step> {
        Some(match self {
            Step::Attach | Step::Revoke => Step::Unbind,
            Step::Unbind => Step::Release,
            Step::Release => Step::Deassign,
            Step::Deassign => Step::Reset,
            Step::Reset => Step::Prepare,
            Step::Prepare => Step::Verify,
            Step::Verify => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Attach => "attach",
            Step::Revoke => "revoke",
            Step::Unbind => "unbind",
            Step::Deassign => "deassign",
            Step::Release => "release",
            Step::Reset => "reset",
            Step::Prepare => "prepare",
            Step::Verify => "verify",
        }
    }
}

impl FromStr for Step {
    type Err = ();
    fn from_str(s: &str) -> Result<Step, ()> {
        Ok(match s {
            "attach" => Step::Attach,
            "revoke" => Step::Revoke,
            "unbind" => Step::Unbind,
            "deassign" => Step::Deassign,
            "release" => Step::Release,
            "reset" => Step::Reset,
            "prepare" => Step::Prepare,
            "verify" => Step::Verify,
            _ => return Err(()),
        })
    }
}

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

/// A device's ledger record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub sbdf: Sbdf,
    pub state: DeviceState,
    pub owner: Option<DomId>,
    /// The owner's domain handle when it was given the device (records written before it
    /// was kept, or a domain without a handle, have none): a later domain reusing the
    /// domid has another.
    pub owner_handle: Option<DomainHandle>,
    pub epoch: u64,
    pub step: Option<Step>,
    pub reason: Option<String>,
    pub driver: Option<String>,
    pub msix_size: u16,
    /// Host address of the BAR holding the MSI-X table (`None` in records written before
    /// it was kept).
    pub table_base: Option<u64>,
    /// Binds retried over an intent a crash left without its pirq: each may have left a
    /// mapping in Xen whose pirq nobody knows (until the owner is destroyed). Kept in
    /// `binding/lost`, so only a full read ([`crate::engine::read_record`]) fills it.
    pub lost_maps: u32,
    pub bindings: Vec<Binding>,
    /// Adopted from a toolstack, which revokes, removes the backend and deassigns itself.
    pub mode: Option<CompanionMode>,
}

/// How ptguard holds a device a toolstack gave (`mode=` in the head).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompanionMode {
    /// Unknown to ptguard before: forgotten once clean (the toolstack owns it between guests).
    Companion,
    /// Managed by ptguard before (assignable-add): assignable again once clean.
    CompanionKeep,
}

impl CompanionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompanionMode::Companion => "companion",
            CompanionMode::CompanionKeep => "companion-keep",
        }
    }
}

impl DeviceRecord {
    /// A record's head without bindings: what assignable-add writes.
    pub fn new(sbdf: Sbdf, state: DeviceState, epoch: u64) -> DeviceRecord {
        DeviceRecord {
            sbdf,
            state,
            owner: None,
            owner_handle: None,
            epoch,
            step: None,
            reason: None,
            driver: None,
            msix_size: 0,
            table_base: None,
            lost_maps: 0,
            bindings: Vec::new(),
            mode: None,
        }
    }

    /// The head node's value (bindings and the lost-maps count live in their own nodes).
    pub fn encode_head(&self) -> String {
        let mut text = format!("state={} epoch={}", self.state, self.epoch);
        if let Some(o) = self.owner {
            text.push_str(&format!(" owner={}", o.0));
            if let Some(h) = self.owner_handle.filter(|h| !h.is_nil()) {
                text.push_str(&format!(" handle={h}"));
            }
        }
        if let Some(s) = self.step {
            text.push_str(&format!(" step={}", s.as_str()));
        }
        if let Some(m) = self.mode {
            text.push_str(&format!(" mode={}", m.as_str()));
        }
        if let Some(d) = self.driver.as_deref().filter(|d| !d.is_empty()) {
            text.push_str(&format!(" driver={d}"));
        }
        text.push_str(&format!(" msix-size={}", self.msix_size));
        if let Some(t) = self.table_base {
            text.push_str(&format!(" table-base={t:#x}"));
        }
        if let Some(r) = &self.reason {
            text.push_str(&format!(" reason={r}"));
        }
        text
    }

    /// Parses a head node; any deviation is an error (the ledger may be edited by hand).
    /// `reason=` comes last and runs to the end of the value, spaces included.
    pub fn decode_head(sbdf: Sbdf, text: &str) -> Result<DeviceRecord, String> {
        let mut fields = BTreeMap::new();
        let mut reason = None;
        let mut rest = text.trim_start();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("reason=") {
                reason = Some(r.to_string());
                break;
            }
            let (part, after) = rest.split_once(' ').unwrap_or((rest, ""));
            rest = after.trim_start();
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("field {part:?} is not key=value"))?;
            if fields.insert(k, v).is_some() {
                return Err(format!("field {k:?} appears twice"));
            }
        }
        let mut take = |k: &str| fields.remove(k);
        let state: DeviceState = match take("state") {
            None => return Err("missing state=".into()),
            Some(s) => s.parse().map_err(|_| format!("unknown state {s:?}"))?,
        };
        let epoch = match take("epoch") {
            None => return Err("missing epoch=".into()),
            Some(e) => e
                .parse()
                .map_err(|_| format!("epoch={e:?} is not a number"))?,
        };
        let owner = match take("owner") {
            None => None,
            Some(o) => Some(DomId(
                o.parse()
                    .map_err(|_| format!("owner={o:?} is not a domain id"))?,
            )),
        };
        let owner_handle = match take("handle") {
            None => None,
            Some(_) if owner.is_none() => return Err("handle= without owner=".into()),
            Some(h) => Some(
                h.parse::<DomainHandle>()
                    .map_err(|_| format!("handle={h:?} is not a domain handle"))?,
            ),
        };
        let step = match take("step") {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| format!("unknown step {s:?}"))?),
        };
        let mode = match take("mode") {
            None => None,
            Some("companion") => Some(CompanionMode::Companion),
            Some("companion-keep") => Some(CompanionMode::CompanionKeep),
            Some(m) => return Err(format!("unknown mode {m:?}")),
        };
        let driver = take("driver").map(str::to_string);
        let msix_size = match take("msix-size") {
            None => return Err("missing msix-size=".into()),
            Some(t) => t
                .parse::<u16>()
                .ok()
                .filter(|n| *n <= 2048)
                .ok_or_else(|| format!("msix-size={t:?} is not a table size"))?,
        };
        let table_base = match take("table-base") {
            None => None,
            Some(t) => Some(
                t.strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("table-base={t:?} is not a hex address"))?,
            ),
        };
        if let Some(k) = fields.keys().next() {
            return Err(format!("unknown field {k:?}"));
        }
        if matches!(state, DeviceState::Attached | DeviceState::TearingDown) && owner.is_none() {
            return Err(format!("a {state} device needs an owner"));
        }
        Ok(DeviceRecord {
            sbdf,
            state,
            owner,
            owner_handle,
            epoch,
            step,
            reason,
            driver,
            msix_size,
            table_base,
            lost_maps: 0,
            bindings: Vec::new(),
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        for s in [
            "assignable",
            "attached",
            "tearing-down",
            "quarantined",
            "failed",
        ] {
            assert_eq!(s.parse::<DeviceState>().map(|d| d.as_str()), Ok(s));
        }
        assert!("Attached".parse::<DeviceState>().is_err());
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
