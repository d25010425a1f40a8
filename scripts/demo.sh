#!/usr/bin/env bash
# Starts ten Postgres shards, a catalog and pgshard on 127.0.0.1:6432; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec cargo run --quiet --release -- demo "$@"
