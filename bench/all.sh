#!/usr/bin/env bash
# The performance table of the README in one invocation, with ratios: pgbench -S (simple,
# extended, prepared; c=8 and c=32) against one Postgres directly, through PgBouncer (transaction
# pooling) and through pgshard; 10-shard inserts through pgshard against the same load sent
# straight to the shards; pgbench's TPC-B over ten shards against one Postgres. Targets alternate
# within each row; CPU per transaction of each proxy is read from /proc.
#
#   bench/all.sh [seconds-per-run=10] [scale=10]
#
# PROFILE=debug uses a debug build; PGSHARD_BIN=/path/to/pgshard uses that binary. Starts its
# own ten-shard cluster in a temp dir on free loopback ports and removes everything when done.
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

PROXY_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
"$BIN" cluster up --dir "$WORK/cluster" --shards 10 --listen "127.0.0.1:$PROXY_PORT" >/dev/null
SHARD_PORTS=$("$BIN" cluster status --dir "$WORK/cluster" --json |
    python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in sorted(json.load(sys.stdin), key=lambda i: i["shard"] if i.get("shard") is not None else -1) if i.get("shard") is not None))')
SHARD0_PORT=$(echo "$SHARD_PORTS" | awk '{print $1}')
export PGPASSWORD=pgshard

# pgshard: pgbench's tables sharded as config/pgbench.toml shards them, plus the insert table.
CONFIG=$WORK/pgshard.toml
cp "$WORK/cluster/pgshard.toml" "$CONFIG"
# 20 server connections per shard for pgshard and PgBouncer alike (shard 0's instance also
# serves the direct runs: its max_connections is 100).
sed -i 's/^size = .*/size = 20/' "$CONFIG"
cat >> "$CONFIG" <<TOML

[[sharded_tables]]
name = "pgbench_accounts"
key = "aid"

[[sharded_tables]]
name = "pgbench_branches"
key = "bid"

[[sharded_tables]]
name = "pgbench_tellers"
key = "tid"

[[sharded_tables]]
name = "pgbench_history"
key = "aid"

[[sharded_tables]]
name = "bench_inserts"
key = "id"
TOML
RUST_LOG=warn "$BIN" serve --config "$CONFIG" &
PROXY_PID=$!

wait_port() { # port user password database
    for _ in $(seq 100); do
        if PGPASSWORD=$3 psql -X -q -h 127.0.0.1 -p "$1" -U "$2" -d "$4" -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}
wait_port "$PROXY_PORT" app app app

# One Postgres holding all of pgbench's rows: database `direct` on shard 0's instance.
psql -X -q -h 127.0.0.1 -p "$SHARD0_PORT" -U pgshard -d app -c 'CREATE DATABASE direct' >/dev/null
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$SHARD0_PORT" -U pgshard direct >/dev/null 2>&1
# The same tables through pgshard, each row on its shard.
PGPASSWORD=app pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PROXY_PORT" -U app app >/dev/null 2>&1
PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app \
    -c 'CREATE TABLE bench_inserts (id bigint NOT NULL, payload text)' >/dev/null

# PgBouncer in transaction mode in front of the one Postgres.
BOUNCER=0
if command -v pgbouncer >/dev/null 2>&1; then
    pgbouncer_config "$BOUNCER_PORT" 20 <<INI
direct = host=127.0.0.1 port=$SHARD0_PORT dbname=direct user=pgshard password=pgshard
INI
    start_pgbouncer
    wait_port "$BOUNCER_PORT" pgshard pgshard direct
    BOUNCER=1
fi
bouncer_pid() { pgrep -f "^pgbouncer -q $WORK/pgbouncer.ini" | head -1; }

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
cpu() { local v; v=$(cat "$WORK/cpu"); echo "${v:-—}"; }
tps_of() { awk '/^tps = /{print $3; exit}'; }
ratio() { if [ -n "$1" ] && [ -n "$2" ] && [ "$2" != 0 ]; then printf '%.2f' "$(echo "scale=3; $1 / $2" | bc)"; else echo "—"; fi; }

# pgbench against port $1 as user $2 (password $3) on database $4, more args after; prints TPS
# (empty when pgbench failed: a client aborted, as under PgBouncer 1.18 with -M prepared). When $PID_OF is set, CPU µs per transaction of that process go
# to $WORK/cpu.
bench() {
    local port=$1 user=$2 password=$3 db=$4 t0 t1 out tps
    shift 4
    [ -n "${PID_OF:-}" ] && t0=$(cpu_ticks "$PID_OF")
    tps=""
    if out=$(PGPASSWORD=$password pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -T "$SECONDS_PER_RUN" "$@" "$db" 2>&1); then
        tps=$(echo "$out" | tps_of)
    fi
    : > "$WORK/cpu"
    if [ -n "${PID_OF:-}" ] && [ -n "$tps" ]; then
        t1=$(cpu_ticks "$PID_OF")
        echo "scale=0; ($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / ($tps * $SECONDS_PER_RUN)" | bc > "$WORK/cpu"
    fi
    echo "$tps"
}
fmt() { if [ -n "$1" ]; then printf '%.0f' "$1"; else echo "—"; fi; }

echo "pgshard bench/all.sh: ${SECONDS_PER_RUN} s per run, scale $SCALE, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| workload | direct | PgBouncer | pgshard | pgshard / PgBouncer | pgshard / direct | CPU µs per tx PgBouncer / pgshard |"
echo "|---|---|---|---|---|---|---|"
for c in 8 32; do
    for mode in simple extended prepared; do
        args=(-S -M "$mode" -c "$c" -j 2)
        d=$(PID_OF="" bench "$SHARD0_PORT" pgshard pgshard direct "${args[@]}")
        b="" bcpu=""
        if [ "$BOUNCER" = 1 ]; then
            b=$(PID_OF=$(bouncer_pid) bench "$BOUNCER_PORT" pgshard pgshard direct "${args[@]}")
            bcpu=$(cpu)
        fi
        p=$(PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app "${args[@]}")
        pcpu=$(cpu)
        echo "| \`pgbench -S -M $mode -c $c\` | $(fmt "$d") | $(fmt "$b") | $(fmt "$p") | $(ratio "$p" "$b") | $(ratio "$p" "$d") | ${bcpu:-—} / ${pcpu:-—} |"
    done
done

# Inserts over ten shards: pgshard (-M prepared -c 20) against ten pgbench runs at the shards
# directly (-c 2 each, all at once).
cat > "$WORK/insert.sql" <<'SQL'
\set id random(1, 1000000000000)
INSERT INTO bench_inserts (id, payload) VALUES (:id, 'x');
SQL
pids=()
i=0
for port in $SHARD_PORTS; do
    (PID_OF="" bench "$port" pgshard pgshard app -M prepared -c 2 -j 1 -f "$WORK/insert.sql" > "$WORK/direct-insert-$i") &
    pids+=($!)
    i=$((i + 1))
done
wait "${pids[@]}"
d=$(cat "$WORK"/direct-insert-* | awk '{s += $1} END {print s}')
p=$(PID_OF=$PROXY_PID bench "$PROXY_PORT" app app app -M prepared -c 20 -j 2 -f "$WORK/insert.sql")
echo "| inserts, 10 shards, \`-M prepared -c 20\` vs 10 pgbench at the shards directly | $(fmt "$d") | — | $(fmt "$p") | — | $(ratio "$p" "$d") | — / $(cpu) |"

# TPC-B (pgbench's built-in script): ten shards through pgshard against one Postgres.
d=$(PID_OF="" bench "$SHARD0_PORT" pgshard pgshard direct -c 8 -j 2)
t0=$(cpu_ticks "$PROXY_PID")
out=$(PGPASSWORD=app pgbench -n -h 127.0.0.1 -p "$PROXY_PORT" -U app -T "$SECONDS_PER_RUN" -c 8 -j 2 app 2>&1) || true
p=$(echo "$out" | tps_of)
failed=$(echo "$out" | awk '/number of failed transactions/{print $5; exit}')
pcpu=—
if [ -n "$p" ]; then
    pcpu=$(echo "scale=0; ($(cpu_ticks "$PROXY_PID") - $t0) * 1000000 / $(getconf CLK_TCK) / ($p * $SECONDS_PER_RUN)" | bc)
fi
echo "| pgbench TPC-B (built-in script, \`-c 8\`), 10 shards vs one Postgres | $(fmt "$d") | — | $(fmt "$p") | — | $(ratio "$p" "$d") | — / $pcpu |"
# The bank invariant: every transaction moved the same delta into an account, a teller, a
# branch and the history.
sum_of() { PGPASSWORD=app psql -X -At -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app -c "SELECT coalesce(sum($1), 0) FROM $2"; }
sums="$(sum_of abalance pgbench_accounts) $(sum_of tbalance pgbench_tellers) $(sum_of bbalance pgbench_branches) $(sum_of delta pgbench_history)"
echo
echo "TPC-B through pgshard: ${failed:-0} failed transactions; sums of accounts, tellers, branches, history: $sums"
read -r a t b h <<< "$sums"
if [ "$a" = "$t" ] && [ "$t" = "$b" ] && [ "$b" = "$h" ]; then
    echo "bank invariant holds"
else
    echo "bank invariant BROKEN" >&2
    exit 1
fi
