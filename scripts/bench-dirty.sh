#!/usr/bin/env bash
# Benchmark: how fast the built-in guest dirties memory with dirty logging off, with KVM's
# dirty log, with the PV ring, and with both (hybrid) — the cost each tracking method
# imposes on the guest. Not a test: it prints medians and ratios for docs/benchmarks.md.
#
# Each case runs the guest for DURATION seconds (default 5) writing a working set of
# MIB MiB (default 256) of a 1 GiB guest, harvesting the dirty set every HARVEST_MS
# (default 100) like a migration round would; the guest reports its own pages/s every
# 500 ms. The first second is warm-up; the case's figure is the median of the rest,
# and the median over RUNS runs (default 3).
#
# Usage: scripts/bench-dirty.sh            (env: DURATION, MIB, HARVEST_MS, RUNS, PATTERNS, CONTENTS,
#                                          MODES (default "off kvm pv hybrid"), BIN (a pvmigrate binary
#                                          to measure instead of building one: e.g. an older build, to
#                                          compare), RAW (also append the raw per-run figures to this file))
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

DURATION=${DURATION:-5} MIB=${MIB:-256} HARVEST_MS=${HARVEST_MS:-100} RUNS=${RUNS:-3}
PATTERNS=${PATTERNS:-"seq random"} CONTENTS=${CONTENTS:-"stamp"} MODES=${MODES:-"off kvm pv hybrid"}
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  swift build -c release --product pvmigrate >&2
  bin=$(swift build -c release --show-bin-path)/pvmigrate
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for pattern in $PATTERNS; do
  for content in $CONTENTS; do
    for mode in $MODES; do
      for run in $(seq "$RUNS"); do
        out=$("$bin" run --memory 1G --duration "$DURATION" --dirty-log "$mode" --harvest-ms "$HARVEST_MS" \
              --cmdline "workload=dirty mib=$MIB passes=0 pattern=$pattern content=$content progress=500 seed=$run" 2>&1)
        echo "$out" | python3 -c '
import re, statistics, sys
rates = [int(m.group(1)) for m in re.finditer(r"pvguest: progress (\d+) pages/s", sys.stdin.read())]
rates = rates[2:]  # the first second is warm-up
print(statistics.median(rates) if rates else 0)' | sed "s/^/$pattern $content $mode /" >> "$results"
      done
    done
  done
done
[ -z "${RAW:-}" ] || cat "$results" >> "$RAW"

python3 - "$results" "$DURATION" "$MIB" "$HARVEST_MS" "$RUNS" "$MODES" <<'PY'
import collections, statistics, sys
path, duration, mib, harvest, runs, modes = sys.argv[1:]
modes = modes.split()
cases = collections.defaultdict(list)
for line in open(path):
    pattern, content, mode, rate = line.split()
    cases[(pattern, content, mode)].append(float(rate))
print(f"guest dirtying throughput: 1 GiB guest, {mib} MiB working set, harvest every {harvest} ms,"
      f" {duration} s per run, median of {runs} runs (pages/s; ratio to logging off)")
print("| pattern | content | " + " | ".join(modes) + " |")
print("|---|---|" + "---|" * len(modes))
for (pattern, content) in sorted({(p, c) for p, c, _ in cases}):
    med = {m: statistics.median(cases[(pattern, content, m)]) for m in modes}
    base = med.get("off") or 1
    cells = [f"{med[m]:,.0f}" if m == "off" else f"{med[m]:,.0f} ({med[m] / base:.2f}×)" for m in modes]
    print(f"| {pattern} | {content} | " + " | ".join(cells) + " |")
PY
