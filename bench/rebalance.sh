#!/usr/bin/env bash
# Online rebalancing under load: ten hash shards holding USERS users grow to eleven while pgbench
# updates random users through pgshard. Prints rows/s copied, the longest cut-over hold, and the
# clients' p50/p99 latency during the move against a run without a move (the baseline), then the
# same by the job's phase the updates ended in (the job's state is read every 50 ms over one
# catalog session, so the watching costs the clients next to nothing).
#
#   bench/rebalance.sh [users=1000000] [clients=8]
#
# PROFILE=debug uses a debug build (default release). STEPS_AT_ONCE=N sets the proxy's
# `rebalance.steps_at_once` (steps copying, comparing or cleaning up together). Starts its own
# cluster (eleven shards, the map over the first ten) in a temp dir on free loopback ports and
# removes it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
CLIENTS=${2:-8}
. bench/lib.sh

bench_workdir rebalance

PROXY_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/c" --shards 11 --strategy hash --listen "127.0.0.1:$PROXY_PORT" >/dev/null
CONFIG=$WORK/c/pgshard.toml
if [ -n "${STEPS_AT_ONCE:-}" ]; then
    sed -i "/^steps_at_once = /d; s/^\[rebalance\]\$/[rebalance]\nsteps_at_once = $STEPS_AT_ONCE/" "$CONFIG"
fi
shard_port() { "$BIN" cluster status --dir "$WORK/c" --json | python3 -c "import json,sys; print([i['port'] for i in json.load(sys.stdin) if i.get('shard')==$1 and i.get('role')=='primary'][0])"; }
CATALOG_URL=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["catalog"]["url"])' "$CONFIG")
export PGPASSWORD=pgshard

RUST_LOG=${RUST_LOG:-warn} "$BIN" serve --config "$CONFIG" &
PROXY_PID=$!
for _ in $(seq 100); do
    if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app -c 'select 1' >/dev/null 2>&1; then break; fi
    sleep 0.1
done
job_state() { psql -X -At "$CATALOG_URL" -c "SELECT state FROM rebalance_jobs WHERE job_id = $1"; }
wait_job() {
    while :; do
        s=$(job_state "$1")
        case $s in done) return 0 ;; cancelled|failed) echo "job $1 $s" >&2; "$BIN" rebalance status --config "$CONFIG" "$1" >&2; exit 1 ;; esac
        sleep 0.2
    done
}
last_job() { psql -X -At "$CATALOG_URL" -c "SELECT max(job_id) FROM rebalance_jobs"; }

# The map over the first ten shards: draining the empty shard 10 is a job that moves no rows.
"$BIN" rebalance start --config "$CONFIG" drain 10 >/dev/null
wait_job "$(last_job)"

# USERS users, each written straight onto its shard under the current map.
psql -X -At -F ' ' "$CATALOG_URL" -c "SELECT shard_id, coalesce(range_lower::text, 'NULL'), coalesce(range_upper::text, 'NULL') FROM shard_map WHERE version = (SELECT max(version) FROM shard_map_versions)" |
while read -r shard lower upper; do
    psql -X -q -h 127.0.0.1 -p "$(shard_port "$shard")" -U pgshard app \
        -c "INSERT INTO users SELECT g, 'user ' || g, 'u' || g || '@example.com', now() FROM generate_series(1, $USERS) g WHERE ($lower::bigint IS NULL OR hashint8extended(g, 0) >= $lower::bigint) AND ($upper::bigint IS NULL OR hashint8extended(g, 0) < $upper::bigint)" \
        -c "VACUUM ANALYZE users"
done

cat > "$WORK/update.sql" <<SQL
\set uid random(1, $USERS)
UPDATE users SET name = 'n' || :uid WHERE user_id = :uid;
SQL
percentiles() {
    cat "$1".* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {
        p50=v[int(NR*0.50)+1]; p99=v[int(NR*0.99)+1]; printf "%d %.3f %.3f\n", NR, p50/1000, p99/1000 }'
}
load() { # name seconds; run in a subshell: pgbench replaces it, so $! is pgbench's pid
    rm -f "$WORK/log_$1".*
    # --default-signal: a script run in the background starts its jobs with SIGINT ignored, and
    # pgbench is stopped with SIGINT.
    exec env --default-signal=INT PGPASSWORD=app pgbench -n -M extended -h 127.0.0.1 -p "$PROXY_PORT" -U app -c "$CLIENTS" -j 2 \
        -T "$2" -f "$WORK/update.sql" --log --log-prefix="$WORK/log_$1" app >/dev/null 2>&1
}

# Both measured runs start from the same tables: vacuumed, so that an autovacuum set off by the
# earlier run's dead rows does not land in one run only. Autovacuum passes during the move are
# counted and printed.
settle() {
    for shard in $(seq 0 10); do
        psql -X -q -h 127.0.0.1 -p "$(shard_port "$shard")" -U pgshard app -c "VACUUM ANALYZE users"
    done
}
autovacuums() {
    for shard in $(seq 0 10); do
        psql -X -At -h 127.0.0.1 -p "$(shard_port "$shard")" -U pgshard app \
            -c "SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'users'"
    done | awk '{s += $1} END {print s + 0}'
}

settle
(load baseline 10)
read -r BASE_N BASE_P50 BASE_P99 < <(percentiles "$WORK/log_baseline")

settle
AUTOVACUUMS_BEFORE=$(autovacuums)
(load move 3600) &
LOAD_PID=$!
sleep 2
START=$(date +%s.%N)
"$BIN" rebalance start --config "$CONFIG" add-shard 10 >/dev/null
JOB=$(last_job)
# The job's state every 50 ms from one catalog session (a psql per poll cost the clients more CPU
# than some of the job's phases): epoch seconds and state, a line per look.
echo "SELECT extract(epoch FROM clock_timestamp()), state FROM rebalance_jobs WHERE job_id = $JOB \\watch 0.05" |
    psql -X -q -At -F ' ' "$CATALOG_URL" > "$WORK/watch" 2>/dev/null &
WATCH_PID=$!
job_ended() { tail -n 1 "$WORK/watch" | grep -qE ' (done|cancelled|failed)$'; }
until job_ended; do sleep 0.1; done
kill "$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
# Each change of state, and when the copy ended and the job did.
awk '$2 != last { print; last = $2 }' "$WORK/watch" > "$WORK/phases"
COPIED=$(awk '$2 != "pending" && $2 != "copying" { print $1; exit }' "$WORK/phases")
DONE=$(awk 'END { print $1 }' "$WORK/phases")
STATE=$(awk 'END { print $2 }' "$WORK/phases")
if [ "$STATE" != done ]; then
    echo "job $JOB $STATE" >&2
    "$BIN" rebalance status --config "$CONFIG" "$JOB" >&2
    exit 1
fi
kill -INT "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true
read -r MOVE_N MOVE_P50 MOVE_P99 < <(percentiles "$WORK/log_move")
AUTOVACUUMS=$(( $(autovacuums) - AUTOVACUUMS_BEFORE ))

ROWS=$(psql -X -At "$CATALOG_URL" -c "SELECT sum(rows_deleted) FROM rebalance_steps WHERE job_id = $JOB")
HOLD=$(psql -X -At "$CATALOG_URL" -c "SELECT longest_hold_ms FROM rebalance_jobs WHERE job_id = $JOB")
"$BIN" verify --config "$CONFIG" >/dev/null || { echo "verify found misplaced rows" >&2; exit 1; }
python3 - "$USERS" "$CLIENTS" "$ROWS" "$START" "$COPIED" "$DONE" "$HOLD" "$BASE_N" "$BASE_P50" "$BASE_P99" "$MOVE_N" "$MOVE_P50" "$MOVE_P99" <<'PY'
import sys
users, clients, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
start, copied, done = map(float, sys.argv[4:7])
hold = sys.argv[7]
bn, b50, b99, mn, m50, m99 = sys.argv[8:14]
print(f"{users} users, 10 -> 11 hash shards, {clients} pgbench clients updating random users")
print(f"moved {rows} rows: copy + catch-up {copied - start:.1f} s ({rows / max(copied - start, 1e-9):.0f} rows/s), whole job {done - start:.1f} s")
print(f"longest cut-over hold: {hold} ms")
print(f"client latency  baseline: p50 {b50} ms p99 {b99} ms ({bn} updates)")
print(f"                during move: p50 {m50} ms p99 {m99} ms ({mn} updates), p99 ratio {float(m99) / float(b99):.2f}")
PY
echo "autovacuum/autoanalyze passes on users during the move run (all shards): $AUTOVACUUMS"
# Updates of the move run by the job's phase they ended in (before the job, each state, after it):
# how many, and their p50/p99 against the baseline's p99.
python3 - "$WORK/phases" "$START" "$BASE_P99" "$WORK"/log_move.* <<'PY'
import fileinput, sys
phases = [(float(t), s) for t, s in (l.split() for l in open(sys.argv[1]))]
phases.insert(0, (float(sys.argv[2]), "starting"))
base_p99 = float(sys.argv[3])
by_phase = {}
for line in fileinput.input(sys.argv[4:]):
    f = line.split()
    if len(f) < 6:  # a line cut short when pgbench was stopped
        continue
    latency_ms, end = int(f[2]) / 1000, int(f[4]) + int(f[5]) / 1e6
    name = "before the job"
    for t, s in phases:
        if end >= t:
            name = s
    by_phase.setdefault(name, []).append(latency_ms)
order = ["before the job", "starting"] + [s for _, s in phases[1:]]
began = {s: t - phases[0][0] for t, s in reversed(phases)}
print("by phase (from s after the start):   updates    p50 ms    p99 ms   p99 / baseline p99")
for name in dict.fromkeys(order):
    v = sorted(by_phase.get(name, []))
    if v:
        p50, p99 = v[int(len(v) * 0.5)], v[min(int(len(v) * 0.99), len(v) - 1)]
        since = f"{began[name]:+.2f}" if name in began else ""
        print(f"  {name:<14} {since:>7} {len(v):>17} {p50:>9.3f} {p99:>9.3f}   {p99 / base_p99:.2f}")
PY
