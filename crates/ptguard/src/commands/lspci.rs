//! `ptguard lspci`: PCI devices with what passthrough cares about — driver, reset methods,
//! MSI and MSI-X state — read from sysfs.

use std::io::Write;

use pci::config::regs;
use pci::host::PciHost;
use pci::sysfs::SysfsHost;

use daemon::host::{HostCtx, HostSpec};
use pci::{ConfigSpace, DeviceConfig, Sbdf};
use serde::Serialize;

use crate::cli::LspciArgs;
use crate::output::emit;

/// One device as `ptguard lspci --json` prints it.
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    pub sbdf: Sbdf,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    /// `null` when the kernel has no `reset_method` file.
    pub reset_methods: Option<Vec<String>>,
    pub can_reset: bool,
    pub enabled: bool,
    pub irq: u32,
    pub msi_irqs: Vec<u32>,
    pub config_bytes: usize,
    pub config: Option<DeviceConfig>,
    /// Why `config` is missing (unreadable or malformed config space).
    pub config_error: Option<String>,
}

fn report(host: &dyn PciHost, sbdf: Sbdf) -> Result<DeviceReport, pci::PciError> {
    let bytes = host.read_config(sbdf)?;
    let config_bytes = bytes.len();
    let (config, config_error) = match ConfigSpace::new(bytes).and_then(|c| c.parse()) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(DeviceReport {
        sbdf,
        driver: host.driver(sbdf)?,
        driver_override: host.driver_override(sbdf).unwrap_or(None),
        reset_methods: host.reset_methods(sbdf)?,
        can_reset: host.can_reset(sbdf)?,
        enabled: host.enabled(sbdf).unwrap_or(false),
        irq: host.irq(sbdf).unwrap_or(0),
        msi_irqs: host.msi_irqs(sbdf)?,
        config_bytes,
        config,
        config_error,
    })
}

fn cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "Power Management",
        0x05 => "MSI",
        0x09 => "Vendor Specific",
        0x10 => "Express",
        0x11 => "MSI-X",
        0x13 => "Advanced Features",
        _ => "other",
    }
}

fn pm(b: bool) -> char {
    if b {
        '+'
    } else {
        '-'
    }
}

fn print_text(out: &mut dyn Write, r: &DeviceReport, verbose: bool) -> std::io::Result<()> {
    let Some(c) = &r.config else {
        writeln!(
            out,
            "{} config space unusable: {}",
            r.sbdf,
            r.config_error.as_deref().unwrap_or("?")
        )?;
        return Ok(());
    };
    let msix = c.msix.map_or(String::new(), |m| {
        format!(
            " MSI-X[{}{}]",
            m.table_size,
            if m.enabled { ",on" } else { "" }
        )
    });
    writeln!(
        out,
        "{} [{:06x}] {:04x}:{:04x} driver={}{}",
        r.sbdf,
        c.class,
        c.vendor_id,
        c.device_id,
        r.driver.as_deref().unwrap_or("-"),
        msix
    )?;
    if !verbose {
        return Ok(());
    }
    let cmd = c.command;
    writeln!(
        out,
        "\tControl: I/O{} Mem{} BusMaster{} DisINTx{}",
        pm(cmd.io()),
        pm(cmd.memory()),
        pm(cmd.bus_master()),
        pm(cmd.intx_disabled())
    )?;
    writeln!(
        out,
        "\tReset: {} (sysfs reset file {})",
        r.reset_methods
            .as_ref()
            .map_or("no reset_method file".to_string(), |m| if m.is_empty() {
                "none".into()
            } else {
                m.join(" ")
            }),
        if r.can_reset { "present" } else { "absent" }
    )?;
    writeln!(
        out,
        "\tIRQ: {}  MSI IRQs in dom0: {}",
        r.irq,
        if r.msi_irqs.is_empty() {
            "none".to_string()
        } else {
            r.msi_irqs
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    )?;
    if r.config_bytes < regs::CONVENTIONAL_SIZE {
        writeln!(
            out,
            "\tCapabilities: <access denied: only {} bytes of config space readable>",
            r.config_bytes
        )?;
    }
    for cap in &c.capabilities {
        match cap.id {
            regs::CAP_ID_MSIX => {
                if let Some(m) = c.msix {
                    writeln!(
                        out,
                        "\tCapabilities: [{:02x}] MSI-X: Enable{} Count={} Masked{}",
                        cap.offset,
                        pm(m.enabled),
                        m.table_size,
                        pm(m.function_mask)
                    )?;
                    writeln!(
                        out,
                        "\t\tVector table: BAR={} offset={:08x}",
                        m.table_bir, m.table_offset
                    )?;
                    writeln!(
                        out,
                        "\t\tPBA: BAR={} offset={:08x}",
                        m.pba_bir, m.pba_offset
                    )?;
                }
            }
            regs::CAP_ID_MSI => {
                if let Some(m) = c.msi {
                    writeln!(
                        out,
                        "\tCapabilities: [{:02x}] MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
                        cap.offset,
                        pm(m.enabled),
                        m.vectors_enabled,
                        m.vectors_capable,
                        pm(m.per_vector_masking),
                        pm(m.is_64bit)
                    )?;
                }
            }
            regs::CAP_ID_EXP => writeln!(
                out,
                "\tCapabilities: [{:02x}] Express: FLReset{}",
                cap.offset,
                pm(c.pcie.is_some_and(|p| p.flr))
            )?,
            regs::CAP_ID_PM => writeln!(
                out,
                "\tCapabilities: [{:02x}] Power Management: NoSoftRst{} D{}",
                cap.offset,
                pm(c.pm.is_some_and(|p| p.no_soft_reset)),
                c.pm.map_or(0, |p| p.power_state)
            )?,
            id => writeln!(
                out,
                "\tCapabilities: [{:02x}] {} ({:#04x})",
                cap.offset,
                cap_name(id),
                id
            )?,
        }
    }
    for e in &c.extended_capabilities {
        writeln!(
            out,
            "\tCapabilities: [{:03x} v{}] extended {:#06x}",
            e.offset, e.version, e.id
        )?;
    }
    Ok(())
}

pub fn run(args: LspciArgs, host_spec: &HostSpec, out: &mut dyn Write) -> anyhow::Result<()> {
    let sysfs = SysfsHost::new(&args.sysfs);
    // On a simulated host, its devices; otherwise the sysfs tree.
    let sim = match host_spec {
        HostSpec::Sim(_) => Some(HostCtx::open(host_spec, true)?),
        HostSpec::Real => None,
    };
    let host: &dyn PciHost = match &sim {
        Some(ctx) => engine::Platform::pci(&ctx.platform),
        None => &sysfs,
    };
    // An empty listing must mean "no devices", never "looked in the wrong place".
    if sim.is_none() && !sysfs.devices_dir().is_dir() {
        anyhow::bail!(
            "{} does not exist: --sysfs names the directory sysfs is mounted on (/sys)",
            sysfs.devices_dir().display()
        );
    }
    let devices = match &args.sbdf {
        Some(s) => {
            let sbdf: Sbdf = s.parse()?;
            if !host.exists(sbdf)? {
                anyhow::bail!(
                    "{sbdf}: no such PCI device under {} (list them with `ptguard lspci`)",
                    sysfs.devices_dir().display()
                );
            }
            vec![sbdf]
        }
        None => host.list_devices()?,
    };
    let mut reports = Vec::new();
    for sbdf in devices {
        match report(host, sbdf) {
            Ok(r) => reports.push(r),
            // A device removed while we list is reported, not fatal.
            Err(e @ (pci::PciError::Vanished { .. } | pci::PciError::NoSuchDevice { .. })) => {
                tracing::warn!("{e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    emit(out, args.json, &reports, |out| {
        for r in &reports {
            print_text(out, r, args.details)?;
        }
        Ok(())
    })?;
    Ok(())
}
