#!/bin/sh
# Boots the pvguest ELF under QEMU (PVH entry) and checks the console contract
# (docs/protocol.md §1.7), then boots it with two vCPUs (INIT/SIPI, §2.10). Under QEMU the pvmigrate CPUID leaf is absent, and on
# a PVM host the guest runs emulated (~1 µs per instruction): keep it tiny.
#
# Usage: scripts/qemu-boot.sh [guest.elf]
#   Without an argument, exports the built-in guest with
#   `swift run pvmigrate guest export <tmp>`.
# Environment: QEMU_TIMEOUT (seconds, default 120).
set -eu

fail() { echo "qemu-boot: FAIL: $*" >&2; exit 1; }

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "qemu-boot: installing qemu-system-x86" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86 >&2 \
        || fail "could not install qemu-system-x86"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ $# -ge 1 ]; then
    ELF=$1
    [ -f "$ELF" ] || fail "no such guest image: $ELF"
else
    ROOT=$(cd "$(dirname "$0")/.." && pwd)
    ELF=$TMP/pvguest.elf
    (cd "$ROOT" && swift run pvmigrate guest export "$ELF") >&2 \
        || fail "could not export the guest (pass an ELF path instead)"
fi

LOG=$TMP/console.log

# boot WHAT SMP APPEND LINE...: boots the guest with SMP vCPUs and APPEND as its
# command line, expects guest exit status 0 and every LINE on its console.
boot() {
    what=$1 smp=$2 append=$3
    shift 3
    set +e
    timeout "${QEMU_TIMEOUT:-120}" qemu-system-x86_64 \
        -enable-kvm -cpu host,-arch-capabilities -m 256M -smp "$smp" \
        -nographic -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$ELF" -append "$append" </dev/null >"$LOG" 2>&1
    status=$?
    set -e
    tr -d '\r' <"$LOG" >"$LOG.clean"
    cat "$LOG.clean"

    [ "$status" -ne 124 ] || fail "$what: QEMU timed out after ${QEMU_TIMEOUT:-120} s"
    # isa-debug-exit: QEMU exits with (v << 1) | 1, so guest status 0 -> 1.
    [ "$status" -eq 1 ] || fail "$what: QEMU exit status $status (expected 1 = guest exit status 0)"
    for line in "$@"; do
        # Substring match: SeaBIOS leaves "Booting from ROM.." before the first line.
        grep -qF "$line" "$LOG.clean" || fail "$what: missing console line: \"$line\""
    done
}

boot "one vCPU" 1 "workload=ticks count=3 interval=10" \
    "pvguest: pvmigrate built-in guest, version 1" \
    "pvguest: memory 256 MiB" \
    "pvguest: pv interface not found" \
    "pvguest: workload ticks" \
    "tick 0" "tick 1" "tick 2" \
    "pvguest: done"

# Several vCPUs the standard way (docs/protocol.md §2.10): without the pvmigrate
# CPUID leaf the guest starts `vcpus=` vCPUs by INIT/SIPI (x2APIC, or the xAPIC
# when the CPU has none) and both write every page of a shared working set.
boot "two vCPUs" 2 "workload=dirty mib=1 passes=1 vcpus=2 share=1 progress=0" \
    "pvguest: vcpus 2 up (INIT/SIPI)" \
    "pvguest: selfcheck: 256 pages, 0 bad" \
    "pvguest: done"
echo "qemu-boot: OK"
