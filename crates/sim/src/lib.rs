//! The simulated Xen host.
//!
//! This crate owns a deterministic model of everything ptguard touches on a real dom0: the
//! hypervisor's domains, pirq tables and per-device MSI-X bookkeeping ([`world`]), PCI
//! functions with config space, MSI-X table and reset semantics ([`device`]), dom0 Linux's
//! PCI core and pciback ([`linux`]), guests and device models with well-behaved, crashing,
//! killed-early and hostile behaviours ([`dm`]), and the libxl toolstack order the seed
//! failure needs ([`libxl`]), each as one of seven Xen releases behaves ([`profile`]). Every
//! rule comes from `../shared/xen/*.md` or the release's sources and cites them. The
//! host is reached through the same `Hypervisor` and `PciHost` traits as a real one
//! ([`SimHost`]). It must not depend on ptguard's engine: the engine is what it tests.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod device;
pub mod dm;
pub mod dump;
pub mod error;
pub mod host;
pub mod libxl;
pub mod linux;
pub mod profile;
pub mod world;
pub mod xenbus;

pub use device::{DeviceSpec, ResetMethod};
pub use dm::{DeviceModel, DmBehaviour, VectorBroker};
pub use error::{SimError, Undelivered};
pub use host::{DomainEventSink, SimHost, SimOp};
pub use profile::{PcibackProfile, Profile, XenProfile};
pub use world::World;
