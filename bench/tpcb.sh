#!/usr/bin/env bash
# pgbench's built-in TPC-B over ten shards through pgshard against one Postgres holding all the
# rows, alternating within each round: TPS, the ratio, the proxy's CPU µs per transaction (from
# /proc) and failed transactions; the bank invariant is checked at the end.
#
#   bench/tpcb.sh [seconds-per-run=10] [scale=10] [rounds=2] [clients=8]
#
# PROFILE=debug uses a debug build; PGSHARD_BIN=/path/to/pgshard uses that binary.
# BASELINE_BIN=/path/to/pgshard also runs that binary in each round (one proxy at a time, on the
# same cluster and port), with this binary's TPS as a ratio of it. STATEMENTS=N afterwards runs N
# transactions per client with `log_statement = all` on every instance and prints the statements
# per transaction each instance received (the catalog's too), by kind.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
SCALE=${2:-10}
ROUNDS=${3:-2}
CLIENTS=${4:-8}
. bench/lib.sh

bench_workdir tpcb
pgbench_cluster 20 "$SCALE" < /dev/null
start_proxy
pgbench_init_proxy "$SCALE"

# One pgbench run of TPC-B through the proxy binary $1 (restarted on it): sets TPS, CPU (µs per
# transaction) and FAILED. In this shell, not a subshell: the proxy is its child.
through() {
    stop_proxy
    start_proxy "$1"
    TPS=$(ALLOW_FAILED=1 PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app -c "$CLIENTS" -j 2)
    CPU=$(cpu)
    FAILED=$(failed_of < "$WORK/pgbench.out")
}

echo "pgshard bench/tpcb.sh: ${SECONDS_PER_RUN} s per run, scale $SCALE, -c $CLIENTS, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "pgshard: $BIN${BASELINE_BIN:+; baseline: $BASELINE_BIN}"
echo
if [ -n "${BASELINE_BIN:-}" ]; then
    echo "| round | direct | baseline | pgshard | baseline / direct | pgshard / direct | pgshard / baseline | CPU µs per tx baseline / pgshard | failed baseline / pgshard |"
    echo "|---|---|---|---|---|---|---|---|---|"
else
    echo "| round | direct | pgshard | pgshard / direct | CPU µs per tx pgshard | failed |"
    echo "|---|---|---|---|---|---|"
fi
for round in $(seq "$ROUNDS"); do
    d=$(PID_OF="" bench "$SHARD0_PORT" pgshard pgshard direct -c "$CLIENTS" -j 2)
    if [ -n "${BASELINE_BIN:-}" ]; then
        through "$BASELINE_BIN"
        b=$TPS bcpu=$CPU bfailed=$FAILED
        through "$BIN"
        p=$TPS pcpu=$CPU pfailed=$FAILED
        echo "| $round | $(fmt "$d") | $(fmt "$b") | $(fmt "$p") | $(ratio "$b" "$d") | $(ratio "$p" "$d") | $(ratio "$p" "$b") | $bcpu / $pcpu | $bfailed / $pfailed |"
    else
        through "$BIN"
        p=$TPS pcpu=$CPU pfailed=$FAILED
        echo "| $round | $(fmt "$d") | $(fmt "$p") | $(ratio "$p" "$d") | $pcpu | $pfailed |"
    fi
done
echo
bank_invariant

if [ -n "${STATEMENTS:-}" ]; then
    # Every instance logs every statement for a fixed number of transactions.
    logs=$(find "$WORK/cluster" -name server.log)
    ports=$("$BIN" cluster status --dir "$WORK/cluster" --json | python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in json.load(sys.stdin)))')
    set_logging() {
        for port in $ports; do
            PGPASSWORD=pgshard psql -X -q -h 127.0.0.1 -p "$port" -U pgshard -d postgres \
                -c "ALTER SYSTEM SET log_statement = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
        done
        sleep 1
    }
    stop_proxy
    start_proxy
    mark() { echo "$WORK/$(echo "$1" | md5sum | cut -c1-8).mark"; }
    for log in $logs; do wc -c < "$log" > "$(mark "$log")"; done
    set_logging all
    PGPASSWORD=app pgbench -n -h 127.0.0.1 -p "$PROXY_PORT" -U app -c "$CLIENTS" -j 2 -t "$STATEMENTS" app >/dev/null 2>&1 || true
    set_logging none
    tx=$((CLIENTS * STATEMENTS))
    echo
    echo "statements per TPC-B transaction received by all instances together ($tx transactions), by kind:"
    for log in $logs; do
        tail -c +"$(( $(cat "$(mark "$log")") + 1 ))" "$log"
    done | grep -oE '(statement|execute [^:]*): .*' | sed -E 's/^(statement|execute [^:]*): //; s/[0-9]+/N/g; s/-N/N/g' | cut -c1-70 |
        sort | uniq -c | sort -rn | awk -v tx="$tx" '{ n = $1; $1 = ""; printf "%8.2f %s\n", n / tx, $0 }'
fi
