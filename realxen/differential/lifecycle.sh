#!/bin/bash
# One lifecycle, run the same way on real Xen (in the test bed's dom0) and on the
# simulated host, each command with --trace and followed by what the device then shows
# (MSI-X Enable and Function Mask, memory decoding, the ledger's state and bindings);
# compare.py compares the hypercalls ptguard made, what each host answered, and those
# side effects.
# Usage: lifecycle.sh real|sim OUT-DIR [SIM-DIR]
set -u
mode=$1 out=$2 simdir=${3:-}
mkdir -p "$out"
if [ "$mode" = real ]; then
    SBDF=0000:00:05.0
    pt() { ptguard "$@"; }
    new_domain() { # NAME hvm|pv yes|no -> domid
        local f=/root/diff-$1.cfg
        {
            echo "name = \"diff-$1\""; echo "type = \"$2\""; echo "memory = 256"; echo "vcpus = 1"
            echo 'kernel = "/opt/ptguard-test/guest-vmlinuz"'
            # A guest that shuts down stays until it is destroyed (the simulator's `sim
            # shutdown`), so the sweep meets a shut-down domain, not xl's racing destroy.
            echo 'on_poweroff = "preserve"'
            [ "$3" = yes ] && echo 'passthrough = "enabled"'
            # ptguard refuses a PV guest built without the host's memory map (xl's
            # default without pci=): its devices' DMA would miss the IOMMU.
            [ "$2$3" = pvyes ] && echo 'e820_host = 1'
            [ "$2" = hvm ] && { echo 'device_model_version = "qemu-xen"'; echo 'vnc = 0'; echo 'nographic = 1'; echo 'vga = "none"'; }
        } > "$f"
        xl create -p "$f" >/dev/null 2>&1; xl domid "diff-$1"
    }
    drop_domain() { xl destroy "diff-$1" >/dev/null 2>&1; }
    decoding() { case $1 in on) setpci -s 00:05.0 COMMAND=0006 ;; off) setpci -s 00:05.0 COMMAND=0000 ;; esac; }
    # A device model bypassing ptguard: map (and bind) one entry straight through libxenctrl.
    dm_map() { python3 "$(dirname "$0")/../rogue_dm.py" "$1" $SBDF "$2" "$tb" ${3:+map-only} >/dev/null 2>&1; }
    # What the guest's own SCHEDOP_shutdown does (a paused HVM guest cannot run to it).
    shut_down() {
        python3 -c "import ctypes; xc = ctypes.CDLL('${XENCTRL:-libxenctrl.so}'); xc.xc_interface_open.restype = ctypes.c_void_p; h = ctypes.c_void_p(xc.xc_interface_open(None, None, 0)); xc.xc_domain_shutdown(h, ctypes.c_uint32($1), ctypes.c_int(0))" >/dev/null 2>&1
    }
    # The daemon would race the steps below (a shut-down domain is its to tear down):
    # stopped for the lifecycle, started again after it.
    if systemctl is-active -q ptguard.service 2>/dev/null; then
        systemctl stop ptguard.service; trap 'systemctl start ptguard.service' EXIT
    fi
else
    SBDF=0000:03:00.0
    pt() { "${PTGUARD:-ptguard}" --host "sim:$simdir" "$@"; }
    # The simulator's profile of the line the bed ran (run --xen; common.sh exports it).
    case ${REALXEN_XEN:-4.17} in 4.20) sim_xen=4.20.0 ;; *) sim_xen=4.17.5 ;; esac
    pt sim init --xen "$sim_xen" --pciback new >/dev/null
    new_domain() {
        local flags=()
        [ "$2" = pv ] && flags+=(--pv)
        [ "$2$3" = pvyes ] && flags+=(--e820-host)
        [ "$3" = no ] && flags+=(--no-passthrough)
        pt sim create "${flags[@]}" "diff-$1" | tee "$simdir/diff-domid-$1"
    }
    drop_domain() { pt sim destroy "$(pt_domid "$1")" >/dev/null; }
    pt_domid() { cat "$simdir/diff-domid-$1"; }
    decoding() { pt sim decoding $SBDF "$1" >/dev/null; }
    dm_map() { pt sim dm-map "$1" $SBDF "$2" ${3:+--map-only} >/dev/null; }
    shut_down() { pt sim shutdown "$1" --reason poweroff >/dev/null; }
fi
n=0
# What the device shows after a step: the same fields on both hosts.
observe() {
    pt show $SBDF --json > "$out.show" 2>/dev/null
    pt lspci --json > "$out.lspci" 2>/dev/null
    python3 "$(dirname "$0")/observe.py" $SBDF "$out.show" "$out.lspci"
    rm -f "$out.show" "$out.lspci"
}
step() { # NAME ARGS... : one ptguard command, traced, then what the device shows
    n=$((n + 1))
    local f; f=$(printf '%s/%02d-%s.txt' "$out" "$n" "$1"); shift
    pt --trace "$@" > "$f" 2>&1
    echo "rc=$?" >> "$f"
    observe >> "$f"
}
step assignable-add assignable-add $SBDF
d=$(new_domain hvm hvm yes)
step attach-hvm attach $SBDF "$d"
step detach-hvm detach $SBDF
drop_domain hvm
d=$(new_domain pv pv yes)
step attach-pv attach $SBDF "$d"
step detach-pv detach $SBDF
drop_domain pv
d=$(new_domain nopt hvm no)
step attach-no-iommu attach $SBDF "$d"
drop_domain nopt
step attach-dom0 attach $SBDF 0

# The device-model paths: an HVM guest's model binding MSI-X vectors through the broker
# (served in-process by `broker-request`, with the assignment's token), refused and
# forced unbinds, the sweep of a shut-down guest's bound, mapped-unbound and unmapped
# pirqs, and the teardown after it.
last() { ls "$out" | tail -1; }
token_of() { sed -n 's/.*"token": *"\([0-9a-f]*\)".*/\1/p' "$out/$(last)"; }
field() { pt show $SBDF --json | python3 -c "import json, sys; print(json.load(sys.stdin)['ledger']['$1'])"; }
request() { # OP DOMID EPOCH ENTRY [EXTRA-JSON]
    printf '{"op":"%s","domid":%s,"sbdf":"%s","epoch":%s,"kind":{"kind":"msix","entry":%s,"table_base":%s},"gvec":%s,"gflags":0,"gtable":0,"token":"%s"%s}' \
        "$1" "$2" "$SBDF" "$3" "$4" "$tb" "$((64 + $4))" "$token" "${5:-}"
}
map_only() { # DOMID ENTRY: a stock model's xc_physdev_map_pirq_msi, never bound
    printf '{"op":"map-pirq-msi","domid":%s,"sbdf":"%s","entry":%s,"table_base":%s,"token":"%s"}' "$1" "$SBDF" "$2" "$tb" "$token"
}
d=$(new_domain dm hvm yes)
decoding off
step attach-hvm-model attach $SBDF "$d" --json
token=$(token_of); epoch=$(field epoch); tb=$(field table_base)
step dm-bind-decoding-off broker-request "$(request bind "$d" "$epoch" 0)"
decoding on
for e in 0 1 2; do
    step "dm-bind-$e" broker-request "$(request bind "$d" "$epoch" $e)"
done
pirq2=$(sed -n 's/^{"ok":true,"pirq":\([0-9]*\)}.*/\1/p' "$out/$(last)")
step dm-bind-stale-epoch broker-request "$(request bind "$d" "$((epoch + 1))" 3)"
step dm-unbind-2 broker-request "$(request unbind "$d" "$epoch" 2 ",\"pirq\":${pirq2:-0}")"
step detach-live-bindings detach $SBDF
drop_domain dm

# attach_bound ATTACH-STEP BIND-STEP-PREFIX DOMID ENTRY...: attach, then the model binds.
attach_bound() {
    local name=$1 prefix=$2 dom=$3 e; shift 3
    step "$name" attach $SBDF "$dom" --json
    token=$(token_of); epoch=$(field epoch); tb=$(field table_base)
    for e in "$@"; do
        step "$prefix-$e" broker-request "$(request bind "$dom" "$epoch" "$e")"
    done
}
d=$(new_domain sw hvm yes)
decoding on
attach_bound attach-hvm-swept dm-bind-sw "$d" 0 1
step dm-map-only broker-request "$(map_only "$d" 2)"
shut_down "$d"
step sweep-shut-down sweep "$d"
step release-after-sweep release-domain "$d"
drop_domain sw

# A device model that bypasses ptguard: a bound vector no ledger knows (release_msix
# answers -EBUSY, the detach unmaps what the domain holds in its MSI range), then a
# map-only one (quarantined), repair refused while the domain lives and done after it.
d=$(new_domain rg hvm yes)
step attach-hvm-rogue attach $SBDF "$d"
tb=$(field table_base)
dm_map "$d" 3
step detach-rogue-bound detach $SBDF
step attach-hvm-rogue-again attach $SBDF "$d"
dm_map "$d" 2 map-only
step detach-rogue-map-only detach $SBDF
step repair-domain-alive repair $SBDF
drop_domain rg
step repair-after-destroy repair $SBDF
step sweep-gone-domain sweep "$d"

# The sweep's refusals: a domain that may still run, and a PV guest (pciback's pirqs).
d=$(new_domain sr hvm yes)
step sweep-paused-domain sweep "$d"
drop_domain sr
d=$(new_domain spv pv yes)
shut_down "$d"
step sweep-pv-shut-down sweep "$d"
drop_domain spv

# The seed's teardown: a guest leaves its device with memory decoding off and vectors bound.
d=$(new_domain seed hvm yes)
decoding on
attach_bound attach-hvm-seed dm-bind-seed "$d" 0 1
decoding off
step detach-decoding-off detach $SBDF
drop_domain seed
step assignable-remove assignable-remove $SBDF
