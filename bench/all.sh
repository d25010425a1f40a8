#!/usr/bin/env bash
# The performance table of the README in one invocation, with ratios: pgbench -S (simple,
# extended, prepared; c=8 and c=32) against one Postgres directly, through PgBouncer (transaction
# pooling) in front of it and through pgshard over two shards that each hold every row (the
# proxies' own cost per statement, as issue 14 measures it), and once more over ten shards;
# 10-shard inserts through pgshard against the same load sent straight to the shards; pgbench's
# TPC-B over ten shards against one Postgres. Targets alternate within each row; CPU per
# transaction of each proxy is read from /proc.
#
#   bench/all.sh [seconds-per-run=10] [scale=10]
#
# PROFILE=debug uses a debug build; PGSHARD_BIN=/path/to/pgshard uses that binary. Starts its
# own clusters (two shards, then ten) in a temp dir on free loopback ports and removes everything
# when done.
# PgBouncer comes from the `pgbouncer` package (installed by scripts/install-deps.sh with
# PGSHARD_BENCH=1); without it the PgBouncer column stays empty.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
SCALE=${2:-10}
PGSHARD_BENCH=1 ./scripts/install-deps.sh || true
. bench/lib.sh
if ! command -v pgbouncer >/dev/null 2>&1; then
    echo "pgbouncer is not installed (Debian: apt-get install pgbouncer); its column stays empty" >&2
fi

bench_workdir all

BOUNCER_PORT=$(free_port)
BOUNCER=0
command -v pgbouncer >/dev/null 2>&1 && BOUNCER=1
bouncer_pid() { pgrep -f "^pgbouncer -q $WORK/pgbouncer.ini" | head -1; }
# PgBouncer (when installed), transaction pooling, on $BOUNCER_PORT: its database `app` is
# database $2 of the instance on port $1.
start_bouncer_for() {
    [ "$BOUNCER" = 1 ] || return 0
    pgbouncer_config "$BOUNCER_PORT" 20 <<INI
app = host=127.0.0.1 port=$1 dbname=$2 user=pgshard password=pgshard
INI
    start_pgbouncer
    wait_port "$BOUNCER_PORT" app app app
}

echo "pgshard bench/all.sh: ${SECONDS_PER_RUN} s per run, scale $SCALE, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| workload | direct | PgBouncer | pgshard | pgshard / PgBouncer | pgshard / direct | CPU µs per tx PgBouncer / pgshard |"
echo "|---|---|---|---|---|---|---|"

# pgbench -S as issue 14 measures it, the proxies' own cost per statement: a two-shard pgshard
# cluster whose shards each hold all of pgbench's rows (so every answer is right whichever shard
# a key routes to), PgBouncer in front of shard 0 and shard 0 directly; 20 server connections
# per shard for pgshard and PgBouncer alike.
PROXY_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/two" --shards 2 --listen "127.0.0.1:$PROXY_PORT" >/dev/null
TWO_PORTS=$("$BIN" cluster status --dir "$WORK/two" --json |
    python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in sorted(json.load(sys.stdin), key=lambda i: i["shard"] if i.get("shard") is not None else -1) if i.get("shard") is not None))')
TWO0_PORT=$(echo "$TWO_PORTS" | awk '{print $1}')
for port in $TWO_PORTS; do
    PGPASSWORD=app pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
done
CONFIG=$WORK/two.toml
cp "$WORK/two/pgshard.toml" "$CONFIG"
sed -i "s/^size = .*/size = 20/" "$CONFIG"
printf '\n[[sharded_tables]]\nname = "pgbench_accounts"\nkey = "aid"\n' >> "$CONFIG"
start_proxy
start_bouncer_for "$TWO0_PORT" app
# One pgbench -S row: direct ($DIRECT_PORT, $DIRECT_DB as $DIRECT_USER), PgBouncer, pgshard
# ($1 = what the label adds, the rest pgbench's arguments).
select_row() {
    local label=$1 d b="" bcpu="" p pcpu
    shift
    d=$(PID_OF="" bench "$DIRECT_PORT" "$DIRECT_USER" "$DIRECT_USER" "$DIRECT_DB" "$@")
    if [ "$BOUNCER" = 1 ]; then
        b=$(PID_OF=$(bouncer_pid) bench "$BOUNCER_PORT" app app app "$@")
        bcpu=$(cpu)
    fi
    p=$(PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app "$@")
    pcpu=$(cpu)
    echo "| \`pgbench $*\`$label | $(fmt "$d") | $(fmt "$b") | $(fmt "$p") | $(ratio "$p" "$b") | $(ratio "$p" "$d") | ${bcpu:-—} / ${pcpu:-—} |"
}
DIRECT_PORT=$TWO0_PORT DIRECT_USER=app DIRECT_DB=app
for c in 8 32; do
    for mode in simple extended prepared; do
        select_row "" -S -M "$mode" -c "$c" -j 2
    done
done
stop_proxy
pkill -f "pgbouncer .*$WORK/pgbouncer.ini" 2>/dev/null || true
"$BIN" cluster down --dir "$WORK/two" >/dev/null 2>&1

# The rest over ten shards: pgbench's tables sharded as config/pgbench.toml shards them, plus the
# insert table, 20 server connections per shard. Database `direct` on shard 0's instance holds
# all of pgbench's rows: one Postgres.
pgbench_cluster 20 "$SCALE" <<TOML

[[sharded_tables]]
name = "bench_inserts"
key = "id"
TOML
export PGPASSWORD=pgshard
start_proxy
# The same tables through pgshard, each row on its shard.
pgbench_init_proxy "$SCALE"
PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app \
    -c 'CREATE TABLE bench_inserts (id bigint NOT NULL, payload text)' >/dev/null
# The same select-only load over ten shards (each row on its shard) against one Postgres holding
# them all: what spreading the rows over ten instances on the same two cores costs.
start_bouncer_for "$SHARD0_PORT" direct
DIRECT_PORT=$SHARD0_PORT DIRECT_USER=pgshard DIRECT_DB=direct
select_row ", ten shards" -S -M simple -c 8 -j 2
# Inserts over ten shards: pgshard (-M prepared -c 20) against ten pgbench runs at the shards
# directly (-c 2 each, all at once).
write_insert_script
d=$(direct_inserts)
p=$(PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app -M prepared -c 20 -j 2 -f "$WORK/insert.sql")
echo "| inserts, 10 shards, \`-M prepared -c 20\` vs 10 pgbench at the shards directly | $(fmt "$d") | — | $(fmt "$p") | — | $(ratio "$p" "$d") | — / $(cpu) |"

# TPC-B (pgbench's built-in script): ten shards through pgshard against one Postgres.
d=$(PID_OF="" bench "$SHARD0_PORT" pgshard pgshard direct -c 8 -j 2)
p=$(ALLOW_FAILED=1 PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app -c 8 -j 2)
failed=$(failed_of < "$WORK/pgbench.out")
echo "| pgbench TPC-B (built-in script, \`-c 8\`), 10 shards vs one Postgres | $(fmt "$d") | — | $(fmt "$p") | — | $(ratio "$p" "$d") | — / $(cpu) |"
echo
echo "TPC-B through pgshard: $failed failed transactions"
bank_invariant
