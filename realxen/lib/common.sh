# Shared settings for the real-Xen test bed (sourced, not run).
# REALXEN_CACHE keeps what is slow to make and does not depend on ptguard's sources: the
# unpacked QEMU and the debootstrapped dom0 tree. Deleting it only costs time.
REALXEN_CACHE=${REALXEN_CACHE:-/var/cache/ptguard-realxen}
REALXEN_WORK=${REALXEN_WORK:-$REALXEN_CACHE/work}
QEMU_ROOT=$REALXEN_CACHE/qemu-root
QEMU_FW=$REALXEN_CACHE/fw
QEMU_BIN=${QEMU_BIN:-$QEMU_ROOT/usr/bin/qemu-system-x86_64}
BASE_TREE=$REALXEN_CACHE/rootfs
# Bump when the package list below changes, so a stale cached tree is rebuilt.
BASE_TREE_VERSION=3
DOM0_PACKAGES=systemd-sysv,udev,kmod,procps,iproute2,pciutils,linux-image-amd64,initramfs-tools,\
xen-utils-4.17,xen-utils-common,xenstore-utils,xen-hypervisor-4.17-amd64,qemu-system-xen,\
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
