#!/usr/bin/env bash
# Installs what pgshard's demo and tests need and are missing, through the system package manager,
# saying what it installs. Safe to run again: it only installs what is absent.
set -euo pipefail

need=()
pg_bin=""
for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && pg_bin="$dir"
done
if [ -z "$pg_bin" ] && ! command -v initdb >/dev/null 2>&1; then
    need+=(postgresql postgresql-contrib)
fi
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
# tests/compose.rs: Docker with a compose tool (`docker compose` or Debian's `docker-compose`), and
# debootstrap to build its images from Debian's packages (scripts/build-images.sh).
command -v docker >/dev/null 2>&1 || need+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
    need+=(docker-compose)
fi
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# tests/tls.rs: the openssl CLI makes its self-signed certificate.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# tests/generated_keys.rs: sysbench's oltp_read_write with its default table layout.
command -v sysbench >/dev/null 2>&1 || need+=(sysbench)
# scripts/fuzz.sh: libFuzzer (built by the libfuzzer-sys crate) is C++.
command -v c++ >/dev/null 2>&1 || need+=(g++)
if [ "${PGSHARD_BENCH:-0}" = 1 ]; then
    command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
    command -v bc >/dev/null 2>&1 || need+=(bc)
fi

if [ ${#need[@]} -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    echo "pgshard: installing missing system packages: ${need[*]}"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "pgshard: no apt-get here; install these yourself: ${need[*]}" >&2
        exit 1
    fi
    # Debian's package starts a default cluster; pgshard runs its own, so leave that one alone.
fi

# The en_US.UTF-8 locale: shards created with it sort text in that collation, and pgshard
# reproduces it through the C library (tests of non-C collations need it on this machine).
if command -v locale >/dev/null 2>&1 && ! locale -a 2>/dev/null | grep -qiE '^en_US\.utf-?8$'; then
    echo "pgshard: generating the en_US.UTF-8 locale"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    if ! command -v localedef >/dev/null 2>&1 || [ ! -d /usr/share/i18n/locales ]; then
        if command -v apt-get >/dev/null 2>&1; then
            $sudo_cmd apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq locales >/dev/null
        else
            echo "pgshard: no apt-get here; install the en_US.UTF-8 locale yourself" >&2
            exit 1
        fi
    fi
    $sudo_cmd localedef -i en_US -f UTF-8 en_US.UTF-8
fi

# tests/drivers_native.rs: Go with pgx v4 and lib/pq, pgjdbc with a JDK, and node-postgres, all from Debian.
driver_pkgs=()
command -v go >/dev/null 2>&1 || driver_pkgs+=(golang-go)
[ -d /usr/share/gocode/src/github.com/jackc/pgx/v4 ] || driver_pkgs+=(golang-github-jackc-pgx-v4-dev)
[ -d /usr/share/gocode/src/github.com/lib/pq ] || driver_pkgs+=(golang-github-lib-pq-dev)
[ -f /usr/share/java/postgresql.jar ] || driver_pkgs+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || driver_pkgs+=(default-jdk-headless)
command -v node >/dev/null 2>&1 || driver_pkgs+=(nodejs)
# tests/orm_rails.rs: Rails ActiveRecord with the pg gem, from Debian.
ruby -e 'require "active_record"; require "pg"' >/dev/null 2>&1 || driver_pkgs+=(ruby-activerecord ruby-pg)
if [ ${#driver_pkgs[@]} -gt 0 ]; then
    echo "pgshard: installing the driver suites' packages: ${driver_pkgs[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "pgshard: no apt-get here; install these yourself: ${driver_pkgs[*]}" >&2
        exit 1
    fi
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${driver_pkgs[@]}" >/dev/null
fi
# node-postgres: Debian's node-pg depends on Debian's nodejs, which clashes with a nodejs from another
# source, so its files (and the two modules pg needs at run time: split2 for pgpass, xtend for
# postgres-interval) are unpacked under target/, where the test looks for them (NODE_PATH).
node_pg_dir="$(cd "$(dirname "$0")/.." && pwd)/target/debian-node-pg"
if ! NODE_PATH="$node_pg_dir/usr/share/nodejs" node -e "require('pg')" >/dev/null 2>&1; then
    echo "pgshard: unpacking Debian's node-pg, node-split2 and node-xtend into $node_pg_dir"
    download_dir=$(mktemp -d)
    chmod 777 "$download_dir"  # apt-get download writes as the _apt user
    if ! (cd "$download_dir" && apt-get download node-pg node-split2 node-xtend >/dev/null 2>&1); then
        sudo_cmd=""
        if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
        $sudo_cmd apt-get update -qq
        (cd "$download_dir" && apt-get download node-pg node-split2 node-xtend >/dev/null)
    fi
    rm -rf "$node_pg_dir"
    mkdir -p "$node_pg_dir"
    for deb in "$download_dir"/*.deb; do dpkg -x "$deb" "$node_pg_dir"; done
    rm -rf "$download_dir"
    NODE_PATH="$node_pg_dir/usr/share/nodejs" node -e "require('pg')"
fi

if ! python3 -c 'import psycopg' >/dev/null 2>&1; then
    echo "pgshard: installing the Python driver psycopg (for the cross-language driver test)"
    python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]'
fi
if ! python3 -c 'import asyncpg' >/dev/null 2>&1; then
    echo "pgshard: installing the Python driver asyncpg (tests/drivers_python.rs, tests/txn_errors.rs)"
    python3 -m pip install --quiet --disable-pip-version-check asyncpg
fi

if ! python3 -c 'import django, sys; sys.exit(django.VERSION[:2] != (5, 2))' >/dev/null 2>&1; then
    echo "pgshard: installing Django 5.2 (tests/orm_django.rs)"
    python3 -m pip install --quiet --disable-pip-version-check 'Django>=5.2,<5.3'
fi

if ! python3 -c 'import psycopg2' >/dev/null 2>&1; then
    echo "pgshard: installing the Python driver psycopg2 (tests/orm_django.rs runs Django on it too)"
    python3 -m pip install --quiet --disable-pip-version-check psycopg2-binary
fi

if ! python3 -c 'import peewee' >/dev/null 2>&1; then
    echo "pgshard: installing peewee (tests/orm_peewee.rs, over psycopg2)"
    python3 -m pip install --quiet --disable-pip-version-check peewee
fi

if ! python3 -c 'import sqlalchemy, alembic, greenlet, sys; sys.exit(sqlalchemy.__version__.split(".")[0] != "2")' >/dev/null 2>&1; then
    echo "pgshard: installing SQLAlchemy 2 and alembic (tests/orm_sqlalchemy.rs)"
    python3 -m pip install --quiet --disable-pip-version-check 'SQLAlchemy[asyncio]>=2,<3' alembic
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    echo "pgshard: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

if ! docker info >/dev/null 2>&1; then
    echo "pgshard: warning: no Docker engine answers (docker info failed); tests/compose.rs will fail" >&2
fi
