/* A stand-in for qemu-xen's MSI-X path (hw/xen/xen_pt_msi.c): it links Debian's real
 * libxenctrl and makes the same four calls, one per line read from stdin, printing what
 * each returned. With libptguard_preload.so preloaded the calls reach ptguard's broker.
 *
 *   where                          which object defines each call (interposition check)
 *   map ENTRY [PIRQ]               xc_physdev_map_pirq_msi(AUTO, PIRQ or -1)
 *   update PIRQ GVEC GFLAGS GTABLE xc_domain_update_msi_irq
 *   unbind PIRQ GVEC GFLAGS        xc_domain_unbind_msi_irq
 *   unmap PIRQ                     xc_physdev_unmap_pirq
 *
 * argv: DOMID BUS DEVFN TABLE_BASE (hex). The xc_interface handle stays NULL: a call the
 * broker takes never reaches libxenctrl, and this machine has no /dev/xen/privcmd. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenctrl.h>

static void where(const char *name) {
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, name);
    void *xc = dlopen("libxenctrl.so.4.17", RTLD_NOW | RTLD_NOLOAD);
    void *own = xc ? dlsym(xc, name) : NULL;
    const char *obj = (sym && dladdr(sym, &info)) ? info.dli_fname : "none";
    const char *xcobj = (own && dladdr(own, &info)) ? info.dli_fname : "none";
    printf("%s default=%s libxenctrl=%s distinct=%d\n", name, obj, xcobj, sym != own);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: dm_calls DOMID BUS DEVFN TABLE_BASE\n");
        return 2;
    }
    uint32_t domid = strtoul(argv[1], NULL, 0);
    int bus = strtol(argv[2], NULL, 0), devfn = strtol(argv[3], NULL, 0);
    uint64_t table_base = strtoull(argv[4], NULL, 16);
    xc_interface *xch = NULL;
    char line[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16];
        unsigned long a = 0, b = 0, c = 0, d = 0;
        int n = sscanf(line, "%15s %li %li %li %li", cmd, (long *)&a, (long *)&b, (long *)&c, (long *)&d);
        int rc;
        if (n < 1)
            continue;
        errno = 0;
        if (!strcmp(cmd, "where")) {
            where("xc_physdev_map_pirq_msi");
            where("xc_domain_update_msi_irq");
            where("xc_domain_unbind_msi_irq");
            where("xc_physdev_unmap_pirq");
            printf("done\n");
            continue;
        } else if (!strcmp(cmd, "map")) {
            int pirq = n >= 3 ? (int)b : -1;
            rc = xc_physdev_map_pirq_msi(xch, domid, -1, &pirq, devfn, bus, (int)a, table_base);
            printf("rc=%d errno=%d pirq=%d\n", rc, rc ? errno : 0, pirq);
        } else if (!strcmp(cmd, "update")) {
            rc = xc_domain_update_msi_irq(xch, domid, b, a, c, d);
            printf("rc=%d errno=%d\n", rc, rc ? errno : 0);
        } else if (!strcmp(cmd, "unbind")) {
            rc = xc_domain_unbind_msi_irq(xch, domid, b, a, c);
            printf("rc=%d errno=%d\n", rc, rc ? errno : 0);
        } else if (!strcmp(cmd, "unmap")) {
            rc = xc_physdev_unmap_pirq(xch, domid, (int)a);
            printf("rc=%d errno=%d\n", rc, rc ? errno : 0);
        } else {
            printf("unknown %s\n", cmd);
        }
    }
    return 0;
}
