#!/usr/bin/env bash
# Runs pgshard's whole test suite against real PostgreSQL servers that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec cargo nextest run --no-fail-fast "$@"
