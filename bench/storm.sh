#!/usr/bin/env bash
# Connection storm: CLIENTS clients log in at once to pgshard (two shards behind it) and, in the
# same invocation, to PgBouncer in transaction mode in front of one shard (the baseline). Prints,
# per proxy: its RSS at start, with every client idle and while every client runs SELECT 1 in a
# loop (peak), its VmHWM, the login latency p50/p99 and queries/s, and pgshard's ratios to
# PgBouncer, and the idle RSS per client. Targets: pgshard idle RSS at 1000 clients <= 64 MiB,
# at 10,000 <= 100 MiB.
#
#   bench/storm.sh [clients=1000] [active-seconds=10]
#
# LOGINS_AT_ONCE=N keeps at most N logins in flight (default: 500 above 1000 clients, else all at
# once): 1,000 SCRAM logins at once take 9-16 s on a 2-core machine, so 10,000 would outlast both
# proxies' 60 s login timeouts.
# Login latency is then per login, not for the whole storm.
#
# PROFILE=debug uses a debug build (default release). Starts its own cluster in a temp dir on free
# loopback ports and removes it when done. Needs psycopg and pgbouncer
# (PGSHARD_BENCH=1 scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-1000}
ACTIVE_SECONDS=${2:-10}
if [ "$CLIENTS" -gt 1000 ]; then LOGINS_AT_ONCE=${LOGINS_AT_ONCE:-500}; fi
LOGINS_AT_ONCE=${LOGINS_AT_ONCE:-0}
. bench/lib.sh
ulimit -n "$(ulimit -Hn)"

bench_workdir storm

PROXY_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/c" --shards 2 --strategy hash --listen "127.0.0.1:$PROXY_PORT" >/dev/null
SHARD0_PORT=$("$BIN" cluster status --dir "$WORK/c" --json | python3 -c 'import json,sys; print([i["port"] for i in json.load(sys.stdin) if i["shard"]==0][0])')

wait_url() {
    for _ in $(seq 100); do
        if psql -X -q "$1" -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers at $1" >&2
    exit 1
}

sed -e "s/^max_clients = .*/max_clients = $((CLIENTS + 100))/" "$WORK/c/pgshard.toml" > "$WORK/run.toml"
RUST_LOG=warn "$BIN" serve --config "$WORK/run.toml" &
PROXY_PID=$!
PGSHARD_URL="postgresql://app:app@127.0.0.1:$PROXY_PORT/app?sslmode=disable"
wait_url "$PGSHARD_URL"

printf '%-10s %9s %9s %10s %8s %10s %10s %6s %10s\n' proxy "start MiB" "idle MiB" "active MiB" "HWM MiB" "login p50" "login p99" failed "queries/s"
report() { # name json
    python3 - "$1" "$2" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"{sys.argv[1]:<10} {r['start_rss_mib']:>9.1f} {r['idle_rss_mib']:>9.1f} {r['active_rss_mib']:>10.1f} "
      f"{r['hwm_mib']:>8.1f} {r['login_p50_ms']:>8.1f}ms {r['login_p99_ms']:>8.1f}ms {r['failed_logins']:>6} "
      f"{r['queries_per_s']:>10.0f}")
if r["first_error"]:
    print(f"  first failed login: {r['first_error']}")
if r.get("failed_queries"):
    print(f"  {r['failed_queries']} failed SELECT 1 while active; first: {r['first_query_error']}")
PY
}
PGS=$(python3 bench/storm_load.py "$PGSHARD_URL" "$PROXY_PID" "$CLIENTS" "$ACTIVE_SECONDS" "$LOGINS_AT_ONCE")
kill "$PROXY_PID"
wait "$PROXY_PID" 2>/dev/null || true
PROXY_PID=
report pgshard "$PGS"

if ! command -v pgbouncer >/dev/null 2>&1; then
    echo "no baseline: pgbouncer is not installed (PGSHARD_BENCH=1 scripts/install-deps.sh)"
    exit 0
fi
pgbouncer_config "$BOUNCER_PORT" 20 $((CLIENTS + 100)) <<INI
app = host=127.0.0.1 port=$SHARD0_PORT dbname=app user=pgshard password=pgshard
INI
if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "ulimit -n $(ulimit -Hn); pgbouncer -d -q $WORK/pgbouncer.ini"
else
    pgbouncer -d -q "$WORK/pgbouncer.ini"
fi
BOUNCER_URL="postgresql://app:app@127.0.0.1:$BOUNCER_PORT/app?sslmode=disable"
wait_url "$BOUNCER_URL"
PGB=$(python3 bench/storm_load.py "$BOUNCER_URL" "$(cat "$WORK/pgbouncer.pid")" "$CLIENTS" "$ACTIVE_SECONDS" "$LOGINS_AT_ONCE")
report pgbouncer "$PGB"
python3 - "$PGS" "$PGB" "$CLIENTS" <<'PY'
import json, sys
s, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = lambda k: s[k] / b[k] if b[k] else float("nan")
print(f"pgshard/pgbouncer: idle RSS {ratio('idle_rss_mib'):.2f}x, active RSS {ratio('active_rss_mib'):.2f}x, "
      f"login p50 {ratio('login_p50_ms'):.2f}x, p99 {ratio('login_p99_ms'):.2f}x, queries/s {ratio('queries_per_s'):.2f}x")
clients = int(sys.argv[3])
per = lambda r: 1024 * (r["idle_rss_mib"] - r["start_rss_mib"]) / clients
print(f"idle RSS per client (idle - start): pgshard {per(s):.1f} KiB, pgbouncer {per(b):.1f} KiB, "
      f"ratio {per(s) / per(b) if per(b) else float('nan'):.2f}x")
# Issue 14: 10,000 idle clients in 100 MiB; 1,000 in 64 MiB.
target = 100 if clients >= 10000 else 64
print(f"pgshard idle RSS with {clients} clients (target <= {target} MiB): "
      f"{'met' if s['idle_rss_mib'] <= target else 'MISSED'} ({s['idle_rss_mib']:.1f} MiB)")
PY
