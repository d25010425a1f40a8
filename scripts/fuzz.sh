#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each one for a bounded time, one after the other,
# printing how many inputs each survived. Exits non-zero on the first crash, leaving its input
# under fuzz/artifacts/<target>/ (the path is printed).
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]     (default: 10 s, every target)
#   CI runs it briefly from scripts/test.sh; long runs: scripts/fuzz.sh 600
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags to rustc (-Z flags for
# SanitizerCoverage), which RUSTC_BOOTSTRAP=1 lets through. AddressSanitizer (-s address, the
# cargo-fuzz default) links on stable that way too, but pgshard is safe Rust apart from the libc
# collation calls, so it would find little while making the build and every execution slower:
# -s none. Panics, overflows (--debug-assertions) and broken invariants (the targets' asserts)
# are what these targets look for.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frontend_startup frontend_messages backend_messages router merge)
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# PGSHARD_FUZZ_BUILD=dev (what CI uses) builds unoptimised: a few minutes less to build on 2 cores,
# fewer executions per second; long runs want the default optimised build with debug assertions.
if [ "${PGSHARD_FUZZ_BUILD:-release}" = dev ]; then
    flags=(--dev --sanitizer none)
else
    flags=(--release --debug-assertions --sanitizer none)
fi
cd fuzz

start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz: build took $(($(date +%s) - start)) s"

mkdir -p target/fuzz-logs
failed=""
for t in "${targets[@]}"; do
    # New inputs go to a working corpus under target/; the committed seeds are only read.
    work="target/fuzz-corpus/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$work" "corpus/$t"
    status=0
    cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED after ${execs:-?} executions (exit $status); last lines of $log:"
        tail -n 40 "$log"
        artifact=$(grep -o 'fuzz/artifacts/[^ ]*\|artifacts/[^ ]*' "$log" | tail -1 || true)
        echo "fuzz: $t crash input: fuzz/${artifact#fuzz/}"
        echo "fuzz: reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t ${artifact#fuzz/}"
        failed="$failed $t"
        break
    fi
    echo "fuzz: $t survived ${execs:-?} executions in ${seconds} s"
done

if [ -n "$failed" ]; then
    echo "fuzz: crash found in:$failed" >&2
    exit 1
fi
