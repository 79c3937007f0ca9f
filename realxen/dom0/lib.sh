# The real-Xen checks' shared library, sourced by checks.sh before the groups
# (groups/NAME.sh): the device under test, reporting (ok/bad/expect), the ledger and Xen's
# view of the device, guests and their configs, the daemon, and JSON read with a parser.
set -u
SBDF=0000:00:05.0 BDF=00:05.0 KEY=0000-00-05-0
T=/opt/ptguard-test
SOCK=/run/ptguard/broker.sock
CON=/var/log/xen/console
export PTGUARD_LOG=warn
passed=0 failed=0
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "[dom0 $(up)s] $*"; }
ok() { echo "ok   $1: $2"; passed=$((passed + 1)); }
bad() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
# expect NAME WHAT CONDITION... : ok if the condition (a command) succeeds.
expect() { local n=$1 w=$2; shift 2; if "$@"; then ok "$n" "$w"; else bad "$n" "$w"; fi; }
has() { grep -qE -- "$2" <<<"$1"; }
want_groups=$(sed -n 's/.*ptguard\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)
# The Xen line the bed booted (ptguard.xen=4.17|4.20), and its libxenctrl.
XEN_LINE=$(sed -n 's/.*ptguard\.xen=\([0-9.]*\).*/\1/p' /proc/cmdline); XEN_LINE=${XEN_LINE:-4.17}
export XENCTRL=libxenctrl.so.$XEN_LINE
# `all` is every group but guests, paths and ptpaths, whose guests and teardowns the soak's
# chain covers (they run when named).
# A group that runs says so first (CHECKS-GROUP NAME): the host tells from the last such
# line which group a stalled machine was in.
group() {
    case "${want_groups:-all}" in
        all) case $1 in guests | paths | ptpaths) return 1 ;; esac ;;
        *) grep -q "+$1+" <<<"+$want_groups+" || return 1 ;;
    esac
    echo "CHECKS-GROUP $1"
    echo "CHECKS-TIME $1 $(up)"
}
driver() { basename "$(readlink "/sys/bus/pci/devices/$SBDF/driver" 2>/dev/null)" 2>/dev/null; }
msix() { lspci -vv -s "$BDF" 2>/dev/null | sed -n 's/.*MSI-X: \(.*\)/\1/p'; }
# ledger FIELD: one field of the device's ledger head, one node of key=value words with the
# free-text reason last (docs/ledger.md); `owner` as "DOMID [HANDLE]"; empty when absent.
ledger() {
    local head
    head=$(xenstore-read "/ptguard/device/$KEY" 2>/dev/null) || return 0
    case $1 in
    reason) sed -n 's/.* reason=//p' <<<"$head" ;;
    owner) echo "$(head_field owner "$head")$(head_field handle "$head" | sed 's/^./ &/')" ;;
    *) head_field "$1" "$head" ;;
    esac
}
head_field() { sed 's/ reason=.*//' <<<"$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
# Xen's 'Q' dump line for the device, e.g. "0000:00:05.0 - d3 - node -1  - MSIs < 25 26 >".
xen_q() { xl debug-keys Q >/dev/null; sleep 1; xl dmesg | grep -a "$SBDF - " | tail -1; }
domid_of() { xl domid "$1" 2>/dev/null; }
wait_for() { # SECONDS COMMAND... : polls once a second
    local n=$1; shift
    while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 1; n=$((n - 1)); done
    return 1
}
cfg() { # NAME TYPE PASSTHROUGH PCI EXTRA-KERNEL-ARGS
    {
        echo "name = \"$1\""; echo "type = \"$2\""; echo "memory = 256"; echo "vcpus = 1"
        echo "kernel = \"$T/guest-vmlinuz\""; echo "ramdisk = \"$T/guest-initrd.gz\""
        [ "$3" = yes ] && echo 'passthrough = "enabled"'
        [ -n "$4" ] && echo "pci = [ \"$4\" ]"
        echo 'on_poweroff = "destroy"'; echo 'on_crash = "preserve"'
        if [ "$2" = pv ]; then
            # The host's memory map, holes and all, as xl gives a PV guest with pci=[...]:
            # Linux 6.5 and later set up swiotlb-xen only when the map has reserved regions,
            # and a device ptguard gives later would otherwise DMA to pseudo-physical
            # addresses, which the IOMMU refuses (docs/realxen.md).
            [ "$3" = yes ] && echo 'e820_host = 1'
            echo "extra = \"console=hvc0 loglevel=4 $5\""
        else
            echo 'device_model_version = "qemu-xen"'
            echo "cmdline = \"console=ttyS0 loglevel=4 nopv $5\""
            echo "serial = \"file:$CON/hvm-$1.log\""
            echo 'vnc = 0'; echo 'nographic = 1'; echo 'vga = "none"'
        fi
    } > "/root/$1.cfg"
}
guest_log() { case $2 in pv) echo "$CON/guest-$1.log" ;; *) echo "$CON/hvm-$1.log" ;; esac; }
# run_guest NAME TYPE: starts it, waits for its verdict (it powers itself off).
run_guest() {
    local log; log=$(guest_log "$1" "$2"); rm -f "$log"
    local out; out=$(xl create "/root/$1.cfg" 2>&1); local rc=$?
    if [ $rc -ne 0 ]; then echo "xl create rc=$rc: $(tail -2 <<<"$out" | tr '\n' ' ')"; return; fi
    wait_for 240 grep -aq "GUEST-RESULT" "$log"
    grep -a "GUEST-RESULT" "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r'
    wait_for 60 sh -c "! xl domid $1 >/dev/null 2>&1" || xl destroy "$1" 2>/dev/null
}
# A paused guest ptguard can attach to.
paused() { xl create -p "/root/$1.cfg" >/dev/null 2>&1; domid_of "$1"; }
# The broker asks: as the HVM domain's device model, so its pid goes into Xenstore first
# (the broker checks SO_PEERCRED against libxl's device-model-pid). The real model's pid is
# put back before this process exits: the daemon unbinds what a dead device model left.
bind_as_dm() { # DOMID EPOCH ENTRY
    local path=/local/domain/$1/image/device-model-pid
    python3 - "$path" "$@" <<'PY'
import os, runpy, subprocess, sys
path, domid, epoch, entry = sys.argv[1:5]
old = subprocess.run(["xenstore-read", path], capture_output=True, text=True).stdout.strip()
subprocess.run(["xenstore-write", path, str(os.getpid())], check=False)
head = subprocess.run(["xenstore-read", "/ptguard/device/0000-00-05-0"], capture_output=True, text=True).stdout
tb = next((w[len("table-base="):] for w in head.split(" reason=")[0].split() if w.startswith("table-base=")), "")
sys.argv = ["broker_client.py", "/run/ptguard/broker.sock", domid, "0000:00:05.0", epoch, tb, "bind", entry]
rc = 0
try:
    runpy.run_path("/opt/ptguard-test/broker_client.py", run_name="__main__")
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    if old:
        subprocess.run(["xenstore-write", path, old], check=False)
sys.exit(rc)
PY
}

OUT=/var/tmp/ptguard-out
mkdir -p $OUT/fixtures
# capture NAME: what a user would paste into a bug report, as `ptguard doctor
# --from-report` reads it ("### COMMAND" then its output), plus the device's sysfs files.
capture() {
    local d=$OUT/fixtures/$1; mkdir -p "$d"
    # The whole console ring (Xen's own messages before the dumps included); a reader
    # takes the newest dump of each kind.
    for k in Q i M; do xl debug-keys $k; done; sleep 1
    {
        echo "### lspci -vvv"; lspci -vvv
        echo "### xl info"; xl info
        echo "### xl dmesg"; xl dmesg
        echo "### xenstore-ls -f"; xenstore-ls -f
    } > "$d/report.txt" 2>&1
    local s=/sys/bus/pci/devices/$SBDF
    od -An -v -tx1 "$s/config" > "$d/config.hex" 2>/dev/null
    for f in reset_method irq vendor device class enable; do cat "$s/$f" > "$d/$f" 2>/dev/null; done
    ls "$s/msi_irqs" > "$d/msi_irqs" 2>/dev/null
    basename "$(readlink "$s/driver" 2>/dev/null)" > "$d/driver" 2>/dev/null
    say "captured $1"
}
# The output disk: a tar written raw to /dev/vdb, read back by the host.
save_output() { [ -b /dev/vdb ] && tar -C $OUT -cf /dev/vdb . && sync; }

# ptguard watch: under systemd when the package is installed, else started by hand.
packaged() { systemctl is-enabled ptguard.service >/dev/null 2>&1; }
start_watch() {
    mkdir -p /run/ptguard
    if packaged; then
        systemctl start ptguard.service
        wait_for 20 test -S $SOCK
        watchpid=$(systemctl show -p MainPID --value ptguard.service)
    else
        ptguard watch > /var/log/ptguard-watch.log 2>&1 &
        watchpid=$!
        wait_for 20 test -S $SOCK
    fi
}
stop_watch() {
    if packaged; then systemctl stop ptguard.service; else kill "$watchpid"; wait "$watchpid" 2>/dev/null; fi
}
watch_log() { if packaged; then journalctl -u ptguard.service -o cat --no-pager | tail -"$1"; else tail -"$1" /var/log/ptguard-watch.log; fi; }

# JSON read with a parser, not with patterns. Input is a command's output, so it may carry
# log lines around the JSON: the whole of it is read as JSON, else the last JSON value that
# starts a line. `json_get PATH` prints the value at PATH (keys and list indices joined by
# '.', e.g. `ledger.table_base`); `json_find KEY=VALUE... FIELD` prints FIELD of the first
# object of a list (doctor --json's findings) whose KEYs have those VALUEs. A string prints
# as itself, anything else (and a VALUE to match it) as JSON: `sbdf=null`. Nothing is
# printed, and the status is 1, when the input has no JSON or the value is absent.
json_query() {
    python3 -c '
import json, sys
text = sys.stdin.read()
def value():
    try:
        return json.loads(text)
    except ValueError:
        pass
    found, pos = None, 0
    dec = json.JSONDecoder()
    for line in text.splitlines(keepends=True):
        if line.lstrip()[:1] in ("{", "["):
            try:
                found = dec.raw_decode(text[pos + len(line) - len(line.lstrip()):])[0]
            except ValueError:
                pass
        pos += len(line)
    if found is None:
        sys.exit(1)
    return found
def show(v):
    return v if isinstance(v, str) else json.dumps(v)
v = value()
mode, args = sys.argv[1], sys.argv[2:]
if mode == "get":
    for k in args[0].split(".") if args[0] else []:
        if isinstance(v, list) and k.isdigit() and int(k) < len(v):
            v = v[int(k)]
        elif isinstance(v, dict) and k in v:
            v = v[k]
        else:
            sys.exit(1)
    print(show(v))
else:
    want = [a.split("=", 1) for a in args[:-1]]
    for o in v if isinstance(v, list) else [v]:
        if isinstance(o, dict) and all(k in o and show(o[k]) == w for k, w in want):
            if args[-1] not in o:
                sys.exit(1)
            print(show(o[args[-1]]))
            sys.exit(0)
    sys.exit(1)
' "$@"
}
json_get() { json_query get "$1"; }
json_find() { json_query find "$@"; }

# Shared by paths, ptpaths, companion, preload, soak and zombie.
row() { printf 'row  %-8s %-22s next-guest=%-12s MSI-X: %s | Xen: %s\n' "$1" "$2" "$3" "$(msix)" "$(xen_q | sed 's/.*0000:00:05.0 - //')"; }
# An HVM guest under TCG sometimes never leaves its firmware (SeaBIOS stops after "Booting
# from c100:003c", seen on 4.17.5 in CI): such a guest never ran, so nothing about ptguard
# is learned from it; it is destroyed and started once more, and the retry is said.
start_hold() { # NAME TYPE: start a guest that keeps its MSI-X live; prints its verdict
    local log try; log=$(guest_log "$1" "$2")
    for try in 1 2; do
        rm -f "$log"
        xl create "/root/$1.cfg" >/dev/null 2>&1
        wait_for 150 grep -aq GUEST-HOLD "$log" && break
        grep -aq GUEST-START "$log" && break
        [ $try = 1 ] || break
        say "guest $1 did not start its kernel in 150 s (last console line: $(tail -1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-80)); destroyed and started again" >&2
        xl destroy "$1" >/dev/null 2>&1; wait_for 30 sh -c "! xl domid $1 >/dev/null 2>&1"; sleep 5
    done
    grep -a GUEST-RESULT "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r'
}
next_pv() { # TOOLSTACK: the next guest, given the device as that toolstack gives it
    local r
    if [ "$1" = xl ]; then
        r=$(run_guest pv pv)
    else
        local log; log=$(guest_log pvpt pv); rm -f "$log"
        d=$(paused pvpt)
        ptguard attach $SBDF "$d" >/dev/null 2>&1
        xl unpause pvpt
        wait_for 150 grep -aq "GUEST-RESULT" "$log"
        r=$(grep -a "GUEST-RESULT" "$log" | tail -1 | sed 's/.*GUEST-RESULT //' | tr -d '\r')
        wait_for 60 sh -c "! xl domid pvpt >/dev/null 2>&1"
        wait_for 60 test "$(ledger state)" = assignable
    fi
    echo "${r:-no verdict}"
}
