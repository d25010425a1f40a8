#!/usr/bin/env bash
# Issue 14's insert row on its own: single-row inserts into a table hash-sharded over ten shards,
# pgbench -M prepared -c 20 -j 2 through pgshard against the same load sent straight to the
# shards (ten pgbench runs at once, -c 2 each, one per shard), alternating within each round:
# TPS, the ratio and the proxy's CPU µs per transaction (from /proc). On a machine of few cores
# the proxy's CPU per insert is what competes with Postgres.
#
#   bench/inserts.sh [seconds-per-run=10] [rounds=2]
#
# PROFILE=debug uses a debug build; PGSHARD_BIN=/path/to/pgshard uses that binary.
# BASELINE_BIN=/path/to/pgshard also runs that binary in each round (one proxy at a time, on the
# same cluster and port), with this binary's TPS as a ratio of it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-2}
. bench/lib.sh

bench_workdir inserts
# pgbench's own tables at scale 1 come with the cluster helper; only bench_inserts is used here.
pgbench_cluster 20 1 <<TOML

[[sharded_tables]]
name = "bench_inserts"
key = "id"
TOML
start_proxy
PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app \
    -c 'CREATE TABLE bench_inserts (id bigint NOT NULL, payload text)' >/dev/null
write_insert_script

# One pgbench run through the proxy binary $1 (restarted on it): sets TPS and CPU (µs per
# transaction). In this shell, not a subshell: the proxy is its child.
through() {
    stop_proxy
    start_proxy "$1"
    TPS=$(PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app -M prepared -c 20 -j 2 -f "$WORK/insert.sql")
    CPU=$(cpu)
}

echo "pgshard bench/inserts.sh: ${SECONDS_PER_RUN} s per run, 10 shards, -M prepared -c 20, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "pgshard: $BIN${BASELINE_BIN:+; baseline: $BASELINE_BIN}"
echo
if [ -n "${BASELINE_BIN:-}" ]; then
    echo "| round | direct | baseline | pgshard | baseline / direct | pgshard / direct | pgshard / baseline | CPU µs per tx baseline / pgshard |"
    echo "|---|---|---|---|---|---|---|---|"
else
    echo "| round | direct | pgshard | pgshard / direct | CPU µs per tx pgshard |"
    echo "|---|---|---|---|---|"
fi
for round in $(seq "$ROUNDS"); do
    d=$(direct_inserts)
    if [ -n "${BASELINE_BIN:-}" ]; then
        through "$BASELINE_BIN"
        b=$TPS bcpu=$CPU
        through "$BIN"
        p=$TPS pcpu=$CPU
        echo "| $round | $(fmt "$d") | $(fmt "$b") | $(fmt "$p") | $(ratio "$b" "$d") | $(ratio "$p" "$d") | $(ratio "$p" "$b") | $bcpu / $pcpu |"
    else
        through "$BIN"
        p=$TPS pcpu=$CPU
        echo "| $round | $(fmt "$d") | $(fmt "$p") | $(ratio "$p" "$d") | $pcpu |"
    fi
done
