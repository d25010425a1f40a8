#!/usr/bin/env bash
# CPU work per transaction in instructions, not seconds: a loaded machine changes how long work
# takes, not how much there is. Runs a baseline pgshard and this tree's under valgrind's callgrind,
# one after the other in front of the same two-shard cluster, drives each with pgbench -S in the
# simple, extended and prepared protocols, and prints the proxy's instructions per transaction of
# each with their ratio.
#
#   bench/instructions.sh [transactions-per-client=500] [baseline=main]
#
# baseline: a pgshard executable, or a git revision, built in release mode from a worktree kept
# under target/instructions-baseline (it shares this tree's target dir, so only pgshard's own crate
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
# so each mode runs ROUNDS=3 pairs and the median is printed (each round goes to stderr).
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
SHORT=50

if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
    echo "installing valgrind (Debian package) for callgrind"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq valgrind >/dev/null
fi
./scripts/install-deps.sh >/dev/null

# The baseline binary: as given, or built from a revision.
BASE_DIR=$ROOT/target/instructions-baseline
if [ -x "$BASELINE" ] && [ -f "$BASELINE" ]; then
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
if cmp -s "$BASE_BIN" "$CURRENT_BIN"; then
    echo "(the baseline and this tree build the same binary)"
fi

bench_workdir instructions
PROXY_PORT=$(free_port)
# The baseline writes the config both proxies read: a newer pgshard reads an older config (new keys
# have defaults), an older one may not know a key a newer one writes.
"$BASE_BIN" cluster up --dir "$WORK/cluster" --shards 2 --listen "127.0.0.1:$PROXY_PORT" >/dev/null
for shard in 0 1; do
    port=$("$BIN" cluster status --dir "$WORK/cluster" --json |
        python3 -c "import json,sys; print([i['port'] for i in json.load(sys.stdin) if i['shard']==$shard][0])")
    # Every shard holds every account (scale 1), so whichever shard an aid routes to answers it.
    PGPASSWORD=app pgbench -i -q -s 1 -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
done

CONFIG=$WORK/pgshard.toml
cp "$WORK/cluster/pgshard.toml" "$CONFIG"
cat >> "$CONFIG" <<TOML

[[sharded_tables]]
name = "pgbench_accounts"
key = "aid"
TOML
if [ "$METRICS" = 1 ]; then
    printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$(free_port)" >> "$CONFIG"
fi

wait_port() {
    for _ in $(seq 600); do
        if PGPASSWORD=app psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "pgshard under callgrind does not answer on port $PROXY_PORT" >&2
    exit 1
}

# Dumps the proxy's counters and prints the new dump's path.
dump_counters() {
    local before
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

# Zeroes the counters, runs "$@", dumps them; prints "instructions seconds".
counted() {
    local dump start end
    callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    dump=$(dump_counters)
    echo "$(dump_total "$dump") $(echo "$end - $start" | bc)"
    if [ -n "${KEEP:-}" ] && [ -n "${KEEP_AS:-}" ]; then
        mkdir -p "$KEEP"
        cp "$dump" "$KEEP/$KEEP_AS"
    fi
}
# The whole proxy's instructions per second while no client sends anything (background tasks
# only: monitors, the catalog watcher, 2PC recovery, the rebalancing runner), over IDLE_SECS seconds.
idle_rate() {
    local dump total
    callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
    sleep "$IDLE_SECS"
    dump=$(dump_counters)
    total=$(dump_total "$dump")
    echo "scale=0; ${total:-0} / $IDLE_SECS" | bc
}
pgb() { # mode transactions-per-client
    PGPASSWORD=app pgbench -n -S -M "$1" -c "$CLIENTS" -j 1 -t "$2" -h 127.0.0.1 -p "$PROXY_PORT" -U app app >"$WORK/pgbench.out" 2>&1 ||
        { cat "$WORK/pgbench.out" >&2; exit 1; }
}

declare -A RESULT
measure() { # name binary
    local name=$1 bin=$2
    rm -f "$WORK"/cg.out.*
    RUST_LOG=warn valgrind --tool=callgrind -q --callgrind-out-file="$WORK/cg.out.%p" "$bin" serve --config "$CONFIG" &
    PROXY_PID=$!
    wait_port
    # Warm up: pools, monitors and the catalog watcher connected, statements cached.
    for mode in simple extended prepared; do pgb "$mode" 20; done
    local idle
    idle=$(idle_rate)
    RESULT[$name,idle]=$idle
    for mode in simple extended prepared; do
        # This mode's own warm-up: the first run after a pause can pay for work that is not
        # the mode's (a server connection opened or probed anew).
        pgb "$mode" 20
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
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
}

echo "measuring the baseline"
measure base "$BASE_BIN"
echo "measuring this tree"
measure current "$CURRENT_BIN"

echo
echo "pgshard instructions per transaction (callgrind), pgbench -S -c $CLIENTS, $PER_CLIENT transactions per client, metrics $( [ "$METRICS" = 1 ] && echo on || echo off)"
echo "baseline: $BASE_NAME"
echo "current:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
printf '%-10s %14s %14s %8s\n' mode baseline current cur/base
for mode in simple extended prepared idle; do
    b=${RESULT[base,$mode]} c=${RESULT[current,$mode]}
    printf '%-10s %14s %14s %8s\n' "$mode" "$b" "$c" "$(echo "scale=3; $c / $b" | bc)"
done
