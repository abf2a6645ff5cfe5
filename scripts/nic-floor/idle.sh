#!/bin/bash
# Does ping's round trip to a serving VM grow because cores halt between pings? (docs/benchmarks.md,
# "Idle cores between pings"). The topology of floor.sh (TEST-NET-1 only, namespaces this script
# makes and deletes) with one VM on the bridge; then, ROUNDS times in turn, `ping -i 0.002` under
# each condition below, and each condition's median of the rounds' p50s at the end:
#   free       nothing pinned, nothing added
#   spin-all   a SCHED_IDLE busy loop on every CPU: no core halts (HLT: this host is a nested VM
#              whose idle driver is "none"), yet any real thread preempts the loops at once
#   dma0       /dev/cpu_dma_latency held at 0 (PM QoS; with no cpuidle driver expected to do nothing)
#   pin        the VM's threads on CPU 1, ping on CPU 0, nothing added
#   pin+c      the same with a SCHED_IDLE loop on CPU 0 (the client's core)
#   pin+v      the same with a SCHED_IDLE loop on CPU 1 (the VM's core)
#   pin+cv     loops on both
# Usage: idle.sh PVMIGRATE_BINARY [ROUNDS] [COUNT]   (root; 2 CPUs or more; CONDITIONS="free spin-all"
# picks some; NET_OPTS=",poll-us=0" adds --net options; the VM's environment passes through, e.g.
# PVMIGRATE_NET_WAKE_MARGIN_US).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BIN=$1 ROUNDS=${2:-3} COUNT=${3:-1000}
H=pvmt-nicih C=pvmt-nicic BR=pvmt-nicibr
CONDITIONS=${CONDITIONS:-free spin-all dma0 pin pin+c pin+v pin+cv}
. "$here/topology.sh"
spinners=()
stop_spinners() {
    local s
    for s in "${spinners[@]}"; do kill "$s" 2>/dev/null; wait "$s" 2>/dev/null || true; done
    spinners=()
}
spin_on() { # a SCHED_IDLE busy loop on each CPU given
    local c
    for c in "$@"; do
        chrt -i 0 taskset -c "$c" sh -c 'while :; do :; done' &
        spinners+=($!)
    done
}
cleanup() { set +e; stop_spinners; stop_vm; }
serve_vm pvmt-nicv "$BIN" "${NET_OPTS:-}"
trap cleanup EXIT
all_cpus=$(seq -s ' ' 0 $(($(nproc) - 1)))
p50() { grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n | awk '{a[NR]=$1} END {printf "%.0f %.0f\n", a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}'; }
declare -A results
for r in $(seq "$ROUNDS"); do
    for cond in $CONDITIONS; do
        pin=""
        case $cond in
        pin*) taskset -a -p -c 1 "$pid" > /dev/null; pin="taskset -c 0" ;;
        *) taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" > /dev/null ;;
        esac
        case $cond in
        spin-all) spin_on $all_cpus ;;
        pin+c) spin_on 0 ;;
        pin+v) spin_on 1 ;;
        pin+cv) spin_on 0 1 ;;
        esac
        dma=""
        if [ "$cond" = dma0 ]; then
            # Held while the file is open (PM QoS); a 32-bit 0.
            exec 3> /dev/cpu_dma_latency
            printf '\0\0\0\0' >&3
            dma=1
        fi
        read -r a b < <(ip netns exec $C $pin ping -c "$COUNT" -i 0.002 192.0.2.2 | p50)
        if [ -n "$dma" ]; then exec 3>&-; fi
        stop_spinners
        echo "round $r $cond: p50=$a us p99=$b us"
        results[$cond]="${results[$cond]:-} $a"
    done
done
for cond in $CONDITIONS; do
    echo "$cond: p50 each round:${results[$cond]}; median $(echo ${results[$cond]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') us"
done
