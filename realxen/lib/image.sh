#!/usr/bin/env bash
# The dom0 disk image of one run: the cached dom0 tree plus this run's ptguard — the Debian
# package (installed with dpkg, its unit enabled) or a bare binary — the check runner, a
# guest kernel + initramfs and xl configs. Writes $REALXEN_WORK/{dom0.img,xen.elf,vmlinuz,
# initrd.img}. Usage: image.sh PTGUARD.deb | PTGUARD-BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
ptguard=${1:?usage: image.sh PTGUARD.deb | PTGUARD-BINARY}
[ -f "$ptguard" ] || die "$ptguard does not exist"
R=$BASE_TREE
[ -f "$R/.ptguard-base-tree" ] || die "no dom0 tree in $R (run lib/base-tree.sh)"
mkdir -p "$REALXEN_WORK"
K=$(ls "$R/lib/modules" | head -1)

# The guest's initramfs: static busybox, pcifront, e1000e, our init.
I=$(mktemp -d); trap 'rm -rf "$I"' EXIT
mkdir -p "$I"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$I/bin/busybox"
# Debian 13 ships its modules xz-compressed; the guest's busybox insmod takes plain ones.
for m in drivers/pci/xen-pcifront drivers/net/ethernet/intel/e1000e/e1000e; do
    f=$R/lib/modules/$K/kernel/$m.ko
    if [ -f "$f" ]; then cp "$f" "$I/lib/modules/"
    elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$I/lib/modules/$(basename "$m").ko"
    elif [ -f "$f.zst" ]; then zstd -qdc "$f.zst" > "$I/lib/modules/$(basename "$m").ko"
    else die "the dom0 tree has no $m module for the guest"
    fi
done
# QEMU's NVMe controller (dev=nvme guests): nvme.ko and what modules.dep says it needs,
# loaded in that order, after the crypto drivers crc-t10dif and crc64-rocksoft ask for by
# name (the guest has no modprobe to answer a request_module).
nvme_mods=$(sed -n 's|^kernel/drivers/nvme/host/nvme\.ko[.a-z]*: *||p' "$R/lib/modules/$K/modules.dep" | tr ' ' '\n' | tac)
for m in kernel/crypto/crct10dif_common kernel/lib/crc64 kernel/crypto/crct10dif_generic kernel/crypto/crc64_rocksoft_generic \
    $nvme_mods kernel/drivers/nvme/host/nvme; do
    m=${m%.ko*}; f=$R/lib/modules/$K/$m.ko; b=$(basename "$m")
    grep -qx "$b" "$I/lib/modules/nvme.order" 2>/dev/null && continue
    if [ -f "$f" ]; then cp "$f" "$I/lib/modules/"
    elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$I/lib/modules/$b.ko"
    else continue
    fi
    echo "$b" >> "$I/lib/modules/nvme.order"
done
grep -qx nvme "$I/lib/modules/nvme.order" 2>/dev/null || die "the dom0 tree has no nvme module for the guest"
install -m 755 "$HERE/../guest/init" "$I/init"
mknod -m 600 "$I/dev/console" c 5 1; mknod -m 666 "$I/dev/null" c 1 3

T=$R/opt/ptguard-test
rm -rf "$T"; mkdir -p "$T"
(cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -6) > "$T/guest-initrd.gz"
cp "$R/boot/vmlinuz-$K" "$T/guest-vmlinuz"
# The cached tree is reused: take out whatever an earlier run installed.
rm -f "$R/usr/local/bin/ptguard"
chroot "$R" dpkg --purge ptguard >/dev/null 2>&1 || true
case $ptguard in
    *.deb)
        cp "$ptguard" "$R/tmp/ptguard.deb"
        chroot "$R" dpkg -i /tmp/ptguard.deb >/dev/null || die "dpkg -i $ptguard failed in the dom0 tree"
        rm -f "$R/tmp/ptguard.deb"
        chroot "$R" systemctl is-enabled ptguard.service >/dev/null || die "the package did not enable ptguard.service"
        log "installed $(basename "$ptguard") in dom0 (ptguard.service enabled)" ;;
    *) install -m 755 "$ptguard" "$R/usr/local/bin/ptguard" ;;
esac
install -m 755 "$HERE/../dom0/checks.sh" "$T/checks.sh"
install -m 644 "$HERE/../dom0/lib.sh" "$T/lib.sh"
mkdir -p "$T/groups"; install -m 644 "$HERE"/../dom0/groups/*.sh "$T/groups/"
install -m 644 "$HERE/../dom0/broker_client.py" "$T/broker_client.py"
install -m 644 "$HERE/../dom0/rogue_dm.py" "$T/rogue_dm.py"
mkdir -p "$T/differential"; install -m 755 "$HERE/../differential/lifecycle.sh" "$T/differential/"
install -m 644 "$HERE/../differential/observe.py" "$T/differential/"

# The run's unit: after xenstored and xenconsoled, on the Xen console, then power off.
cat > "$R/etc/systemd/system/ptguard-checks.service" <<'UNIT'
[Unit]
Description=ptguard real-Xen checks
After=xen.service xencommons.service xenstored.service xenconsoled.service proc-xen.mount multi-user.target
Wants=xen.service
[Service]
Type=oneshot
ExecStart=/opt/ptguard-test/checks.sh
ExecStopPost=/bin/systemctl --no-block poweroff --force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/hvc0
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
chroot "$R" systemctl enable ptguard-checks.service >/dev/null 2>&1

cp "$R/boot/vmlinuz-$K" "$REALXEN_WORK/vmlinuz"
cp "$R/boot/initrd.img-$K" "$REALXEN_WORK/initrd.img"
zcat "$R/boot/xen-$XEN_LINE-amd64.gz" > "$REALXEN_WORK/xen.elf" ||
    die "the dom0 tree has no /boot/xen-$XEN_LINE-amd64.gz: $(ls "$R/boot" | tr '\n' ' ')"
rm -f "$REALXEN_WORK/dom0.img"
mkfs.ext4 -q -F -L dom0 -d "$R" "$REALXEN_WORK/dom0.img" 3G
log "image ready: $(du -h "$REALXEN_WORK/dom0.img" | cut -f1) allocated"
