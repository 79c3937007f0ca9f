//! Version profiles: which Xen and which Linux pciback the simulated host behaves as.

use serde::{Deserialize, Serialize};

/// The hypervisor's version, as far as passthrough MSI-X behaviour differs
/// (xen-semantics.md §1.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum XenProfile {
    /// Xen 4.11.0, the seed's era: `host_maskall` is cleared only by a 0→1 change of
    /// `used_entries`; mapping a vector of an unprepared device takes the "insecure" path
    /// (table read, warning, guest crashed if it has memory).
    #[serde(rename = "4.11.0")]
    Xen4_11_0,
    /// Xen 4.17: `pci_reset_msix_state` at assign clears both maskall flags but refuses a
    /// device whose hardware Function Mask is set (`-EBUSY`); unprepared maps get `-ENODATA`.
    #[serde(rename = "4.17")]
    Xen4_17,
}

impl XenProfile {
    pub fn name(self) -> &'static str {
        match self {
            XenProfile::Xen4_11_0 => "xen-4.11.0",
            XenProfile::Xen4_17 => "xen-4.17",
        }
    }
    /// Whether assign runs `pci_reset_msix_state` (commit 575e18d54d19).
    pub fn resets_msix_state_on_assign(self) -> bool {
        self >= XenProfile::Xen4_17
    }
    /// Whether a domU map without a recorded table answers `-ENODATA` (XSA-337).
    pub fn enodata_without_table(self) -> bool {
        self >= XenProfile::Xen4_17
    }
    pub fn version(self) -> xen::XenVersion {
        match self {
            XenProfile::Xen4_11_0 => xen::XenVersion {
                major: 4,
                minor: 11,
            },
            XenProfile::Xen4_17 => xen::XenVersion {
                major: 4,
                minor: 17,
            },
        }
    }
}

/// Linux pciback's reset behaviour (xen-semantics.md §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PcibackProfile {
    /// Before commit 7681f31ec9cd: `xen_pcibk_reset_device` writes 0 to the Command register,
    /// leaving memory decoding off.
    #[serde(rename = "old")]
    BeforeCommandFix,
    /// After it: the Command register keeps Memory on (only Bus Master is cleared).
    #[serde(rename = "new")]
    AfterCommandFix,
}

impl PcibackProfile {
    pub fn name(self) -> &'static str {
        match self {
            PcibackProfile::BeforeCommandFix => "pciback-old",
            PcibackProfile::AfterCommandFix => "pciback-new",
        }
    }
}

/// One simulated host's profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Profile {
    pub xen: XenProfile,
    pub pciback: PcibackProfile,
    /// Chao Gao's unmerged pciback patch: `release_msix` + `prepare_msix` whenever a device
    /// comes back from a guest (the "pciback release+prepare only" policy).
    pub pciback_release_prepare_on_put: bool,
    /// Each domU's `nr_pirqs` (default `nr_irqs_gsi` + 32, Xen's `extra_guest_irqs`
    /// default; raised on real hosts with `extra_guest_irqs=`, needed to map more than 32
    /// MSI vectors in one guest).
    #[serde(default)]
    pub nr_pirqs: Option<u32>,
}

impl Profile {
    pub fn new(xen: XenProfile, pciback: PcibackProfile) -> Profile {
        Profile {
            xen,
            pciback,
            pciback_release_prepare_on_put: false,
            nr_pirqs: None,
        }
    }
}

impl Default for Profile {
    fn default() -> Profile {
        Profile::new(XenProfile::Xen4_17, PcibackProfile::AfterCommandFix)
    }
}
