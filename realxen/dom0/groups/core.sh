# Group core of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- core: ptguard's lifecycle against the real hypervisor (guests created paused) ----
if group core; then
    capture clean-boot
    v=$(xl info | sed -n 's/^xen_version *: //p')
    expect "xen-$XEN_LINE" "xen_version $v, privcmd $(ls /dev/xen/privcmd 2>&1)" \
        bash -c "[[ '$v' == $XEN_LINE.* && -c /dev/xen/privcmd ]]"
    out=$(ptguard assignable-add $SBDF 2>&1); rc=$?
    expect assignable-add "rc=$rc driver=$(driver) ledger=$(ledger state): $out" \
        test $rc = 0 -a "$(driver)" = pciback -a "$(ledger state)" = assignable
    expect assignable-list "$(xl pci-assignable-list | tr '\n' ' ')" \
        has "$(xl pci-assignable-list)" "$SBDF"
    q=$(xen_q)
    expect quarantined-in-dom_io "Xen: $q" has "$q" "DomIO|d32753"
    if packaged; then
        wait_for 30 systemctl is-active -q ptguard.service
        expect packaged-daemon "$(command -v ptguard) $(ptguard --version); ptguard.service $(systemctl is-active ptguard.service) since boot" \
            bash -c "[ \"\$(command -v ptguard)\" = /usr/sbin/ptguard ] && systemctl is-active -q ptguard.service"
    fi
    start_watch
    expect watch-serves "pid $watchpid, socket $(ls -l $SOCK 2>&1)" test -S $SOCK
    if packaged; then
        j=$(journalctl -u ptguard.service -o json --no-pager | grep -a 'watching @releaseDomain' | tail -1)
        expect journald-levels "$(cut -c1-300 <<<"$j")" has "$j" '"PRIORITY":"6"'
    fi
    out=$(ptguard watch 2>&1); rc=$?
    expect second-watch-refused "rc=$rc: $out" has "rc=$rc $out" "rc=1 .*another instance \\(pid $watchpid"

    cfg hvmp hvm yes "" ""
    d=$(paused hvmp)
    out=$(ptguard attach $SBDF "$d" --json 2>&1); rc=$?
    epoch=$(ledger epoch)
    expect attach-hvm "d$d rc=$rc epoch=$epoch: $(tr '\n' ' ' <<<"$out")" \
        test $rc = 0 -a "$(ledger state)" = attached -a "$(ledger owner | cut -d' ' -f1)" = "$d"
    # The owner's incarnation: getdomaininfo's handle is the UUID xl gave the domain.
    uuid=$(basename "$(xenstore-read "/local/domain/$d/vm" 2>/dev/null)")
    expect owner-handle-is-the-domains-uuid "ledger owner '$(ledger owner)', xl uuid $uuid" \
        test "$(ledger owner)" = "$d $uuid"
    pirqs=""
    for e in 0 1 2; do
        r=$(bind_as_dm "$d" "$epoch" $e 2>&1); rc=$?
        p=$(json_get pirq <<<"$r")
        expect "broker-bind-hvm-$e" "rc=$rc $r" test "$(json_get ok <<<"$r")" = true -a -n "$p"
        pirqs="$pirqs $p"
    done
    q=$(xen_q)
    n=$(sed -n 's/.*MSIs < \(.*\) >.*/\1/p' <<<"$q" | wc -w)
    expect xen-sees-bindings "pirqs$pirqs; Xen: $q" test "$n" -ge 3
    capture hvm-guest-3-vectors-bound
    r=$(bind_as_dm "$d" "$((epoch + 1))" 3 2>&1)
    expect broker-refuses-stale-epoch "$r" test "$(json_get code <<<"$r")" = stale-epoch
    out=$(ptguard --trace detach $SBDF 2>&1); rc=$?
    expect detach-live-bindings "rc=$rc: $(grep -E 'clean|QUARANTINED|release_msix|prepare_msix|ptguard:' <<<"$out" | tr '\n' ' ')" \
        has "rc=$rc $out" "rc=0 .*clean and assignable"
    q=$(xen_q)
    expect detach-leaves-no-msi "Xen: $q; MSI-X: $(msix)" has "$q" "DomIO|d32753"
    xl destroy hvmp

    cfg nopt hvm no "" ""
    d=$(paused nopt)
    out=$(ptguard attach $SBDF "$d" 2>&1); rc=$?
    expect attach-refuses-no-iommu-context "rc=$rc ledger=$(ledger state): $out" \
        has "rc=$rc $(ledger state) $out" "rc=1 assignable .*no IOMMU context"
    xl destroy nopt

    out=$(ptguard attach $SBDF 0 2>&1); rc=$?
    expect attach-refuses-dom0 "rc=$rc: $out" has "rc=$rc $out" "rc=1 .*protected domain"

    cfg pvp pv yes "" ""
    d=$(paused pvp)
    out=$(ptguard attach $SBDF "$d" --json 2>&1); rc=$?
    epoch=$(ledger epoch)
    token=$(json_get token <<<"$out")
    # A PV guest has no device-model pid: knowing the numbers is not enough, the token is.
    r=$(python3 $T/broker_client.py $SOCK "$d" $SBDF "$epoch" "$(ledger table-base)" bind 0 2>&1)
    expect broker-refuses-without-credential "$r" test "$(json_get code <<<"$r")" = credential-required
    r=$(PTGUARD_TOKEN=$token python3 $T/broker_client.py $SOCK "$d" $SBDF "$epoch" "$(ledger table-base)" bind 0 2>&1)
    expect pv-attach-and-bind "attach rc=$rc; bind: $r" test "$rc $(json_get ok <<<"$r")" = "0 true"
    xl destroy pvp
    wait_for 60 test "$(ledger state)" = assignable
    expect watch-tears-down-destroyed-guest "ledger $(ledger state) epoch $(ledger epoch); Xen: $(xen_q)" \
        test "$(ledger state)" = assignable

    cfg rogue hvm yes "" ""
    d=$(paused rogue)
    ptguard attach $SBDF "$d" >/dev/null 2>&1
    # A model that bypasses the broker and binds an entry itself: Xen's Q and i dumps
    # name the pirq bound to the device's vector, and the detach unmaps exactly it.
    r=$(python3 $T/rogue_dm.py "$d" $SBDF 3 "$(ledger table-base)" 2>&1)
    out=$(ptguard detach $SBDF 2>&1); rc=$?
    rp=$(sed -n 's/.*pirq=\([0-9]*\).*/\1/p' <<<"$r")
    q=$(xen_q)
    expect rogue-dm-bound-vector-unmapped "rogue: $(tr '\n' ' ' <<<"$r"); detach rc=$rc: $(tr '\n' ' ' <<<"$out"); Xen: $q" \
        has "rc=$rc $(ledger state) $out" "rc=0 assignable .*unmapped pirq\(s\) $rp that d$d still had bound"
    # One that only maps (never binds): Xen does not name that pirq, so the device is kept
    # from every guest until the owner is gone.
    ptguard attach $SBDF "$d" >/dev/null 2>&1
    r=$(python3 $T/rogue_dm.py "$d" $SBDF 2 "$(ledger table-base)" map-only 2>&1)
    out=$(ptguard detach $SBDF 2>&1); rc=$?
    expect rogue-dm-quarantines "rogue: $(tr '\n' ' ' <<<"$r"); detach rc=$rc: $out" \
        has "rc=$rc $(ledger state) $out" "rc=1 quarantined .*mapped but bound to no guest"
    xl destroy rogue
    wait_for 60 test "$(ledger state)" = assignable
    expect quarantine-lifted-when-owner-gone "ledger $(ledger state): $(ledger reason)" \
        test "$(ledger state)" = assignable
    out=$(ptguard doctor 2>&1); rc=$?
    expect doctor-clean "rc=$rc: $(tr '\n' ' ' <<<"$out")" test $rc = 0
    stop_watch
    expect watch-removes-its-socket "$(ls $SOCK 2>&1)" test ! -e $SOCK
    out=$(ptguard assignable-remove $SBDF 2>&1); rc=$?
    expect assignable-remove "rc=$rc driver=$(driver): $out" test $rc = 0 -a "$(driver)" = e1000e
    say "ptguard watch log:"; watch_log 20
fi
