#!/bin/bash
# The host spans of each ping's path through the VMM (NetTrace: TAP readable → delivered → KVM_RUN
# → NET_SLEEP exit → answer written), beside ping's p50/p99, for one VM (docs/benchmarks.md,
# "Idle cores between pings"). The topology of floor.sh (TEST-NET-1 only, namespaces this script
# makes and deletes). Usage: spans.sh PVMIGRATE_BINARY [INTERVAL]   (root; default 0.002)
#   PIN=1       the VM's threads on CPU 1, ping on CPU 0
#   SPIN="0 1"  a SCHED_IDLE busy loop on each CPU listed while ping runs (a core that never halts;
#               any real thread preempts it at once)
#   NET_OPTS=",poll-us=0" adds --net options; the VM's environment passes through.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BIN=$1 I=${2:-0.002}
H=pvmt-nicsh C=pvmt-nicsc BR=pvmt-nicsbr
. "$here/topology.sh"
spinners=()
cleanup() {
    set +e
    for s in "${spinners[@]}"; do kill "$s" 2>/dev/null; wait "$s" 2>/dev/null; done
    stop_vm
}
export PVMIGRATE_NET_TRACE=1
serve_vm pvmt-nicv "$BIN" "${NET_OPTS:-}"
trap cleanup EXIT
if [ -n "${PIN:-}" ]; then taskset -a -p -c 1 "$pid" > /dev/null; fi
for c in ${SPIN:-}; do
    chrt -i 0 taskset -c "$c" sh -c 'while :; do :; done' > /dev/null 2>&1 &
    spinners+=($!)
done
ip netns exec $C ${PIN:+taskset -c 0} ping -c 1500 -i "$I" 192.0.2.2 | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n |
    awk -v i="$I" '{a[NR]=$1} END {printf "ping -i %s: p50=%.0f us p99=%.0f us\n", i, a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}'
kill -INT "$pid"; wait "$pid" || true # SIGINT: the VM prints the trace as it ends
pid=
grep -o "NIC trace.*" "$work/log"
