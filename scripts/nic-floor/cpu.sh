#!/bin/bash
# The host CPU a serving VM's process spends with its PV NIC idle, then under `ping -i 0.002`
# (500 requests/s): docs/benchmarks.md, "Adaptive busy-polling by default". The topology of
# floor.sh (TEST-NET-1 only, in namespaces this script makes and deletes) with the VM on the
# bridge. Usage: cpu.sh PVMIGRATE_BINARY [POLL_US] [SECONDS]   (root; POLL_US: --net poll-us=)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BIN=$1 POLL=${2:-} SECS=${3:-10}
H=pvmt-nich C=pvmt-nicc BR=pvmt-nicbr
. "$here/topology.sh"
serve_vm pvmt-nicv "$BIN" "${POLL:+,poll-us=$POLL}"
ticks() { awk '{print $14 + $15}' /proc/$pid/stat; }
rate() { awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" -v s="$SECS" 'BEGIN {printf "%.3f CPU-s/s\n", (b - a) / hz / s}'; }
sleep 3 # a benchmark script: past the probe pings, the NIC is quiet
t0=$(ticks); sleep "$SECS"; t1=$(ticks)
echo "NIC idle: $(rate "$t0" "$t1")"
t0=$(ticks)
ip netns exec $C ping -q -c $((SECS * 500)) -i 0.002 192.0.2.2 | tail -1
t1=$(ticks)
echo "ping -i 0.002: $(rate "$t0" "$t1")"
