//! ptguard's proving harness: the engine wired to the simulated host ([`platform`]: its
//! `Platform`, crash injection at the engine's crash points, the broker as simulated device
//! models reach it), the scenario runner with the invariants of docs/design.md checked on
//! the simulated host itself ([`rig`]) and its matrix of policies ([`matrix`]), the crash
//! explorer's loop and invariant 4
//! ([`explore`]), the multi-device crash exploration ([`explore_devices`]) and the
//! benchmarks: the engine's ([`bench_engine`]), Xenstore's ([`bench_xenstore`]) and the
//! broker under attack over its real socket ([`broker_load`]).
//!
//! It owns how ptguard is proved, not what ptguard does: it must not hold product logic
//! (that is the engine's) nor parse command lines or print for people beyond report tables
//! (that is the `ptguard` crate's). Nothing here runs on a real dom0.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench_engine;
pub mod bench_xenstore;
pub mod broker_load;
pub mod explore;
pub mod explore_devices;
pub mod matrix;
pub mod platform;
pub mod rig;

/// What can stop a harness run: the simulated host refusing a step the scenario needs, the
/// engine or Xenstore failing, or a result that is not what the run exists to measure.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("simulated host: {0}")]
    Host(String),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Xenstore(#[from] xenstore::XenstoreError),
    #[error(transparent)]
    Xen(#[from] xen::XenError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A simulated toolstack or device model step failed.
    #[error(transparent)]
    Sim(#[from] sim::SimError),
    #[error("no guest {name} in this scenario")]
    NoGuest { name: String },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot {what}: {source}")]
    System {
        what: &'static str,
        source: nix::errno::Errno,
    },
    #[error("scenario {what}")]
    BadScenario { what: String },
    #[error("replay seed {seed:?}: {why}")]
    BadSeed { seed: String, why: String },
    #[error("{0}")]
    Unexpected(String),
}
