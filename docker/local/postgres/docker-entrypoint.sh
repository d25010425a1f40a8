#!/usr/bin/env bash
# Entry point of the locally built stand-in for the official `postgres` image (Debian's PostgreSQL
# packages, no registry). It implements only the documented interface that docker-compose.yml relies
# on, so that the same compose file runs either image:
#   - POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (default
#     postgres), POSTGRES_DB (default: the user name), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD;
#   - PGDATA, initialised on first start only (when it holds no PG_VERSION);
#   - /docker-entrypoint-initdb.d/*.sh (executed if executable, else sourced) and *.sql (psql),
#     run in name order against a server that listens only on its unix socket;
#   - `postgres -c key=value …` as the command, and arguments starting with `-` meaning postgres;
#   - started as root, it hands PGDATA to the postgres user and drops to it; started as another
#     user (compose `user: postgres`), it runs as that user.
set -Eeuo pipefail

if [ $# -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

mkdir -p "$PGDATA"
chmod 0700 "$PGDATA" 2>/dev/null || :

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "docker-entrypoint: the database is not initialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as in the official image
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" -D "$PGDATA" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    export PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
    # The server's own options (`-c key=value`) apply during initialisation too; TCP stays closed
    # until the init scripts are done, so a TCP health check only passes on the real server.
    options="-c listen_addresses=''"
    if [ $# -gt 1 ]; then
        options="$(printf '%q ' "${@:2}")$options"
    fi
    pg_ctl -D "$PGDATA" -w -o "$options" start
    psql_init=(psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password)
    if [ "$POSTGRES_DB" != postgres ]; then
        printf 'CREATE DATABASE :"db";\n' |
            "${psql_init[@]}" --dbname postgres --set db="$POSTGRES_DB" -q
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                echo "docker-entrypoint: running $f"
                # shellcheck disable=SC1090 # the init scripts are the user's
                if [ -x "$f" ]; then "$f"; else . "$f"; fi
                ;;
            *.sql)
                echo "docker-entrypoint: running $f"
                "${psql_init[@]}" --dbname "$POSTGRES_DB" -q -f "$f"
                ;;
            *) [ -e "$f" ] && echo "docker-entrypoint: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    echo "docker-entrypoint: PostgreSQL initialised; starting"
fi

exec "$@"
