//! One entry point for bringing the ledger in line with the world: [`Engine::reconcile`],
//! used by the daemon's rounds, every command and recovery after a crash alike. What to do
//! with each device is decided by one pure function, [`decide`], from its record, what Xen
//! says of its owner and what asked ([`Trigger`]); the teardown then runs its journaled
//! steps (`teardown.rs`).

use pci::Sbdf;
use xen::DomId;
use xenstore::TxId;

use crate::engine::*;
use crate::ledger::*;
use crate::{EngineError, Liveness, NoticeKind, QuarantineReason};

type Result<T> = std::result::Result<T, EngineError>;

/// What asks for a reconciliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon's round, or a restarted ptguard: every device whose teardown is unfinished,
    /// whose attach was interrupted, or whose owner is gone.
    Recover,
    /// A command about to act on one device: that device's unfinished work only (another
    /// device's is the daemon's, or that device's own command's).
    Resume(Sbdf),
    /// The toolstack says a domain is gone (`release-domain`): each of its devices.
    DomainReleased(DomId),
    /// The operator or a toolstack hook takes one device from its guest, with the reason
    /// the ledger records (`unplug`, `pre-reset`, `attach-failed`).
    Unplug(Sbdf, &'static str),
}

impl Trigger {
    /// Whether a device's failing step is the caller's error (it asked for that device or
    /// domain) rather than a reason to quarantine it and go on with the others.
    fn explicit(&self) -> bool {
        matches!(self, Trigger::DomainReleased(_) | Trigger::Unplug(..))
    }
}

/// What to do with one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing for this trigger.
    Leave,
    /// Nothing to do, and this is how it stands (a named device already clean or failed).
    Report(Outcome),
    /// Start its teardown, recording why.
    Start(&'static str),
    /// Its teardown is under way or quarantined: resume it from its journaled step.
    Resume,
}

/// The one decision of what a trigger means for a device. Pure: the record, what Xen says
/// of the owner ([`Liveness::of_owner`]; `None` where the trigger does not depend on it,
/// and not asked), and the trigger.
pub fn decide(rec: &DeviceRecord, owner: Option<Liveness>, trigger: &Trigger) -> Decision {
    let named = |reason: &'static str| match rec.state {
        DeviceState::Assignable => Decision::Report(Outcome::Assignable { epoch: rec.epoch }),
        DeviceState::Attached => Decision::Start(reason),
        DeviceState::TearingDown | DeviceState::Quarantined => Decision::Resume,
    };
    match *trigger {
        Trigger::Unplug(s, reason) if s == rec.sbdf => named(reason),
        Trigger::DomainReleased(d) if rec.owner == Some(d) => named("destroy"),
        Trigger::Recover => unfinished(rec, owner),
        Trigger::Resume(s) if s == rec.sbdf => unfinished(rec, owner),
        _ => Decision::Leave,
    }
}

/// What a crash or a gone owner left to finish.
fn unfinished(rec: &DeviceRecord, owner: Option<Liveness>) -> Decision {
    match rec.state {
        DeviceState::TearingDown | DeviceState::Quarantined => Decision::Resume,
        DeviceState::Attached if rec.step == Some(Step::Attach) => {
            Decision::Start("attach-interrupted")
        }
        // A suspended or soft-reset owner may run again: its device stays.
        DeviceState::Attached if owner.is_some_and(Liveness::finished) => {
            Decision::Start("destroy")
        }
        _ => Decision::Leave,
    }
}

impl Engine<'_> {
    /// Brings the devices `trigger` concerns in line with the world and returns how each
    /// one it acted on (or named) stands. For [`Trigger::Recover`] and [`Trigger::Resume`]
    /// a device whose step fails is quarantined with the reason and the others go on (it is
    /// retried on the next round); for the explicit triggers the error is returned.
    pub fn reconcile(&mut self, trigger: Trigger) -> Result<Vec<(Sbdf, Outcome)>> {
        let records = match trigger {
            Trigger::Unplug(sbdf, reason) => {
                self.refuse_protected_owner(sbdf)?;
                return Ok(vec![(sbdf, self.teardown(sbdf, reason)?)]);
            }
            // The heads decide; a teardown reads its own device's bindings, so a release
            // costs the same however many other devices the ledger holds.
            Trigger::DomainReleased(domid) => {
                self.refuse_protected(domid, "tear down the devices of")?;
                self.owned_heads(domid)?
            }
            Trigger::Resume(sbdf) => match read_head(self.xs, TxId::NONE, sbdf) {
                Ok(Some(r)) => vec![Ok(r)],
                Ok(None) => Vec::new(),
                Err(e) => vec![Err(e)],
            },
            Trigger::Recover => self.list_heads()?,
        };
        let hv = self.platform.hypervisor();
        let mut out = Vec::new();
        for rec in records {
            let rec = match rec {
                Ok(r) => r,
                Err(e) if trigger.explicit() => return Err(e),
                Err(e) => {
                    self.say(NoticeKind::CorruptEntrySkipped {
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let sbdf = rec.sbdf;
            let owner = match trigger {
                // An attached record without an owner has none that could still run.
                Trigger::Recover | Trigger::Resume(_) => {
                    Some(Liveness::ask_owner(hv, &rec)?.unwrap_or(Liveness::Gone))
                }
                _ => None,
            };
            let outcome = match decide(&rec, owner, &trigger) {
                Decision::Leave => continue,
                Decision::Report(o) => Ok(o),
                Decision::Start(reason) => self.teardown(sbdf, reason),
                // The head just read, and its bindings.
                Decision::Resume => {
                    let mut rec = rec;
                    read_bindings(self.xs, TxId::NONE, &mut rec)
                        .and_then(|()| self.run_teardown(rec))
                }
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) if e.is_crash() || trigger.explicit() => return Err(e),
                // One device's failing step must not stop the rest (nor the daemon): keep
                // it from guests, say why, and retry it on the next round.
                Err(e) => {
                    let Some(mut rec) = read_head(self.xs, TxId::NONE, sbdf)? else {
                        continue;
                    };
                    let why = QuarantineReason::StepFailed {
                        step: rec.step.map_or("its first step", |s| s.as_str()),
                        error: e.to_string(),
                    };
                    self.quarantine(&mut rec, why)?
                }
            };
            out.push((sbdf, outcome));
        }
        Ok(out)
    }

    /// Whether some device's teardown is quarantined or unfinished, or an announced unplug
    /// is pending (the daemon retries those on a timer as well as on domain events).
    /// Reads the record heads and the unplug markers' names only.
    pub fn has_unfinished(&mut self) -> Result<bool> {
        if heads(self.xs)?
            .iter()
            .any(|r| matches!(r.state, DeviceState::TearingDown | DeviceState::Quarantined))
        {
            return Ok(true);
        }
        Ok(!self.unplug_names()?.is_empty())
    }

    /// Hot-unplug: tears the device down while its owner may still run.
    pub fn detach(&mut self, sbdf: Sbdf) -> Result<Outcome> {
        self.refuse_protected_owner(sbdf)?;
        self.refuse_unreleasable_unplug(sbdf)?;
        self.teardown(sbdf, "unplug")
    }

    /// One device of several in a live guest's backend leaves only through pcifront's
    /// answer to the Reconfiguring handshake; without a connected pcifront pciback keeps
    /// the device until the whole backend goes. Refused before anything is written.
    fn refuse_unreleasable_unplug(&mut self, sbdf: Sbdf) -> Result<()> {
        let rec =
            read_head(self.xs, TxId::NONE, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
        let Some(owner) = rec.owner else {
            return Ok(());
        };
        if !crate::lifecycle::owner_may_run(self.platform.hypervisor(), owner)? {
            return Ok(());
        }
        let peers = self.backend_peers(sbdf, owner)?;
        if !peers.is_empty() {
            self.shared_backend_exit(sbdf, owner, &peers, true)?;
        }
        Ok(())
    }

    /// An unplug someone asked for is refused, before anything is written, when the device
    /// belongs to a protected domain: its record stays as it is.
    fn refuse_protected_owner(&mut self, sbdf: Sbdf) -> Result<()> {
        let rec =
            read_head(self.xs, TxId::NONE, sbdf)?.ok_or(EngineError::UnknownDevice { sbdf })?;
        match rec.owner {
            Some(owner) => self.refuse_protected(owner, "detach a device from"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sbdf(bus: u8) -> Sbdf {
        Sbdf::new(0, bus, 0, 0).unwrap()
    }

    fn record(state: DeviceState, owner: Option<u16>, step: Option<Step>) -> DeviceRecord {
        DeviceRecord {
            owner: owner.map(DomId),
            step,
            reason: Some("why".into()),
            ..DeviceRecord::new(sbdf(3), state, 7)
        }
    }

    #[test]
    fn every_trigger_decides_as_the_table_says() {
        use DeviceState::*;
        let (alive, gone, unobserved) = (Some(Liveness::Running), Some(Liveness::Gone), None);
        let d = DomId(5);
        let me = sbdf(3);
        let attached = record(Attached, Some(5), None);
        let attaching = record(Attached, Some(5), Some(Step::Attach));
        let tearing = record(TearingDown, Some(5), Some(Step::Release));
        let quarantined = record(Quarantined, Some(5), Some(Step::Release));
        let assignable = record(Assignable, None, None);
        let cases: Vec<(&DeviceRecord, Option<Liveness>, Trigger, Decision)> = vec![
            // Recovery finishes what is unfinished and what a gone owner left.
            (&tearing, alive, Trigger::Recover, Decision::Resume),
            (&quarantined, alive, Trigger::Recover, Decision::Resume),
            (
                &attaching,
                alive,
                Trigger::Recover,
                Decision::Start("attach-interrupted"),
            ),
            (
                &attached,
                gone,
                Trigger::Recover,
                Decision::Start("destroy"),
            ),
            (&attached, alive, Trigger::Recover, Decision::Leave),
            // Every other way Xen may describe the owner: those that may run keep it.
            (
                &attached,
                Some(Liveness::Paused),
                Trigger::Recover,
                Decision::Leave,
            ),
            (
                &attached,
                Some(Liveness::Suspended),
                Trigger::Recover,
                Decision::Leave,
            ),
            (
                &attached,
                Some(Liveness::SoftReset),
                Trigger::Recover,
                Decision::Leave,
            ),
            (
                &attached,
                Some(Liveness::ShutDown { reason: 3 }),
                Trigger::Recover,
                Decision::Start("destroy"),
            ),
            (
                &attached,
                Some(Liveness::Dying),
                Trigger::Recover,
                Decision::Start("destroy"),
            ),
            (
                &attached,
                Some(Liveness::Replaced),
                Trigger::Recover,
                Decision::Start("destroy"),
            ),
            (&assignable, gone, Trigger::Recover, Decision::Leave),
            // A command resumes only its own device.
            (&tearing, alive, Trigger::Resume(me), Decision::Resume),
            (&tearing, alive, Trigger::Resume(sbdf(4)), Decision::Leave),
            (&attached, gone, Trigger::Resume(sbdf(4)), Decision::Leave),
            // A named device always gets an answer.
            (
                &attached,
                unobserved,
                Trigger::Unplug(me, "unplug"),
                Decision::Start("unplug"),
            ),
            (
                &tearing,
                unobserved,
                Trigger::Unplug(me, "unplug"),
                Decision::Resume,
            ),
            (
                &assignable,
                unobserved,
                Trigger::Unplug(me, "unplug"),
                Decision::Report(Outcome::Assignable { epoch: 7 }),
            ),
            (
                &attached,
                unobserved,
                Trigger::Unplug(sbdf(4), "unplug"),
                Decision::Leave,
            ),
            // A released domain's devices, and only its.
            (
                &attached,
                unobserved,
                Trigger::DomainReleased(d),
                Decision::Start("destroy"),
            ),
            (
                &quarantined,
                unobserved,
                Trigger::DomainReleased(d),
                Decision::Resume,
            ),
            (
                &attached,
                unobserved,
                Trigger::DomainReleased(DomId(6)),
                Decision::Leave,
            ),
            (
                &assignable,
                unobserved,
                Trigger::DomainReleased(d),
                Decision::Leave,
            ),
        ];
        for (rec, owner, trigger, want) in cases {
            assert_eq!(
                decide(rec, owner, &trigger),
                want,
                "{} {:?} {owner:?} {trigger:?}",
                rec.state,
                rec.step
            );
        }
    }

    fn arb_trigger() -> impl Strategy<Value = Trigger> {
        prop_oneof![
            Just(Trigger::Recover),
            (0u8..3).prop_map(|n| Trigger::Resume(sbdf(n + 2))),
            (4u16..7).prop_map(|d| Trigger::DomainReleased(DomId(d))),
            (0u8..3).prop_map(|n| Trigger::Unplug(sbdf(n + 2), "unplug")),
        ]
    }

    proptest! {
        /// Only an attached device's teardown is started; a trigger about another device
        /// or domain never acts; a device still running its guest under recovery is left.
        #[test]
        fn decisions_stay_within_their_trigger(
            state in proptest::sample::select(DeviceState::ALL.to_vec()),
            owner in proptest::option::of(4u16..7),
            attaching in any::<bool>(),
            view in proptest::option::of(prop_oneof![
                Just(Liveness::Running), Just(Liveness::Paused), Just(Liveness::Suspended),
                Just(Liveness::SoftReset), proptest::sample::select(vec![0u8, 1, 3, 4, 6]).prop_map(|reason| Liveness::ShutDown { reason }),
                Just(Liveness::Dying), Just(Liveness::Gone), Just(Liveness::Replaced),
            ]),
            trigger in arb_trigger(),
        ) {
            let step = attaching.then_some(Step::Attach);
            let rec = record(state, owner, step);
            let d = decide(&rec, view, &trigger);
            if matches!(d, Decision::Start(_)) {
                prop_assert_eq!(state, DeviceState::Attached);
            }
            let concerns = match trigger {
                Trigger::Recover => true,
                Trigger::Resume(s) | Trigger::Unplug(s, _) => s == rec.sbdf,
                Trigger::DomainReleased(dom) => rec.owner == Some(dom),
            };
            if !concerns {
                prop_assert_eq!(d.clone(), Decision::Leave);
            }
            if matches!(trigger, Trigger::Recover | Trigger::Resume(_))
                && view.is_some_and(Liveness::may_run)
                && state == DeviceState::Attached
                && !attaching
            {
                prop_assert_eq!(d, Decision::Leave);
            }
        }
    }
}
