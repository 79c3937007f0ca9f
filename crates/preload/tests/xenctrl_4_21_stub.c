/* A stand-in for libxenctrl 4.21 (installed as libxenctrl.so.4.21): the four calls
 * qemu-xen makes for MSI-X, each failing with ENOSYS and saying so on stderr. The test
 * links dm_calls against it to show that the preload library reads the segment from the
 * bus argument of libxenctrl 4.21+ (segment << 16 | bus, commit b7838d12bd) and that a
 * call it takes never reaches the library behind it. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

typedef struct xc_interface_core xc_interface;

int xc_physdev_map_pirq_msi(xc_interface *xch, uint32_t domid, int index, int *pirq,
                            int devfn, int segbus, int entry_nr, uint64_t table_base) {
    (void)xch; (void)index; (void)pirq; (void)table_base;
    fprintf(stderr, "stub-4.21: map_pirq_msi d%u segbus=%#x devfn=%#x entry %d\n",
            domid, segbus, devfn, entry_nr);
    errno = ENOSYS;
    return -1;
}

int xc_domain_update_msi_irq(xc_interface *xch, uint32_t domid, uint32_t gvec,
                             uint32_t pirq, uint32_t gflags, uint64_t gtable) {
    (void)xch; (void)domid; (void)gvec; (void)pirq; (void)gflags; (void)gtable;
    errno = ENOSYS;
    return -1;
}

int xc_domain_unbind_msi_irq(xc_interface *xch, uint32_t domid, uint32_t gvec,
                             uint32_t pirq, uint32_t gflags) {
    (void)xch; (void)domid; (void)gvec; (void)pirq; (void)gflags;
    errno = ENOSYS;
    return -1;
}

int xc_physdev_unmap_pirq(xc_interface *xch, uint32_t domid, int pirq) {
    (void)xch; (void)domid; (void)pirq;
    errno = ENOSYS;
    return -1;
}
