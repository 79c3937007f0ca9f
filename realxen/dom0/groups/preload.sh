# Group preload of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- preload: stock qemu-xen through ptguard's wrapper keeps the exact ledger -----------
# An unchanged xl config (pci=) plus device_model_override = the packaged wrapper, which
# preloads libptguard_preload.so into Debian's qemu-xen: each vector qemu maps and binds
# is in the ledger as it binds it; a hot-unplug from the running guest (qemu unbinds and
# unmaps on its own) leaves no binding in the ledger or in Xen.
if group preload && [ -x /usr/libexec/ptguard/qemu-dm ]; then
    start_watch
    xl pci-assignable-add $SBDF
    cfg hvmp hvm yes $SBDF "hold=1"
    echo 'device_model_override = "/usr/libexec/ptguard/qemu-dm"' >> /root/hvmp.cfg
    live=$(start_hold hvmp hvm)
    d=$(domid_of hvmp)
    dmlog=/var/log/xen/qemu-dm-hvmp.log
    bindings() { xenstore-ls "/ptguard/device/$KEY/binding" 2>/dev/null | tr -d '"' | tr '\n' ' '; }
    unplugged_clean() { has "$1" "^rc=0 \[\] .*unmapped \(ledger\)" && ! has "$2" "MSIs < [0-9]"; }
    preload_log() { grep -a ptguard-preload "$dmlog" 2>/dev/null | tail -"$1" | tr '\n' ' '; }
    bound=$(bindings | grep -o 'state=bound' | wc -l)
    expect preload-vectors-in-the-ledger "d$d live: $live; mode $(ledger mode); ledger: $(bindings); qemu: $(preload_log 4)" \
        has "$live bound=$bound" "^IRQS-ARRIVE vectors=([1-9][0-9]*) .* bound=\1$"
    out=$(timeout 120 xl pci-detach hvmp $SBDF 2>&1); rc=$?
    sleep 3
    q=$(xen_q | sed 's/.*0000:00:05.0 - //')
    expect preload-hot-unplug-leaves-no-binding "pci-detach rc=$rc $(tail -1 <<<"$out"); ledger '$(bindings)'; qemu: $(preload_log 3); Xen: $q" \
        unplugged_clean "rc=$rc [$(bindings)] $(preload_log 1)" "$q"
    xl destroy hvmp 2>/dev/null
    wait_for 60 test -z "$(ledger state)" -o "$(ledger state)" = assignable
    # qemu dies while its guest runs: the daemon sees device-model-pid gone and unbinds
    # what the ledger holds for it, so plain `xl destroy` with decoding off — the seed
    # recipe — finds nothing mapped, and the next guest's interrupts arrive.
    cfg hvmq hvm yes $SBDF "hold=1"
    echo 'device_model_override = "/usr/libexec/ptguard/qemu-dm"' >> /root/hvmq.cfg
    live=$(start_hold hvmq hvm)
    d=$(domid_of hvmq)
    before=$(bindings)
    dm=$(xenstore-read "/local/domain/$d/image/device-model-pid" 2>/dev/null)
    kill -9 "$dm" 2>/dev/null
    setpci -s $BDF COMMAND=0000
    wait_for 20 test -z "$(bindings)"
    released=$(watch_log 30 | grep -a "device model of" | tail -1)
    expect preload-dead-qemu-bindings-released "d$d live: $live; qemu $dm killed; before: $before; after: '$(bindings)'; daemon: $released; Xen: $(xen_q | sed 's/.*0000:00:05.0 - //')" \
        has "[$(bindings)] $(xl list hvmq >/dev/null 2>&1 && echo running) $released" "^\[\] running .*gone; unbound and unmapped its [1-9] vector"
    setpci -s $BDF COMMAND=0000
    n0=$(xl dmesg | grep -ac "cannot mask")
    xl destroy hvmq 2>/dev/null
    sleep 3
    masked=""
    [ "$(xl dmesg | grep -ac "cannot mask")" -gt "$n0" ] && masked=$(xl dmesg | grep -a "cannot mask" | tail -1)
    capture preload-destroy-after-dead-qemu
    expect preload-xl-destroy-after-dead-qemu-forces-no-mask "MSI-X: $(msix); Xen: '${masked:-no cannot-mask}'" \
        has "$(msix) [${masked}]" "Masked- \[\]$"
    cfg pv pv yes $SBDF ""
    r=$(run_guest pv pv)
    expect preload-next-guest-irqs-arrive "ledger '$(ledger state)'; next guest (xl, pci=): $r" has "$r" '^IRQS-ARRIVE'
    stop_watch
    xl pci-assignable-remove -r $SBDF
fi
