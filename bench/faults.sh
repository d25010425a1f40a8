#!/usr/bin/env bash
# Latency of healthy shards' clients while another shard is killed (`pg_ctl stop -m immediate`)
# and restarted in a loop, against a baseline run without faults in the same invocation.
# Prints, per run: healthy operations/s, p50/p99 in ms and their ratio to the baseline, errors
# seen by healthy clients (should be 0), kill/restart cycles, and the errors of a client of the
# killed shard with the slowest time to its error.
#
#   bench/faults.sh [seconds-per-run=10] [clients=8] [shards=4] [max-cycles=20]
#
# PROFILE=debug uses a debug build (default release). Starts its own cluster in a temp dir on free
# loopback ports and removes it when done. Needs psycopg (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CLIENTS=${2:-8}
SHARDS=${3:-4}
MAX_CYCLES=${4:-20}
USERS=4000
VICTIM=shard1
. bench/lib.sh

bench_workdir faults

PROXY_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/c" --shards "$SHARDS" --strategy hash \
    --listen "127.0.0.1:$PROXY_PORT" >/dev/null
URL="postgresql://app:app@127.0.0.1:$PROXY_PORT/app"
# A dead shard is refused at once; a short connect timeout only bounds the rare half-open case.
sed -e 's/^connect_timeout_ms = .*/connect_timeout_ms = 1000/' "$WORK/c/pgshard.toml" > "$WORK/run.toml"
RUST_LOG=error "$BIN" serve --config "$WORK/run.toml" &
PROXY_PID=$!
for _ in $(seq 100); do
    if psql -X -q "$URL" -c 'select 1' >/dev/null 2>&1; then break; fi
    sleep 0.1
done

for ((from = 1; from <= USERS; from += 500)); do
    values=$(python3 -c "print(','.join(f\"({i},'u{i}')\" for i in range($from, min($from + 500, $USERS + 1))))")
    psql -X -q "$URL" -c "INSERT INTO users (user_id, name) VALUES $values" >/dev/null
done
VICTIM_PORT=$("$BIN" cluster status --dir "$WORK/c" --json |
    python3 -c "import json,sys; print(next(i['port'] for i in json.load(sys.stdin) if i['name'] == '$VICTIM'))")
psql -X -qAt "postgresql://pgshard:pgshard@127.0.0.1:$VICTIM_PORT/app" \
    -c 'SELECT user_id FROM users' > "$WORK/victim.keys"
seq 1 "$USERS" | grep -vxFf "$WORK/victim.keys" > "$WORK/healthy.keys"

printf '%-9s %8s %8s %8s %6s %6s %7s %7s %7s %9s\n' run "ops/s" "p50 ms" "p99 ms" "p50 x" "p99 x" errors cycles "v.errs" "v.max ms"
BASE=
for run in baseline faults; do
    EXTRA=()
    if [ "$run" = faults ]; then EXTRA=("$WORK/c/$VICTIM" "$MAX_CYCLES"); fi
    out=$(python3 bench/faults_load.py "$URL" "$CLIENTS" "$SECONDS_PER_RUN" \
        "$WORK/healthy.keys" "$WORK/victim.keys" "${EXTRA[@]}")
    [ -z "$BASE" ] && BASE=$out
    python3 - "$out" "$run" "$BASE" <<'PY'
import json, sys
r, b = json.loads(sys.argv[1]), json.loads(sys.argv[3])
print(f"{sys.argv[2]:<9} {r['ops_per_s']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
      f"{r['p50_ms'] / b['p50_ms']:>6.2f} {r['p99_ms'] / b['p99_ms']:>6.2f} "
      f"{r['healthy_errors']:>7} {r['cycles']:>7} {r['victim_errors']:>7} "
      f"{r['victim_slowest_error_ms']:>9.1f}")
if r["first_healthy_error"]:
    print(f"  first healthy-client error: {r['first_healthy_error']}")
PY
done
