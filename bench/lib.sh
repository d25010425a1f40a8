# Sourced by the bench scripts (from the repository root): the pgshard binary and free ports.
#
# PROFILE=release (default) or debug picks the build; PGSHARD_BIN=/path/to/pgshard skips the build
# and uses that binary. Sets PROFILE and BIN.
PROFILE=${PROFILE:-release}
if [ -n "${PGSHARD_BIN:-}" ]; then
    :
elif [ "$PROFILE" = release ]; then
    cargo build --release --quiet
else
    cargo build --quiet
fi
BIN=${PGSHARD_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/pgshard}

# Prints a loopback port nobody listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Makes $WORK, the bench's private temp dir (/tmp/pgshard-NAME-*), and on exit stops what the bench
# started in it — the proxy ($PROXY_PID), a PgBouncer run from $WORK/pgbouncer.ini, every cluster
# under $WORK — then removes it.
bench_workdir() {
    WORK=$(mktemp -d "/tmp/pgshard-$1-XXXXXX")
    chmod 755 "$WORK"
    trap bench_cleanup EXIT
}

bench_cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
    pkill -f "pgbouncer .*$WORK/pgbouncer.ini" 2>/dev/null || true
    for cluster in "$WORK"/*/cluster.json; do
        [ -f "$cluster" ] && "$BIN" cluster down --dir "$(dirname "$cluster")" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}

# Writes $WORK/pgbouncer.ini for a PgBouncer in transaction pooling on 127.0.0.1:$1 with pool size
# $2 and at most $3 clients (default 200), its [databases] lines read from stdin, and
# $WORK/userlist.txt (app/app, pgshard/pgshard).
pgbouncer_config() {
    local port=$1 size=$2 clients=${3:-200}
    printf '"app" "app"\n"pgshard" "pgshard"\n' > "$WORK/userlist.txt"
    {
        echo "[databases]"
        cat
        cat <<INI
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $size
max_client_conn = $clients
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
unix_socket_dir =
INI
    } > "$WORK/pgbouncer.ini"
    # It runs as postgres when the bench runs as root (PgBouncer refuses root).
    chown -R postgres "$WORK" 2>/dev/null || true
}

# Starts PgBouncer on $WORK/pgbouncer.ini in the background, "$@" (valgrind, say) in front of it;
# as postgres when run as root. Its pid, once up, is in $WORK/pgbouncer.pid.
start_pgbouncer() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$* pgbouncer -q $WORK/pgbouncer.ini" >/dev/null 2>&1 &
    else
        "$@" pgbouncer -q "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
    fi
}

# Waits until `select 1` answers on 127.0.0.1:$1 as user $2 (password $3) on database $4.
wait_port() {
    for _ in $(seq 100); do
        if PGPASSWORD=$3 psql -X -q -h 127.0.0.1 -p "$1" -U "$2" -d "$4" -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

# CPU ticks (user + system) a process used so far.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# The TPS pgbench printed (its output on stdin).
tps_of() { awk '/^tps = /{print $3; exit}'; }
# The failed transactions pgbench counted (its output on stdin); 0 when it printed none.
failed_of() { awk '/number of failed transactions/{f=$5} END{print f+0}'; }
# $1 / $2 with two decimals, or — when either is missing.
ratio() { if [ -n "$1" ] && [ -n "$2" ] && [ "$2" != 0 ]; then printf '%.2f' "$(echo "scale=3; $1 / $2" | bc)"; else echo "—"; fi; }
# A TPS rounded, or — when missing.
fmt() { if [ -n "$1" ]; then printf '%.0f' "$1"; else echo "—"; fi; }
# CPU µs per transaction written by the last `bench`, or —.
cpu() { local v; v=$(cat "$WORK/cpu"); echo "${v:-—}"; }

# pgbench -n for $SECONDS_PER_RUN s against port $1 as user $2 (password $3) on database $4, more
# args after; prints TPS. Empty when pgbench failed (a client aborted, as under PgBouncer 1.18
# with -M prepared) unless ALLOW_FAILED=1, which takes the TPS of any run that printed one. Its
# whole output goes to $WORK/pgbench.out. When $PID_OF is set, CPU µs per transaction of that
# process go to $WORK/cpu.
bench() {
    local port=$1 user=$2 password=$3 db=$4 t0 t1 out tps ok=1
    shift 4
    [ -n "${PID_OF:-}" ] && t0=$(cpu_ticks "$PID_OF")
    out=$(PGPASSWORD=$password pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -T "$SECONDS_PER_RUN" "$@" "$db" 2>&1) || ok=0
    echo "$out" > "$WORK/pgbench.out"
    tps=""
    if [ "$ok" = 1 ] || [ "${ALLOW_FAILED:-0}" = 1 ]; then
        tps=$(echo "$out" | tps_of)
    fi
    : > "$WORK/cpu"
    if [ -n "${PID_OF:-}" ] && [ -n "$tps" ]; then
        t1=$(cpu_ticks "$PID_OF")
        echo "scale=0; ($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / ($tps * $SECONDS_PER_RUN)" | bc > "$WORK/cpu"
    fi
    echo "$tps"
}

# Ten shards with pgbench's tables in $WORK/cluster, for the TPC-B rows: sets PROXY_PORT,
# SHARD_PORTS, SHARD0_PORT and CONFIG (pgbench's tables sharded as config/pgbench.toml shards
# them, $1 server connections per shard, more TOML from stdin), creates database `direct` on
# shard 0's instance holding all of pgbench's rows at scale $2. The proxy is not started
# (`start_proxy`); `pgbench_init_proxy` loads the same rows through it.
pgbench_cluster() {
    local size=$1 scale=$2
    PROXY_PORT=$(free_port)
    "$BIN" cluster up --dir "$WORK/cluster" --shards 10 --listen "127.0.0.1:$PROXY_PORT" >/dev/null
    SHARD_PORTS=$("$BIN" cluster status --dir "$WORK/cluster" --json |
        python3 -c 'import json,sys; print(" ".join(str(i["port"]) for i in sorted(json.load(sys.stdin), key=lambda i: i["shard"] if i.get("shard") is not None else -1) if i.get("shard") is not None))')
    SHARD0_PORT=$(echo "$SHARD_PORTS" | awk '{print $1}')
    CONFIG=$WORK/pgshard.toml
    cp "$WORK/cluster/pgshard.toml" "$CONFIG"
    sed -i "s/^size = .*/size = $size/" "$CONFIG"
    {
        for table in pgbench_accounts:aid pgbench_branches:bid pgbench_tellers:tid pgbench_history:aid; do
            printf '\n[[sharded_tables]]\nname = "%s"\nkey = "%s"\n' "${table%%:*}" "${table##*:}"
        done
        cat
    } >> "$CONFIG"
    PGPASSWORD=pgshard psql -X -q -h 127.0.0.1 -p "$SHARD0_PORT" -U pgshard -d app -c 'CREATE DATABASE direct' >/dev/null
    PGPASSWORD=pgshard pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$SHARD0_PORT" -U pgshard direct >/dev/null 2>&1
}

# Starts `$1 serve` (default $BIN) on $CONFIG in the background as $PROXY_PID and waits for it.
start_proxy() {
    RUST_LOG=warn "${1:-$BIN}" serve --config "$CONFIG" > /dev/null &
    PROXY_PID=$!
    wait_port "$PROXY_PORT" app app app
}

# Stops the proxy started by `start_proxy`.
stop_proxy() {
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
}

# pgbench -i at scale $1 through the proxy: each row on its shard.
pgbench_init_proxy() {
    PGPASSWORD=app pgbench -i -q -s "$1" -h 127.0.0.1 -p "$PROXY_PORT" -U app app >/dev/null 2>&1
}

# The sums of accounts, tellers, branches and history through the proxy, space-separated: TPC-B
# moves the same delta into each, so they are all equal when every transaction was atomic.
bank_sums() {
    local what
    for what in abalance:pgbench_accounts tbalance:pgbench_tellers bbalance:pgbench_branches delta:pgbench_history; do
        PGPASSWORD=app psql -X -At -h 127.0.0.1 -p "$PROXY_PORT" -U app -d app \
            -c "SELECT coalesce(sum(${what%%:*}), 0) FROM ${what##*:}"
    done | paste -sd' '
}

# Prints the bank sums and whether they agree; fails when they do not.
bank_invariant() {
    local sums a t b h
    sums=$(bank_sums)
    echo "sums of accounts, tellers, branches, history: $sums"
    read -r a t b h <<< "$sums"
    if [ "$a" = "$t" ] && [ "$t" = "$b" ] && [ "$b" = "$h" ]; then
        echo "bank invariant holds"
    else
        echo "bank invariant BROKEN" >&2
        return 1
    fi
}

# The single-row INSERT of the inserts row, as a pgbench script: $WORK/insert.sql.
write_insert_script() {
    cat > "$WORK/insert.sql" <<'SQL'
\set id random(1, 1000000000000)
INSERT INTO bench_inserts (id, payload) VALUES (:id, 'x');
SQL
}

# The inserts row's load sent straight to the shards: a pgbench (-M prepared -c 2) at each of
# $SHARD_PORTS, all at once; prints the summed TPS.
direct_inserts() {
    local pids=() i=0 port
    for port in $SHARD_PORTS; do
        (PID_OF="" bench "$port" pgshard pgshard app -M prepared -c 2 -j 1 -f "$WORK/insert.sql" > "$WORK/direct-insert-$i") &
        pids+=($!)
        i=$((i + 1))
    done
    wait "${pids[@]}"
    cat "$WORK"/direct-insert-* | awk '{s += $1} END {print s}'
}
