"""What the device shows after a lifecycle step, the same fields on both hosts.

Usage: observe.py SBDF SHOW-JSON-FILE LSPCI-JSON-FILE
Prints `state:` lines: the ledger's state and its bindings (kind:state), MSI-X Enable and
Function Mask, and memory decoding, as `ptguard show --json` and `ptguard lspci --json`
read them (from sysfs config space on real Xen, from the simulated device otherwise).
"""
import json
import sys


def load(path, default):
    try:
        with open(path) as f:
            return json.load(f) or default
    except (OSError, ValueError):
        return default


sbdf, show, lspci = sys.argv[1], load(sys.argv[2], {}), load(sys.argv[3], [])
led, msix = show.get("ledger") or {}, show.get("msix") or {}
binds = []
for b in led.get("bindings") or []:
    key = b.get("key")
    kind = key if isinstance(key, str) else next(iter(key), "?") if isinstance(key, dict) else "?"
    binds.append("%s:%s" % (kind, b.get("state")))
print("state: ledger=%s msix-enable=%s function-mask=%s bindings=%s" % (
    led.get("state"), msix.get("enabled"), msix.get("function_mask"), ",".join(sorted(binds))))
cmd = [d["config"]["command"] for d in lspci if d.get("sbdf") == sbdf and d.get("config")]
print("state: memory-decoding=%s" % (bool(cmd[0] & 2) if cmd else None))
