#!/bin/bash
# The kernel's share of the PV NIC round trip (docs/benchmarks.md, "where the round trip goes"):
# the topology of `bench --net` (a bridge in one namespace, the client on a veth from another;
# TEST-NET-1 only, nothing reachable from outside) with, in place of the VM,
#   1. a userspace responder on a TAP (tapecho.c: one blocking read per frame; with SPIN=1 it
#      spins on non-blocking reads instead, the floor of a busy-polling VMM), then
#   2. the kernel itself answering (an address on the bridge).
# Prints ping's p50/p99/min for each. Root; needs a C compiler (CC, default: cc, else clang).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
P=${NF_PREFIX:-pvmt-nf} # names: $P + h, c, br, v, t (≤ 15 bytes; NF_PREFIX=pvmt-nicf keeps the nic line's prefix)
H=${P}h C=${P}c BR=${P}br
work=$(mktemp -d)
cleanup() {
    set +e # delete everything even if a step fails (the responder's wait reports its SIGTERM)
    if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    ip netns del $H 2>/dev/null || true
    ip netns del $C 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cc=${CC:-$(command -v cc || command -v clang)}
"$cc" -O2 ${SPIN:+-DSPIN} -o "$work/tapecho" "$here/tapecho.c" # SPIN=1: the responder never sleeps
. "$here/topology.sh"
make_topology ${P}v
ip netns exec $H "$work/tapecho" ${P}t > "$work/log" &
pid=$!
until grep -qs ready "$work/log"; do sleep 0.05; done # the TAP exists once it says so
ip -n $H link set ${P}t master $BR up
percentiles() {
    grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n |
        awk '{a[NR]=$1} END {printf "n=%d p50=%.0f us p99=%.0f us min=%.0f us\n", NR, a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000, a[1]*1000}'
}
echo -n "TAP + userspace responder: "
ip netns exec $C ping -c 1500 -i 0.002 192.0.2.2 | percentiles
ip -n $H addr add 192.0.2.3/24 dev $BR
echo -n "the kernel answers (an address on the bridge): "
ip netns exec $C ping -c 1500 -i 0.002 192.0.2.3 | percentiles
