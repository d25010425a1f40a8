#!/usr/bin/env bash
# Keyless reads merged over ten shards vs. the same statements on one Postgres holding all rows:
#   SELECT count(*) FROM users
#   SELECT * FROM users ORDER BY created_at DESC LIMIT 20
# pgbench -f scripts with --log; prints p50/p99 latency of each and the ten-shard/one-shard ratio
# (target: p50 ratio <= 1.5).
#
#   bench/scatter.sh [seconds-per-run=10] [rows=100000] [clients=1]
#
# PROFILE=debug uses a debug build (default release). Starts its own clusters (ten shards behind
# pgshard, and one plain shard) in a temp dir on free loopback ports and removes them when done.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
ROWS=${2:-100000}
CLIENTS=${3:-1}
. bench/lib.sh

bench_workdir scatter

PROXY_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/ten" --shards 10 --strategy hash --listen "127.0.0.1:$PROXY_PORT" >/dev/null
"$BIN" cluster up --dir "$WORK/one" --shards 1 --listen "127.0.0.1:$(free_port)" >/dev/null
ports_of() { "$BIN" cluster status --dir "$1" --json | python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in json.load(sys.stdin) if i.get("shard") is not None))'; }
shard_port() { "$BIN" cluster status --dir "$1" --json | python3 -c "import json,sys; print([i['port'] for i in json.load(sys.stdin) if i.get('shard')==$2][0])"; }
CATALOG_URL=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["catalog"]["url"])' "$WORK/ten/pgshard.toml")
ONE_PORT=$(ports_of "$WORK/one" | awk '{print $1}')
export PGPASSWORD=pgshard

# The same rows: all of them on the one shard; each on its own shard of the ten (hash strategy:
# the shard whose [lower, upper) range holds hashint8extended(user_id, 0)).
ROWS_SQL="SELECT g, 'user ' || g, 'u' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 second' FROM generate_series(1, $ROWS) g"
psql -X -q -h 127.0.0.1 -p "$ONE_PORT" -U pgshard app -c "INSERT INTO users $ROWS_SQL" -c "VACUUM ANALYZE users"
psql -X -At -F ' ' "$CATALOG_URL" -c "SELECT shard_id, coalesce(range_lower::text, 'NULL'), coalesce(range_upper::text, 'NULL') FROM shard_map WHERE version = (SELECT max(version) FROM shard_map_versions)" |
while read -r shard lower upper; do
    port=$(shard_port "$WORK/ten" "$shard")
    psql -X -q -h 127.0.0.1 -p "$port" -U pgshard app \
        -c "INSERT INTO users $ROWS_SQL WHERE ($lower::bigint IS NULL OR hashint8extended(g, 0) >= $lower::bigint) AND ($upper::bigint IS NULL OR hashint8extended(g, 0) < $upper::bigint)" \
        -c "VACUUM ANALYZE users"
done

RUST_LOG=warn "$BIN" serve --config "$WORK/ten/pgshard.toml" &
PROXY_PID=$!
for _ in $(seq 100); do
    if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app -c 'select 1' >/dev/null 2>&1; then break; fi
    sleep 0.1
done
TEN=$(PGPASSWORD=app psql -X -At -h 127.0.0.1 -p "$PROXY_PORT" -U app app -c "SELECT count(*) FROM users")
ONE=$(psql -X -At -h 127.0.0.1 -p "$ONE_PORT" -U pgshard app -c "SELECT count(*) FROM users")
[ "$TEN" = "$ONE" ] || { echo "row counts differ: ten shards $TEN, one shard $ONE" >&2; exit 1; }

echo 'SELECT count(*) FROM users;' > "$WORK/count.sql"
echo 'SELECT * FROM users ORDER BY created_at DESC LIMIT 20;' > "$WORK/latest.sql"

# p50 and p99 in ms of a pgbench --log (4th field: latency in microseconds).
percentiles() {
    cat "$1".* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {
        p50=v[int(NR*0.50)+1]; p99=v[int(NR*0.99)+1]; printf "%d %.3f %.3f\n", NR, p50/1000, p99/1000 }'
}
run() { # name port user password script
    rm -f "$WORK/log_$1".*
    PGPASSWORD=$4 pgbench -n -M simple -h 127.0.0.1 -p "$2" -U "$3" -c "$CLIENTS" -j 1 \
        -T "$SECONDS_PER_RUN" -f "$5" --log --log-prefix="$WORK/log_$1" app >/dev/null 2>&1
    percentiles "$WORK/log_$1"
}

echo "rows=$ROWS clients=$CLIENTS seconds=$SECONDS_PER_RUN profile=$PROFILE"
printf '%-8s %-10s %8s %10s %10s\n' query target tx p50_ms p99_ms
for q in count latest; do
    read -r n1 p50_1 p99_1 < <(run "one_$q" "$ONE_PORT" pgshard pgshard "$WORK/$q.sql")
    read -r n10 p50_10 p99_10 < <(run "ten_$q" "$PROXY_PORT" app app "$WORK/$q.sql")
    printf '%-8s %-10s %8s %10s %10s\n' "$q" one-shard "$n1" "$p50_1" "$p99_1"
    printf '%-8s %-10s %8s %10s %10s\n' "$q" ten-shards "$n10" "$p50_10" "$p99_10"
    printf '%-8s ratio ten/one: p50 %.2f  p99 %.2f\n' "$q" \
        "$(echo "scale=4; $p50_10 / $p50_1" | bc)" "$(echo "scale=4; $p99_10 / $p99_1" | bc)"
done
