#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each one for a bounded time, one after the other,
# printing how many inputs each survived. Exits 1 on the first crash, leaving its input under
# fuzz/artifacts/<target>/ (the path is printed), and 2 when the targets cannot be built (a
# fuzz/Cargo.lock that no longer matches pgshard's dependencies, a compile error).
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]     (default: 10 s, every target)
#   CI runs it briefly from scripts/test.sh; long runs: scripts/fuzz.sh 600
#
# Built with plain cargo on the stable toolchain: the targets link libFuzzer (libfuzzer-sys builds
# it from C++), and rustc's stable -C flags add the SanitizerCoverage instrumentation libFuzzer
# steers by. No AddressSanitizer (that needs nightly -Z flags): pgshard is safe Rust apart from the
# libc collation calls, so it would find little while making the build and every run slower.
# Panics, overflows (debug assertions stay on in every build) and broken invariants (the targets'
# asserts) are what these targets look for. cargo-fuzz is not needed; if you have it,
# `cargo fuzz run --sanitizer none <target>` in fuzz/ runs the same targets.
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

export CARGO_TERM_COLOR=never
# Instrument only what runs in the target: an explicit --target keeps these flags away from build
# scripts and proc-macros, which run on the host while building.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# PGSHARD_FUZZ_BUILD=dev (what CI uses) builds unoptimised: a few minutes less to build on 2 cores,
# fewer executions per second; long runs want the default optimised build.
if [ "${PGSHARD_FUZZ_BUILD:-release}" = dev ]; then
    profile_flag=()
    profile_dir=debug
else
    profile_flag=(--release)
    profile_dir=release
fi
cd fuzz

start=$(date +%s)
# --locked: the fuzz build uses exactly the committed fuzz/Cargo.lock (and never rewrites it).
if ! cargo metadata --locked --format-version 1 >/dev/null 2>&1; then
    echo "fuzz: fuzz/Cargo.lock does not match the crates pgshard now depends on." >&2
    echo "fuzz: run '(cd fuzz && cargo metadata --format-version 1 >/dev/null)' and commit fuzz/Cargo.lock." >&2
    exit 2
fi
# Exit 2: the fuzz targets could not be built (not a crash).
cargo build --locked --bins --target "$host" "${profile_flag[@]}" || exit 2
echo "fuzz: build took $(($(date +%s) - start)) s"
bin_dir="target/$host/$profile_dir"

mkdir -p target/fuzz-logs
failed=""
for t in "${targets[@]}"; do
    # New inputs go to a working corpus under target/; the committed seeds are only read.
    work="target/fuzz-corpus/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$work" "corpus/$t"
    status=0
    mkdir -p "artifacts/$t"
    "$bin_dir/$t" "$work" "corpus/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED after ${execs:-?} executions (exit $status); last lines of $log:"
        tail -n 40 "$log"
        artifact=$(grep -o 'fuzz/artifacts/[^ ]*\|artifacts/[^ ]*' "$log" | tail -1 || true)
        echo "fuzz: $t crash input: fuzz/${artifact#fuzz/}"
        echo "fuzz: reproduce with: cd fuzz && $bin_dir/$t ${artifact#fuzz/}  (after scripts/fuzz.sh builds it)"
        failed="$failed $t"
        break
    fi
    echo "fuzz: $t survived ${execs:-?} executions in ${seconds} s"
done

if [ -n "$failed" ]; then
    echo "fuzz: crash found in:$failed" >&2
    exit 1
fi
