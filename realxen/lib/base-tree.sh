#!/usr/bin/env bash
# The dom0 root tree of the Xen line under test (common.sh: Debian 12 with Xen 4.17, or
# Debian 13 with Xen 4.20), its tools, qemu-xen and pciutils, made by debootstrap from the
# archive this machine uses, then configured for an unattended boot.
# Cached in $BASE_TREE; rebuilt when BASE_TREE_VERSION changes. Nothing of ptguard goes in
# here (image.sh adds it per run), so the tree survives source changes.
set -euo pipefail
. "$(dirname "$0")/common.sh"

stamp=$BASE_TREE/.ptguard-base-tree
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$BASE_TREE_VERSION" ]; then
    log "dom0 tree cached ($BASE_TREE)"; exit 0
fi
mirror=$(apt_mirror)
log "debootstrap of the $DOM0_SUITE dom0 tree for Xen $XEN_LINE (about 2 minutes)"
rm -rf "$BASE_TREE"
t0=$SECONDS
# The archive's host name stays out of logs and the image.
debootstrap --variant=minbase --include="$DOM0_PACKAGES" "$DOM0_SUITE" "$BASE_TREE" "$mirror" 2>&1 |
    sed -u "s#$mirror#<archive>#g" | grep -E '^(E|W):|Base system installed' >&2 || true
[ -x "$BASE_TREE/usr/sbin/xl" ] || die "debootstrap did not install xl (see above)"
log "debootstrap took $((SECONDS - t0)) s"

R=$BASE_TREE
echo dom0 > "$R/etc/hostname"
printf '/dev/vda / ext4 rw,noatime 0 1\nnone /proc/xen xenfs defaults 0 0\n' > "$R/etc/fstab"
chroot "$R" passwd -d root >/dev/null
: > "$R/etc/apt/sources.list"
rm -rf "$R"/etc/apt/sources.list.d/* "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/archives/*.deb "$R"/var/log/bootstrap.log
# A getty on hvc0 calls vhangup() and cuts off whatever else writes to the Xen console.
chroot "$R" systemctl mask serial-getty@hvc0.service getty@tty1.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-networkd-wait-online.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer >/dev/null 2>&1 || true
echo xen-pciback > "$R/etc/modules-load.d/xen-pciback.conf"
# Every guest console in a file, so checks can read what the guest printed.
grep -q '^XENCONSOLED_ARGS=' "$R/etc/default/xen" 2>/dev/null ||
    echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"' >> "$R/etc/default/xen"
mkdir -p "$R/var/log/xen/console"
echo "$BASE_TREE_VERSION" > "$stamp"
du -sh "$R" >&2
