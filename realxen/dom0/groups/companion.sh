# Group companion of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- companion: stock xl (pci=) and stock qemu-xen, ptguard watch beside them ---------
# The daemon adopts the device from libxl's backend; with the guest's MSI-X live, decoding
# is turned off (as old pciback leaves it), the domain is shut down (xc_domain_shutdown,
# what the guest's own SCHEDOP_shutdown does; on_poweroff="preserve" keeps it for the
# operator) and its qemu is SIGKILLed, never having unmapped anything; ptguard must sweep
# the leftover pirqs with decoding on before anyone resets the device, and the next guest's
# interrupts must arrive. qemu dies after the shutdown request, not before: Xen defers the
# shutdown of an HVM domain while a vcpu waits on an I/O request to its device model, so
# with qemu dead first the domain may never shut down (seen on 4.17.5: `xl list` state
# `------` 30 s later, the daemon rightly leaving a domain that still runs alone).
if group companion; then
    start_watch
    xl pci-assignable-add $SBDF
    cfg hvmc hvm yes $SBDF "hold=1"
    sed -i 's/^on_poweroff = .*/on_poweroff = "preserve"/' /root/hvmc.cfg
    cfg pv pv yes $SBDF ""
    live=$(start_hold hvmc hvm)
    d=$(domid_of hvmc)
    wait_for 20 test "$(ledger mode)" = companion
    expect companion-adopts "d$d live: $live; ledger $(ledger state) owner '$(ledger owner)' mode $(ledger mode)" \
        test "$(ledger state)" = attached -a "$(ledger owner | cut -d' ' -f1)" = "$d" -a "$(ledger mode)" = companion
    if [ "$(ledger mode)" != companion ]; then
        say "not adopted; daemon log:"; watch_log 15
        say "backend: $(xenstore-ls -f /local/domain/0/backend/pci 2>&1 | grep -E 'dev-|num_devs|/state ' | tr '\n' ' ')"
        say "watch --once: $(PTGUARD_LOG=debug ptguard watch --once 2>&1 | tail -8 | tr '\n' ' ')"
    fi
    out=$(ptguard hook pre-reset $SBDF 2>&1); rc=$?
    expect companion-hook-leaves-a-running-guest "rc=$rc $out" has "rc=$rc $out" "rc=0 .*may still run"
    out=$(ptguard sweep "$d" 2>&1); rc=$?
    expect companion-sweep-refuses-a-running-guest "rc=$rc $out" has "rc=$rc $out" "rc=1 .*may still run"
    dm=$(xenstore-read "/local/domain/$d/image/device-model-pid" 2>/dev/null)
    setpci -s $BDF COMMAND=0000
    sd=$(python3 -c "import ctypes; xc = ctypes.CDLL('$XENCTRL'); xc.xc_interface_open.restype = ctypes.c_void_p; h = ctypes.c_void_p(xc.xc_interface_open(None, None, 0)); print('xc_domain_shutdown(poweroff) rc', xc.xc_domain_shutdown(h, ctypes.c_uint32($d), ctypes.c_int(0)))" 2>&1)
    kill -9 "$dm" 2>/dev/null
    # A companion record lives while a guest holds the device: gone once it is clean.
    wait_for 30 test -z "$(ledger state)"
    say "companion: $sd; ledger '$(ledger state)' ($(ledger reason)); Xen: $(xen_q | sed 's/.*0000:00:05.0 - //')"
    if [ -n "$(ledger state)" ]; then
        say "companion: not torn down; xl list: $(xl list | tail -n +2 | tr -s ' ' | tr '\n' ';')"
        say "companion: daemon log: $(watch_log 12 | tr '\n' ' ' | cut -c1-1500)"
    fi
    # on_poweroff="preserve": the operator destroys the domain, after ptguard's sweep.
    gone="by hand"
    xl destroy hvmc 2>/dev/null || gone="by hand, failed"
    wait_for 30 sh -c "! xl domid hvmc >/dev/null 2>&1" || gone="$gone, still there"
    say "companion: domain destroyed $gone"
    sleep 3
    swept=$(watch_log 60 | grep -a "swept" | tail -1)
    capture companion-after-poweroff
    expect companion-sweeps-the-dead-qemus-pirqs "qemu $dm killed, domain shut down ($sd; destroyed $gone); ledger '$(ledger state)'; daemon: '$swept'; MSI-X: $(msix); Xen: $(xen_q | sed 's/.*0000:00:05.0 - //')" \
        has "[$(ledger state)] $swept $(msix)" "\[\] .*swept [0-9]+ pirq.*Masked-"
    r=$(run_guest pv pv)
    expect companion-next-guest-irqs-arrive "next guest (xl, pci=): $r" has "$r" '^IRQS-ARRIVE'
    # An unplug a toolstack hook announced that never finishes: the hook turns decoding
    # on, then (as a guest or a racing tool might) it goes off again, and libxl's HVM
    # unplug waits 10 s for qemu and gives up, writing nothing to Xenstore. ptguard's
    # marker is the only trace: the daemon must say so once with the fix, and doctor
    # must name it; if the unplug did finish, neither may.
    cfg hvmu hvm yes $SBDF "hold=1"
    live=$(start_hold hvmu hvm)
    du=$(domid_of hvmu)
    wait_for 20 test "$(ledger owner | cut -d' ' -f1)" = "$du"
    hook=$(ptguard hook pre-unplug $SBDF 2>&1)
    setpci -s $BDF COMMAND=0000
    t0=$(up)
    timeout 60 xl pci-detach hvmu $SBDF >/dev/null 2>&1; det=$?
    took=$(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }')
    sleep 20
    said=$(watch_log 40 | grep -a "has not finished" | tail -1 | cut -c1-300)
    stalled=$(ptguard doctor --json 2>/dev/null | json_find code=unplug-stalled code)
    if [ "$det" -ne 0 ]; then
        expect companion-stalled-unplug-reported "d$du ($live): hook '$hook'; xl pci-detach rc=$det after $took s; daemon: '$said'; doctor: '$stalled'" \
            test -n "$said" -a -n "$stalled"
        timeout 60 xl pci-detach -f hvmu $SBDF >/dev/null 2>&1
    else
        expect companion-stalled-unplug-reported "d$du ($live): xl pci-detach finished in $took s (rc 0): nothing may be reported; daemon: '$said'; doctor: '$stalled'" \
            test -z "$said" -a -z "$stalled"
    fi
    wait_for 30 sh -c "lspci -vv -s $BDF | grep -q 'MSI-X: Enable- .*Masked-'"
    after=$(ptguard doctor --json 2>/dev/null | json_find code=unplug-stalled code)
    expect companion-forced-unplug-clean "after xl pci-detach -f: MSI-X $(msix); Xen: $(xen_q | sed 's/.*0000:00:05.0 - //'); doctor unplug-stalled '$after'; daemon: $(watch_log 6 | tr '\n' ' ' | cut -c1-600)" \
        has "$(msix) [$after]" "Enable- .*Masked- .*\[\]"
    xl destroy hvmu 2>/dev/null
    stop_watch
    xl pci-assignable-remove -r $SBDF
fi
