//! The binding ledger's schema in Xenstore (documented in `docs/ledger.md`).
//!
//! ```text
//! /ptguard                                   n0 (dom0 only)
//! /ptguard/device/<SSSS-BB-DD-F>                     the record's head, one node, space-separated key=value:
//!     state=assignable|attached|tearing-down|quarantined  epoch=<assignments so far>
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

use std::fmt;
use std::str::FromStr;

use pci::Sbdf;
use serde::Serialize;

pub const ROOT: &str = "/ptguard";
pub const DEVICES: &str = "/ptguard/device";
/// The last epoch of each device ptguard forgot (`assignable-remove`, a companion
/// device's end): a record made again starts above it, so an old epoch never comes back.
pub const RETIRED_EPOCHS: &str = "/ptguard/retired-epoch";

/// Unplugs a toolstack's hook announced (`ptguard hook pre-unplug`), one node per device
/// ([`UnplugMarker`]): the daemon tells from them an unplug that never finished.
pub const UNPLUGS: &str = "/ptguard/unplug";

/// Which devices the ledger records for each owner: an empty node
/// `/ptguard/owner/<domid>/<SSSS-BB-DD-F>` per record that names an owner, written and
/// removed in the transactions that set and clear it, so a domain's release reads only its
/// own devices. Its own value is [`OWNERS_INDEXED`] once every record is indexed (a ledger
/// written before the index is indexed by the first release that finds it so).
pub const OWNERS: &str = "/ptguard/owner";
pub const OWNERS_INDEXED: &str = "indexed";

/// Where the index notes that `domid` owns `sbdf` ([`OWNERS`]).
pub fn owner_index_path(domid: xen::DomId, sbdf: Sbdf) -> String {
    format!("{OWNERS}/{}/{}", domid.0, sbdf.xs_key())
}

/// Devices are keyed by libxl's Xenstore form of the address, `SSSS-BB-DD-F`.
pub fn device_path(sbdf: Sbdf) -> String {
    format!("{DEVICES}/{}", sbdf.xs_key())
}
/// Where the last epoch of a forgotten device is kept ([`RETIRED_EPOCHS`]).
pub fn retired_epoch_path(sbdf: Sbdf) -> String {
    format!("{RETIRED_EPOCHS}/{}", sbdf.xs_key())
}
/// Where an announced unplug of `sbdf` is kept ([`UNPLUGS`]).
pub fn unplug_path(sbdf: Sbdf) -> String {
    format!("{UNPLUGS}/{}", sbdf.xs_key())
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
}

impl DeviceState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeviceState; 4] = [
        DeviceState::Assignable,
        DeviceState::Attached,
        DeviceState::TearingDown,
        DeviceState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Assignable => "assignable",
            DeviceState::Attached => "attached",
            DeviceState::TearingDown => "tearing-down",
            DeviceState::Quarantined => "quarantined",
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

mod binding;
mod record;
pub use binding::{Binding, BindingKey, BindingState};
pub use record::{CompanionMode, DeviceRecord};

/// An unplug a toolstack's hook announced: `owner=D since=T [reported]` (`T`: Unix
/// seconds). libxl waits 10 s for qemu to let an HVM guest's device go
/// (`LIBXL_QMP_CMD_TIMEOUT`) and then gives up without touching Xenstore, so this node is
/// the only trace of an unplug that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UnplugMarker {
    pub sbdf: Sbdf,
    pub owner: xen::DomId,
    /// When the hook ran (Unix seconds).
    pub since: u64,
    /// The daemon has logged that it did not finish.
    pub reported: bool,
}

impl UnplugMarker {
    pub fn encode(&self) -> String {
        let mut t = format!("owner={} since={}", self.owner.0, self.since);
        if self.reported {
            t.push_str(" reported");
        }
        t
    }

    /// Parses a marker node; any deviation is an error (the ledger may be edited by hand).
    pub fn decode(sbdf: Sbdf, text: &str) -> Result<UnplugMarker, String> {
        let (mut owner, mut since, mut reported) = (None, None, false);
        for part in text.split_whitespace() {
            match part.split_once('=') {
                Some(("owner", v)) if owner.is_none() => {
                    owner = Some(
                        v.parse::<u16>()
                            .map_err(|_| format!("owner={v:?} is not a domain id"))?,
                    )
                }
                Some(("since", v)) if since.is_none() => {
                    since = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("since={v:?} is not a time"))?,
                    )
                }
                None if part == "reported" && !reported => reported = true,
                _ => return Err(format!("unexpected field {part:?}")),
            }
        }
        Ok(UnplugMarker {
            sbdf,
            owner: xen::DomId(owner.ok_or("missing owner=")?),
            since: since.ok_or("missing since=")?,
            reported,
        })
    }
}
