#!/usr/bin/env bash
# Snapshot save/restore times and file sizes (docs/benchmarks.md, "Snapshots"): for each guest
# size and amount of data, `save` (pause-and-save) in both layouts, then RUNS restores of each
# file; prints one table row per case. The restore time is the restored process's own figure
# (file opened and checked → VM built → memory mapped or read → state loaded → vCPUs started).
#
# Usage: scripts/snapshot-bench.sh [CASE...]   CASE = MEMORY:FILL_MIB (default: 256M:0 256M:128
#        1G:0 1G:1024 4G:0 4G:1024)
# Environment: PVMIGRATE (binary, default .build/debug/pvmigrate), RUNS (default 3),
#              SNAPSHOT_BENCH_DIR (scratch directory for the files, default /tmp/pvm-snapbench)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${PVMIGRATE:-.build/debug/pvmigrate}
runs=${RUNS:-3}
dir=${SNAPSHOT_BENCH_DIR:-/tmp/pvm-snapbench}
export PVMIGRATE_RUNTIME_DIR=$dir/rt
mkdir -p "$PVMIGRATE_RUNTIME_DIR"
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(256M:0 256M:128 1G:0 1G:1024 4G:0 4G:1024)
trap '"$bin" stop snapbench >/dev/null 2>&1 || true; "$bin" stop snaprestored >/dev/null 2>&1 || true; rm -f "$dir"/*.snap' EXIT

field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]))' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| guest | data | layout | save s | pause s | file | on disk | restore ms (median of $runs) |"
echo "|---|---|---|---|---|---|---|---|"
for c in "${cases[@]}"; do
    memory=${c%%:*} fill=${c##*:}
    "$bin" run --name snapbench --memory "$memory" --detach --cmdline "workload=idle fill=$fill" >/dev/null
    # A benchmark script, not a test: polling the console until the guest is ready is fine here.
    until "$bin" console snapbench | grep -q 'pvguest: workload idle'; do sleep 0.2; done
    for layout in mapped compressed; do
        file=$dir/$memory-$fill-$layout.snap
        saved=$("$bin" save snapbench "$file" --compression "$layout" --json)
        restores=$(for _ in $(seq "$runs"); do
            "$bin" restore "$file" --name snaprestored --detach >/dev/null
            grep 'restored VM' "$PVMIGRATE_RUNTIME_DIR/vms/snaprestored.log" | tail -1 | sed 's/.* in \([0-9.]*\) ms.*/\1/'
            "$bin" stop snaprestored >/dev/null
        done | median)
        printf '| %s | %s MiB | %s | %.2f | %.3f | %.1f MiB | %.1f MiB | %s |\n' "$memory" "$fill" "$layout" \
            "$(echo "$saved" | field '["stats"]["totalSeconds"]')" "$(echo "$saved" | field '["stats"]["downtimeSeconds"]')" \
            "$(echo "$saved" | field '["fileBytes"]/1048576')" "$(echo "$saved" | field '["allocatedBytes"]/1048576')" "$restores"
        rm -f "$file"
    done
    "$bin" stop snapbench >/dev/null
done
