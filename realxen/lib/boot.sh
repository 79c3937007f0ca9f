#!/usr/bin/env bash
# Boots the Xen line's hypervisor (common.sh) and the dom0 image under QEMU (TCG) and waits
# for the check runner's summary on the console. Always kills its QEMU; exits 0 only when
# the summary says "M failed" with M = 0, 3 when the whole machine stalled (no output from
# Xen, dom0 or the checks for REALXEN_STALL seconds, default 420) or QEMU itself crashed
# (died of a signal), 1 otherwise.
# Usage: boot.sh CONSOLE-LOG [TIMEOUT-SECONDS]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
console=${1:?usage: boot.sh CONSOLE-LOG [TIMEOUT]}
timeout_s=${2:-1800}
W=$REALXEN_WORK
# Xen: serial console, verbose logs, a fixed dom0. The dom0 line must hold no comma
# (QEMU's multiboot module list is comma-separated). ptguard.checks= selects check groups,
# ptguard.soak= the soak's length, ptguard.soak_baseline=1 adds the toolstack-alone chain (=only: that chain alone).
xen_args="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all iommu=verbose noreboot"
dom0_args="root=/dev/vda ro console=hvc0 rootwait quiet ptguard.xen=$XEN_LINE ptguard.checks=${REALXEN_CHECKS:-all} ptguard.soak=${REALXEN_SOAK:-15} ptguard.soak_baseline=${REALXEN_SOAK_BASELINE:-0}"
: > "$console"
# The dom0 writes what it captured (a tar) to a second disk.
rm -f "$W/out.img"; truncate -s 64M "$W/out.img"
rm -f "$W/nvme.img"; truncate -s 16M "$W/nvme.img"
# -cpu qemu64 ($QEMU_CPU; +npt on a line without shadow paging): -cpu max crashes the PV
# dom0 under TCG. intel-iommu with interrupt
# remapping: Xen refuses device assignment without an IOMMU. e1000e at 00:05.0 is the
# MSI-X device under test (5 vectors, table in BAR3); QEMU's NVMe controller at 00:07.0 the
# second (64 vectors: msix_qsize 65 less the one interrupt resource kept for its VF), with a
# 16 MB namespace of its own, in an NVMe subsystem (QEMU's condition for SR-IOV: one
# virtual function, sriov_max_vfs=1, with flexible resources for it).
"$QEMU_BIN" -accel tcg,thread=multi -machine q35 -cpu "$QEMU_CPU" -smp 2 -m 3072 \
    -L "$QEMU_FW" -display none -monitor none -serial "file:$console" -no-reboot \
    -kernel "$W/xen.elf" -append "$xen_args" \
    -initrd "$W/vmlinuz $dom0_args,$W/initrd.img" \
    -device intel-iommu,intremap=on \
    -drive "file=$W/dom0.img,if=none,id=d0,format=raw,snapshot=on" \
    -device virtio-blk-pci,drive=d0,addr=04.0 \
    -drive "file=$W/out.img,if=none,id=d1,format=raw" -device virtio-blk-pci,drive=d1,addr=06.0 \
    -device e1000e,addr=05.0,mac=52:54:00:12:34:56 -nic none \
    -device nvme-subsys,id=nvss,nqn=ptguard-nvme \
    -device nvme,serial=ptguard-nvme,subsys=nvss,addr=07.0,sriov_max_vfs=1,sriov_vq_flexible=2,sriov_vi_flexible=1 \
    -drive "file=$W/nvme.img,if=none,id=d2,format=raw" -device nvme-ns,drive=d2 &
qemu=$!
trap 'kill -9 $qemu 2>/dev/null' EXIT INT TERM
SECONDS=0; booted=0 stalled=0
stall_s=${REALXEN_STALL:-420} size=0 quiet_since=0
while kill -0 $qemu 2>/dev/null; do
    # Every check, guest and Xen itself writes to this console: a machine with nothing to
    # say for minutes has stalled (once: an HVM guest at SeaBIOS, QEMU idle on a futex).
    now=$(stat -c %s "$console" 2>/dev/null || echo 0)
    if [ "$now" != "$size" ]; then size=$now quiet_since=$SECONDS; fi
    if [ $((SECONDS - quiet_since)) -ge "$stall_s" ]; then
        stalled=1
        log "the emulated machine stalled: no output for $stall_s s (last group: $(tr -d '\r' < "$console" | sed -n 's/^CHECKS-GROUP //p' | tail -1))"
        break
    fi
    if [ $booted = 0 ] && grep -aq "CHECKS-START" "$console"; then
        booted=1; log "dom0 up after ${SECONDS} s"
    fi
    if grep -aqE "^realxen: [0-9]+ passed, [0-9]+ failed" "$console"; then
        sleep 3; break
    fi
    if grep -aqE "Panic on CPU|Kernel panic|Hardware Dom0 crashed" "$console"; then
        log "crash on the console"; break
    fi
    if [ $SECONDS -ge "$timeout_s" ]; then
        log "timeout after ${timeout_s} s"; break
    fi
    sleep 2
done
kill -9 $qemu 2>/dev/null; wait $qemu 2>/dev/null; qemu_rc=$?
summary=$(tr -d '\r' < "$console" | grep -aE "^realxen: [0-9]+ passed, [0-9]+ failed" | tail -1)
log "QEMU gone after ${SECONDS} s"
[ $stalled = 1 ] && exit 3
# QEMU itself killed by a signal other than this script's SIGKILL, before the summary: the
# emulator crashed (seen under TCG: QEMU 7.2's emulated VT-d and e1000e, a segfault and an
# assertion), which is no more a failed check than a stall.
if [ -z "$summary" ] && [ "$qemu_rc" -gt 128 ] && [ "$qemu_rc" -ne 137 ]; then
    log "the emulator crashed: QEMU died of signal $((qemu_rc - 128)) (last group: $(tr -d '\r' < "$console" | sed -n 's/^CHECKS-GROUP //p' | tail -1))"
    exit 3
fi
[ -n "$summary" ] || { log "no summary line on the console ($console)"; exit 1; }
echo "$summary"
# A boot that checked nothing proves nothing (a group file not found, a library that did
# not load): it fails like a failed check, with the console's error in front.
case $summary in
    "realxen: 0 passed,"*) log "no check ran; the console says: $(tr -d '\r' < "$console" | grep -a 'checks.sh\|lib.sh\|groups/' | head -3)"; exit 1 ;;
    *" 0 failed"*) exit 0 ;;
    *) exit 1 ;;
esac
