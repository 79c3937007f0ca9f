#!/bin/bash
# ptguard's checks against real Xen, run once in the test bed's dom0 at boot (unit
# ptguard-checks.service, output on the Xen console). Every check is an assertion: it
# prints "ok NAME: what it saw" or "FAIL NAME: what it saw instead". The last line is
# "realxen: N passed, M failed". The dom0 kernel argument ptguard.checks=LIST (groups
# joined by '+'; `all`, the default, is every group but guests, paths and ptpaths)
# chooses what runs; ptguard.soak=N the soak's length.
# The library (lib.sh) and one file per group (groups/NAME.sh), run in this order:
CHECK_GROUPS="diff core guests seed paths ptpaths companion preload nvme soak zombie"
T=/opt/ptguard-test
. "$T/lib.sh"

echo "CHECKS-START dom0 uptime $(up)s"
xl info | grep -E '^(xen_version|xen_commandline|virt_caps)'
uname -r

for g in $CHECK_GROUPS; do
    . "$T/groups/$g.sh"
done

echo "CHECKS-END dom0 uptime $(up)s"
save_output
echo "realxen: $passed passed, $failed failed"
sync
