# Group guests of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- guests: running guests count their MSI-X interrupts -----------------------------
if group guests; then
    xl pci-assignable-add $SBDF
    cfg pv pv yes $SBDF ""
    r=$(run_guest pv pv)
    expect pv-guest-irqs-xl "stock xl, PV guest: $r" has "$r" '^IRQS-ARRIVE'
    cfg hvm hvm yes $SBDF ""
    r=$(run_guest hvm hvm)
    expect hvm-guest-irqs-xl "stock xl + qemu-xen, HVM guest (nopv, native MSI-X): $r" has "$r" '^IRQS-ARRIVE'
    xl pci-assignable-remove -r $SBDF
fi
