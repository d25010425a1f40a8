#!/usr/bin/env bash
# A read by a unique secondary column over ten shards, through its `[[lookups]]` table (one
# shard, after one lookup row read) against the scatter it replaces (all ten shards, merged):
#   lookup:  SELECT * FROM users WHERE email = 'u<id>@example.com'
#   scatter: SELECT * FROM users WHERE email = 'u<id>@example.com' || ''   (an expression: the
#            lookup cannot read it, so it goes to every shard, as every such read did before)
# Both find the same one row; `email` has an index on every shard. pgbench -M simple with
# --log; prints p50/p99 of each and the lookup/scatter ratio.
#
#   bench/lookup.sh [seconds-per-run=10] [rows=100000] [clients=1]
#
# PROFILE=debug uses a debug build (default release); PGSHARD_BIN=/path/to/pgshard uses that
# binary. Starts its own ten-shard cluster in a temp dir on free loopback ports and removes it
# when done.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
ROWS=${2:-100000}
CLIENTS=${3:-1}
. bench/lib.sh

bench_workdir lookup

PROXY_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/ten" --shards 10 --strategy hash --listen "127.0.0.1:$PROXY_PORT" >/dev/null
ports_of() { "$BIN" cluster status --dir "$1" --json | python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in json.load(sys.stdin) if i.get("shard") is not None))'; }
shard_port() { "$BIN" cluster status --dir "$1" --json | python3 -c "import json,sys; print([i['port'] for i in json.load(sys.stdin) if i.get('shard')==$2][0])"; }
CATALOG_URL=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["catalog"]["url"])' "$WORK/ten/pgshard.toml")
export PGPASSWORD=pgshard

# Each row on its shard (hash strategy); the lookup table made by the application's role, as
# README "Lookups" tells an operator to (so `app` owns it), and an index on email everywhere.
ROWS_SQL="SELECT g, 'user ' || g, 'u' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 second' FROM generate_series(1, $ROWS) g"
psql -X -At -F ' ' "$CATALOG_URL" -c "SELECT shard_id, coalesce(range_lower::text, 'NULL'), coalesce(range_upper::text, 'NULL') FROM shard_map WHERE version = (SELECT max(version) FROM shard_map_versions)" |
while read -r shard lower upper; do
    port=$(shard_port "$WORK/ten" "$shard")
    psql -X -q -h 127.0.0.1 -p "$port" -U pgshard app \
        -c "INSERT INTO users $ROWS_SQL WHERE ($lower::bigint IS NULL OR hashint8extended(g, 0) >= $lower::bigint) AND ($upper::bigint IS NULL OR hashint8extended(g, 0) < $upper::bigint)" \
        -c "CREATE INDEX ON users (email)" \
        -c "VACUUM ANALYZE users"
    PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$port" -U app app \
        -c "CREATE TABLE pgshard_lookup_users_email (value text PRIMARY KEY, key bigint NOT NULL)"
done

CONFIG=$WORK/pgshard.toml
cp "$WORK/ten/pgshard.toml" "$CONFIG"
cat >> "$CONFIG" <<TOML

[[lookups]]
table = "users"
column = "email"
TOML
"$BIN" lookup backfill --config "$CONFIG" | tail -1
for port in $(ports_of "$WORK/ten"); do
    psql -X -q -h 127.0.0.1 -p "$port" -U pgshard app -c "VACUUM ANALYZE pgshard_lookup_users_email"
done

RUST_LOG=warn "$BIN" serve --config "$CONFIG" &
PROXY_PID=$!
for _ in $(seq 100); do
    if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app -c 'select 1' >/dev/null 2>&1; then break; fi
    sleep 0.1
done
ONE=$(PGPASSWORD=app psql -X -At -h 127.0.0.1 -p "$PROXY_PORT" -U app app -c "SELECT user_id FROM users WHERE email = 'u7@example.com'")
[ "$ONE" = 7 ] || { echo "the lookup read found '$ONE', not user 7" >&2; exit 1; }

printf '\\set id random(1, %d)\nSELECT * FROM users WHERE email = '"'"'u:id@example.com'"'"';\n' "$ROWS" > "$WORK/lookup.sql"
printf '\\set id random(1, %d)\nSELECT * FROM users WHERE email = '"'"'u:id@example.com'"'"' || '"''"';\n' "$ROWS" > "$WORK/scatter.sql"

# p50 and p99 in ms of a pgbench --log (3rd field: latency in microseconds).
percentiles() {
    cat "$1".* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {
        p50=v[int(NR*0.50)+1]; p99=v[int(NR*0.99)+1]; printf "%d %.3f %.3f\n", NR, p50/1000, p99/1000 }'
}
run() { # name script
    rm -f "$WORK/log_$1".*
    PGPASSWORD=app pgbench -n -M simple -h 127.0.0.1 -p "$PROXY_PORT" -U app -c "$CLIENTS" -j 1 \
        -T "$SECONDS_PER_RUN" -f "$2" --log --log-prefix="$WORK/log_$1" app >/dev/null 2>&1
    percentiles "$WORK/log_$1"
}

echo "rows=$ROWS clients=$CLIENTS seconds=$SECONDS_PER_RUN profile=$PROFILE shards=10"
printf '%-8s %8s %10s %10s\n' read tx p50_ms p99_ms
read -r nl p50_l p99_l < <(run lookup "$WORK/lookup.sql")
read -r ns p50_s p99_s < <(run scatter "$WORK/scatter.sql")
printf '%-8s %8s %10s %10s\n' lookup "$nl" "$p50_l" "$p99_l"
printf '%-8s %8s %10s %10s\n' scatter "$ns" "$p50_s" "$p99_s"
printf 'ratio lookup/scatter: p50 %.2f  p99 %.2f\n' \
    "$(echo "scale=4; $p50_l / $p50_s" | bc)" "$(echo "scale=4; $p99_l / $p99_s" | bc)"
