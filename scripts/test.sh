#!/usr/bin/env bash
# Runs pgshard's whole test suite against real PostgreSQL servers that the tests start themselves,
# then every fuzz target briefly (scripts/fuzz.sh; PGSHARD_FUZZ_SECONDS per target, 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
fuzz_seconds=${PGSHARD_FUZZ_SECONDS:-8}
if [ "$fuzz_seconds" != 0 ]; then
    fuzz_status=0
    PGSHARD_FUZZ_BUILD=${PGSHARD_FUZZ_BUILD:-dev} ./scripts/fuzz.sh "$fuzz_seconds" || fuzz_status=$?
    if [ "$fuzz_status" = 2 ]; then
        echo "pgshard: the fuzz targets could not be built (see above); nothing was fuzzed." >&2
        status=1
    elif [ "$fuzz_status" != 0 ]; then
        echo "pgshard: FUZZING FOUND A CRASH: the input is under fuzz/artifacts/ (path above)." >&2
        echo "pgshard: fix it and add the input as a #[test] beside the code it broke." >&2
        status=1
    fi
fi
exit "$status"
