//! The PCI layer: everything ptguard knows about a device without asking Xen.
//!
//! This crate owns PCI addresses ([`Sbdf`]), config-space parsing with typed MSI, MSI-X,
//! PCI Express (FLR) and power-management capabilities ([`config`]), the [`PciHost`] trait
//! through which ptguard reads and writes devices, its implementation over Linux sysfs and
//! the pciback driver ([`sysfs::SysfsHost`], root directory configurable so tests run on a
//! [`fixture`] tree), and the pciback seize/release sequences ([`pciback`]). It must not call
//! Xen or hold passthrough policy: it does exactly the reads and writes it is asked for.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod builder;
pub mod config;
pub mod fixture;
pub mod host;
pub mod pciback;
pub mod sbdf;
pub mod sysfs;

use std::path::PathBuf;

pub use config::{Command, ConfigSpace, DeviceConfig, MsiCap, MsixCap};
pub use host::{PciHost, Resource};
pub use sbdf::Sbdf;

/// A PCI address that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {text:?}: {reason} (expected SSSS:BB:DD.F or BB:DD.F, hex)")]
pub struct SbdfError {
    pub text: String,
    pub reason: &'static str,
}

/// Config-space bytes that do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config space truncated: {len} bytes, need {needed}")]
    Truncated { len: usize, needed: usize },
    #[error("capability pointer at {at:#x} points into the header ({ptr:#x})")]
    CapabilityIntoHeader { at: u16, ptr: u16 },
    #[error("capability pointer at {at:#x} points outside the {len}-byte space ({ptr:#x})")]
    CapabilityOutOfRange { at: u16, ptr: u16, len: usize },
    #[error("capability list loops: pointer at {at:#x} returns to {ptr:#x}")]
    CapabilityLoop { at: u16, ptr: u16 },
    #[error("capability {id:#04x} at {offset:#x} runs past the end of config space")]
    CapabilityTruncated { id: u8, offset: u16 },
    #[error("64-bit BAR {index} has no upper half")]
    Bar64AtEnd { index: u8 },
    #[error("MSI-X capability at {offset:#x}: {what} BIR {bir} names no BAR (valid: 0-5)")]
    MsixBadBir {
        what: &'static str,
        bir: u8,
        offset: u16,
    },
    #[error("MSI-X {what} at BAR {bir} offset {offset:#x} ({len} bytes) lies beyond the BAR ({bar_size} bytes)")]
    MsixBeyondBar {
        what: &'static str,
        bir: u8,
        offset: u32,
        len: u64,
        bar_size: u64,
    },
}

/// Everything that can go wrong in the PCI layer; each names the device and the file.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error(transparent)]
    InvalidSbdf(#[from] SbdfError),
    #[error("{sbdf}: {file}: {source}")]
    Config {
        sbdf: Sbdf,
        file: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{sbdf}: no such PCI device (looked for {dir})")]
    NoSuchDevice { sbdf: Sbdf, dir: PathBuf },
    #[error("{sbdf}: the device vanished while {file} was being accessed")]
    Vanished { sbdf: Sbdf, file: PathBuf },
    #[error("{sbdf}: {file} is missing ({what})")]
    Missing {
        sbdf: Sbdf,
        file: PathBuf,
        what: &'static str,
    },
    #[error("{file}: {op} failed: {source}")]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: cannot parse {what}: {text:?}")]
    Malformed {
        file: PathBuf,
        what: &'static str,
        text: String,
    },
    #[error("{sbdf}: {what}")]
    Refused { sbdf: Sbdf, what: String },
}
