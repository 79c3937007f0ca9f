//! A device's record: its head (one node) and its bindings.

use std::collections::BTreeMap;

use pci::Sbdf;
use serde::Serialize;
use xen::{DomId, DomainHandle};

use super::{Binding, DeviceState, Step};
use crate::credential::TokenDigest;

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
    /// The owner's unique id (Xen 4.21+, `XEN_DOMCTL_get_domain_state`) when it was given
    /// the device: where both are known it decides the incarnation, since a toolstack may
    /// give a new domain the old one's handle (xenopsd boots a VM under its UUID).
    pub owner_uid: Option<u64>,
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
    /// SHA-256 of the token `ptguard attach` handed the device model of this assignment
    /// (`credential=`; none: only the toolstack's recorded device model may act).
    pub credential: Option<TokenDigest>,
    /// The stubdomain running the owner's device model (`dm-domain=`), when the toolstack
    /// gave the device through one (libxl writes the PCI backend for the stubdomain, not the
    /// guest): the pirqs it maps are the owner's, and it dies before, with or after it.
    pub dm_domain: Option<DomId>,
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
            owner_uid: None,
            epoch,
            step: None,
            reason: None,
            driver: None,
            msix_size: 0,
            table_base: None,
            lost_maps: 0,
            bindings: Vec::new(),
            mode: None,
            credential: None,
            dm_domain: None,
        }
    }

    /// Whether the domain Xen describes as `info` is the incarnation this record was
    /// given to: by unique id where both sides have one (Xen 4.21+), else by handle (a
    /// record without one, or a nil handle, cannot tell: taken as the same).
    pub(crate) fn owner_incarnation_is(&self, info: &xen::DomainInfo) -> bool {
        match (self.owner_uid, info.unique_id) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => self.owner_handle.is_none_or(|h| h == info.handle),
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
            if let Some(u) = self.owner_uid {
                text.push_str(&format!(" uid={u}"));
            }
            if let Some(d) = self.dm_domain {
                text.push_str(&format!(" dm-domain={}", d.0));
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
        if let Some(c) = self.credential {
            text.push_str(&format!(" credential={c}"));
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
        let owner_uid = match take("uid") {
            None => None,
            Some(_) if owner.is_none() => return Err("uid= without owner=".into()),
            Some(u) => Some(
                u.parse::<u64>()
                    .map_err(|_| format!("uid={u:?} is not a domain's unique id"))?,
            ),
        };
        let dm_domain = match take("dm-domain") {
            None => None,
            Some(_) if owner.is_none() => return Err("dm-domain= without owner=".into()),
            Some(d) => {
                Some(DomId(d.parse().map_err(|_| {
                    format!("dm-domain={d:?} is not a domain id")
                })?))
            }
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
        let credential = match take("credential") {
            None => None,
            Some(_) if owner.is_none() => return Err("credential= without owner=".into()),
            Some(c) => Some(
                c.parse::<TokenDigest>()
                    .map_err(|_| format!("credential={c:?} is not a SHA-256 digest"))?,
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
            owner_uid,
            epoch,
            step,
            reason,
            driver,
            msix_size,
            table_base,
            lost_maps: 0,
            bindings: Vec::new(),
            mode,
            credential,
            dm_domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_head() -> impl Strategy<Value = DeviceRecord> {
        (
            proptest::sample::select(DeviceState::ALL.to_vec()),
            any::<u64>(),
            proptest::option::of((
                any::<u16>(),
                proptest::option::of(any::<[u8; 16]>()),
                proptest::option::of(any::<[u8; 32]>()),
                proptest::option::of(any::<u64>()),
            )),
            proptest::option::of(proptest::sample::select(Step::TEARDOWN.to_vec())),
            proptest::option::of(prop_oneof![
                Just(CompanionMode::Companion),
                Just(CompanionMode::CompanionKeep)
            ]),
            proptest::option::of("[a-z0-9_]{1,12}"),
            0u16..=2048,
            proptest::option::of(any::<u64>()),
            proptest::option::of("[ -~]{0,60}"),
        )
            .prop_map(
                |(state, epoch, owner, step, mode, driver, msix_size, table_base, reason)| {
                    // An attached or tearing-down record always names its owner.
                    let owner = owner.or(matches!(
                        state,
                        DeviceState::Attached | DeviceState::TearingDown
                    )
                    .then_some((1, None, None, None)));
                    DeviceRecord {
                        owner: owner.map(|(d, _, _, _)| DomId(d)),
                        owner_uid: owner.and_then(|(_, _, _, u)| u),
                        // A stubdomain beside some owners (any domid a domain may have).
                        dm_domain: owner
                            .and_then(|(_, _, _, u)| u)
                            .map(|u| DomId((u % 0x7ff0) as u16)),
                        credential: owner
                            .and_then(|(_, _, c, _)| c)
                            .map(|c| crate::credential::AssignmentToken::from_entropy(c).digest()),
                        owner_handle: owner
                            .and_then(|(_, h, _, _)| h)
                            .map(DomainHandle)
                            .filter(|h| !h.is_nil()),
                        step,
                        mode,
                        driver,
                        msix_size,
                        table_base,
                        reason,
                        ..DeviceRecord::new(pci::Sbdf::from_devfn(0, 3, 0), state, epoch)
                    }
                },
            )
    }

    /// The unique id decides where both sides have one (Xen 4.21+: a VM booted again
    /// under its UUID is another incarnation); else the handle.
    #[test]
    fn the_unique_id_decides_the_incarnation_where_known() {
        let h = DomainHandle([7; 16]);
        let mut rec = DeviceRecord::new(pci::Sbdf::from_devfn(0, 3, 0), DeviceState::Attached, 1);
        rec.owner = Some(DomId(4));
        rec.owner_handle = Some(h);
        rec.owner_uid = Some(10);
        let info = |handle, unique_id| xen::DomainInfo {
            domid: DomId(4),
            dying: false,
            shutdown: false,
            hvm: true,
            paused: false,
            shutdown_reason: 0,
            handle,
            unique_id,
        };
        assert!(rec.owner_incarnation_is(&info(h, Some(10))));
        assert!(
            !rec.owner_incarnation_is(&info(h, Some(11))),
            "same handle, new domain"
        );
        assert!(
            rec.owner_incarnation_is(&info(h, None)),
            "no unique id: the handle"
        );
        assert!(!rec.owner_incarnation_is(&info(DomainHandle([8; 16]), None)));
        assert!(
            DeviceRecord::decode_head(rec.sbdf, "state=assignable epoch=1 uid=3 msix-size=0")
                .is_err()
        );
        assert!(DeviceRecord::decode_head(
            rec.sbdf,
            "state=attached epoch=1 owner=2 uid=x msix-size=0"
        )
        .is_err());
    }

    proptest! {
        /// A head survives its own encoding, free-text reason (spaces, `=`) included.
        #[test]
        fn heads_round_trip(rec in arb_head()) {
            let text = rec.encode_head();
            prop_assert_eq!(DeviceRecord::decode_head(rec.sbdf, &text), Ok(rec));
        }

        /// Hand-edited or garbage heads never panic and never parse into something that
        /// encodes differently.
        #[test]
        fn garbage_heads_are_rejected_or_canonical(text in "[a-z=0-9x -]{0,80}") {
            let s = pci::Sbdf::from_devfn(0, 3, 0);
            if let Ok(r) = DeviceRecord::decode_head(s, &text) {
                prop_assert_eq!(DeviceRecord::decode_head(s, &r.encode_head()), Ok(r));
            }
        }
    }
}
