# Shared settings for the real-Xen test bed (sourced, not run).
# REALXEN_CACHE keeps what is slow to make and does not depend on ptguard's sources: the
# unpacked QEMU and the debootstrapped dom0 tree. Deleting it only costs time.
REALXEN_CACHE=${REALXEN_CACHE:-/var/cache/ptguard-realxen}
QEMU_ROOT=$REALXEN_CACHE/qemu-root
QEMU_FW=$REALXEN_CACHE/fw
QEMU_BIN=${QEMU_BIN:-$QEMU_ROOT/usr/bin/qemu-system-x86_64}
# The Xen line under test (`run --xen`): 4.17 is Debian 12's (Xen 4.17, Linux 6.1,
# qemu-xen 7.2), 4.20 Debian 13's (Xen 4.20, Linux 6.12, qemu-xen 10.0). Each has its own
# cached dom0 tree.
XEN_LINE=${REALXEN_XEN:-4.17}
case $XEN_LINE in
    4.17) DOM0_SUITE=bookworm BASE_TREE=$REALXEN_CACHE/rootfs
        # Xen 4.17 can shadow-page: HVM guests run on a CPU model without NPT.
        QEMU_CPU=qemu64 ;;
    4.20) DOM0_SUITE=trixie BASE_TREE=$REALXEN_CACHE/rootfs-4.20
        # Debian's 4.20 is built without shadow paging (CONFIG_SHADOW_PAGING unset): HVM
        # guests need HAP, so the emulated CPU offers NPT.
        QEMU_CPU=qemu64,+npt ;;
    *) printf 'realxen: no Xen line %s (4.17 or 4.20)\n' "$XEN_LINE" >&2; exit 2 ;;
esac
# Each line boots from its own work directory (image, console, output disk), so the two
# lines' beds can run side by side.
REALXEN_WORK=${REALXEN_WORK:-$REALXEN_CACHE/work-$XEN_LINE}
# Bump when the package list below changes, so a stale cached tree is rebuilt.
BASE_TREE_VERSION=3
DOM0_PACKAGES=systemd-sysv,udev,kmod,procps,iproute2,pciutils,linux-image-amd64,initramfs-tools,\
xen-utils-$XEN_LINE,xen-utils-common,xenstore-utils,xen-hypervisor-$XEN_LINE-amd64,qemu-system-xen,\
busybox

log() { printf '[realxen %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Debian archive this machine already uses (read at run time, never written down).
apt_mirror() {
    local m
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$m" ] || die "no Debian archive found in /etc/apt/sources.list{,.d/debian.sources}"
    printf '%s\n' "$m"
}
