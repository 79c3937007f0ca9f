"""A device model that bypasses ptguard: maps and binds one MSI-X entry straight through
libxenctrl, as stock qemu-xen does (xc_physdev_map_pirq_msi + xc_domain_update_msi_irq).

Usage: rogue_dm.py DOMID SBDF ENTRY TABLE_BASE [map-only]
With map-only the entry is mapped and never bound: Xen's `i` dump then says only
"mapped, unbound" and names no pirq for it.
"""
import ctypes
import os
import sys

domid, sbdf, entry, table_base = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 0)
bus, dev, fn = int(sbdf[5:7], 16), int(sbdf[8:10], 16), int(sbdf[11], 16)
# The bed's Xen line names it (checks.sh exports XENCTRL, e.g. libxenctrl.so.4.20).
xc = ctypes.CDLL(os.environ.get("XENCTRL", "libxenctrl.so.4.17"), use_errno=True)
xc.xc_interface_open.restype = ctypes.c_void_p
handle = ctypes.c_void_p(xc.xc_interface_open(None, None, 0))
pirq = ctypes.c_int(-1)
rc = xc.xc_physdev_map_pirq_msi(handle, ctypes.c_uint32(domid), ctypes.c_int(-1), ctypes.byref(pirq),
                                ctypes.c_int(dev << 3 | fn), ctypes.c_int(bus), ctypes.c_int(entry),
                                ctypes.c_uint64(table_base))
print("map_pirq_msi rc=%d errno=%d pirq=%d" % (rc, ctypes.get_errno(), pirq.value))
if rc != 0:
    sys.exit(1)
if sys.argv[5:] == ["map-only"]:
    sys.exit(0)
# xc_domain_update_msi_irq(xch, domid, gvec, pirq, gflags, gtable)
rc = xc.xc_domain_update_msi_irq(handle, ctypes.c_uint32(domid), ctypes.c_uint32(0x50), ctypes.c_uint32(pirq.value),
                                 ctypes.c_uint32(0x10000), ctypes.c_uint64(0))
print("update_msi_irq rc=%d errno=%d" % (rc, ctypes.get_errno()))
sys.exit(0 if rc == 0 else 1)
