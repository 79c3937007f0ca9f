# Group soak of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- soak: one chain of teardowns of every kind, stock xl + qemu-xen, the daemon beside --
# The device is given the usual way (pci=[...] at xl create, xl pci-attach). Each guest in
# the chain counts its MSI-X interrupts; that count is the check of the teardown before it
# (soak-<n>-<kind>). Nothing runs between a teardown and the next guest but a fixed settle
# time. ptguard.soak=N (default 15) teardowns; ptguard.soak_baseline=1 then runs the same
# chain with the daemon stopped (the toolstack alone), curing a stuck device between steps
# the only way the toolstack can (pci-assignable-remove -r, then -add), and prints the table
# of both. Also asserted over the ptguard chain: dom0's kernel never logs `unmap irq
# failed`, dom0's count of Xen IRQs does not grow.
SOAK_PLAN=(pv:poweroff hvm:destroy pv:reboot pv:decode-off-destroy pv:shutdown
    hvm:dm-kill-destroy pv:detach-attach hvm:dm-kill-detach pv:decode-off-detach
    pv:assignable-readd pv:poweroff pv:destroy hvm:detach-attach pv:decode-off-destroy
    hvm:decode-off-destroy
    hvm:poweroff hvm:assignable-readd hvm:decode-off-detach hvm:decode-off-destroy pv:reboot
    pv:shutdown hvm:dm-kill-destroy hvm:detach-attach pv:detach-attach hvm:dm-kill-detach
    pv:decode-off-detach pv:assignable-readd hvm:destroy hvm:decode-off-detach pv:poweroff)
SETTLE=8
verdict_of() { grep -a GUEST-RESULT "$1" 2>/dev/null | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r'; }
# soak_start NAME TYPE HOLD PCI: creates a chain guest; waits for its (first) verdict.
soak_start() {
    cfg "$1" "$2" yes "$4" "hold=$3"
    local log; log=$(guest_log "$1" "$2"); rm -f "$log"
    xl create "/root/$1.cfg" >/dev/null 2>&1 || { echo "START-REFUSED (xl create failed)"; return; }
    wait_for 200 grep -aq "GUEST-RESULT" "$log"
    echo "$(verdict_of "$log")"
}
# The device is clean and no guest holds it: lspci's MSI-X line, Xen's Q line.
device_free_clean() { has "$(msix)" "Enable- .*Masked-" && has "$(xen_q)" "DomIO|d0 - "; }
# soak_chain LABEL: runs the plan; fills results[n]; prints a line per teardown.
soak_chain() {
    local label=$1 n=0 cur="" cur_type="" prev="" v="" left="" i kind type next_type hold
    local log t0 t1 took jcur
    for ((i = 0; i < SOAK_N; i++)); do
        type=${SOAK_PLAN[$i]%%:*}; kind=${SOAK_PLAN[$i]#*:}
        next_type=${SOAK_PLAN[$((i + 1))]:-pv:}; next_type=${next_type%%:*}
        hold=1; [ "$kind" = poweroff ] && hold=0
        if [ -z "$cur" ]; then
            cur=${label}$i; cur_type=$type
            v=$(soak_start "$cur" "$type" "$hold" $SBDF)
            if [ $i -gt 0 ]; then results[$((i - 1))]=${v%% *}; soak_report "$label" $((i - 1)) "$prev" "$v"; fi
            [ $i -eq 0 ] && soak_report "$label" first "first-guest" "$v"
        fi
        # What is left running without the device (a hot-unplug's old guest) goes now.
        [ -n "$left" ] && { xl destroy "$left" 2>/dev/null; left=""; }
        log=$(guest_log "$cur" "$cur_type")
        prev="$cur_type:$kind"
        jcur=$(journalctl -u ptguard.service -n 0 --show-cursor --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p')
        t0=$(up)
        case $kind in
            poweroff) wait_for 120 sh -c "! xl domid $cur >/dev/null 2>&1"; t0=$(up); cur="" ;;
            destroy) xl destroy "$cur"; cur="" ;;
            decode-off-destroy) setpci -s $BDF COMMAND=0000; xl destroy "$cur"; cur="" ;;
            shutdown) timeout 120 xl shutdown -w "$cur" >/dev/null 2>&1 || xl destroy "$cur"; cur="" ;;
            dm-kill-destroy)
                kill -9 "$(xenstore-read "/local/domain/$(domid_of "$cur")/image/device-model-pid" 2>/dev/null)" 2>/dev/null
                sleep 1; xl destroy "$cur"; cur="" ;;
            reboot)
                xl reboot "$cur" >/dev/null 2>&1
                wait_for 200 sh -c "[ \$(grep -ac GUEST-RESULT $log) -ge 2 ]"
                if [ "$(grep -ac GUEST-RESULT "$log")" -ge 2 ]; then v=$(verdict_of "$log"); else v="no second instance"; fi
                cleaned[$i]="the device stays with the rebooted guest"
                sleep $SETTLE; results[$i]=${v%% *}; soak_report "$label" $i "$prev" "$v"
                continue ;;
            detach-attach)
                local b=${label}$((i + 1)) blog
                cfg "$b" "$next_type" yes "" "hold=1"
                blog=$(guest_log "$b" "$next_type"); rm -f "$blog"
                xl create "/root/$b.cfg" >/dev/null 2>&1
                wait_for 120 grep -aq GUEST-START "$blog"
                timeout 120 xl pci-detach "$cur" $SBDF >/dev/null 2>&1
                sleep $SETTLE
                timeout 120 xl pci-attach "$b" $SBDF >/dev/null 2>&1
                wait_for 200 grep -aq GUEST-RESULT "$blog"
                v=$(verdict_of "$blog")
                cleaned[$i]="moved to the next running guest by the toolstack, ${SETTLE} s between detach and attach"
                results[$i]=${v%% *}; soak_report "$label" $i "$prev" "$v"
                left=$cur; cur=$b; cur_type=$next_type
                continue ;;
            dm-kill-detach)
                kill -9 "$(xenstore-read "/local/domain/$(domid_of "$cur")/image/device-model-pid" 2>/dev/null)" 2>/dev/null
                sleep 1; timeout 120 xl pci-detach -f "$cur" $SBDF >/dev/null 2>&1
                left=$cur; cur="" ;;
            decode-off-detach)
                setpci -s $BDF COMMAND=0000
                timeout 120 xl pci-detach "$cur" $SBDF >/dev/null 2>&1 || timeout 60 xl pci-detach -f "$cur" $SBDF >/dev/null 2>&1
                left=$cur; cur="" ;;
            assignable-readd)
                xl destroy "$cur"; cur=""; sleep 2
                xl pci-assignable-remove -r $SBDF; xl pci-assignable-add $SBDF ;;
        esac
        # How long the toolstack's step took, and how long after it the device was clean
        # (ptguard's work, or nothing's).
        t1=$(up); took=never
        for ((t = 0; t < SETTLE * 4; t++)); do
            if device_free_clean; then took=$(awk -v a="$t1" -v b="$(up)" 'BEGIN { printf "%.1f s", b - a }'); break; fi
            sleep 0.25
        done
        cleaned[$i]="clean $took after the toolstack's step, which took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f s", b - a }')"
        [ "$took" = never ] && say "soak $label$i: not clean: MSI-X $(msix); Xen: $(xen_q | sed 's/.*0000:00:05.0 - //')"
        # What the daemon said about this teardown, in its own words.
        [ -n "$jcur" ] && journalctl -u ptguard.service --after-cursor="$jcur" -o cat --no-pager 2>/dev/null |
            sed "s/^/[daemon $label$i] /" | cut -c1-400 | tail -6
        sleep $SETTLE
    done
    [ -n "$left" ] && xl destroy "$left" 2>/dev/null
    if [ -z "${results[$((SOAK_N - 1))]:-}" ]; then
        # The last teardown's check: one more guest after it.
        v=$(soak_start "${label}end" pv 0 $SBDF)
        results[$((SOAK_N - 1))]=${v%% *}
        soak_report "$label" $((SOAK_N - 1)) "$prev" "$v"
        wait_for 60 sh -c "! xl domid ${label}end >/dev/null 2>&1"
    elif [ -n "$cur" ]; then
        xl destroy "$cur"; sleep $SETTLE
    fi
}
soak_dirty() { case $1 in *"clean never"*) echo dirty ;; *moved*) echo moved ;; *rebooted*) echo kept ;; "") echo "" ;; *) echo clean ;; esac; }
soak_ok() { has "$2" '^IRQS-ARRIVE' && ! has "$1" "clean never"; }
# soak_report LABEL N KIND VERDICT: the check (ptguard chain) or a baseline line.
soak_report() {
    local name="soak-$2-${3#*:}" c="the device stays with the guest"
    if [ "$2" = first ]; then name="soak-first-guest"; c="given at xl create"; else c=${cleaned[$2]:-$c}; fi
    if [ "$1" = soak ]; then
        # The invariant, then the guest: clean before the next guest got it (where the
        # device left to no guest), and that guest's interrupts arrive.
        expect "$name" "$3 ($c): next guest $4" soak_ok "$c" "$4"
    else
        say "baseline $name ($3): next guest $4"
        case $4 in IRQS-ARRIVE*) ;; *) xl pci-assignable-remove -r $SBDF >/dev/null 2>&1; xl pci-assignable-add $SBDF >/dev/null 2>&1 ;; esac
    fi
}
if group soak; then
    SOAK_N=$(sed -n 's/.*ptguard\.soak=\([0-9]*\).*/\1/p' /proc/cmdline); SOAK_N=${SOAK_N:-15}
    [ "$SOAK_N" -gt ${#SOAK_PLAN[@]} ] && SOAK_N=${#SOAK_PLAN[@]}
    xl pci-assignable-add $SBDF
    start_watch
    unmap_failed0=$(dmesg | grep -c "unmap irq failed")
    # dom0's MSI/MSI-X IRQs: a PV guest's vectors are dom0 IRQs of pciback's while the
    # guest runs, and leak if dom0's own unmap fails. (The NIC's INTx line, used by dom0's
    # e1000e during the assignable-readd step, stays listed with its counts: not a leak.)
    irqs0=$(grep -cE 'xen-pirq.*-msi' /proc/interrupts)
    irqs_lines0=$(grep -E 'xen-pirq.*-msi' /proc/interrupts | awk '{print $1, $NF}')
    s0=$(up)
    declare -a results cleaned
    ours=(); ours_clean=()
    # ptguard.soak_baseline=only: the toolstack-alone chain by itself (its ptguard column
    # comes from an earlier run of the same plan).
    if ! grep -q "ptguard\.soak_baseline=only" /proc/cmdline; then
    soak_chain soak
    ours=("${results[@]}"); ours_clean=("${cleaned[@]}")
    took_soak=$(awk -v a="$s0" -v b="$(up)" 'BEGIN { printf "%d", b - a }')
    unmap_failed=$(( $(dmesg | grep -c "unmap irq failed") - unmap_failed0 ))
    expect soak-dom0-no-unmap-failure "dom0 kernel: $unmap_failed new 'unmap irq failed' over $SOAK_N teardowns" test "$unmap_failed" = 0
    # At rest: pciback frees a PV guest's dom0 IRQs in its own worker, after xl has
    # reported the domain gone.
    wait_for 30 sh -c "[ \$(grep -cE 'xen-pirq.*-msi' /proc/interrupts) -le $irqs0 ]"
    irqs=$(grep -cE 'xen-pirq.*-msi' /proc/interrupts)
    grown=$(diff <(echo "$irqs_lines0") <(grep -E 'xen-pirq.*-msi' /proc/interrupts | awk '{print $1, $NF}') | grep '^>' | tr '\n' ' ')
    expect soak-dom0-irqs-do-not-grow "dom0 MSI/MSI-X IRQs (xen-pirq ... -msi*): $irqs0 before, $irqs after, at rest ${grown:+(new: $grown)}" test "$irqs0" -gt 0 -a "$irqs" -le "$irqs0"
    say "soak: $SOAK_N teardowns in ${took_soak} s, settle ${SETTLE} s"
    fi
    stop_watch
    base=(); base_clean=()
    if grep -qE "ptguard\.soak_baseline=(1|only)" /proc/cmdline; then
        systemctl mask --runtime ptguard.service >/dev/null 2>&1
        results=(); cleaned=()
        s0=$(up)
        soak_chain base
        base=("${results[@]}"); base_clean=("${cleaned[@]}")
        say "soak baseline: $SOAK_N teardowns in $(awk -v a="$s0" -v b="$(up)" 'BEGIN { printf "%d", b - a }') s, settle ${SETTLE} s"
        systemctl unmask --runtime ptguard.service >/dev/null 2>&1
    fi
    say "soak table: teardown | with ptguard (next guest, device before it) | toolstack alone"
    for ((i = 0; i < SOAK_N; i++)); do
        printf 'soak-row %2d %-24s %-12s %-8s | %-12s %s\n' "$i" "${SOAK_PLAN[$i]}" "${ours[$i]:-none}" \
            "$(soak_dirty "${ours_clean[$i]:-}")" "${base[$i]:--}" "$(soak_dirty "${base_clean[$i]:-}")"
    done
    xl pci-assignable-remove -r $SBDF
fi
