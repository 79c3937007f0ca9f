#!/usr/bin/env bash
# Host side: debootstrap, mkfs.ext4 -d, cpio, a static busybox, and a QEMU system emulator.
# Debian 12's qemu-system-x86 cannot be installed beside the machine's qemu-utils from
# backports (qemu-system-common Breaks it), so its packages are unpacked with dpkg -x into
# the cache and run from there, with a firmware folder of their own (-L).
set -euo pipefail
. "$(dirname "$0")/common.sh"

need=()
for c in debootstrap:debootstrap mkfs.ext4:e2fsprogs cpio:cpio bc:bc; do
    command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
[ -f /usr/share/seabios/bios-256k.bin ] || need+=(seabios)
[ -d /usr/lib/ipxe/qemu ] || need+=(ipxe-qemu)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static file)
if [ ! -x "$QEMU_BIN" ] || ! "$QEMU_BIN" --version >/dev/null 2>&1; then qemu_needed=1; else qemu_needed=0; fi
if [ ${#need[@]} -gt 0 ] || [ $qemu_needed = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ $qemu_needed = 1 ]; then
    log "unpacking Debian's qemu-system-x86 into $QEMU_ROOT"
    # Its shared-library dependencies install normally; only the emulator is unpacked.
    libs=$(apt-cache depends qemu-system-x86 qemu-system-common | awk '/Depends: lib/{print $2}' | sort -u)
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $libs >/dev/null
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq qemu-system-x86 qemu-system-common qemu-system-data)
    rm -rf "$QEMU_ROOT"; mkdir -p "$QEMU_ROOT"
    for d in "$tmp"/*.deb; do dpkg -x "$d" "$QEMU_ROOT"; done
    rm -rf "$tmp"
fi
mkdir -p "$QEMU_FW"
for f in "$QEMU_ROOT"/usr/share/qemu/* /usr/share/seabios/* /usr/lib/ipxe/qemu/*; do
    [ -e "$f" ] && ln -sf "$(readlink -f "$f")" "$QEMU_FW/$(basename "$f")"
done
"$QEMU_BIN" --version | head -1 >&2
