#!/bin/bash
# One lifecycle, run the same way on real Xen (in the test bed's dom0) and on the
# simulated host, each command with --trace; differential.py compares the hypercalls
# ptguard made and what each host answered.
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
            [ "$3" = yes ] && echo 'passthrough = "enabled"'
            [ "$2" = hvm ] && { echo 'device_model_version = "qemu-xen"'; echo 'vnc = 0'; echo 'nographic = 1'; echo 'vga = "none"'; }
        } > "$f"
        xl create -p "$f" >/dev/null 2>&1; xl domid "diff-$1"
    }
    drop_domain() { xl destroy "diff-$1" >/dev/null 2>&1; }
else
    SBDF=0000:03:00.0
    pt() { "${PTGUARD:-ptguard}" --host "sim:$simdir" "$@"; }
    # The simulator's profile of the line the bed ran (run --xen; common.sh exports it).
    case ${REALXEN_XEN:-4.17} in 4.20) sim_xen=4.20.0 ;; *) sim_xen=4.17.5 ;; esac
    pt sim init --xen "$sim_xen" --pciback new >/dev/null
    new_domain() {
        local flags=()
        [ "$2" = pv ] && flags+=(--pv)
        [ "$3" = no ] && flags+=(--no-passthrough)
        pt sim create "${flags[@]}" "diff-$1"
    }
    drop_domain() { :; }
fi
n=0
step() { # NAME ARGS... : one ptguard command, traced
    n=$((n + 1))
    local f; f=$(printf '%s/%02d-%s.txt' "$out" "$n" "$1"); shift
    pt --trace "$@" > "$f" 2>&1
    echo "rc=$?" >> "$f"
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
step assignable-remove assignable-remove $SBDF
