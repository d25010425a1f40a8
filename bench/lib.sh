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
