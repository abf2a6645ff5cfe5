#!/bin/bash
# ping's round trip to a serving VM at different intervals (docs/benchmarks.md, "Like for like
# with ping"): the topology of floor.sh (TEST-NET-1 only, namespaces this script makes and
# deletes) with the VM on the bridge. Usage: rate.sh PVMIGRATE_BINARY [INTERVAL…]  (root;
# default intervals 0.002 0.0005; the VM's environment passes through, e.g.
# PVMIGRATE_NET_WAKE_MARGIN_US=2500 to poll through each whole sleep).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BIN=$1; shift
H=pvmt-nicrh C=pvmt-nicrc BR=pvmt-nicrbr
. "$here/topology.sh"
serve_vm pvmt-nicrv "$BIN" ""
for i in "${@:-0.002 0.0005}"; do
    for j in $i; do
        echo -n "ping -i $j: "
        ip netns exec $C ping -c 1500 -i "$j" 192.0.2.2 | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n |
            awk '{a[NR]=$1} END {printf "n=%d p50=%.0f us p99=%.0f us\n", NR, a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}'
    done
done
