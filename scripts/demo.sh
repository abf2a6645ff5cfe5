#!/usr/bin/env bash
# The main job: set the machine up, build pvmigrate, and migrate a running guest live over
# mutual TLS on this machine with `pvmigrate demo`:
#
#   certificates for two hosts (src; dst=127.0.0.1, the address dialed) → a destination
#   listener on a loopback port that accepts only the source named src →
#   the built-in guest booted with a workload that keeps dirtying memory (its console shown)
#   → live migration with a progress line → the guest carrying on at the destination (console,
#   page counter) → its own self-check of every page it wrote ("0 bad") → the statistics.
#
# Exits 0 only if every check passed. Takes well under a minute once built.
#
# scripts/demo.sh --net (root): the network demo instead — network namespaces made and deleted
# by the demo (TEST-NET-1 only), a guest serving its UDP key-value store answers ping, SET and
# GET from a client namespace before and after it moves between `pvmigrate run` and
# `pvmigrate listen --net-bridge`, whose TAPs share a bridge. The default demo needs no
# network privileges.
# Usage: scripts/demo.sh [--net] [pvmigrate demo options, e.g. --memory 1G --dirty-source pv]
# Environment: SWIFTPM_FLAGS  extra flags for `swift build`, e.g. "--scratch-path .build-ci".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
read -r -a swiftpm_flags <<<"${SWIFTPM_FLAGS:-}"

echo "==> building pvmigrate (release)"
swift build -c release "${swiftpm_flags[@]}" --product pvmigrate
bin=$(swift build -c release "${swiftpm_flags[@]}" --show-bin-path)/pvmigrate

echo
echo "==> pvmigrate demo $*"
exec "$bin" demo "$@"
