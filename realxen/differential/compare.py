"""Compares the hypercalls ptguard made, and Xen's answers, between a run of
lifecycle.sh on real Xen and one on the simulated host.

Usage: compare.py REAL-DIR SIM-DIR KNOWN-DIFFERENCES
Each step's --trace is reduced to its hypercalls (operation and answer; domain ids, pirqs
and addresses differ by nature), the command's exit status, and the `state:` lines
observe.py wrote after it (MSI-X Enable, Function Mask, memory decoding, the ledger's state
and bindings). Consecutive BAR permission
calls fold into one (the two devices have different BAR counts). A difference is allowed
only when KNOWN-DIFFERENCES lists it (step and a reason); exits 1 on any other.
"""
import os
import re
import sys

real_dir, sim_dir, known_file = sys.argv[1:4]


def reduce(path):
    calls = []
    states = []
    rc = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("rc="):
                rc = line
                continue
            if line.startswith("state: "):
                states.append(line)
                continue
            m = re.match(r"hypercall (\S+)(.*?)(?: -> (-E[A-Z]+))?(?: \(\d+\))?$", line)
            if not m:
                continue
            op, answer = m.group(1), m.group(3) or "0"
            if op in ("XEN_DOMCTL_iomem_permission", "XEN_DOMCTL_ioport_permission"):
                op = "BAR_permissions"
                if calls and calls[-1] == f"{op} {answer}":
                    continue
            calls.append(f"{op} {answer}")
    return calls + [rc or "rc=?"] + states


known = {}
if os.path.exists(known_file):
    for line in open(known_file):
        line = line.strip()
        if line and not line.startswith("#"):
            step, _, reason = line.partition(" ")
            known[step] = reason.strip()

steps = sorted(os.listdir(real_dir))
if sorted(os.listdir(sim_dir)) != steps or not steps:
    print(f"differential: steps differ: real {steps}, sim {sorted(os.listdir(sim_dir))}")
    sys.exit(1)
unexplained = 0
for s in steps:
    name = s[3:-4]
    real, sim = reduce(os.path.join(real_dir, s)), reduce(os.path.join(sim_dir, s))
    if real == sim:
        rc = next(c for c in real if c.startswith("rc="))
        print(f"same       {name}: {real.index(rc)} hypercalls, {rc}, {' '.join(c[7:] for c in real if c.startswith('state: '))}")
        continue
    if name in known:
        print(f"known diff {name}: {known[name]}")
    else:
        print(f"DIFFERENT  {name}:")
        unexplained += 1
    for tag, calls in (("real", real), ("sim ", sim)):
        print(f"    {tag}: {' | '.join(calls)}")
print(f"differential: {len(steps)} steps, {unexplained} unexplained differences")
sys.exit(1 if unexplained else 0)
