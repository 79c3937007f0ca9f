# Group seed of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- seed: the failure ptguard exists for, reproduced with stock xl ---------------------
if group seed; then
    xl pci-assignable-add $SBDF
    cfg pvhold pv yes $SBDF "hold=1"
    log=$(guest_log pvhold pv); rm -f "$log"
    xl create /root/pvhold.cfg >/dev/null 2>&1
    wait_for 120 grep -aq GUEST-HOLD "$log"
    live=$(grep -a GUEST-RESULT "$log" | sed 's/.*GUEST-RESULT //' | tr -d '\r')
    xl dmesg -c >/dev/null
    setpci -s $BDF COMMAND=0000
    xl destroy pvhold; sleep 2
    xend=$(xl dmesg | grep -a "cannot mask" | tail -1)
    m=$(msix)
    capture seed-function-mask-forced
    expect seed-mask-forced "live guest: $live; decoding off, xl destroy -> Xen: '$xend'; MSI-X: $m" \
        has "$xend $m" "cannot mask IRQ.*Masked\+"
    cfg pv pv yes $SBDF ""
    r=$(run_guest pv pv)
    expect seed-next-guest-refused "next guest: $r; $(xl dmesg | grep -a 'assign (' | tail -1)" \
        has "$r" "xl create rc=[1-9]"
    echo 1 > "/sys/bus/pci/devices/$SBDF/reset" 2>/dev/null
    expect seed-reset-does-not-cure "after a sysfs reset MSI-X: $(msix)" has "$(msix)" "Masked\+"
    out=$(ptguard doctor $SBDF --json 2>/dev/null); rc=$?
    expect seed-doctor-names-it "rc=$rc: $(tr -d '\n' <<<"$out" | cut -c1-400)" \
        has "rc=$rc $(json_find code=function-mask-forced sbdf=$SBDF fix <<<"$out")" "^rc=1 ptguard repair $SBDF"
    ptguard report -o $OUT/ptguard-report.txt 2>/dev/null
    sections=$(grep -c '^### ' $OUT/ptguard-report.txt)
    out=$(ptguard doctor --from-report $OUT/ptguard-report.txt --json 2>/dev/null); rc=$?
    expect seed-report-round-trip "ptguard report: $sections sections, $(grep -c '0000:00:05.0 - ' $OUT/ptguard-report.txt) Q lines; from it rc=$rc" \
        test "rc=$rc $sections $(json_find code=function-mask-forced sbdf=$SBDF code <<<"$out")" = "rc=1 4 function-mask-forced"
    out=$(ptguard repair $SBDF 2>&1); rc=$?
    expect seed-ptguard-repair "rc=$rc MSI-X: $(msix): $(tr '\n' ' ' <<<"$out")" \
        has "rc=$rc $(msix)" "rc=0 .*Masked-"
    if [ $rc -ne 0 ]; then
        say "repair failed; the known cure (pciback unbind + bind) so the next checks start clean"
        xl pci-assignable-remove -r $SBDF; sleep 2; xl pci-assignable-add $SBDF
    fi
    r=$(run_guest pv pv)
    expect seed-next-guest-after-repair "next guest after ptguard repair: $r" has "$r" '^IRQS-ARRIVE'
    xl pci-assignable-remove -r $SBDF
fi
