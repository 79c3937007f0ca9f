# Group ptpaths of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
if group ptpaths; then
    ptguard assignable-add $SBDF >/dev/null 2>&1
    start_watch
    cfg pvpt pv yes "" ""
    cfg pvpthold pv yes "" "hold=1"
    r=$(next_pv ptguard)
    expect path-ptguard-first-guest "PV guest given by ptguard attach: $r" has "$r" '^IRQS-ARRIVE'
    # It powered itself off; ptguard watch tore the device down: the next guest.
    r=$(next_pv ptguard); row ptguard clean-shutdown "${r%% *}"
    expect path-ptguard-clean-shutdown "next guest after a clean shutdown: $r" has "$r" '^IRQS-ARRIVE'
    log=$(guest_log pvpthold pv); rm -f "$log"
    d=$(paused pvpthold); ptguard attach $SBDF "$d" >/dev/null 2>&1; xl unpause pvpthold
    wait_for 150 grep -aq GUEST-HOLD "$log"
    live=$(grep -a GUEST-RESULT "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r')
    setpci -s $BDF COMMAND=0000
    xl destroy pvpthold
    wait_for 60 test "$(ledger state)" = assignable
    r=$(next_pv ptguard); row ptguard decode-off-destroy "${r%% *}"
    expect path-ptguard-decode-off-destroy "live: $live; ledger $(ledger state); next: $r; $(watch_log 3 | tr '\n' ' ')" \
        has "$r" '^IRQS-ARRIVE'
    # Hot-unplug with ptguard from a running PV guest with live MSI-X: pciback, not the
    # broker, mapped those vectors and unmaps them when it gives the device back, which
    # the teardown waits for (the xen-backend device's directory leaving sysfs, after
    # pciback's remove has run): the device is clean at once, and the next guest gets it.
    log=$(guest_log pvpthold pv); rm -f "$log"
    d=$(paused pvpthold); ptguard attach $SBDF "$d" >/dev/null 2>&1; xl unpause pvpthold
    wait_for 150 grep -aq GUEST-HOLD "$log"
    live=$(grep -a GUEST-RESULT "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r')
    out=$(ptguard detach $SBDF 2>&1); rc=$?
    said=$(grep -oE 'clean and assignable|QUARANTINED: [^:]*' <<<"$out" | head -1)
    xl destroy pvpthold
    wait_for 60 test "$(ledger state)" = assignable
    r=$(next_pv ptguard); row ptguard hot-unplug "${r%% *}"
    expect path-ptguard-hot-unplug "live: $live; detach rc=$rc: $said; ledger $(ledger state) after the guest went; next: $r" \
        has "rc=$rc $said $r" '^rc=0 clean and assignable IRQS-ARRIVE'
    stop_watch
    ptguard assignable-remove $SBDF >/dev/null 2>&1
fi
