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
