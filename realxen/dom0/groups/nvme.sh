# Group nvme of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- nvme: a second kind of device, QEMU's NVMe controller (64 MSI-X vectors) ---------
# Its table is larger than a guest's pirq budget (extra_guest_irqs, 32): preflight and
# doctor must say so before a guest starts. An HVM guest uses it through qemu-xen (its 64
# table entries emulated), and a PV guest through pcifront beside the NIC: ptguard
# hot-adds it to the running guest and detaches it again (the Reconfiguring handshake),
# then stock xl does the same with both in pci=; each time the guest keeps using the NIC
# and the NVMe controller is clean.
if group nvme; then
    NVME=0000:00:07.0 NBDF=00:07.0 NKEY=0000-00-07-0
    nledger() { local h; h=$(xenstore-read "/ptguard/device/$NKEY" 2>/dev/null) || return 0; head_field "$1" "$h"; }
    nmsix() { lspci -vv -s $NBDF 2>/dev/null | sed -n 's/.*MSI-X: \(.*\)/\1/p'; }
    nq() { xl debug-keys Q >/dev/null; sleep 1; xl dmesg | grep -a "$NVME - " | tail -1 | sed "s/.*$NVME - //"; }
    backend() { xenstore-ls -f "/local/domain/0/backend/pci/$1" 2>&1 | grep -E '/(state|num_devs|dev-[0-9]+|state-[0-9]+) ' | sed 's|.*/||' | tr -s ' ' | tr '\n' ' '; }
    alive() { grep -a GUEST-ALIVE "$(guest_log "$1" pv)" | tail -1 | tr -d '\r' | sed 's/.*GUEST-ALIVE //'; }
    # A guest that saw no NVMe interrupt: its own lines, and what Xen says of the device.
    diag() {
        grep -aq GUEST-DIAG "$1" || return 0
        grep -a GUEST-DIAG "$1" | tr -d '\r' | sed 's/.*GUEST-DIAG /nvme: guest: /' | cut -c1-300 | while read -r l; do say "$l"; done
        say "nvme: Xen: $(nq); IOMMU faults by device: $(xl dmesg | grep -a 'Request device' | sed 's/.*Request device \[\([^]]*\)\].*/\1/' | sort | uniq -c | tr '\n' ' ')"
    }
    nvme_verdict() { wait_for "$2" grep -aq GUEST-NVME "$1"; grep -a GUEST-NVME "$1" | tail -1 | tr -d '\r' | sed 's/.*GUEST-NVME //'; }
    expect nvme-present "MSI-X: $(nmsix); reset_method: $(cat /sys/bus/pci/devices/$NVME/reset_method 2>&1); driver $(basename "$(readlink /sys/bus/pci/devices/$NVME/driver)" 2>/dev/null)" \
        has "$(nmsix)" 'Count=64'
    start_watch
    out=$(ptguard assignable-add $NVME 2>&1); rc=$?
    expect nvme-assignable "rc=$rc $out; ledger $(nledger state); MSI-X: $(nmsix); Xen: $(nq)" test "$rc:$(nledger state)" = 0:assignable
    cfg nvpv pv yes "" "dev=nvme"
    pf=$(ptguard preflight $NVME --xl-config /root/nvpv.cfg 2>&1)
    expect nvme-preflight-pirq-budget "$(grep -a pirq-budget <<<"$pf" | head -2 | tr '\n' ' ')" has "$pf" 'pirq-budget'
    doc=$(ptguard doctor 2>&1)
    expect nvme-doctor-pirq-budget "$(grep -a pirq-budget <<<"$doc" | head -1)" has "$doc" 'pirq-budget.*0000:00:07.0|0000:00:07.0.*pirq-budget'
    # An HVM guest through stock xl and qemu-xen, the NVMe controller and the NIC in pci=:
    # native MSI-X, 64 table entries emulated by qemu; ptguard adopts both. Then `xl
    # pci-detach` of the NVMe controller while the guest runs on with the NIC: libxl takes
    # its nodes out of the backend with no handshake anyone answers (an HVM guest has no
    # pcifront), so pciback keeps it exported there until the whole backend goes, and would
    # reset it then. ptguard's round makes pciback give it back at once (unbind, bind;
    # pciback warns that it was still in use); a PV guest's pcifront can then be given it,
    # and keeps its interrupts when the HVM guest is destroyed.
    xl pci-assignable-add $SBDF >/dev/null 2>&1
    cfg nvhvm hvm yes "$NVME\", \"$SBDF" "dev=nvme hold=1"
    log=$(guest_log nvhvm hvm); rm -f "$log"
    xl create /root/nvhvm.cfg >/dev/null 2>&1; hd=$(domid_of nvhvm)
    r=$(nvme_verdict "$log" 240)
    wait_for 30 test "$(nledger state)" = attached
    expect nvme-hvm-guest-irqs "guest: ${r:-no verdict}; ledger $(nledger state); MSI-X: $(nmsix)" \
        has "$r $(nledger state)" '^IRQS-ARRIVE .* attached$'
    k0=$(dmesg | wc -l)
    out=$(xl pci-detach nvhvm $NVME 2>&1); rc=$?
    wait_for 60 sh -c "dmesg | tail -n +$((k0 + 1)) | grep -q '$NVME.*in-use by domain'"
    wait_for 30 sh -c "lspci -vv -s $NBDF | grep -q 'MSI-X: Enable- .*Masked-'"
    inuse=$(dmesg | tail -n +$((k0 + 1)) | grep -a "$NVME" | grep -a 'in-use by domain' | head -1 | sed 's/^\[[^]]*\] //')
    gave=$(watch_log 300 | grep -a "pciback gave it back" | tail -1 | sed 's/.*\(pciback still exported\)/\1/' | cut -c1-240)
    expect nvme-hvm-detach-one-of-two-given-back-by-pciback "xl pci-detach rc=$rc $out; dom0: '$inuse'; daemon: '$gave'; MSI-X: $(nmsix); Xen: $(nq); HVM guest: $(xl list | grep -c nvhvm) running" \
        has "$rc $inuse | $gave | $(nmsix)" "^0 .*in-use by domain $hd.* \| pciback still exported it there.*unbound from pciback and bound again.* \| .*Enable- .*Masked-"
    cfg nvpv2 pv yes "$NVME" "dev=nvme hold=1"
    plog=$(guest_log nvpv2 pv); rm -f "$plog"
    xl create /root/nvpv2.cfg >/dev/null 2>&1
    r2=$(nvme_verdict "$plog" 180)
    wait_for 30 grep -aq GUEST-ALIVE "$plog"
    xl destroy nvhvm 2>/dev/null; wait_for 30 sh -c "! xl domid nvhvm >/dev/null 2>&1"
    a=$(grep -a GUEST-ALIVE "$plog" | tail -1 | tr -d '\r' | sed -n 's/.*nvme=//p'); sleep 12
    b=$(grep -a GUEST-ALIVE "$plog" | tail -1 | tr -d '\r' | sed -n 's/.*nvme=//p')
    expect nvme-next-guest-keeps-it-when-the-hvm-guest-goes "PV guest: ${r2:-no verdict}; its NVMe interrupts $a before the HVM guest's destroy, $b after; MSI-X: $(nmsix)" \
        has "$r2 $((${b:-0} > ${a:-0}))" '^IRQS-ARRIVE .* 1$'
    xl destroy nvpv2 2>/dev/null; wait_for 30 sh -c "! xl domid nvpv2 >/dev/null 2>&1"
    wait_for 60 test "$(nledger state)" = assignable
    # A PV guest built without the host's memory map (what xl builds without pci=[...] or
    # e820_host=1): a Linux 6.5+ guest sets up no swiotlb-xen, so its devices' DMA uses
    # pseudo-physical addresses and misses the IOMMU (seen here on 4.20.4 with Linux 6.12:
    # VT-d "PTE Read access is not set", the NVMe controller's first admin command timed
    # out). ptguard's attach reads libxl's saved configuration to refuse such a guest.
    cfg nomap pv yes "" ""; sed -i '/^e820_host/d' /root/nomap.cfg
    d=$(paused nomap)
    rec=$(ls /var/lib/xen/userdata-d."$d".*.libxl-json 2>/dev/null | head -1)
    out=$(ptguard attach $NVME "$d" 2>&1); rc=$?
    expect nvme-pv-guest-without-host-memory-map-refused "rc=$rc $(head -1 <<<"$out" | cut -c1-200); libxl's record $(basename "$rec" 2>/dev/null): $(tr -d ' \n\t\0' < "$rec" 2>/dev/null | grep -o '"type.pv":{[^}]\{0,60\}}'); ledger $(nledger state)" \
        has "rc=$rc $out $(nledger state)" 'rc=1 .*no reserved region.* assignable$'
    [ "$(nledger state)" = attached ] && ptguard detach $NVME >/dev/null 2>&1
    xl destroy nomap 2>/dev/null
    # Two devices, one PV guest, given by ptguard. A second device for a paused PV guest
    # is refused (pciback set the backend up with the first, and pcifront has not
    # connected: the device would reach no one); once the guest runs, it is a hot-add
    # (backend Reconfiguring, answered by pcifront). Then ptguard detaches it again while
    # the guest keeps using the NIC.
    # The NIC comes into pciback through xl, as the soak after this group expects it, so
    # that handing it back below binds no dom0 driver: a quick e1000e bind and unbind in
    # dom0 once crashed QEMU 7.2's emulated e1000e (an assertion in its MSI-X throttling
    # timer, e1000e_core.c), taking the whole machine down in CI.
    xl pci-assignable-add $SBDF >/dev/null 2>&1
    [ "$(ledger state)" = assignable ] || ptguard assignable-add $SBDF >/dev/null 2>&1
    cfg both pv yes "" "dev=both hold=1"
    log=$(guest_log both pv); rm -f "$log"
    d=$(paused both)
    a1=$(ptguard attach $SBDF "$d" 2>&1 | head -1); sleep 2
    out=$(ptguard attach $NVME "$d" 2>&1); rc=$?
    expect nvme-second-device-for-a-paused-pv-guest-refused "rc=$rc $(tr '\n' ' ' <<<"$out" | cut -c1-300); ledger $(nledger state); backend: $(backend "$d")" \
        has "rc=$rc $out $(nledger state)" 'rc=1 .*already set up.* assignable$'
    xl unpause both
    wait_for 150 grep -aq GUEST-RESULT "$log"
    a2=$(ptguard attach $NVME "$d" 2>&1 | head -1)
    wait_for 90 grep -aq GUEST-HOLD "$log"
    r1=$(grep -a GUEST-RESULT "$log" | tail -1 | tr -d '\r' | sed 's/.*GUEST-RESULT //'); r2=$(nvme_verdict "$log" 5)
    expect nvme-hot-add-to-a-running-pv-guest "$a1; $a2; NIC: $r1; NVMe: $r2; backend: $(backend "$d"); guest's kernel: $(grep -aE 'nvme|pcifront' "$log" | tail -3 | tr -d '\r' | tr '\n' ' ' | cut -c1-300)" \
        has "$r1 $r2" '^IRQS-ARRIVE .* IRQS-ARRIVE'
    diag "$log"
    before=$(alive both)
    out=$(ptguard detach $NVME 2>&1); rc=$?
    say "nvme: ptguard detach rc=$rc: $(tr '\n' ' ' <<<"$out" | cut -c1-600)"
    say "nvme: backend after: $(backend "$d"); ledger $(nledger state) ($(xenstore-read /ptguard/device/$NKEY 2>/dev/null | sed -n 's/.*reason=//p')); MSI-X: $(nmsix); Xen: $(nq)"
    wait_for 30 sh -c "grep -a GUEST-ALIVE '$log' | tail -1 | grep -q nvme-device=gone"
    say "nvme: guest before: $before; after: $(alive both); guest's kernel: $(grep -aE 'pcifront|nvme' "$log" | tail -4 | tr -d '\r' | tr '\n' ' ' | cut -c1-500)"
    after=$(alive both)
    expect nvme-detach-one-of-two "rc=$rc; ledger $(nledger state); guest now: $after; backend: $(backend "$d")" \
        has "$rc $(nledger state) $after" '^0 assignable .*nvme-device=gone'
    a=$(alive both | sed -n 's/^irqs=\([0-9]*\).*/\1/p'); sleep 12; b=$(alive both | sed -n 's/^irqs=\([0-9]*\).*/\1/p')
    expect nvme-other-device-keeps-working "NIC interrupts $a then $b; MSI-X of the NIC: $(msix)" test "${b:-0}" -gt "${a:-0}"
    xl destroy both 2>/dev/null; wait_for 30 sh -c "! xl domid both >/dev/null 2>&1"
    wait_for 60 test "$(ledger state)" = assignable
    # The same with stock xl: both devices in pci=, one removed by xl pci-detach.
    cfg bothxl pv yes "$SBDF\", \"$NVME" "dev=both hold=1"
    log=$(guest_log bothxl pv); rm -f "$log"
    xl create /root/bothxl.cfg >/dev/null 2>&1; d=$(domid_of bothxl)
    wait_for 180 grep -aq GUEST-HOLD "$log"
    r1=$(grep -a GUEST-RESULT "$log" | tail -1 | tr -d '\r' | sed 's/.*GUEST-RESULT //'); r2=$(nvme_verdict "$log" 5)
    expect nvme-xl-two-devices-one-guest "NIC: $r1; NVMe: $r2; guest's kernel: $(grep -aE 'nvme|pcifront' "$log" | tail -3 | tr -d '\r' | tr '\n' ' ' | cut -c1-300)" \
        has "$r1 $r2" '^IRQS-ARRIVE .* IRQS-ARRIVE'
    diag "$log"
    out=$(xl pci-detach bothxl $NVME 2>&1); rc=$?
    wait_for 30 sh -c "grep -a GUEST-ALIVE '$log' | tail -1 | grep -q nvme-device=gone"
    say "nvme: xl pci-detach rc=$rc: $(tr '\n' ' ' <<<"$out" | cut -c1-300); backend: $(backend "$d"); ledger $(nledger state); MSI-X: $(nmsix); Xen: $(nq); guest: $(alive bothxl)"
    expect nvme-xl-detach-one-of-two "rc=$rc; ledger '$(nledger state)'; MSI-X: $(nmsix); guest now: $(alive bothxl)" \
        has "$rc $(nmsix) $(alive bothxl)" '^0 .*Enable- .*Masked- .*nvme-device=gone'
    xl destroy bothxl 2>/dev/null; wait_for 30 sh -c "! xl domid bothxl >/dev/null 2>&1"
    # Stock xl's own hot-add of the NVMe controller to a running PV guest that has the NIC:
    # the baseline for ptguard's hot-add above.
    cfg hotxl pv yes "$SBDF" "dev=both hold=1"
    log=$(guest_log hotxl pv); rm -f "$log"
    xl create /root/hotxl.cfg >/dev/null 2>&1; d=$(domid_of hotxl)
    wait_for 150 grep -aq GUEST-RESULT "$log"
    out=$(xl pci-attach hotxl $NVME 2>&1); rc=$?
    wait_for 90 grep -aq GUEST-HOLD "$log"
    r1=$(grep -a GUEST-RESULT "$log" | tail -1 | tr -d '\r' | sed 's/.*GUEST-RESULT //'); r2=$(nvme_verdict "$log" 5)
    expect nvme-xl-hot-add-to-a-running-pv-guest "xl pci-attach rc=$rc $out; NIC: $r1; NVMe: $r2; backend: $(backend "$d")" \
        has "$r1 $r2" '^IRQS-ARRIVE .* IRQS-ARRIVE'
    diag "$log"
    xl destroy hotxl 2>/dev/null; wait_for 30 sh -c "! xl domid hotxl >/dev/null 2>&1"
    wait_for 60 test "$(ledger state)" = assignable
    sleep 5
    say "nvme: at the end: NVMe ledger '$(nledger state)' MSI-X: $(nmsix); NIC ledger '$(ledger state)' MSI-X: $(msix)"
    capture nvme-end
    ptguard assignable-remove $NVME >/dev/null 2>&1
    # SR-IOV: QEMU's NVMe controller exposes one virtual function (sriov_max_vfs=1), made
    # by dom0's nvme driver (pciback has no sriov_configure) with driver autoprobe off, so
    # the VF (whose controller has no resources until an admin command gives them) stays
    # unclaimed. Xen reads memory decoding for a VF on its PF (arch/x86/msi.c,
    # memory_decoded): with the PF's Memory bit off a VF vector cannot be mapped (-ENXIO),
    # with it on it can; the VF's own Memory bit is hardwired 0.
    PF=/sys/bus/pci/devices/$NVME
    echo 0 > $PF/sriov_drivers_autoprobe 2>/dev/null
    vfout=$(echo 1 2>&1 > $PF/sriov_numvfs); sleep 2
    VF=$(basename "$(readlink $PF/virtfn0 2>/dev/null)" 2>/dev/null)
    expect nvme-vf-present "sriov_totalvfs $(cat $PF/sriov_totalvfs 2>&1); numvfs $(cat $PF/sriov_numvfs 2>&1) $vfout; VF '$VF'; Xen: $(xl dmesg | grep -a 'virtual function' | tail -1)" \
        test -n "$VF"
    if [ -n "$VF" ]; then
        out=$(ptguard assignable-add "$VF" 2>&1); rc=$?
        cfg vfh hvm yes "" ""
        d=$(paused vfh)
        att=$(ptguard attach "$VF" "$d" --json 2>&1)
        token=$(json_get token <<<"$att"); epoch=$(json_get epoch <<<"$att")
        tb=$(ptguard show "$VF" --json 2>/dev/null | json_get ledger.table_base)
        req() { printf '{"op":"bind","domid":%s,"sbdf":"%s","epoch":%s,"kind":{"kind":"msix","entry":%s,"table_base":%s},"gvec":%s,"gflags":0,"gtable":0,"token":"%s"}' "$d" "$VF" "$epoch" "$1" "$tb" "$((64 + $1))" "$token"; }
        pfcmd=$(setpci -s $NBDF COMMAND)
        setpci -s $NBDF COMMAND=$(printf '%04x' $((0x$pfcmd & ~2)))
        off=$(ptguard broker-request "$(req 0)" 2>&1 | head -1)
        setpci -s $NBDF COMMAND=$(printf '%04x' $((0x$pfcmd | 6)))
        on=$(ptguard broker-request "$(req 0)" 2>&1 | head -1)
        vfcmd=$(setpci -s "${VF#0000:}" COMMAND 2>&1)
        expect nvme-vf-decoding-is-the-pfs "assignable-add rc=$rc $(tr '\n' ' ' <<<"$out" | cut -c1-400); attach: $(tr '\n' ' ' <<<"$att" | cut -c1-200); VF Command $vfcmd; PF Memory off: $off; PF Memory on: $on" \
            has "$off | $on" 'ENXIO.* \| \{"ok":true'
        out=$(ptguard detach "$VF" 2>&1); rc=$?
        expect nvme-vf-detach-clean "rc=$rc $out; MSI-X: $(lspci -vv -s "${VF#0000:}" | sed -n 's/.*MSI-X: //p'); Xen: $(xl debug-keys Q >/dev/null; sleep 1; xl dmesg | grep -a "$VF - " | tail -1)" \
            has "rc=$rc $out" 'rc=0 .*clean and assignable'
        xl destroy vfh 2>/dev/null
        ptguard assignable-remove "$VF" >/dev/null 2>&1
        echo 0 > $PF/sriov_numvfs 2>/dev/null
    fi
    # ptguard lets go of the NIC; it found it in pciback, so no dom0 driver binds it now.
    ptguard assignable-remove $SBDF >/dev/null 2>&1
fi
