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
