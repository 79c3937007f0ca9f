//! What users paste into `ptguard doctor --from-report`: a report's sections, Xen's Q/i/M
//! dumps, lspci's MSI-X lines and the toolstacks' logs, from arbitrary bytes. Must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (_, body) in engine::xen_dump::report_sections(&text) {
        let _ = engine::xen_dump::pci_devices(&body);
        let _ = engine::xen_dump::irq_bindings(&body);
        let _ = engine::xen_dump::msi_state(&body);
        let _ = engine::xen_dump::lspci_devices(&body);
    }
    let _ = engine::xen_dump::pci_devices(&text);
    let _ = engine::xen_dump::irq_bindings(&text);
    let _ = engine::xen_dump::msi_state(&text);
    let _ = engine::doctor::extra_guest_irqs(&text);
    // The toolstacks' logs (`doctor --log`), under each name they come by.
    for name in ["xl-g.log", "qemu-dm-g.log", "libxl-driver.log"] {
        let _ = engine::doctor::logs::log_findings(name, &text);
    }
});
