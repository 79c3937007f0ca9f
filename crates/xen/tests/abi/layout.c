/* ptguard's layout probe: prints the size and field offsets of every structure ptguard
 * passes to Xen and the value of every constant it uses, one "name value" line each.
 * Built by tests/layout.rs against Debian's headers (libxen-dev), and by
 * tests/abi/derive.sh against a Xen release tag's public headers (XEN_ONLY: Linux's
 * privcmd.h is not Xen's), whose output is kept in tests/abi/RELEASE-*.facts. */
#define __XEN_TOOLS__ 1
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/types.h>
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/physdev.h>
#include <xen/domctl.h>
#include <xen/sysctl.h>
#ifndef XEN_ONLY
#include <xen/sys/privcmd.h>
#endif
#define P(name, v) printf("%s %lld\n", name, (long long)(v))
#define S(t) P("sizeof " #t, sizeof(struct t))
#define O(t, f) P("offsetof " #t "." #f, offsetof(struct t, f))
#define C(c) P(#c, c)
int main(void) {
    S(physdev_map_pirq); O(physdev_map_pirq, domid); O(physdev_map_pirq, type);
    O(physdev_map_pirq, index); O(physdev_map_pirq, pirq); O(physdev_map_pirq, bus);
    O(physdev_map_pirq, devfn); O(physdev_map_pirq, entry_nr); O(physdev_map_pirq, table_base);
    S(physdev_unmap_pirq); O(physdev_unmap_pirq, domid); O(physdev_unmap_pirq, pirq);
    S(physdev_pci_device); O(physdev_pci_device, seg); O(physdev_pci_device, bus);
    O(physdev_pci_device, devfn);
    S(xen_domctl); O(xen_domctl, cmd); O(xen_domctl, interface_version); O(xen_domctl, domain);
    O(xen_domctl, u);
    S(xen_sysctl); O(xen_sysctl, cmd); O(xen_sysctl, interface_version); O(xen_sysctl, u);
    S(xen_sysctl_readconsole); O(xen_sysctl_readconsole, clear);
    O(xen_sysctl_readconsole, incremental); O(xen_sysctl_readconsole, index);
    O(xen_sysctl_readconsole, buffer); O(xen_sysctl_readconsole, count);
    S(xen_sysctl_debug_keys); O(xen_sysctl_debug_keys, keys); O(xen_sysctl_debug_keys, nr_keys);
    C(XEN_SYSCTL_INTERFACE_VERSION); C(XEN_SYSCTL_readconsole); C(XEN_SYSCTL_debug_keys);
    C(__HYPERVISOR_sysctl); C(XENVER_commandline); P("sizeof xen_commandline_t", sizeof(xen_commandline_t));
    S(xen_domctl_assign_device); O(xen_domctl_assign_device, dev);
    O(xen_domctl_assign_device, flags); O(xen_domctl_assign_device, u.pci.machine_sbdf);
    S(xen_domctl_bind_pt_irq); O(xen_domctl_bind_pt_irq, machine_irq);
    O(xen_domctl_bind_pt_irq, irq_type); O(xen_domctl_bind_pt_irq, u.msi.gvec);
    O(xen_domctl_bind_pt_irq, u.msi.gflags); O(xen_domctl_bind_pt_irq, u.msi.gtable);
    O(xen_domctl_bind_pt_irq, u.pci.bus); O(xen_domctl_bind_pt_irq, u.pci.device);
    O(xen_domctl_bind_pt_irq, u.pci.intx);
    S(xen_domctl_irq_permission); O(xen_domctl_irq_permission, pirq);
    O(xen_domctl_irq_permission, allow_access);
    S(xen_domctl_iomem_permission); O(xen_domctl_iomem_permission, first_mfn);
    O(xen_domctl_iomem_permission, nr_mfns); O(xen_domctl_iomem_permission, allow_access);
    S(xen_domctl_ioport_permission); O(xen_domctl_ioport_permission, first_port);
    O(xen_domctl_ioport_permission, nr_ports); O(xen_domctl_ioport_permission, allow_access);
    O(xen_domctl_getdomaininfo, domain); O(xen_domctl_getdomaininfo, flags); O(xen_domctl_getdomaininfo, handle);
#ifndef XEN_ONLY
    P("sizeof privcmd_hypercall", sizeof(privcmd_hypercall_t));
    C(IOCTL_PRIVCMD_HYPERCALL);
#endif
    C(__HYPERVISOR_xen_version); C(__HYPERVISOR_physdev_op); C(__HYPERVISOR_domctl);
    C(XENVER_version);
    C(PHYSDEVOP_map_pirq); C(PHYSDEVOP_unmap_pirq); C(PHYSDEVOP_prepare_msix);
    C(PHYSDEVOP_release_msix);
    C(MAP_PIRQ_TYPE_MSI); C(MAP_PIRQ_TYPE_GSI); C(MAP_PIRQ_TYPE_UNKNOWN);
    C(MAP_PIRQ_TYPE_MSI_SEG); C(MAP_PIRQ_TYPE_MULTI_MSI);
    C(XEN_DOMCTL_INTERFACE_VERSION); C(XEN_DOMCTL_getdomaininfo); C(XEN_DOMCTL_irq_permission);
    C(XEN_DOMCTL_iomem_permission); C(XEN_DOMCTL_ioport_permission);
    C(XEN_DOMCTL_assign_device); C(XEN_DOMCTL_bind_pt_irq); C(XEN_DOMCTL_test_assign_device);
    C(XEN_DOMCTL_deassign_device); C(XEN_DOMCTL_unbind_pt_irq);
    C(XEN_DOMCTL_DEV_PCI); C(XEN_DOMCTL_DEV_RDM_RELAXED);
    C(PT_IRQ_TYPE_PCI); C(PT_IRQ_TYPE_ISA); C(PT_IRQ_TYPE_MSI); C(PT_IRQ_TYPE_MSI_TRANSLATE);
    C(XEN_DOMCTL_VMSI_X86_UNMASKED);
    C(XEN_DOMINF_dying); C(XEN_DOMINF_hvm_guest); C(XEN_DOMINF_shutdown); C(XEN_DOMINF_paused); C(XEN_DOMINF_shutdownshift); C(XEN_DOMINF_shutdownmask);
    C(DOMID_SELF); C(DOMID_IO); C(DOMID_XEN); C(DOMID_INVALID);
#ifdef XEN_DOMCTL_get_domain_state
    C(XEN_DOMCTL_get_domain_state);
    S(xen_domctl_get_domain_state); O(xen_domctl_get_domain_state, state);
    O(xen_domctl_get_domain_state, caps); O(xen_domctl_get_domain_state, pad0);
    O(xen_domctl_get_domain_state, unique_id);
    C(XEN_DOMCTL_GETDOMSTATE_STATE_EXIST); C(XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN);
    C(XEN_DOMCTL_GETDOMSTATE_STATE_DYING); C(XEN_DOMCTL_GETDOMSTATE_STATE_DEAD);
#endif
    return 0;
}
