# Sourced by floor.sh and cpu.sh: the topology of `bench --net` without the migration's second
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
