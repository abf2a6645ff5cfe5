#!/usr/bin/env bash
# Runs the whole test suite N times in a row (default 5) while another process keeps one
# core busy, as a clean 2-core CI machine with a spinning guest is: a test that assumes the
# guest "must have done X by now" fails here. Prints `N runs: P passed, F failed` and the
# names of the tests that ever failed; exits non-zero if any run failed.
#
# Usage: scripts/stress-tests.sh [N] [swift test arguments, e.g. --filter EndToEndTests]
# Environment: SWIFTPM_FLAGS  extra flags for `swift build` / `swift test` (as scripts/test.sh)
#              STRESS_LOGS    keep every run's log in this directory (default: a temporary one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-5}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "stress-tests: N must be a positive number, got '$runs'" >&2; exit 2; }
shift || true

bash scripts/setup.sh >/dev/null || { echo "stress-tests: scripts/setup.sh failed" >&2; exit 1; }
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
read -r -a swiftpm_flags <<<"${SWIFTPM_FLAGS:-}"
logs=${STRESS_LOGS:-$(mktemp -d)}
mkdir -p "$logs"

echo "==> swift build --build-tests ${swiftpm_flags[*]}"
swift build --build-tests "${swiftpm_flags[@]}" >"$logs/build.log" 2>&1 \
    || { tail -40 "$logs/build.log"; echo "stress-tests: the build failed" >&2; exit 1; }

# One core kept busy for the whole time: stress-ng when Debian's package is there, else a
# shell loop. Either is stopped when this script ends, however it ends.
busy=""
cleanup() { [ -n "$busy" ] && kill "$busy" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu 1 --cpu-method loop --quiet --timeout 0 & busy=$!
    echo "==> one core kept busy by stress-ng (pid $busy)"
else
    bash -c 'while :; do :; done' & busy=$!
    echo "==> one core kept busy by a shell loop (pid $busy)"
fi

passed=0 failed=0
: >"$logs/failures.txt"
for i in $(seq 1 "$runs"); do
    start=$SECONDS
    if swift test --skip-build "${swiftpm_flags[@]}" "$@" >"$logs/run-$i.log" 2>&1; then
        passed=$((passed + 1)); verdict=passed
    else
        failed=$((failed + 1)); verdict=FAILED
    fi
    # Swift Testing: `✘ Test name() failed after …`; XCTest: `Test Case '…' failed`.
    names=$(grep -E "^✘ Test .* failed|Test Case '.*' failed" "$logs/run-$i.log" \
        | sed -E "s/^✘ Test (.*) failed( after .*)?$/\1/; s/^.*Test Case '(.*)' failed.*/\1/" | sort -u || true)
    [ -n "$names" ] && printf '%s\n' "$names" | sed "s/^/run $i: /" >>"$logs/failures.txt"
    summary=$(grep -E 'Test run with [0-9]+ tests?' "$logs/run-$i.log" | tail -1 | sed 's/^[^T]*//' || true)
    echo "run $i/$runs: $verdict ($((SECONDS - start)) s) ${summary}"
    [ "$verdict" = FAILED ] && [ -z "$names" ] && tail -20 "$logs/run-$i.log" | sed 's/^/    /'
done

echo
echo "$runs runs: $passed passed, $failed failed"
if [ -s "$logs/failures.txt" ]; then
    echo "tests that failed (run: name):"
    sed 's/^/  /' "$logs/failures.txt"
fi
echo "logs: $logs"
[ "$failed" -eq 0 ]
