//! The one answer to "is the owner gone?": what Xen says of a domain (running, paused,
//! suspended, soft-reset, shut down with a reason, dying, gone), and for a ledger record
//! whether the domid still names the incarnation the device was given to. Every decision
//! that depends on a domain's life (reconcile's `decide`, the teardown's facts and its
//! release, the sweep, pre-reset, the orphan release, the broker's bind, attach and adopt,
//! doctor) asks here, so no two of them can disagree about the same domain.

use std::fmt;

use serde::{Serialize, Serializer};
use xen::{DomId, DomainInfo, Hypervisor, XenError};

use crate::ledger::DeviceRecord;

/// A domain's life as Xen reports it (`XEN_DOMCTL_getdomaininfo`), and against a record,
/// whether it is still the recorded incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Paused by the toolstack (a guest being built, `xl pause`): it runs again.
    Paused,
    /// Shut down with `SHUTDOWN_suspend`: a save or migration may resume it.
    Suspended,
    /// Shut down with `SHUTDOWN_soft_reset`: the toolstack resets and resumes the same
    /// domain (kexec in a guest).
    SoftReset,
    /// Shut down for good: `reason` is the `SHUTDOWN_*` code (0 poweroff, 1 reboot, 3 crash,
    /// 4 watchdog; any code Xen may add later counts as for good).
    ShutDown {
        reason: u8,
    },
    /// Being destroyed; Xen frees what it holds when the last reference goes.
    Dying,
    /// Xen has no domain with this id.
    Gone,
    /// The domid names a later domain than the one the record was given to (Xen reuses
    /// domids): the recorded owner is gone, and nothing may be directed at the newcomer.
    Replaced,
}

impl Liveness {
    /// What Xen says of a domain, without a record to compare its incarnation with.
    pub fn of(info: Option<&DomainInfo>) -> Liveness {
        let Some(i) = info else {
            return Liveness::Gone;
        };
        if i.dying {
            Liveness::Dying
        } else if i.shutdown {
            match i.shutdown_reason {
                DomainInfo::SHUTDOWN_SUSPEND => Liveness::Suspended,
                DomainInfo::SHUTDOWN_SOFT_RESET => Liveness::SoftReset,
                reason => Liveness::ShutDown { reason },
            }
        } else if i.paused {
            Liveness::Paused
        } else {
            Liveness::Running
        }
    }

    /// What Xen says of a record's owner: [`Liveness::Replaced`] when the domid now names
    /// another incarnation (by unique id where both sides have one, else by handle).
    pub fn of_owner(rec: &DeviceRecord, info: Option<&DomainInfo>) -> Liveness {
        match info {
            Some(i) if !rec.owner_incarnation_is(i) => Liveness::Replaced,
            _ => Liveness::of(info),
        }
    }

    /// Asks Xen about `domid`.
    pub fn ask(hv: &dyn Hypervisor, domid: DomId) -> Result<Liveness, XenError> {
        Ok(Liveness::of(hv.domain_info(domid)?.as_ref()))
    }

    /// Asks Xen about the record's owner; `None` for a record without one.
    pub fn ask_owner(
        hv: &dyn Hypervisor,
        rec: &DeviceRecord,
    ) -> Result<Option<Liveness>, XenError> {
        match rec.owner {
            Some(d) => Ok(Some(Liveness::of_owner(rec, hv.domain_info(d)?.as_ref()))),
            None => Ok(None),
        }
    }

    /// Whether the domain may run again: its device, pirqs and backend are its own.
    pub fn may_run(self) -> bool {
        matches!(
            self,
            Liveness::Running | Liveness::Paused | Liveness::Suspended | Liveness::SoftReset
        )
    }

    /// Whether the domain (the recorded one) will never run again: dying, shut down for
    /// good, gone, or replaced. Only such a domain's device is torn down behind its back,
    /// and only such a domain's pirqs are swept.
    pub fn finished(self) -> bool {
        !self.may_run()
    }

    /// Whether Xen still has the domain itself (it may still hold pirqs, a device, a
    /// backend): not gone, not replaced.
    pub fn exists(self) -> bool {
        !matches!(self, Liveness::Gone | Liveness::Replaced)
    }

    /// The stable name in JSON: `running`, `paused`, `suspended`, `soft-reset`,
    /// `poweroff`, `reboot`, `crash`, `watchdog`, `shutdown-N` (another code), `dying`,
    /// `gone`, `replaced`.
    pub fn code(self) -> std::borrow::Cow<'static, str> {
        match self {
            Liveness::Running => "running".into(),
            Liveness::Paused => "paused".into(),
            Liveness::Suspended => "suspended".into(),
            Liveness::SoftReset => "soft-reset".into(),
            Liveness::ShutDown { reason: 0 } => "poweroff".into(),
            Liveness::ShutDown { reason: 1 } => "reboot".into(),
            Liveness::ShutDown { reason: 3 } => "crash".into(),
            Liveness::ShutDown { reason: 4 } => "watchdog".into(),
            Liveness::ShutDown { reason } => format!("shutdown-{reason}").into(),
            Liveness::Dying => "dying".into(),
            Liveness::Gone => "gone".into(),
            Liveness::Replaced => "replaced".into(),
        }
    }

    /// The words for logs and doctor.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::Paused => "paused",
            Liveness::Suspended => "suspended",
            Liveness::SoftReset => "in a soft reset",
            Liveness::ShutDown { reason: 0 } => "powered off",
            Liveness::ShutDown { reason: 1 } => "shut down to reboot",
            Liveness::ShutDown { reason: 3 } => "crashed",
            Liveness::ShutDown { reason: 4 } => "stopped by its watchdog",
            Liveness::ShutDown { .. } => "shut down",
            Liveness::Dying => "dying",
            Liveness::Gone => "gone",
            Liveness::Replaced => "gone (its domid now names another domain)",
        }
    }
}

impl Serialize for Liveness {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code())
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Liveness::ShutDown { reason } if !matches!(reason, 0 | 1 | 3 | 4) => {
                write!(f, "shut down (reason {reason})")
            }
            l => f.write_str(l.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::DomainHandle;

    fn info(dying: bool, shutdown: bool, reason: u8, paused: bool) -> DomainInfo {
        DomainInfo {
            domid: DomId(5),
            dying,
            shutdown,
            hvm: true,
            paused,
            shutdown_reason: reason,
            handle: DomainHandle::default(),
            unique_id: None,
        }
    }

    #[test]
    fn every_shutdown_reason_and_state_has_one_answer() {
        let cases = [
            (info(false, false, 0, false), Liveness::Running, true),
            (info(false, false, 0, true), Liveness::Paused, true),
            (info(false, true, 2, false), Liveness::Suspended, true),
            (info(false, true, 5, false), Liveness::SoftReset, true),
            // Dying wins over a shutdown code a suspended domain carried into destroy.
            (info(true, true, 2, false), Liveness::Dying, false),
        ];
        // Shut down for good, with every code but suspend and soft reset.
        let for_good = [0u8, 1, 3, 4, 9].map(|r| {
            (
                info(false, true, r, false),
                Liveness::ShutDown { reason: r },
                false,
            )
        });
        for (i, want, may_run) in cases.into_iter().chain(for_good) {
            let got = Liveness::of(Some(&i));
            assert_eq!(got, want, "{i:?}");
            assert_eq!(got.may_run(), may_run, "{got}");
            assert!(got.exists());
        }
        assert_eq!(Liveness::of(None), Liveness::Gone);
        assert!(!Liveness::Gone.may_run() && !Liveness::Gone.exists());
    }

    #[test]
    fn a_later_incarnation_is_the_recorded_owner_replaced() {
        let mut rec = DeviceRecord::new(
            pci::Sbdf::from_devfn(0, 5, 0),
            crate::DeviceState::Attached,
            1,
        );
        rec.owner = Some(DomId(5));
        rec.owner_uid = Some(7);
        let mut now = info(false, false, 0, false);
        now.unique_id = Some(7);
        assert_eq!(Liveness::of_owner(&rec, Some(&now)), Liveness::Running);
        now.unique_id = Some(8);
        let l = Liveness::of_owner(&rec, Some(&now));
        assert_eq!(l, Liveness::Replaced);
        assert!(l.finished() && !l.exists());
        assert_eq!(Liveness::of_owner(&rec, None), Liveness::Gone);
    }
}
