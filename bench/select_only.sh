#!/usr/bin/env bash
# pgbench -S (select-only, simple protocol) against one shard directly, through PgBouncer
# (transaction pooling) and through pgshard, alternating, in one invocation. Prints TPS, the ratios
# and CPU seconds per thousand transactions of each proxy.
#
#   bench/select_only.sh [seconds-per-run=20] [scale=10]
#
# It builds pgshard in release mode, starts its own two-shard cluster in a temp dir on free
# loopback ports, and removes everything when done.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-20}
SCALE=${2:-10}
PGSHARD_BENCH=1 ./scripts/install-deps.sh
PROFILE=release
. bench/lib.sh

bench_workdir bench

PROXY_PORT=$(free_port)
BOUNCER_PORT=$(free_port)

"$BIN" cluster up --dir "$WORK/cluster" --shards 2 --listen "127.0.0.1:$PROXY_PORT" >/dev/null
SHARD0_PORT=$("$BIN" cluster status --dir "$WORK/cluster" --json | python3 -c 'import json,sys; print([i["port"] for i in json.load(sys.stdin) if i["shard"]==0][0])')
SHARD1_PORT=$("$BIN" cluster status --dir "$WORK/cluster" --json | python3 -c 'import json,sys; print([i["port"] for i in json.load(sys.stdin) if i["shard"]==1][0])')
# As `app`, the role pgshard's clients run as (it owns the schema), so the tables are its own.
for port in $SHARD0_PORT $SHARD1_PORT; do
    PGPASSWORD=app pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
done
export PGPASSWORD=pgshard

# pgshard: pgbench_accounts sharded by aid (every shard holds every account, so each answer is right).
CONFIG=$WORK/pgshard.toml
cp "$WORK/cluster/pgshard.toml" "$CONFIG"
sed -i 's/^size = .*/size = 40/' "$CONFIG"
cat >> "$CONFIG" <<TOML

[[sharded_tables]]
name = "pgbench_accounts"
key = "aid"
TOML
RUST_LOG=warn "$BIN" serve --config "$CONFIG" &
PROXY_PID=$!

# PgBouncer in transaction mode in front of shard 0.
pgbouncer_config "$BOUNCER_PORT" 40 <<INI
app = host=127.0.0.1 port=$SHARD0_PORT dbname=app user=pgshard password=pgshard
INI
start_pgbouncer

wait_port() {
    for _ in $(seq 100); do
        if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$1" -U app -d app -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}
wait_port "$PROXY_PORT"
wait_port "$BOUNCER_PORT"

cpu_of() { # utime+stime in seconds of a pid (and its children)
    local ticks
    ticks=$(awk '{print $14+$15}' "/proc/$1/stat")
    echo "scale=3; $ticks / $(getconf CLK_TCK)" | bc
}
bouncer_pid() { pgrep -f "^pgbouncer -q $WORK/pgbouncer.ini" | head -1; }

run() { # target port user password clients
    local out
    out=$(PGPASSWORD=$4 pgbench -n -S -M simple -h 127.0.0.1 -p "$2" -U "$3" -c "$5" -j 2 -T "$SECONDS_PER_RUN" app 2>&1)
    echo "$out" | awk '/^tps = /{print $3; exit}'
}

printf '%-8s %-3s %10s %10s %10s %9s %9s %14s %14s\n' clients run direct pgbouncer pgshard pgb/dir pgs/pgb "pgb cpu/1k tx" "pgs cpu/1k tx"
for c in 8 32; do
    for round in 1 2; do
        d=$(run direct "$SHARD0_PORT" pgshard pgshard "$c")
        b0=$(cpu_of "$(bouncer_pid)")
        b=$(run pgbouncer "$BOUNCER_PORT" app app "$c")
        b1=$(cpu_of "$(bouncer_pid)")
        p0=$(cpu_of "$PROXY_PID")
        p=$(run pgshard "$PROXY_PORT" app app "$c")
        p1=$(cpu_of "$PROXY_PID")
        bcpu=$(echo "scale=4; ($b1 - $b0) * 1000 / ($b * $SECONDS_PER_RUN)" | bc)
        pcpu=$(echo "scale=4; ($p1 - $p0) * 1000 / ($p * $SECONDS_PER_RUN)" | bc)
        printf '%-8s %-3s %10.0f %10.0f %10.0f %9.2f %9.2f %14s %14s\n' "$c" "$round" "$d" "$b" "$p" \
            "$(echo "scale=3; $b / $d" | bc)" "$(echo "scale=3; $p / $b" | bc)" "$bcpu" "$pcpu"
    done
done
echo "pgs/pgb: pgshard TPS over PgBouncer TPS (target at c=32: >= 1.15); cpu in seconds per 1000 transactions"
