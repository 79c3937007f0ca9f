//! The simulated host's state and Xen's rules over it.
//!
//! Every rule cites the section of `../shared/xen/xen-semantics.md` it comes from. Hypercalls
//! here are made by dom0 (the toolstack, qemu-xen and pciback all run there).

use crate::error::Undelivered;
use std::collections::{BTreeMap, BTreeSet};

use pci::config::regs::*;
use pci::{ConfigSpace, Sbdf};
use serde::Serialize;
use xen::{DomId, DomainHandle, Errno, HypercallOp, MapPirq, MapSource, Pirq, PtIrq};

use crate::device::{DeviceSpec, SimDevice};
use crate::profile::Profile;

/// GSIs of the simulated host (`nr_irqs_gsi`).
pub const NR_IRQS_GSI: i32 = 48;
/// The hardware domain's pirq space (`nr_pirqs`).
pub const NR_PIRQS: i32 = 1024;
/// Xen 4.17's `extra_domU_irqs` default (`DEFAULT_EXTRA_DOMU_IRQS`, xen/common/domain.c): a
/// domU's pirq space is `nr_irqs_gsi` + this, MSI pirqs handed out from the top down, so a
/// fresh guest's first vectors get 79, 78, ... here (55, 54, ... on the test bed, whose
/// IO-APIC has 24 pins). Xen's `extra_guest_irqs=` option changes it
/// ([`crate::Profile::nr_pirqs`]).
pub const DEFAULT_EXTRA_GUEST_IRQS: i32 = 32;

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    Created,
    Running,
    Shutdown,
    /// `domain_kill` ran (`DOMDYING_dead`) but a reference keeps the domain structure, so
    /// `free_domain_pirqs` has not run (xen-semantics.md §1.8).
    Zombie,
}

/// What a pirq is mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PirqSource {
    Gsi { gsi: u32 },
    Msi { sbdf: Sbdf },
    Msix { sbdf: Sbdf, entry: u16 },
}

/// One mapped pirq of a domain.
#[derive(Clone, Debug, Serialize)]
pub struct PirqEntry {
    /// Xen's IRQ number behind it.
    pub irq: u32,
    pub source: PirqSource,
    /// HVM dpci binding (`XEN_DOMCTL_bind_pt_irq`).
    pub dpci: Option<PtIrq>,
    /// For an INTx pirq, every guest (bus, device, intx) bound to it: devices sharing one
    /// machine line in one guest are several links of one pirq (`digl_list`, Xen 4.17
    /// drivers/passthrough/x86/hvm.c).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub intx_links: BTreeSet<(u8, u8, u8)>,
    /// PV guest event channel bound to the pirq.
    pub evtchn: bool,
}

/// A domain.
#[derive(Clone, Debug, Serialize)]
pub struct Domain {
    pub domid: DomId,
    pub name: String,
    pub hvm: bool,
    pub state: DomainState,
    pub dying: bool,
    pub paused: bool,
    /// Whether it has been given memory (4.11's insecure path crashes such a domain).
    pub has_memory: bool,
    pub crashed: bool,
    pub pirqs: BTreeMap<i32, PirqEntry>,
    pub irq_access: BTreeSet<u32>,
    pub iomem: BTreeSet<(u64, u64)>,
    pub ioports: BTreeSet<(u32, u32)>,
    /// References other than the domain's own (a zombie holder, xen-semantics.md scenario 5).
    pub extra_refs: u32,
    /// Has an IOMMU context (`XEN_DOMCTL_CDF_iommu`, from xl's `passthrough=`).
    pub iommu: bool,
    /// A PV domain whose memory map its builder set from the host's, holes and reserved
    /// regions included (`XENMEM_set_memory_map`; libxl's `e820_host`, which xl turns on
    /// for a PV guest with `pci=[...]`). Without one Linux 6.5+ never sets up swiotlb-xen,
    /// and a device given to the guest DMAs to pseudo-physical addresses.
    pub host_memory_map: bool,
    /// `xen_domain_handle_t`: a fresh UUID per created domain, as xl gives (or the one
    /// the toolstack chose).
    pub handle: DomainHandle,
    /// Xen 4.21+'s `unique_id`: never the same for two domains while Xen runs (here the
    /// count of domains created; Xen seeds it from the boot time).
    #[serde(default)]
    pub unique_id: u64,
    /// The `SHUTDOWN_*` code of its last shutdown.
    pub shutdown_reason: u8,
    /// Pirqs an `unmap_pirq` force-unbound (still bound by the guest's dpci or event
    /// channel when unmapped): Xen keeps them as `arch.irq = -irq` until the guest
    /// unbinds, so they are not free (`get_free_pirq` skips them); for an MSI the guest's
    /// unbind then answers `-EINVAL` (`pt_irq_destroy_bind` finds no IRQ), so they stay
    /// taken until the domain is destroyed (4.17 `unmap_domain_pirq`, `pirq_guest_unbind`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub forced_unbound: BTreeSet<i32>,
    /// The pirqs `get_free_pirq` may still hand out in the MSI range (`nr_irqs_gsi` up to
    /// the domain's `nr_pirqs`): neither mapped nor force-unbound. An index beside `pirqs`
    /// so that choosing one costs O(log n), kept by [`Domain::map`] and [`Domain::unmap`].
    #[serde(skip)]
    msi_free: BTreeSet<i32>,
}

/// Xen's per-MSI-X-vector descriptor (`struct msi_desc`).
#[derive(Clone, Debug, Serialize)]
pub struct MsiDesc {
    pub irq: u32,
    pub domid: DomId,
    pub pirq: i32,
    pub sbdf: Sbdf,
    pub entry: u16,
    pub host_masked: bool,
    pub guest_masked: bool,
}

/// Xen's per-device state (`struct pci_dev` + `struct arch_msix`, xen-semantics.md §1.1).
#[derive(Clone, Debug, Serialize)]
pub struct XenPdev {
    /// `pdev->domain`: dom0, `DomId::IO` (quarantine) or a domU.
    pub owner: DomId,
    pub quarantine: bool,
    pub used_entries: u32,
    /// Table and PBA frames recorded (and read-only to guests) — true iff `used_entries > 0`.
    pub table_recorded: bool,
    pub host_maskall: bool,
    pub guest_maskall: bool,
    /// `MSIX_CHECK_WARN`: domain last warned about masking.
    pub warned: Option<DomId>,
}

/// What dom0's Linux knows about a device.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinuxDev {
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub enable_cnt: u32,
    /// Config space pciback saved at seize and restores after every reset.
    #[serde(skip)]
    pub saved_config: Option<ConfigSpace>,
    /// The domain pciback exported the device to (owner registration).
    pub exported_to: Option<DomId>,
    /// Vectors dom0 enabled on a PV guest's behalf (pcifront → pciback → map_pirq).
    pub pv_msix: Vec<(u16, DomId, Pirq)>,
}

/// One device: hardware, Xen's view, Linux's view.
#[derive(Clone, Debug)]
pub struct DeviceState {
    pub hw: SimDevice,
    pub xen: XenPdev,
    pub linux: LinuxDev,
}

/// pciback's driver-wide state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PcibackState {
    pub slots: Vec<Sbdf>,
    pub permissive: BTreeSet<Sbdf>,
    pub allow_interrupt_control: BTreeSet<Sbdf>,
    /// Devices whose backend went away and that pciback has not yet put back.
    pub pending_puts: BTreeSet<Sbdf>,
    /// What each domain's xenbus PCI backend exported, as pciback read it from Xenstore
    /// (`xen_pcibk_export_device` from the backend's `dev-N` nodes).
    pub xenbus: BTreeMap<DomId, BTreeSet<Sbdf>>,
}

/// Counts of every operation, for benchmarks and reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Calls made, by operation (serialized under the names Xen's headers give them).
    #[serde(serialize_with = "by_xen_name")]
    pub hypercalls: BTreeMap<HypercallOp, u64>,
    pub sysfs_writes: u64,
    pub config_writes: u64,
    /// Calls real Xen would not survive: `prepare_msix`/`release_msix` on a device without
    /// MSI-X dereference a NULL `pdev->msix` in Xen 4.17 (the simulator answers `-ENODEV`
    /// and counts them here; the oracle treats any as a violation).
    pub fatal: u64,
}

impl Counters {
    pub fn total_hypercalls(&self) -> u64 {
        self.hypercalls.values().sum()
    }

    /// How many `op` calls were made.
    pub fn calls(&self, op: HypercallOp) -> u64 {
        self.hypercalls.get(&op).copied().unwrap_or(0)
    }

    /// The counts under Xen's names (`PHYSDEVOP_map_pirq`, ...), for reports.
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        self.hypercalls
            .iter()
            .map(|(op, n)| (op.name(), *n))
            .collect()
    }
}

fn by_xen_name<S: serde::Serializer>(
    calls: &BTreeMap<HypercallOp, u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(calls.len()))?;
    for (op, n) in calls {
        m.serialize_entry(op.name(), n)?;
    }
    m.end()
}

/// Domain events for xenstored (`@introduceDomain` / `@releaseDomain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    Introduced(DomId),
    Released(DomId),
}

/// The whole simulated host.
#[derive(Clone, Debug)]
pub struct World {
    pub profile: Profile,
    pub devices: BTreeMap<Sbdf, DeviceState>,
    pub domains: BTreeMap<DomId, Domain>,
    pub descs: BTreeMap<u32, MsiDesc>,
    pub pciback: PcibackState,
    pub counters: Counters,
    /// Xen's console and dom0's kernel log, in order.
    pub console: Vec<String>,
    /// Every hypercall, sysfs write and guest action, when tracing.
    pub trace: Option<Vec<String>>,
    pub(crate) events: Vec<DomainEvent>,
    next_domid: u16,
    next_irq: u32,
    /// Domains created so far: the source of each new domain's handle.
    created: u64,
}

type R<T> = Result<T, Errno>;

/// The handle of the `n`-th domain created: a version-4-shaped UUID, deterministic so that
/// a replayed journal gives every domain the same handle again.
fn sim_handle(n: u64) -> DomainHandle {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&0x5e1f_0000_0000_4000u64.to_be_bytes());
    b[8..].copy_from_slice(&(0x8000_0000_0000_0000u64 | n).to_be_bytes());
    DomainHandle(b)
}

fn d_handle(domains: &BTreeMap<DomId, Domain>, domid: DomId) -> DomainHandle {
    domains.get(&domid).map(|d| d.handle).unwrap_or_default()
}

/// What a failed `msix_capability_init` leaves behind (Xen 4.17 `arch/x86/msi.c`): it sets
/// `host_maskall` before it looks at the device and does not undo it on failure; with
/// memory decoding off (`-ENXIO`) it writes Message Control back without Enable, on
/// `-ENODATA` back as it was.
fn msix_setup_failed(dev: &mut DeviceState, errno: Errno) -> Errno {
    dev.xen.host_maskall = true;
    let ctrl = dev.hw.msix_ctrl();
    let ctrl = if errno == Errno::ENXIO {
        ctrl & !MSIX_FLAGS_ENABLE
    } else {
        ctrl
    };
    dev.hw.write_msix_ctrl(ctrl);
    errno
}

impl World {
    pub fn new(profile: Profile) -> World {
        let mut dom0 = Domain::new(DomId::DOM0, "Domain-0", false, NR_PIRQS);
        dom0.state = DomainState::Running;
        dom0.has_memory = true;
        // dom0's GSIs are identity-mapped at boot (pirq == GSI).
        for gsi in 1..NR_IRQS_GSI {
            dom0.map(
                gsi,
                PirqEntry {
                    irq: gsi as u32,
                    source: PirqSource::Gsi { gsi: gsi as u32 },
                    dpci: None,
                    intx_links: BTreeSet::new(),
                    evtchn: false,
                },
            );
            dom0.irq_access.insert(gsi as u32);
        }
        let mut domains = BTreeMap::new();
        domains.insert(DomId::DOM0, dom0);
        World {
            profile,
            devices: BTreeMap::new(),
            domains,
            descs: BTreeMap::new(),
            pciback: PcibackState::default(),
            counters: Counters::default(),
            // What Xen 4.17 prints at boot (arch/x86/io_apic.c); a sweep reads nr_irqs_gsi here.
            console: vec![format!("IRQ limits: {NR_IRQS_GSI} GSI, 1528 MSI/MSI-X")],
            trace: None,
            events: Vec::new(),
            next_domid: 1,
            next_irq: 100,
            created: 0,
        }
    }

    /// `nr_pirqs` of a domain: the hardware domain's is large; a domU's is `nr_irqs_gsi` +
    /// `extra_guest_irqs` (`domain_create`, xen/common/domain.c).
    pub fn nr_pirqs(&self, domid: DomId) -> i32 {
        if domid == DomId::DOM0 {
            return NR_PIRQS;
        }
        self.profile
            .nr_pirqs
            .map_or(NR_IRQS_GSI + DEFAULT_EXTRA_GUEST_IRQS, |n| n as i32)
    }

    pub(crate) fn log(&mut self, line: String) {
        tracing::debug!(target: "sim", "{line}");
        if let Some(t) = &mut self.trace {
            t.push(format!("console: {line}"));
        }
        self.console.push(line);
    }

    pub(crate) fn note(&mut self, line: String) {
        if let Some(t) = &mut self.trace {
            t.push(line);
        }
    }

    pub(crate) fn count(&mut self, op: HypercallOp) {
        *self.counters.hypercalls.entry(op).or_insert(0) += 1;
    }

    /// Adds a device as Linux finds it at boot and reports it to Xen (`pci_device_add`).
    pub fn add_device(&mut self, spec: DeviceSpec) {
        let sbdf = spec.sbdf;
        let driver = spec.driver.clone();
        let mut hw = SimDevice::new(spec);
        // pdev_msi_init (913751d7af6e, 4.17.2+): MASKALL or ENABLE found set at boot is
        // cleared with a warning; older releases keep it (xen-semantics.md scenario 13).
        if self.profile.xen.clears_msix_state_at_add() && hw.msix.is_some() {
            let ctrl = hw.msix_ctrl();
            if ctrl & (MSIX_FLAGS_MASKALL | MSIX_FLAGS_ENABLE) != 0 {
                self.log(format!(
                    "{sbdf}: unexpected initial MSI-X state (MASKALL={}, ENABLE={}), fixing",
                    u8::from(ctrl & MSIX_FLAGS_MASKALL != 0),
                    u8::from(ctrl & MSIX_FLAGS_ENABLE != 0)
                ));
                hw.write_msix_ctrl(ctrl & !(MSIX_FLAGS_MASKALL | MSIX_FLAGS_ENABLE));
            }
        }
        if driver.is_none() {
            hw.set_command(0);
        }
        let enable_cnt = u32::from(driver.is_some());
        self.devices.insert(
            sbdf,
            DeviceState {
                hw,
                xen: XenPdev {
                    owner: DomId::DOM0,
                    quarantine: false,
                    used_entries: 0,
                    table_recorded: false,
                    host_maskall: false,
                    guest_maskall: false,
                    warned: None,
                },
                linux: LinuxDev {
                    driver,
                    enable_cnt,
                    ..Default::default()
                },
            },
        );
    }

    pub fn device(&self, sbdf: Sbdf) -> Option<&DeviceState> {
        self.devices.get(&sbdf)
    }

    fn dev_mut(&mut self, sbdf: Sbdf) -> R<&mut DeviceState> {
        self.devices.get_mut(&sbdf).ok_or(Errno::ENODEV)
    }

    /// A live (not fully destroyed) domain.
    fn domain(&self, domid: DomId) -> R<&Domain> {
        self.domains.get(&domid).ok_or(Errno::ESRCH)
    }
    fn domain_mut(&mut self, domid: DomId) -> R<&mut Domain> {
        self.domains.get_mut(&domid).ok_or(Errno::ESRCH)
    }

    // ----------------------------------------------------------------------------------
    // Domains
    // ----------------------------------------------------------------------------------

    /// Creates a domain (paused), as `xl create` does before unpausing it. `at` asks for a
    /// given domid (`XEN_DOMCTL_createdomain` with a non-zero id): Xen reuses ids, and
    /// answers `-EEXIST` for one in use (xen/common/domctl.c).
    pub fn create_domain(
        &mut self,
        name: &str,
        hvm: bool,
        passthrough: bool,
        at: Option<DomId>,
        handle: Option<DomainHandle>,
    ) -> R<DomId> {
        let domid = match at {
            Some(d) if d == DomId::DOM0 || d > DomId::MAX => return Err(Errno::EINVAL),
            Some(d) if self.domains.contains_key(&d) => return Err(Errno::EEXIST),
            Some(d) => d,
            None => {
                while self.domains.contains_key(&DomId(self.next_domid)) {
                    self.next_domid += 1;
                }
                self.next_domid += 1;
                DomId(self.next_domid - 1)
            }
        };
        self.created += 1;
        let mut d = Domain::new(domid, name, hvm, self.nr_pirqs(domid));
        d.iommu = passthrough;
        d.handle = handle.unwrap_or_else(|| sim_handle(self.created));
        d.unique_id = self.created;
        self.domains.insert(domid, d);
        self.events.push(DomainEvent::Introduced(domid));
        self.note(format!(
            "domain: create {domid} ({name}, {}, handle {})",
            if hvm { "hvm" } else { "pv" },
            d_handle(&self.domains, domid)
        ));
        Ok(domid)
    }

    pub fn unpause(&mut self, domid: DomId) -> R<()> {
        let d = self.domain_mut(domid)?;
        d.paused = false;
        d.has_memory = true;
        if d.state == DomainState::Created {
            d.state = DomainState::Running;
        }
        Ok(())
    }

    pub fn pause(&mut self, domid: DomId) -> R<()> {
        self.domain_mut(domid)?.paused = true;
        Ok(())
    }

    /// The guest shut itself down (reboot or poweroff); xenstored fires `@releaseDomain`.
    pub fn shutdown(&mut self, domid: DomId, reason: u8) -> R<()> {
        let d = self.domain_mut(domid)?;
        if d.state != DomainState::Zombie {
            d.state = DomainState::Shutdown;
        }
        d.shutdown_reason = reason;
        self.events.push(DomainEvent::Released(domid));
        Ok(())
    }

    /// `XEN_DOMCTL_destroydomain` → `domain_kill` (xen-semantics.md §1.8): event channels
    /// closed, dpci bindings dropped (masking each vector), remaining devices deassigned;
    /// then, unless another reference is held, `free_domain_pirqs` unmaps every pirq.
    pub fn destroy_domain(&mut self, domid: DomId) -> R<()> {
        if domid == DomId::DOM0 {
            return Err(Errno::EINVAL);
        }
        let d = self.domain_mut(domid)?;
        if d.dying {
            return self.finish_destroy_if_unreferenced(domid);
        }
        d.dying = true;
        d.paused = true;
        for p in d.pirqs.values_mut() {
            p.evtchn = false;
        }
        let bound: Vec<i32> = d
            .pirqs
            .iter()
            .filter(|(_, p)| p.dpci.is_some())
            .map(|(n, _)| *n)
            .collect();
        self.note(format!("domain: kill {domid}"));
        // arch_pci_clean_pirqs: pirq_guest_unbind each bound pirq; the IRQ shuts down, which
        // masks the vector (§1.3 applies).
        for pirq in bound {
            self.guest_unbind(domid, pirq);
        }
        // pci_release_devices: deassign everything still owned.
        let owned: Vec<Sbdf> = self
            .devices
            .iter()
            .filter(|(_, d)| d.xen.owner == domid)
            .map(|(s, _)| *s)
            .collect();
        for sbdf in owned {
            self.deassign_to_default(sbdf);
        }
        if let Ok(d) = self.domain_mut(domid) {
            d.state = DomainState::Zombie;
        }
        self.events.push(DomainEvent::Released(domid));
        self.finish_destroy_if_unreferenced(domid)
    }

    /// Holds a reference to a domain (something in dom0 keeps it a zombie).
    pub fn hold_reference(&mut self, domid: DomId) -> R<()> {
        self.domain_mut(domid)?.extra_refs += 1;
        Ok(())
    }

    /// Drops a held reference; the last one lets a dying domain's destruction complete.
    pub fn drop_reference(&mut self, domid: DomId) -> R<()> {
        let d = self.domain_mut(domid)?;
        d.extra_refs = d.extra_refs.saturating_sub(1);
        self.finish_destroy_if_unreferenced(domid)
    }

    fn finish_destroy_if_unreferenced(&mut self, domid: DomId) -> R<()> {
        let d = self.domain(domid)?;
        if !d.dying || d.extra_refs > 0 {
            return Ok(());
        }
        // complete_domain_destroy → free_domain_pirqs: unmap_domain_pirq for every pirq,
        // whoever owns the device now (§1.8).
        let pirqs: Vec<i32> = d.pirqs.keys().copied().collect();
        for pirq in pirqs {
            let _ = self.unmap_domain_pirq(domid, pirq);
        }
        self.domains.remove(&domid);
        self.note(format!("domain: {domid} destroyed"));
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // MSI-X masking (§1.3) and the Message Control intercept (§1.4)
    // ----------------------------------------------------------------------------------

    /// Writes the vector's mask bit, or falls back to `host_maskall` when the function does
    /// not decode memory and a mask was requested (`msi_set_mask_bit` / `__pci_disable_msix`).
    fn msix_mask(
        &mut self,
        sbdf: Sbdf,
        entry: u16,
        mask: bool,
        teardown: bool,
        irq: u32,
        domid: DomId,
    ) {
        let decoded = self.memory_decoded(sbdf);
        let Some(dev) = self.devices.get_mut(&sbdf) else {
            return;
        };
        let mut maskall = dev.xen.host_maskall;
        let orig = dev.hw.msix_ctrl();
        let mut warn = None;
        if decoded {
            if let Some(e) = dev.hw.table.get_mut(usize::from(entry)) {
                e.masked = mask;
            }
        } else if mask && orig & MSIX_FLAGS_MASKALL == 0 {
            maskall = true;
            warn = Some(if teardown {
                format!("cannot disable IRQ {irq}: masking MSI-X on {sbdf}")
            } else {
                format!("cannot mask IRQ {irq}: masking MSI-X on {domid}'s {sbdf}")
            });
        } else if !mask {
            warn = Some(format!(
                "unmask of IRQ {irq} on {sbdf} failed: memory decoding off"
            ));
        }
        dev.xen.host_maskall = maskall;
        let mut ctrl = orig;
        if maskall || dev.xen.guest_maskall {
            ctrl |= MSIX_FLAGS_MASKALL;
        }
        dev.hw.write_msix_ctrl(ctrl);
        if let Some(w) = warn {
            // MSIX_CHECK_WARN: "cannot mask" once per owning domain; "cannot disable" always.
            let first = dev.xen.warned != Some(domid);
            if teardown || first {
                dev.xen.warned = Some(domid);
                self.log(w);
            }
        }
    }

    /// Applies a descriptor's host/guest mask to hardware.
    fn apply_desc_mask(&mut self, irq: u32) {
        let Some(d) = self.descs.get(&irq).cloned() else {
            return;
        };
        self.msix_mask(
            d.sbdf,
            d.entry,
            d.host_masked || d.guest_masked,
            false,
            irq,
            d.domid,
        );
    }

    /// A config-space write by dom0 (sysfs `config`, qemu, pciback) through
    /// `pci_msi_conf_write_intercept` (§1.4). Returns false when Xen drops the write.
    pub fn dom0_config_write(&mut self, sbdf: Sbdf, offset: u16, data: &[u8]) -> R<bool> {
        self.counters.config_writes += 1;
        let dev = self.dev_mut(sbdf)?;
        let len = data.len() as u16;
        if let Some(m) = dev.hw.msix {
            let (start, end) = (m.offset, m.offset + MSIX_PBA + 4);
            if offset < end && offset + len > start && offset >= 64 {
                if offset != m.offset + MSIX_FLAGS || len != 2 {
                    return Ok(false);
                }
                let mut v = u16::from_le_bytes([data[0], data[1]]);
                dev.xen.guest_maskall = v & MSIX_FLAGS_MASKALL != 0;
                if dev.xen.host_maskall {
                    v |= MSIX_FLAGS_MASKALL;
                }
                dev.hw.write_msix_ctrl(v);
                return Ok(true);
            }
        }
        if offset == COMMAND && len >= 2 {
            dev.hw.set_command(u16::from_le_bytes([data[0], data[1]]));
            return Ok(true);
        }
        // Other registers of the header (BARs etc.) and capabilities we do not model are
        // written through.
        dev.hw
            .config
            .write(offset, data)
            .map_err(|_| Errno::EINVAL)?;
        Ok(true)
    }

    // ----------------------------------------------------------------------------------
    // PHYSDEVOP_* (§1.5)
    // ----------------------------------------------------------------------------------

    fn get_free_pirq(d: &Domain, msi: bool, nr_pirqs: i32) -> R<i32> {
        if !msi {
            if let Some(p) = (16..NR_IRQS_GSI).find(|p| !d.pirqs.contains_key(p)) {
                return Ok(p);
            }
        }
        // The highest free one at or above nr_irqs_gsi (4.17 get_free_pirq, MSI: counting
        // down from nr_pirqs - 1).
        d.msi_free
            .range(NR_IRQS_GSI..nr_pirqs)
            .next_back()
            .copied()
            .ok_or(Errno::ENOSPC)
    }

    pub fn map_pirq(&mut self, req: &MapPirq) -> R<Pirq> {
        let nr = self.nr_pirqs(req.domid);
        let d = self.domain(req.domid)?;
        if let Some(p) = req.pirq {
            if p.0 >= nr || p.0 < 0 {
                return Err(Errno::EINVAL);
            }
        }
        match req.source {
            MapSource::Gsi { gsi } => {
                if gsi as i32 >= NR_IRQS_GSI || gsi == 0 {
                    return Err(Errno::EINVAL);
                }
                let existing = d
                    .pirqs
                    .iter()
                    .find(|(_, e)| e.source == PirqSource::Gsi { gsi })
                    .map(|(p, _)| *p);
                let pirq = match (req.pirq, existing) {
                    (Some(p), _) => p.0,
                    (None, Some(p)) => p,
                    (None, None) => Self::get_free_pirq(d, false, nr)?,
                };
                if let Some(e) = d.pirqs.get(&pirq) {
                    if e.source != (PirqSource::Gsi { gsi }) {
                        self.log(format!(
                            "{}: pirq {pirq} already mapped; not remapped",
                            req.domid
                        ));
                    }
                    return Ok(Pirq(pirq));
                }
                let d = self.domain_mut(req.domid)?;
                d.map(
                    pirq,
                    PirqEntry {
                        irq: gsi,
                        source: PirqSource::Gsi { gsi },
                        dpci: None,
                        intx_links: BTreeSet::new(),
                        evtchn: false,
                    },
                );
                d.irq_access.insert(gsi);
                Ok(Pirq(pirq))
            }
            MapSource::Msi {
                sbdf,
                entry_nr,
                table_base,
            } => {
                let pirq = match req.pirq {
                    Some(p) => p.0,
                    None => Self::get_free_pirq(d, true, nr)?,
                };
                if d.pirqs.contains_key(&pirq) {
                    // map_domain_pirq: already mapped → warning, returns 0 (§1.5.1).
                    self.log(format!("{}: pirq {pirq} or irq already mapped", req.domid));
                    return Ok(Pirq(pirq));
                }
                let owner = self.devices.get(&sbdf).map(|s| s.xen.owner);
                if owner != Some(req.domid) {
                    return Err(Errno::ENODEV);
                }
                let enodata = self.profile.xen.enodata_without_table();
                let decoded = self.memory_decoded(sbdf);
                let dev = self.dev_mut(sbdf)?;
                if table_base == 0 {
                    // Plain MSI: no table bookkeeping.
                    let irq = self.alloc_irq();
                    let d = self.domain_mut(req.domid)?;
                    d.map(
                        pirq,
                        PirqEntry {
                            irq,
                            source: PirqSource::Msi { sbdf },
                            dpci: None,
                            intx_links: BTreeSet::new(),
                            evtchn: false,
                        },
                    );
                    d.irq_access.insert(irq);
                    return Ok(Pirq(pirq));
                }
                if dev.hw.msix.is_none() {
                    return Err(Errno::ENODEV);
                }
                if entry_nr >= dev.hw.msix_table_size() {
                    return Err(Errno::EINVAL);
                }
                if !decoded {
                    return Err(msix_setup_failed(dev, Errno::ENXIO));
                }
                if dev.xen.used_entries == 0 {
                    // The target is a domU that owns the device; dom0 is not acting on its own
                    // device, so no table was read (§1.5.1 msix_capability_init).
                    if enodata {
                        return Err(msix_setup_failed(dev, Errno::ENODATA));
                    }
                    dev.xen.table_recorded = true;
                    let has_memory = self.domain(req.domid)?.has_memory;
                    self.log(format!(
                        "Potentially insecure use of MSI-X on {sbdf} by {}",
                        req.domid
                    ));
                    if has_memory {
                        let d = self.domain_mut(req.domid)?;
                        d.crashed = true;
                        d.state = DomainState::Shutdown;
                        self.log(format!("{} crashed (domain_crash)", req.domid));
                        self.events.push(DomainEvent::Released(req.domid));
                    }
                }
                let irq = self.alloc_irq();
                let domid = req.domid;
                let dev = self.dev_mut(sbdf)?;
                if let Some(e) = dev.hw.table.get_mut(usize::from(entry_nr)) {
                    e.masked = true;
                }
                if dev.xen.used_entries == 0 {
                    dev.xen.host_maskall = false;
                    let g = dev.xen.guest_maskall;
                    let ctrl = dev.hw.msix_ctrl() & !MSIX_FLAGS_MASKALL;
                    dev.hw
                        .write_msix_ctrl(ctrl | if g { MSIX_FLAGS_MASKALL } else { 0 });
                }
                dev.xen.used_entries += 1;
                dev.xen.table_recorded = true;
                self.descs.insert(
                    irq,
                    MsiDesc {
                        irq,
                        domid,
                        pirq,
                        sbdf,
                        entry: entry_nr,
                        host_masked: true,
                        guest_masked: true,
                    },
                );
                let d = self.domain_mut(domid)?;
                d.map(
                    pirq,
                    PirqEntry {
                        irq,
                        source: PirqSource::Msix {
                            sbdf,
                            entry: entry_nr,
                        },
                        dpci: None,
                        intx_links: BTreeSet::new(),
                        evtchn: false,
                    },
                );
                d.irq_access.insert(irq);
                Ok(Pirq(pirq))
            }
        }
    }

    fn alloc_irq(&mut self) -> u32 {
        let irq = self.next_irq;
        self.next_irq += 1;
        irq
    }

    pub fn unmap_pirq(&mut self, domid: DomId, pirq: Pirq) -> R<()> {
        self.domain(domid)?;
        if pirq.0 < 0 || pirq.0 >= self.nr_pirqs(domid) {
            return Err(Errno::EINVAL);
        }
        self.unmap_domain_pirq(domid, pirq.0)
    }

    /// `unmap_domain_pirq` (§1.5.2).
    fn unmap_domain_pirq(&mut self, domid: DomId, pirq: i32) -> R<()> {
        let entry = self
            .domain(domid)?
            .pirqs
            .get(&pirq)
            .cloned()
            .ok_or(Errno::EINVAL)?;
        let forced = entry.dpci.is_some() || entry.evtchn;
        if forced {
            self.log(format!("{domid}: forcing unbind of pirq {pirq}"));
            self.guest_unbind(domid, pirq);
        }
        if let PirqSource::Msix { sbdf, entry: e } = entry.source {
            // __pci_disable_msix: mask (or fall back to maskall), then _pci_cleanup_msix.
            self.msix_mask(sbdf, e, true, true, entry.irq, domid);
            if let Some(dev) = self.devices.get_mut(&sbdf) {
                dev.xen.used_entries = dev.xen.used_entries.saturating_sub(1);
                if dev.xen.used_entries == 0 {
                    dev.xen.table_recorded = false;
                }
            }
            self.descs.remove(&entry.irq);
        }
        let d = self.domain_mut(domid)?;
        let keep = forced && !d.dying;
        d.unmap(pirq, keep);
        if !matches!(entry.source, PirqSource::Gsi { .. }) || domid != DomId::DOM0 {
            d.irq_access.remove(&entry.irq);
        }
        Ok(())
    }

    /// Xen's `memory_decoded()` (4.17 `arch/x86/msi.c`): the function's own Command
    /// Memory bit, or for an SR-IOV virtual function its physical function's (a VF's own
    /// bit is hard-wired 0).
    pub fn memory_decoded(&self, sbdf: Sbdf) -> bool {
        let Some(dev) = self.devices.get(&sbdf) else {
            return false;
        };
        match dev.hw.spec.physfn {
            Some(pf) => self
                .devices
                .get(&pf)
                .is_some_and(|p| p.hw.memory_decoding()),
            None => dev.hw.memory_decoding(),
        }
    }

    fn pdev_for_msix(&mut self, sbdf: Sbdf) -> R<&mut DeviceState> {
        if self.dev_mut(sbdf)?.hw.msix.is_none() {
            // Xen 4.17 `pci_prepare_msix`/`release` use pdev->msix unchecked (HEAD "relies on
            // callers"): a real host would take a fatal page fault here.
            self.counters.fatal += 1;
            self.log(format!(
                "{sbdf}: prepare/release_msix on a device without MSI-X: Xen 4.17 dereferences a NULL pdev->msix"
            ));
            return Err(Errno::ENODEV);
        }
        self.dev_mut(sbdf)
    }

    /// `PHYSDEVOP_prepare_msix` (§1.5.3, §7 `prepare`).
    pub fn prepare_msix(&mut self, sbdf: Sbdf) -> R<()> {
        let decoded = self.memory_decoded(sbdf);
        let dev = self.pdev_for_msix(sbdf)?;
        if dev.xen.used_entries != 0 {
            return Err(Errno::EBUSY);
        }
        if !decoded {
            return Err(msix_setup_failed(dev, Errno::ENXIO));
        }
        dev.xen.table_recorded = true;
        dev.xen.host_maskall = false;
        let g = dev.xen.guest_maskall;
        let ctrl = dev.hw.msix_ctrl() & !MSIX_FLAGS_MASKALL;
        dev.hw
            .write_msix_ctrl(ctrl | if g { MSIX_FLAGS_MASKALL } else { 0 });
        dev.xen.used_entries = 1;
        Ok(())
    }

    /// `PHYSDEVOP_release_msix` (§1.5.3, §7 `release`): leaves both maskall flags alone.
    pub fn release_msix(&mut self, sbdf: Sbdf) -> R<()> {
        let dev = self.pdev_for_msix(sbdf)?;
        if dev.xen.used_entries != 1 {
            return Err(Errno::EBUSY);
        }
        dev.xen.used_entries = 0;
        dev.xen.table_recorded = false;
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Domctls (§1.6)
    // ----------------------------------------------------------------------------------

    /// `XEN_DOMCTL_bind_pt_irq` (Xen 4.17 `arch/x86/domctl.c`): `-EINVAL` for a PV
    /// domain, `-EPERM` for a pirq that maps no IRQ.
    pub fn bind_pt_irq(&mut self, domid: DomId, bind: &PtIrq) -> R<()> {
        let d = self.domain(domid)?;
        if !d.hvm {
            return Err(Errno::EINVAL);
        }
        let pirq = bind.pirq().0;
        let entry = d.pirqs.get(&pirq).ok_or(Errno::EPERM)?;
        let irq = entry.irq;
        match (bind, entry.dpci) {
            (PtIrq::Msi { .. }, Some(PtIrq::Pci { .. }))
            | (PtIrq::Pci { .. }, Some(PtIrq::Msi { .. })) => return Err(Errno::EBUSY),
            _ => {}
        }
        let first = entry.dpci.is_none();
        if let Some(e) = self.domain_mut(domid)?.pirqs.get_mut(&pirq) {
            if let PtIrq::Pci {
                bus, device, intx, ..
            } = *bind
            {
                e.intx_links.insert((bus, device, intx));
            }
            match (*bind, e.dpci) {
                (_, None) => e.dpci = Some(*bind),
                // pt_irq_create_bind on a bound MSI pirq takes the guest's new vector and
                // flags; the emulated table stays the one registered at the first bind.
                (PtIrq::Msi { gvec, gflags, .. }, Some(PtIrq::Msi { pirq, gtable, .. })) => {
                    e.dpci = Some(PtIrq::Msi {
                        pirq,
                        gvec,
                        gflags,
                        gtable,
                    })
                }
                _ => {}
            }
        }
        if let PtIrq::Msi { gflags, .. } = *bind {
            if let Some(desc) = self.descs.get_mut(&irq) {
                if first {
                    desc.host_masked = false; // pirq_guest_bind → startup unmasks
                }
                if gflags & xen::abi::XEN_DOMCTL_VMSI_X86_UNMASKED != 0 {
                    desc.guest_masked = false;
                }
            }
            self.apply_desc_mask(irq);
        }
        Ok(())
    }

    /// `XEN_DOMCTL_unbind_pt_irq`: `-EINVAL` for a PV domain, `-EPERM` for a pirq that maps
    /// no IRQ, `-EINVAL` from `pt_irq_destroy_bind` for one never bound.
    pub fn unbind_pt_irq(&mut self, domid: DomId, bind: &PtIrq) -> R<()> {
        let d = self.domain(domid)?;
        if !d.hvm {
            return Err(Errno::EINVAL);
        }
        let pirq = bind.pirq().0;
        let entry = d.pirqs.get(&pirq).ok_or(Errno::EPERM)?;
        if entry.dpci.is_none() {
            return Err(Errno::EINVAL);
        }
        if let PtIrq::Pci {
            bus, device, intx, ..
        } = *bind
        {
            // pt_irq_destroy_bind: the girq (bus, device, intx) must be bound to this
            // machine line, else -EINVAL; the pirq is unbound only with its last link.
            let link = (bus, device, intx);
            if !entry.intx_links.contains(&link) {
                return Err(Errno::EINVAL);
            }
            let left = {
                let e = self
                    .domain_mut(domid)?
                    .pirqs
                    .get_mut(&pirq)
                    .ok_or(Errno::EPERM)?;
                e.intx_links.remove(&link);
                e.intx_links.len()
            };
            if left == 0 {
                self.guest_unbind(domid, pirq);
            }
            return Ok(());
        }
        let irq = entry.irq;
        // pt_irq_destroy_bind guest-masks an MSI first (§1.6).
        if let Some(desc) = self.descs.get_mut(&irq) {
            desc.guest_masked = true;
            self.apply_desc_mask(irq);
        }
        self.guest_unbind(domid, pirq);
        Ok(())
    }

    /// `pirq_guest_unbind`: drops the dpci/event-channel binding; the IRQ shuts down, which
    /// masks an MSI-X vector (§1.3, `shutdown_msi_irq`).
    fn guest_unbind(&mut self, domid: DomId, pirq: i32) {
        let irq = match self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.pirqs.get_mut(&pirq))
        {
            Some(e) => {
                e.dpci = None;
                e.intx_links.clear();
                e.evtchn = false;
                e.irq
            }
            None => return,
        };
        if let Some(desc) = self.descs.get_mut(&irq) {
            desc.host_masked = true;
            self.apply_desc_mask(irq);
        }
    }

    /// A PV guest binds an event channel to a pirq dom0 mapped for it.
    pub fn pv_bind_evtchn(&mut self, domid: DomId, pirq: Pirq) -> R<()> {
        let irq = {
            let d = self.domain_mut(domid)?;
            let e = d.pirqs.get_mut(&pirq.0).ok_or(Errno::EINVAL)?;
            e.evtchn = true;
            e.irq
        };
        if let Some(desc) = self.descs.get_mut(&irq) {
            desc.host_masked = false;
            desc.guest_masked = false;
        }
        self.apply_desc_mask(irq);
        Ok(())
    }

    /// `iommu_do_domctl` answers -EOPNOTSUPP before anything else for a domain without an
    /// IOMMU context (Xen 4.17 drivers/passthrough/iommu.c; seen on 4.17.5).
    fn require_iommu(&self, domid: DomId) -> R<()> {
        if domid != DomId::IO && !self.domain(domid)?.iommu {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(())
    }

    pub fn assign_device(&mut self, domid: DomId, sbdf: Sbdf, flags: u32) -> R<()> {
        // Before quarantine (4.11.0) dom_io is not a domain the domctl can name.
        if domid == DomId::IO && !self.profile.xen.has_quarantine() {
            return Err(Errno::ESRCH);
        }
        self.require_iommu(domid)?;
        if flags & !xen::abi::XEN_DOMCTL_DEV_RDM_RELAXED != 0 || domid == DomId::DOM0 {
            return Err(Errno::EINVAL);
        }
        if domid != DomId::IO && self.domain(domid)?.dying {
            return Err(Errno::EINVAL);
        }
        let check = self.profile.xen.resets_msix_state_on_assign();
        let dev = self.dev_mut(sbdf)?;
        if dev.xen.owner != DomId::DOM0 && dev.xen.owner != DomId::IO {
            return Err(Errno::EBUSY);
        }
        if check && dev.hw.msix.is_some() {
            // pci_reset_msix_state (§1.2 Assignment).
            if dev.hw.function_mask() {
                self.log(format!("{domid}: assign ({sbdf}) failed (-16)"));
                return Err(Errno::EBUSY);
            }
            dev.xen.host_maskall = false;
            dev.xen.guest_maskall = false;
        }
        dev.xen.owner = domid;
        if domid == DomId::IO {
            dev.xen.quarantine = true;
        }
        Ok(())
    }

    /// `XEN_DOMCTL_test_assign_device` (Xen 4.17 drivers/passthrough/pci.c): free when dom0 or
    /// dom_io owns the device, `-EINVAL` when a guest does or Xen does not know it.
    pub fn test_assign_device(&mut self, sbdf: Sbdf) -> R<()> {
        // iommu_do_pci_domctl turns device_assigned()'s -ENODEV/-EBUSY into -EINVAL for
        // the test, with "already assigned, or non-existent" (4.11.0 to 4.20; seen on
        // real 4.17.5 for a device xl gave an HVM guest).
        match self.devices.get(&sbdf) {
            Some(d) if d.xen.owner == DomId::DOM0 || d.xen.owner == DomId::IO => Ok(()),
            _ => {
                self.log(format!("{sbdf} already assigned, or non-existent"));
                Err(Errno::EINVAL)
            }
        }
    }

    /// Moves a device back to `dom_io` (quarantine) or dom0; nothing about MSI-X changes.
    /// `deassign_device`: to `dom_io` when the device was quarantined or `iommu_quarantine`
    /// is on (the default wherever quarantine exists), to dom0 from `dom_io` or on 4.11.0.
    fn deassign_to_default(&mut self, sbdf: Sbdf) {
        let iommu_quarantine = self.profile.xen.has_quarantine();
        if let Some(dev) = self.devices.get_mut(&sbdf) {
            dev.xen.owner =
                if (dev.xen.quarantine || iommu_quarantine) && dev.xen.owner != DomId::IO {
                    DomId::IO
                } else {
                    dev.xen.quarantine = false;
                    DomId::DOM0
                };
        }
    }

    pub fn deassign_device(&mut self, domid: DomId, sbdf: Sbdf) -> R<()> {
        if domid == DomId::IO && !self.profile.xen.has_quarantine() {
            return Err(Errno::ESRCH);
        }
        self.require_iommu(domid)?;
        match self.devices.get(&sbdf) {
            Some(d) if d.xen.owner == domid => {}
            _ => return Err(Errno::ENODEV),
        }
        self.deassign_to_default(sbdf);
        Ok(())
    }

    pub fn iomem_permission(&mut self, domid: DomId, first: u64, nr: u64, allow: bool) -> R<()> {
        let d = self.domain_mut(domid)?;
        if nr == 0 {
            return Err(Errno::EINVAL);
        }
        if allow {
            d.iomem.insert((first, nr));
        } else {
            d.iomem.remove(&(first, nr));
        }
        Ok(())
    }

    pub fn ioport_permission(&mut self, domid: DomId, first: u32, nr: u32, allow: bool) -> R<()> {
        let d = self.domain_mut(domid)?;
        if allow {
            d.ioports.insert((first, nr));
        } else {
            d.ioports.remove(&(first, nr));
        }
        Ok(())
    }

    /// `pirq` is in dom0's space (§1.6 irq_permission).
    pub fn irq_permission(&mut self, domid: DomId, pirq: Pirq, allow: bool) -> R<()> {
        self.domain(domid)?;
        if pirq.0 < 0 || pirq.0 >= self.nr_pirqs(DomId::DOM0) {
            return Err(Errno::EINVAL);
        }
        let irq = self
            .domain(DomId::DOM0)?
            .pirqs
            .get(&pirq.0)
            .map(|e| e.irq)
            .ok_or(Errno::EPERM)?;
        let d = self.domain_mut(domid)?;
        if allow {
            d.irq_access.insert(irq);
        } else {
            d.irq_access.remove(&irq);
        }
        Ok(())
    }

    /// A guest writes an MSI-X table entry's Vector Control directly through its mapping of
    /// the BAR. While Xen has the table recorded (`used_entries > 0`) the table and PBA pages
    /// are in `mmio_ro_ranges` and the write is dropped (msix-essentials.md §1); otherwise it
    /// reaches the device.
    pub fn guest_table_write(
        &mut self,
        domid: DomId,
        sbdf: Sbdf,
        entry: u16,
        masked: bool,
    ) -> R<()> {
        let dev = self.dev_mut(sbdf)?;
        if dev.xen.owner != domid {
            return Err(Errno::EPERM);
        }
        if dev.xen.table_recorded {
            return Err(Errno::EACCES);
        }
        let e = dev
            .hw
            .table
            .get_mut(usize::from(entry))
            .ok_or(Errno::EINVAL)?;
        e.masked = masked;
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Interrupt delivery (§7 last bullet)
    // ----------------------------------------------------------------------------------

    /// The device asserts its INTx line: whether the guest that owns it receives it at the
    /// guest (bus, device, intx) its device model bound, or why not.
    pub fn raise_intx(
        &self,
        sbdf: Sbdf,
        guest: (u8, u8, u8),
    ) -> Result<(DomId, Pirq), Undelivered> {
        let dev = self.devices.get(&sbdf).ok_or(Undelivered::NoDevice)?;
        let gsi = dev.hw.spec.gsi;
        if gsi == 0 {
            return Err(Undelivered::NoIntxLine);
        }
        let owner = dev.xen.owner;
        let dom = self.domains.get(&owner).ok_or(Undelivered::OwnerGone)?;
        let (pirq, p) = dom
            .pirqs
            .iter()
            .find(|(_, p)| matches!(p.source, PirqSource::Gsi { gsi: g } if g == gsi))
            .ok_or(Undelivered::GsiNotMapped { gsi, owner })?;
        if !p.intx_links.contains(&guest) {
            return Err(Undelivered::IntxNotBound {
                gsi,
                pirq: *pirq,
                owner,
                bus: guest.0,
                device: guest.1,
                intx: guest.2,
            });
        }
        Ok((owner, Pirq(*pirq)))
    }

    /// The device signals entry `entry`. Returns the domain and pirq it reached, or why not.
    pub fn raise(&self, sbdf: Sbdf, entry: u16) -> Result<(DomId, Pirq), Undelivered> {
        let dev = self.devices.get(&sbdf).ok_or(Undelivered::NoDevice)?;
        if let Some(why) = dev.hw.entry_blocked(entry, self.memory_decoded(sbdf)) {
            return Err(Undelivered::Blocked(why));
        }
        let owner = dev.xen.owner;
        let desc = self
            .descs
            .values()
            .rfind(|d| d.sbdf == sbdf && d.entry == entry && d.domid == owner)
            .ok_or(Undelivered::EntryNotMapped { owner, entry })?;
        let dom = self.domains.get(&owner).ok_or(Undelivered::OwnerGone)?;
        let p = dom.pirqs.get(&desc.pirq).ok_or(Undelivered::PirqVanished)?;
        if dom.hvm && p.dpci.is_none() || !dom.hvm && !p.evtchn {
            return Err(Undelivered::PirqNotBound {
                pirq: desc.pirq,
                owner,
            });
        }
        if dom.paused || dom.dying {
            return Err(Undelivered::OwnerNotRunning { owner });
        }
        Ok((owner, Pirq(desc.pirq)))
    }
}

impl Domain {
    fn new(domid: DomId, name: &str, hvm: bool, nr_pirqs: i32) -> Domain {
        Domain {
            domid,
            name: name.to_string(),
            hvm,
            state: DomainState::Created,
            dying: false,
            paused: true,
            has_memory: false,
            crashed: false,
            pirqs: BTreeMap::new(),
            irq_access: BTreeSet::new(),
            iomem: BTreeSet::new(),
            ioports: BTreeSet::new(),
            extra_refs: 0,
            iommu: true,
            host_memory_map: true,
            handle: DomainHandle::default(),
            unique_id: 0,
            shutdown_reason: 0,
            forced_unbound: BTreeSet::new(),
            msi_free: (NR_IRQS_GSI..nr_pirqs).collect(),
        }
    }

    /// Records `pirq` as mapped.
    fn map(&mut self, pirq: i32, entry: PirqEntry) {
        self.msi_free.remove(&pirq);
        self.pirqs.insert(pirq, entry);
    }

    /// Forgets the mapping of `pirq`; `forced`: Xen keeps it taken (`arch.irq = -irq`)
    /// until the domain goes.
    fn unmap(&mut self, pirq: i32, forced: bool) {
        self.pirqs.remove(&pirq);
        if forced {
            self.forced_unbound.insert(pirq);
        } else if pirq >= NR_IRQS_GSI && !self.forced_unbound.contains(&pirq) {
            self.msi_free.insert(pirq);
        }
    }
}
