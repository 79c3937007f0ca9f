# Group diff of the real-Xen checks: sourced by checks.sh, which defines the helpers
# (lib.sh) and runs each group in order; the block runs when the group is chosen.
# ---- diff: one lifecycle traced, compared by the host with the simulated host's -----
if group diff; then
    bash $T/differential/lifecycle.sh real $OUT/differential
    n=$(ls $OUT/differential | wc -l)
    expect differential-run "$n steps traced: $(grep -h '^rc=' $OUT/differential/* | tr '\n' ' ')" test "$n" = 35
fi
