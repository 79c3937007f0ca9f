# Group paths of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- paths: each way a guest with live MSI-X can end, then the next guest's interrupts --
# A row per path: how it ended, what Xen and lspci show after, whether the next guest's
# interrupts arrive. "xl" rows use the toolstack alone; "ptguard" rows give the device with
# `ptguard attach` to a paused guest and let `ptguard watch` tear it down.
if group paths; then
    xl pci-assignable-add $SBDF
    cfg pv pv yes $SBDF ""
    cfg pvhold pv yes $SBDF "hold=1"
    cfg hvmhold hvm yes $SBDF "hold=1"
    live=$(start_hold pvhold pv); xl destroy pvhold; sleep 2
    r=$(next_pv xl); row xl destroy-running "${r%% *}"
    expect path-xl-destroy "live: $live; next: $r" has "$r" '^IRQS-ARRIVE'
    live=$(start_hold pvhold pv); xl pci-detach pvhold $SBDF; sleep 3; xl destroy pvhold; sleep 2
    r=$(next_pv xl); row xl hot-unplug "${r%% *}"
    expect path-xl-hot-unplug "live: $live; next: $r" has "$r" '^IRQS-ARRIVE'
    # xl reboot: libxl re-creates the domain with the device; the new instance's interrupts.
    live=$(start_hold pvhold pv)
    log=$(guest_log pvhold pv)
    xl reboot pvhold
    wait_for 200 sh -c "[ \$(grep -ac GUEST-HOLD $log) -ge 2 ]"
    r=$(grep -a GUEST-RESULT "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r')
    [ "$(grep -ac GUEST-HOLD "$log")" -ge 2 ] || r="no second instance"
    xl destroy pvhold; sleep 2
    row xl reboot "${r%% *}"
    expect path-xl-reboot "live: $live; the rebooted instance: $r" has "$r" '^IRQS-ARRIVE'
    live=$(start_hold hvmhold hvm)
    dm=$(xenstore-read "/local/domain/$(domid_of hvmhold)/image/device-model-pid" 2>/dev/null)
    kill -9 "$dm" 2>/dev/null; sleep 2; xl destroy hvmhold; sleep 2
    r=$(next_pv xl); row xl dm-sigkill "${r%% *}"
    expect path-xl-dm-sigkill "live: $live; qemu pid $dm killed; next: $r" has "$r" '^IRQS-ARRIVE'
    xl pci-assignable-remove -r $SBDF
fi
