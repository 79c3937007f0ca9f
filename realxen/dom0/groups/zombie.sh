# Group zombie of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- zombie: a domain destroyed behind the toolstack's back, its MSI-X still live -------
# (last: the zombie stays until dom0 powers off)
if group zombie; then
    xl pci-assignable-add $SBDF
    cfg pvhold pv yes $SBDF "hold=1"
    live=$(start_hold pvhold pv)
    d=$(domid_of pvhold)
    python3 -c "import ctypes; xc = ctypes.CDLL('$XENCTRL'); xc.xc_interface_open.restype = ctypes.c_void_p; h = ctypes.c_void_p(xc.xc_interface_open(None, None, 0)); print('xc_domain_destroy rc', xc.xc_domain_destroy(h, ctypes.c_uint32($d)))"
    sleep 2
    capture zombie-holds-the-device
    out=$(ptguard doctor $SBDF --json 2>/dev/null); rc=$?
    # Real Xen 4.17.5: the device goes back to dom_io, its vectors stay mapped
    # ("mapped, unbound") to the dying domain's pirqs.
    leftover=$(json_find code=leftover-pirqs sbdf=$SBDF problem <<<"$out")
    expect zombie-doctor-leftover-pirqs "d$d ($live), rc=$rc: $leftover" \
        test "$rc" = 1 -a -n "$leftover"
    out=$(ptguard doctor --json 2>/dev/null)
    dying=$(json_find code=dying-domain sbdf=null severity=warning problem <<<"$out")
    expect zombie-doctor-dying-domain "$dying" has "$dying" "^d$d is dying"
    out=$(ptguard repair $SBDF 2>&1); rc=$?
    expect zombie-repair-refused "rc=$rc: $out" has "rc=$rc $out" "rc=1 .*still mapped"
fi
