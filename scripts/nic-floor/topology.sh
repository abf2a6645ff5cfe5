# Sourced by floor.sh, cpu.sh and rate.sh: the topology of `bench --net` without the migration's second
# host — namespace $H holds bridge $BR, namespace $C the client 192.0.2.1 on a veth ($1 is the
# bridge's end of it, its peer is named $C). TEST-NET-1 only, nothing reachable from outside;
# the caller deletes both namespaces.
make_topology() {
    local veth=$1 ns
    for ns in $H $C; do
        ip netns add $ns
        ip -n $ns link set lo up
        ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    ip -n $H link add $BR type bridge
    ip -n $H link set $BR up
    ip -n $H link add $veth type veth peer name $C netns $C
    ip -n $H link set $veth master $BR up
    ip -n $C addr add 192.0.2.1/24 dev $C
    ip -n $C link set $C up
}

# Makes the topology (veth $1), starts a serving VM on the bridge — $2 the pvmigrate binary, $3
# more `--net` options (e.g. ",poll-us=0") — and returns once it answers ping. Sets $pid and $work;
# on exit the VM is stopped and both namespaces deleted (cpu.sh, rate.sh).
serve_vm() {
    work=$(mktemp -d)
    trap stop_vm EXIT
    make_topology $1
    PVMIGRATE_RUNTIME_DIR=$work ip netns exec $H "$2" run --memory 256M --net "bridge=$BR$3" \
        --cmdline "workload=serve ip=192.0.2.2/24" > "$work/log" 2>&1 &
    pid=$!
    until ip netns exec $C ping -c 1 -W 1 192.0.2.2 > /dev/null 2>&1; do sleep 0.2; done # it serves
}
stop_vm() {
    set +e
    if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    ip netns del $H 2>/dev/null; ip netns del $C 2>/dev/null
    rm -rf "$work"
}
