#!/usr/bin/env bash
# bench --net (issue 14): the PV NIC and a migration measured from outside the VM.
#
# Builds pvmigrate (release) and runs `pvmigrate bench --net` as root: it creates two network
# namespaces (pvmt-nb<pid>h: a bridge and both pvmigrate processes, so both TAPs join it;
# pvmt-nb<pid>c: the clients, 192.0.2.1/24), boots a serving guest (256 MiB, workload=serve),
# measures the NIC alone (ping -i 0.002, UDP at a fixed rate, UDP with a fixed number in flight),
# then migrates the guest under ping and a 2,000 requests/s UDP load and reports the client-
# observed blackout next to the VMM's downtime, lost requests, latency before/during/after, and
# whether every acknowledged SET survived. The namespaces are deleted on exit, on failure and
# on Ctrl-C. Exits non-zero if a check failed.
#
# Usage: scripts/net-bench.sh [bench --net options: --nic-only --net-memory 256M --net-rate 2000
#                              --net-seconds 3 --net-window 16 --json FILE]
# Environment: SWIFTPM_FLAGS  extra flags for `swift build`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
read -r -a swiftpm_flags <<<"${SWIFTPM_FLAGS:-}"
swift build -c release "${swiftpm_flags[@]}" --product pvmigrate >&2
bin=$(swift build -c release "${swiftpm_flags[@]}" --show-bin-path)/pvmigrate

sudo=()
if [ "$(id -u)" != 0 ]; then
    echo "net-bench: namespaces, a bridge and TAP devices need root: running through sudo" >&2
    sudo=(sudo)
fi
echo "net-bench: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
exec "${sudo[@]}" "$bin" bench --net "$@"
