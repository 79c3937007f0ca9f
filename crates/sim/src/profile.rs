//! Version profiles: which Xen and which Linux pciback the simulated host behaves as.

use serde::{Deserialize, Serialize};

/// The hypervisor, named after the Xen release whose sources (at its release tag) the
/// simulated host follows for passthrough MSI-X behaviour (docs/simulator.md, "Releases").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum XenProfile {
    /// The seed's era: no quarantine (assigning to `dom_io` answers `-ESRCH`, deassign
    /// returns a device to dom0), no assign-time MSI-X reset, and a map on an unprepared
    /// device takes the "insecure" path (table read, warning, guest crashed if it has memory).
    #[serde(rename = "4.11.0")]
    Xen4_11_0,
    /// 575e18d54d19 (assign-time `pci_reset_msix_state`) and quarantine, backported.
    #[serde(rename = "4.11.3")]
    Xen4_11_3,
    /// The same two changes on the 4.12 branch.
    #[serde(rename = "4.12.2")]
    Xen4_12_2,
    /// First release with both changes on its own branch.
    #[serde(rename = "4.13.0")]
    Xen4_13_0,
    /// Adds XSA-337's `-ENODATA` for a domU map without a recorded table; a Function Mask
    /// left set by firmware still makes the first assign fail `-EBUSY`.
    #[serde(rename = "4.17.0", alias = "4.17")]
    Xen4_17_0,
    /// What the real-Xen test bed runs: also clears MASKALL/ENABLE found at boot
    /// (913751d7af6e, in 4.17.2).
    #[serde(rename = "4.17.5")]
    Xen4_17_5,
    /// A current release: adds `PHYSDEVOP_pci_device_reset`, which re-initialises vPCI only
    /// and leaves `host_maskall`, `used_entries` and pirqs alone; nothing else here changes.
    #[serde(rename = "4.20.0")]
    Xen4_20_0,
    /// Xen 4.21.0: the MSI-X, pirq and assignment rules ptguard depends on are those of
    /// 4.20 (msi.c, physdev.c, irq.c and passthrough/pci.c changed only in refactors;
    /// docs/xen-semantics.md); new is `XEN_DOMCTL_get_domain_state`, which names every
    /// domain by a unique id Xen never reuses while it runs.
    #[serde(rename = "4.21.0")]
    Xen4_21_0,
    /// Xen 4.22.0: as 4.21 for everything simulated (a new domctl interface version).
    #[serde(rename = "4.22.0")]
    Xen4_22_0,
}

impl XenProfile {
    /// Every release profile, oldest first.
    pub const ALL: [XenProfile; 9] = [
        XenProfile::Xen4_11_0,
        XenProfile::Xen4_11_3,
        XenProfile::Xen4_12_2,
        XenProfile::Xen4_13_0,
        XenProfile::Xen4_17_0,
        XenProfile::Xen4_17_5,
        XenProfile::Xen4_20_0,
        XenProfile::Xen4_21_0,
        XenProfile::Xen4_22_0,
    ];

    /// The release, as `--xen` takes it.
    pub fn release(self) -> &'static str {
        match self {
            XenProfile::Xen4_11_0 => "4.11.0",
            XenProfile::Xen4_11_3 => "4.11.3",
            XenProfile::Xen4_12_2 => "4.12.2",
            XenProfile::Xen4_13_0 => "4.13.0",
            XenProfile::Xen4_17_0 => "4.17.0",
            XenProfile::Xen4_17_5 => "4.17.5",
            XenProfile::Xen4_20_0 => "4.20.0",
            XenProfile::Xen4_21_0 => "4.21.0",
            XenProfile::Xen4_22_0 => "4.22.0",
        }
    }
    pub fn name(self) -> String {
        format!("xen-{}", self.release())
    }
    /// Parses a release name; a line alone (`4.17`, `4.20`) is taken as its first profile
    /// (4.17.0 was once the only 4.17 one).
    pub fn from_release(s: &str) -> Option<XenProfile> {
        if let Some(p) = XenProfile::ALL.into_iter().find(|p| p.release() == s) {
            return Some(p);
        }
        if s.matches('.').count() != 1 {
            return None;
        }
        let line = format!("{s}.");
        XenProfile::ALL
            .into_iter()
            .find(|p| p.release().starts_with(&line))
    }
    /// Whether `dom_io` exists for assignment (quarantine) and deassign sends devices
    /// there (`iommu_quarantine`, on by default): 4.13.0, backported to 4.11.3/4.12.2.
    pub fn has_quarantine(self) -> bool {
        self >= XenProfile::Xen4_11_3
    }
    /// Whether assign runs `pci_reset_msix_state` (commit 575e18d54d19).
    pub fn resets_msix_state_on_assign(self) -> bool {
        self >= XenProfile::Xen4_11_3
    }
    /// Whether a domU map without a recorded table answers `-ENODATA` (XSA-337; in 4.15.0,
    /// none of the 4.11.3/4.12.2/4.13.0 tags has it).
    pub fn enodata_without_table(self) -> bool {
        self >= XenProfile::Xen4_17_0
    }
    /// Whether Xen clears MASKALL and ENABLE it finds set when a device is added
    /// (913751d7af6e: 4.18.0, backported to 4.16.5 and 4.17.2).
    pub fn clears_msix_state_at_add(self) -> bool {
        self >= XenProfile::Xen4_17_5
    }
    /// Whether `XEN_DOMCTL_get_domain_state` answers a domain's unique id (4.21.0).
    pub fn has_unique_domain_ids(self) -> bool {
        self >= XenProfile::Xen4_21_0
    }
    pub fn version(self) -> xen::XenVersion {
        let minor = match self {
            XenProfile::Xen4_11_0 | XenProfile::Xen4_11_3 => 11,
            XenProfile::Xen4_12_2 => 12,
            XenProfile::Xen4_13_0 => 13,
            XenProfile::Xen4_17_0 | XenProfile::Xen4_17_5 => 17,
            XenProfile::Xen4_20_0 => 20,
            XenProfile::Xen4_21_0 => 21,
            XenProfile::Xen4_22_0 => 22,
        };
        xen::XenVersion { major: 4, minor }
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
        Profile::new(XenProfile::Xen4_17_5, PcibackProfile::AfterCommandFix)
    }
}
