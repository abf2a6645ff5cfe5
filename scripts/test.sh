#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh), builds pvmigrate and runs its tests.
# Exits non-zero if setup, the build or any test fails, after a summary.
#
# Usage: scripts/test.sh [swift test arguments, e.g. --filter MigrateTests]
# Environment: SWIFTPM_FLAGS  extra flags for both `swift build` and
#              `swift test`, e.g. "--scratch-path .build-ci".
#              FUZZ_SECONDS  seconds per fuzz target in the fuzz step (default 5; 0 skips it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || { echo "test: FAILED: scripts/setup.sh failed (see above)" >&2; exit 1; }

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

read -r -a swiftpm_flags <<<"${SWIFTPM_FLAGS:-}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

start=$SECONDS
build="not run"
tests="not run"
qemu="not run"
conformance="not run"
fuzz="not run"

echo "==> swift build ${swiftpm_flags[*]}"
if swift build "${swiftpm_flags[@]}" 2>&1 | tee "$logs/build.log"; then
    build="ok"
    echo "==> swift test ${swiftpm_flags[*]} $*"
    if swift test "${swiftpm_flags[@]}" "$@" 2>&1 | tee "$logs/test.log"; then
        tests="ok"
    else
        tests="FAILED"
    fi
    # The exported built-in guest must also boot unmodified under QEMU (protocol.md §1).
    if [ $# -eq 0 ]; then
        echo "==> scripts/qemu-boot.sh (the exported guest under QEMU)"
        if bash scripts/qemu-boot.sh 2>&1 | tee "$logs/qemu.log"; then qemu="ok"; else qemu="FAILED"; fi
        # The Python peer written from docs/protocol.md against the built binary, both directions.
        echo "==> Tests/conformance/run.py (the Python conformance peer against pvmigrate)"
        bin_dir=$(swift build "${swiftpm_flags[@]}" --show-bin-path)
        if python3 Tests/conformance/run.py --binary "$bin_dir/pvmigrate" 2>&1 | tee "$logs/conformance.log"; then
            conformance="ok"
        else
            conformance="FAILED"
        fi
    fi
    # Every decoder of untrusted bytes under libFuzzer for a few seconds (docs/fuzzing.md).
    if [ $# -eq 0 ] && [ "${FUZZ_SECONDS:-5}" != 0 ]; then
        echo "==> scripts/fuzz.sh ${FUZZ_SECONDS:-5} (sanitizer build + each fuzz target)"
        fuzz_start=$SECONDS
        if bash scripts/fuzz.sh "${FUZZ_SECONDS:-5}" 2>&1 | tee "$logs/fuzz.log"; then fuzz="ok"; else fuzz="FAILED"; fi
        fuzz="$fuzz ($((SECONDS - fuzz_start)) s; $(grep -oE '[0-9]+ targets, [0-9]+ executions, [0-9]+ crashes' "$logs/fuzz.log" | tail -1 || true))"
    fi
else
    build="FAILED"
fi

echo
echo "======================== pvmigrate test summary ========================"
echo "build: $build"
echo "tests: $tests"
echo "qemu:  $qemu"
echo "conformance: $conformance"
grep -E '^conformance: (FAIL |passed|FAILED)' "$logs/conformance.log" 2>/dev/null | sed 's/^/  /' || true
echo "fuzz:  $fuzz"
if [ -f "$logs/test.log" ]; then
    # swift-testing and XCTest each print one result line per run.
    grep -E 'Test run with [0-9]+ tests?|Executed [0-9]+ tests?' "$logs/test.log" \
        | sed 's/^[[:space:]]*/  /' | sort -u || true
    grep -E '^✘ Test "[^"]*".* failed|error: -\[|: error:' "$logs/test.log" | sed 's/^/  /' | head -40 || true
fi
if [ "$build" = "FAILED" ]; then
    grep -E 'error:' "$logs/build.log" | sed 's/^/  /' | head -40 || true
fi
echo "time: $((SECONDS - start)) s"
echo "========================================================================"
# One plain closing line: tests passed/failed as swift-testing counted them.
if [ -f "$logs/test.log" ]; then
    total=$(grep -oE 'Test run with [0-9]+ tests?' "$logs/test.log" | grep -oE '[0-9]+' | tail -1 || true)
    failed=$(grep -cE '^✘ Test .*failed' "$logs/test.log" || true)
    [ -n "$total" ] && echo "summary: $((total - failed)) passed, $failed failed"
fi

[ "$build" = "ok" ] && [ "$tests" = "ok" ] && [ "$qemu" != "FAILED" ] && [ "$conformance" != "FAILED" ] \
    && [ "${fuzz%% *}" != "FAILED" ]
