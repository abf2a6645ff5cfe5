#!/usr/bin/env bash
# Builds the libFuzzer harnesses (Fuzz/, against the real Core, Migrate and Control sources)
# with -sanitize=fuzzer,address and runs each target for a bounded time (docs/fuzzing.md).
# Exits non-zero if the build fails or any target finds a crash (a sanitizer report or a
# violated invariant); the crashing inputs are kept under $FUZZ_WORK/crashes.
#
# Usage: scripts/fuzz.sh [--no-build] [SECONDS_PER_TARGET (default 10)] [TARGET...]
#        targets: frame pages delta state elf control snapshot (default: all)
# Environment: FUZZ_SCRATCH  SwiftPM scratch path of the sanitizer build (default .build-fuzz)
#              FUZZ_WORK     corpora, seeds, crashes and logs (default $FUZZ_SCRATCH/work);
#                            the corpus grows across runs
# Reproduce a crash: .build-fuzz/release/pvmigrate-fuzz TARGET CRASH_FILE
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
seconds=${1:-10}
shift || true
all_targets=(frame pages delta state elf control snapshot)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
case "$seconds" in ''|*[!0-9]*) echo "fuzz: SECONDS_PER_TARGET must be a whole number, got '$seconds'" >&2; exit 2;; esac

scratch=${FUZZ_SCRATCH:-.build-fuzz}
work=${FUZZ_WORK:-$scratch/work}
bin="$scratch/release/pvmigrate-fuzz"

if [ $build -eq 1 ]; then
    echo "==> building the fuzz harnesses (swift build --package-path Fuzz, -sanitize=fuzzer,address)"
    # lld: ld.gold aborts with an internal error linking this binary. -enable-testing: the
    # harnesses reach internal decoders (@testable import), e.g. PVInterface.State.
    if ! swift build --package-path Fuzz -c release --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing \
        -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld 2>&1 | grep -v "Cannot export local symbol"; then
        echo "fuzz: FAILED: the harnesses did not build" >&2
        exit 1
    fi
fi
[ -x "$bin" ] || { echo "fuzz: FAILED: $bin is missing (build first)" >&2; exit 1; }

mkdir -p "$work/crashes" "$work/logs"
rm -rf "$work/seeds"
"$bin" seeds "$work/seeds" || { echo "fuzz: FAILED: writing the seed corpora" >&2; exit 1; }

# libFuzzer handles the crash itself; Swift's backtracer would take seconds per crash.
export SWIFT_BACKTRACE=enable=no
total_runs=0
total_crashes=0
for t in "${targets[@]}"; do
    case "$t" in
        pages) max_len=20000 ;;   # a raw page is 4096 bytes plus the table
        elf) max_len=8192 ;;
        *) max_len=4096 ;;
    esac
    mkdir -p "$work/corpus/$t"
    dirs=("$work/corpus/$t" "$work/seeds/$t")
    # Committed inputs: each crash found so far, kept as a regression seed.
    [ -d "Fuzz/Corpus/$t" ] && dirs+=("Fuzz/Corpus/$t")
    log="$work/logs/$t.log"
    "$bin" "$t" -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 \
        -artifact_prefix="$work/crashes/$t-" -rss_limit_mb=4096 "${dirs[@]}" >"$log" 2>&1
    status=$?
    runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+' | tail -1)
    # After a crash libFuzzer prints no final stats: take the last progress line.
    [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1)
    runs=${runs:-0}
    crashes=0
    if [ $status -ne 0 ]; then
        crashes=1
        echo "fuzz: $t: CRASH (exit $status); input: $(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | cut -d' ' -f5)"
        grep -E "invariant violated|ERROR: AddressSanitizer|Fatal error|SUMMARY" "$log" | cut -c1-400 | head -5 | sed 's/^/  /'
    fi
    echo "fuzz: $t: $runs executions in ${seconds} s, $crashes crashes (log: $log)"
    total_runs=$((total_runs + runs))
    total_crashes=$((total_crashes + crashes))
done
echo "fuzz: ${#targets[@]} targets, $total_runs executions, $total_crashes crashes"
[ $total_crashes -eq 0 ]
