#!/usr/bin/env bash
# Read-heavy load through pgshard over ten shards with one streaming replica each, in every
# read-your-writes mode, against a baseline in the same invocation that reads only from primaries.
# Prints, per mode: operations/s and the ratio to the baseline, the share of reads served by
# replicas, stale reads, and the p50/p99 latency of reads right after writes.
#
#   bench/replicas.sh [seconds-per-run=10] [clients=8] [write-share=0.1] [apply-delay-ms=0]
#
# PROFILE=debug uses a debug build (default release). Starts its own cluster in a temp dir on free
# loopback ports and removes it when done. Needs psycopg (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CLIENTS=${2:-8}
WRITE_SHARE=${3:-0.1}
APPLY_DELAY=${4:-0}
USERS=10000
. bench/lib.sh

bench_workdir replicas

PROXY_PORT=$(free_port)
DELAY_ARGS=()
if [ "$APPLY_DELAY" != 0 ]; then DELAY_ARGS=(--apply-delay-ms "$APPLY_DELAY"); fi
"$BIN" cluster up --dir "$WORK/c" --shards 10 --replicas 1 "${DELAY_ARGS[@]}" --strategy hash \
    --listen "127.0.0.1:$PROXY_PORT" >/dev/null
URL="postgresql://app:app@127.0.0.1:$PROXY_PORT/app"

start_proxy() { # read_from read_your_writes [lsn_wait_timeout_ms, default the config's]
    sed -e "s/^read_from = .*/read_from = \"$1\"/" -e "s/^read_your_writes = .*/read_your_writes = \"$2\"/" \
        -e "${3:+s/^lsn_wait_timeout_ms = .*/lsn_wait_timeout_ms = $3/}" \
        "$WORK/c/pgshard.toml" > "$WORK/run.toml"
    RUST_LOG=warn "$BIN" serve --config "$WORK/run.toml" &
    PROXY_PID=$!
    for _ in $(seq 100); do
        if psql -X -q "$URL" -c 'select 1' >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "pgshard did not start" >&2
    exit 1
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=; }

start_proxy primary lsn
for ((from = 1; from <= USERS; from += 500)); do
    values=$(python3 -c "print(','.join(f\"({i},'u{i}')\" for i in range($from, min($from + 500, $USERS + 1))))")
    psql -X -q "$URL" -c "INSERT INTO users (user_id, name) VALUES $values" >/dev/null
done
stop_proxy

printf '%-22s %10s %7s %9s %6s %12s %12s\n' mode "ops/s" ratio replicas stale "p50 ms (raw)" "p99 ms (raw)"
BASE=
# The last row: lsn with reads waiting up to 1 s for their replica instead of going to the primary.
for run in "primary off" "replicas off" "replicas pin" "replicas lsn" "replicas lsn 1000"; do
    set -- $run
    start_proxy "$1" "$2" "${3:-}"
    out=$(python3 bench/replicas_load.py "$URL" "$CLIENTS" "$SECONDS_PER_RUN" "$USERS" "$WRITE_SHARE")
    stop_proxy
    ops=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["ops_per_s"]))' "$out")
    [ -z "$BASE" ] && BASE=$ops
    python3 - "$out" "$1/$2${3:+ wait $3}" "$BASE" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); base = float(sys.argv[3])
print(f"{sys.argv[2]:<22} {r['ops_per_s']:>10.0f} {r['ops_per_s'] / base:>7.2f} "
      f"{100 * r['replica_share']:>8.0f}% {r['stale']:>6} "
      f"{r['after_write_p50_ms']:>12.2f} {r['after_write_p99_ms']:>12.2f}")
PY
done
