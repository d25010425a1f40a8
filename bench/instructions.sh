#!/usr/bin/env bash
# CPU work per transaction in instructions, not seconds: a loaded machine changes how long work
# takes, not how much there is. Runs a baseline pgshard and this tree's under valgrind's callgrind,
# one after the other in front of the same two-shard cluster, drives each with pgbench -S in the
# simple, extended and prepared protocols, and prints the proxy's instructions per transaction of
# each with their ratio. PgBouncer (transaction pooling, in front of shard 0) runs the same load
# under callgrind the same way, and each pgshard's count is also printed as a ratio of PgBouncer's
# (PGBOUNCER=0 leaves it out). PgBouncer 1.18 cannot serve pgbench's prepared statements in
# transaction pooling, so its prepared row runs through a session-pooled database entry.
# WORKLOAD=inserts measures issue 14's insert row instead: ten shards, a hash-sharded table
# bench_inserts (id bigint) and pgbench -M prepared running `INSERT INTO bench_inserts (id,
# payload) VALUES (:id, 'x')` with a random id, so each transaction goes to one of ten shard
# pools (no PgBouncer row: it has no shards).
#
#   bench/instructions.sh [transactions-per-client=500] [baseline=main]
#
# baseline: `none` (this tree alone), a pgshard executable, or a git revision, built in release
# mode from a worktree kept under target/instructions-baseline (it shares this tree's target dir, so only pgshard's own crate
# is compiled for it). This tree's binary is built in release mode too (PGSHARD_BIN=path skips
# that). CLIENTS=4 pgbench clients; METRICS=1 (default) runs both proxies with the Prometheus
# recorder installed, as a production proxy runs; KEEP=dir keeps the callgrind dumps of the
# measured runs there (for callgrind_annotate). The last row, `idle`, is the whole proxy's
# instructions per second with no client working, over IDLE_SECS=10 seconds.
#
# How it counts: the whole process's instructions (callgrind's total over every thread), not one
# function's: which functions exist depends on what the compiler inlines (the session loop, once
# counted by name, was inlined into the listener and its row fell to 0), the total does not. The
# counters are zeroed before a pgbench run and dumped after it. A short run (SHORT transactions per
# client) and a long one (SHORT + N) pay the same logins, the same connection set-up and the same
# first-statement work, so their difference is N x clients transactions and nothing else but the
# background tasks (monitors, the catalog watcher, 2PC recovery, the rebalancing runner), which run
# by the clock: the `idle` rate, measured first on the same warm proxy, times the difference of the
# two runs' durations is taken off. per transaction = (long - short - idle x (t_long - t_short)) /
# (N x clients). Both runs follow a warm-up (pools filled, statements cached). A background burst
# (a reconnect, a recovery pass) lands in one run of a pair and throws that pair off either way,
# so each mode runs ROUNDS=3 pairs and the median is printed (each round goes to stderr). A
# server login during a count (a pool opening one more connection) is set-up, not a transaction's
# work: its instructions are taken off the dump's total.
set -euo pipefail
# KEEP is a directory named from where the script was called, not from the tree it moves to.
if [ -n "${KEEP:-}" ]; then KEEP=$(realpath -m "$KEEP"); fi
cd "$(dirname "$0")/.."
ROOT=$PWD
PER_CLIENT=${1:-500}
BASELINE=${2:-main}
CLIENTS=${CLIENTS:-4}
METRICS=${METRICS:-1}
IDLE_SECS=${IDLE_SECS:-10}
ROUNDS=${ROUNDS:-3}
WORKLOAD=${WORKLOAD:-select}
SHORT=50
case "$WORKLOAD" in
    select) SHARDS=2 MODES="simple extended prepared" WARMUP=20 ;;
    # Ten shards' pools fill (and clients park connections of each) only after hundreds of
    # inserts: a server login (SCRAM) in a count costs millions of instructions.
    inserts) SHARDS=10 MODES="inserts" PGBOUNCER=0 WARMUP=400 ;;
    *) echo "WORKLOAD is select or inserts, not $WORKLOAD" >&2; exit 2 ;;
esac

if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
    echo "installing valgrind (Debian package) for callgrind"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq valgrind >/dev/null
fi
PGBOUNCER=${PGBOUNCER:-1}
if [ "$PGBOUNCER" = 1 ]; then PGSHARD_BENCH=1 ./scripts/install-deps.sh >/dev/null; else ./scripts/install-deps.sh >/dev/null; fi

# The baseline binary: as given, or built from a revision.
BASE_DIR=$ROOT/target/instructions-baseline
if [ "$BASELINE" = none ]; then
    BASE_BIN="" BASE_NAME=none
elif [ -x "$BASELINE" ] && [ -f "$BASELINE" ]; then
    BASE_BIN=$(realpath "$BASELINE")
    BASE_NAME=$BASE_BIN
else
    rev=$(git rev-parse --verify "$BASELINE^{commit}")
    BASE_NAME="$BASELINE ($(git rev-parse --short "$rev"))"
    mkdir -p "$BASE_DIR"
    if [ ! -e "$BASE_DIR/src/Cargo.toml" ]; then
        git worktree prune
        git worktree add --detach -q "$BASE_DIR/src" "$rev"
    elif [ "$(git -C "$BASE_DIR/src" rev-parse HEAD)" != "$rev" ]; then
        git -C "$BASE_DIR/src" checkout --detach -q "$rev"
    fi
    echo "building the baseline, $BASE_NAME"
    (cd "$BASE_DIR/src" && CARGO_TARGET_DIR=$ROOT/target cargo build --release --quiet --bin pgshard)
    cp "$ROOT/target/release/pgshard" "$BASE_DIR/pgshard"
    BASE_BIN=$BASE_DIR/pgshard
fi

echo "building this tree"
PROFILE=release
. bench/lib.sh
CURRENT_BIN=$BIN
if [ -n "$BASE_BIN" ] && cmp -s "$BASE_BIN" "$CURRENT_BIN"; then
    echo "(the baseline and this tree build the same binary)"
fi

bench_workdir instructions
PROXY_PORT=$(free_port)
# The baseline writes the config both proxies read: a newer pgshard reads an older config (new keys
# have defaults), an older one may not know a key a newer one writes.
"${BASE_BIN:-$BIN}" cluster up --dir "$WORK/cluster" --shards "$SHARDS" --listen "127.0.0.1:$PROXY_PORT" >/dev/null
for shard in $(seq 0 $((SHARDS - 1))); do
    port=$("$BIN" cluster status --dir "$WORK/cluster" --json |
        python3 -c "import json,sys; print([i['port'] for i in json.load(sys.stdin) if i['shard']==$shard][0])")
    if [ "$WORKLOAD" = inserts ]; then
        # The table each shard holds its slice of (what CREATE TABLE through the proxy does).
        PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$port" -U app -d app \
            -c 'CREATE TABLE bench_inserts (id bigint NOT NULL, payload text)' >/dev/null
    else
        # Every shard holds every account (scale 1), so whichever shard an aid routes to answers it.
        PGPASSWORD=app pgbench -i -q -s 1 -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
    fi
done
cat > "$WORK/insert.sql" <<'SQL'
\set id random(1, 1000000000000)
INSERT INTO bench_inserts (id, payload) VALUES (:id, 'x');
SQL

CONFIG=$WORK/pgshard.toml
cp "$WORK/cluster/pgshard.toml" "$CONFIG"
if [ "$WORKLOAD" = inserts ]; then
    printf '\n[[sharded_tables]]\nname = "bench_inserts"\nkey = "id"\n' >> "$CONFIG"
else
    printf '\n[[sharded_tables]]\nname = "pgbench_accounts"\nkey = "aid"\n' >> "$CONFIG"
fi
if [ "$METRICS" = 1 ]; then
    printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$(free_port)" >> "$CONFIG"
fi
SHARD0_PORT=$("$BIN" cluster status --dir "$WORK/cluster" --json |
    python3 -c 'import json,sys; print([i["port"] for i in json.load(sys.stdin) if i["shard"]==0][0])')
BOUNCER_PORT=$(free_port)
# As many server connections as clients: a warm-up opens all of them, so no count pays a server
# login (a SCRAM exchange costs PgBouncer millions of instructions).
pgbouncer_config "$BOUNCER_PORT" "$CLIENTS" <<INI
app = host=127.0.0.1 port=$SHARD0_PORT dbname=app user=pgshard password=pgshard
app_session = host=127.0.0.1 port=$SHARD0_PORT dbname=app user=pgshard password=pgshard pool_mode=session
INI

wait_port() {
    for _ in $(seq 600); do
        if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PORT" -U app -d app -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "the proxy under callgrind does not answer on port $PORT" >&2
    exit 1
}

# Counters are zeroed and dumped through callgrind_control (vgdb). PgBouncer sleeps in epoll
# between events and vgdb cannot wake it here (no ptrace), so it is counted by restarting it
# instead (RESTARTS=1): "zeroing" starts a fresh one and warms it up (login, pool), a dump is the
# one it writes at exit; both runs of a pair pay the same start, so it cancels like a login.
stop_proxy() {
    # A restarted PgBouncer may have been started in a subshell: its pid file knows it.
    if [ "${RESTARTS:-0}" = 1 ]; then PROXY_PID=$(cat "$WORK/pgbouncer.pid"); fi
    kill "$PROXY_PID" 2>/dev/null || true
    while kill -0 "$PROXY_PID" 2>/dev/null; do sleep 0.1; done
    wait 2>/dev/null || true
}
# CLIENTS transactions open at once through the proxy: a fresh PgBouncer opens all its server
# connections now, not in whichever count first needs one more.
hold_servers() {
    local db=app pids=() pid
    if [ "${MODE:-}" = prepared ] && [ -n "${PREPARED_DB:-}" ]; then db=$PREPARED_DB; fi
    for _ in $(seq "$CLIENTS"); do
        PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PORT" -U app -d "$db" \
            -c 'BEGIN' -c 'SELECT pg_sleep(1)' -c 'COMMIT' >/dev/null 2>&1 &
        pids+=("$!")
    done
    # Not a bare `wait`: the proxy itself may be a background job of this shell.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
zero_counters() {
    if [ "${RESTARTS:-0}" = 1 ]; then
        stop_proxy
        rm -f "$WORK"/cg.out.*
        "$START"
        hold_servers
        pgb "${MODE:-simple}" 20
    else
        callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
    fi
}
# Dumps the proxy's counters and prints the new dump's path.
dump_counters() {
    local before dump
    if [ "${RESTARTS:-0}" = 1 ]; then
        stop_proxy
        dump=$WORK/dump.$PROXY_PID
        mv "$(ls -t "$WORK"/cg.out.* | head -1)" "$dump"
        "$START" >/dev/null
        echo "$dump"
        return
    fi
    before=$(ls "$WORK"/cg.out.* 2>/dev/null | wc -l)
    callgrind_control -d "$PROXY_PID" >/dev/null 2>&1
    for _ in $(seq 100); do
        [ "$(ls "$WORK"/cg.out.* 2>/dev/null | wc -l)" -gt "$before" ] && break
        sleep 0.1
    done
    ls -t "$WORK"/cg.out.* | head -1
}

# Callgrind's total instructions in a dump (every thread of the process).
dump_total() {
    awk '/^(totals|summary):/ {print $2; exit}' "$1"
}

# What a dump spent logging in to servers: a pool that opens one more connection during a count
# (ten shards' pools keep growing now and then long after a warm-up) pays a SCRAM exchange, tens of
# millions of instructions under callgrind, that no transaction costs. The largest inclusive count
# of pgshard's `ServerConn::login` (its entries nest); 0 for PgBouncer.
dump_logins() {
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$1" 2>/dev/null |
        awk '/ServerConn::login/ { n = $1; gsub(",", "", n); if (n + 0 > m) m = n + 0 } END { print m + 0 }'
}

# Zeroes the counters, runs "$@", dumps them; prints "instructions seconds" (server logins taken
# off: see `dump_logins`).
counted() {
    local dump start end
    zero_counters >/dev/null
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    dump=$(dump_counters)
    echo "$(($(dump_total "$dump") - $(dump_logins "$dump"))) $(echo "$end - $start" | bc)"
    if [ -n "${KEEP:-}" ] && [ -n "${KEEP_AS:-}" ]; then
        mkdir -p "$KEEP"
        cp "$dump" "$KEEP/$KEEP_AS"
    fi
}
# The whole proxy's instructions per second while no client sends anything (background tasks
# only: monitors, the catalog watcher, 2PC recovery, the rebalancing runner), over IDLE_SECS
# seconds: a pause of IDLE_SECS counted less one of none.
idle_rate() {
    local none long
    read -r none _ < <(counted sleep 0)
    read -r long _ < <(counted sleep "$IDLE_SECS")
    # Never below zero: a restarted PgBouncer's two counts differ by a little noise either way.
    echo "scale=0; r = (${long:-0} - ${none:-0}) / $IDLE_SECS; if (r < 0) r = 0; r" | bc
}
pgb() { # mode transactions-per-client
    local db=app load=(-S -M "$1")
    if [ "$1" = prepared ] && [ -n "${PREPARED_DB:-}" ]; then db=$PREPARED_DB; fi
    if [ "$1" = inserts ]; then load=(-M prepared -f "$WORK/insert.sql"); fi
    PGPASSWORD=app pgbench -n "${load[@]}" -c "$CLIENTS" -j 1 -t "$2" -h 127.0.0.1 -p "$PORT" -U app "$db" >"$WORK/pgbench.out" 2>&1 ||
        { cat "$WORK/pgbench.out" >&2; exit 1; }
}

declare -A RESULT
CALLGRIND="valgrind --tool=callgrind -q --callgrind-out-file=$WORK/cg.out.%p"
start_pgshard() { # uses $PROXY_BIN
    PORT=$PROXY_PORT PREPARED_DB= RESTARTS=0
    RUST_LOG=warn $CALLGRIND "$PROXY_BIN" serve --config "$CONFIG" &
    PROXY_PID=$!
    wait_port
}
start_bouncer() {
    PORT=$BOUNCER_PORT PREPARED_DB=app_session RESTARTS=1
    rm -f "$WORK/pgbouncer.pid"
    start_pgbouncer $CALLGRIND
    wait_port
    PROXY_PID=$(cat "$WORK/pgbouncer.pid")
}
measure() { # name start-function
    local name=$1
    START=$2 MODE=
    rm -f "$WORK"/cg.out.*
    "$START"
    # Warm up: pools, monitors and the catalog watcher connected, statements cached.
    for mode in $MODES; do pgb "$mode" 20; done
    local idle
    idle=$(idle_rate)
    RESULT[$name,idle]=$idle
    for mode in $MODES; do
        MODE=$mode
        # This mode's own warm-up: the first run after a pause can pay for work that is not
        # the mode's (a server connection opened or probed anew).
        pgb "$mode" "$WARMUP"
        local rounds="" round s_ins s_secs l_ins l_secs per
        for round in $(seq "$ROUNDS"); do
            read -r s_ins s_secs < <(counted pgb "$mode" "$SHORT")
            read -r l_ins l_secs < <(KEEP_AS="$name-$mode.callgrind" counted pgb "$mode" "$((SHORT + PER_CLIENT))")
            per=$(echo "scale=0; ($l_ins - $s_ins - $idle * ($l_secs - $s_secs)) / ($PER_CLIENT * $CLIENTS)" | bc)
            echo "  $name $mode round $round: $per instructions/tx (short $s_ins, long $l_ins)" >&2
            # Background bursts only ever add work: a burst in the short run makes a round read
            # low, one in the long run high. The median of the rounds keeps neither.
            rounds="$rounds $per"
        done
        RESULT[$name,$mode]=$(echo "$rounds" | tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}')
    done
    stop_proxy
    PROXY_PID=
}

if [ -n "$BASE_BIN" ]; then
    echo "measuring the baseline"
    PROXY_BIN=$BASE_BIN measure base start_pgshard
fi
echo "measuring this tree"
PROXY_BIN=$CURRENT_BIN measure current start_pgshard
if [ "$PGBOUNCER" = 1 ]; then
    echo "measuring PgBouncer"
    measure pgbouncer start_bouncer
fi

echo
load="pgbench -S"
[ "$WORKLOAD" = inserts ] && load="pgbench -M prepared (INSERT, $SHARDS shards)"
echo "pgshard instructions per transaction (callgrind), $load -c $CLIENTS, $PER_CLIENT transactions per client, metrics $( [ "$METRICS" = 1 ] && echo on || echo off)"
echo "baseline: $BASE_NAME"
echo "current:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
if [ "$PGBOUNCER" = 1 ]; then
    echo "pgbouncer: $(pgbouncer --version | head -1), transaction pooling (prepared: session pooling)"
    printf '%-10s %14s %14s %8s %14s %9s %9s\n' mode baseline current cur/base pgbouncer base/pgb cur/pgb
else
    printf '%-10s %14s %14s %8s\n' mode baseline current cur/base
fi
ratio() { if [ -z "$1" ] || [ "${2:-0}" = 0 ]; then echo -; else echo "scale=3; $1 / $2" | bc; fi; }
for mode in $MODES idle; do
    b=${RESULT[base,$mode]:-} c=${RESULT[current,$mode]}
    if [ "$PGBOUNCER" = 1 ]; then
        p=${RESULT[pgbouncer,$mode]}
        printf '%-10s %14s %14s %8s %14s %9s %9s\n' "$mode" "$b" "$c" "$(ratio "$c" "$b")" \
            "$p" "$(ratio "$b" "$p")" "$(ratio "$c" "$p")"
    else
        printf '%-10s %14s %14s %8s\n' "$mode" "$b" "$c" "$(ratio "$c" "$b")"
    fi
done
