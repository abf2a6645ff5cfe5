#!/bin/bash
# World switches and system calls per ping (docs/benchmarks.md, "Idle cores between pings"): the
# topology of floor.sh (TEST-NET-1 only, namespaces this script makes and deletes) with one VM on
# the bridge; `ping -i 0.002` COUNT times while perf counts, per thread of the VM's process, KVM's
# entries/exits/port I/O/returns to user space and every system call; then strace names the
# system calls of the same load. Usage: count.sh PVMIGRATE_BINARY [COUNT]   (root; perf, strace)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BIN=$1 COUNT=${2:-1000}
H=pvmt-nicch C=pvmt-niccc BR=pvmt-niccbr
. "$here/topology.sh"
serve_vm pvmt-nicv "$BIN" ""
sleep 1 # a benchmark script: past the probe pings, the NIC is quiet
out=$work/perf
perf stat --per-thread -x, -o "$out" -e kvm:kvm_entry,kvm:kvm_exit,kvm:kvm_pio,kvm:kvm_userspace_exit,raw_syscalls:sys_enter -p "$pid" &
perfpid=$!
sleep 0.5 # perf attaches
ip netns exec $C ping -q -c "$COUNT" -i 0.002 192.0.2.2 | tail -1
kill -INT $perfpid; wait $perfpid || true
echo "per ping, by thread (events with a count; ${COUNT} pings):"
awk -F, -v n="$COUNT" '$2 ~ /^[0-9]+$/ && $2 > 0 {printf "  %-28s %-28s %8.2f\n", $1, $4, $2 / n}' "$out"
echo "system calls of the whole process under the same load (strace -c -f):"
strace -c -f -p "$pid" -o "$work/strace" &
spid=$!
sleep 0.5
ip netns exec $C ping -q -c "$COUNT" -i 0.002 192.0.2.2 | tail -1
kill -INT $spid; wait $spid || true
awk -v n="$COUNT" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "  %-16s %8.2f per ping\n", $NF, $4 / n}' "$work/strace"
