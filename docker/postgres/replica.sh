#!/usr/bin/env bash
# Entry point of a shard's streaming replica in docker-compose.yml (mounted at /pgshard/replica.sh,
# run as the postgres user). On first start, while PGDATA is empty, it clones the primary with
# `pg_basebackup -R` (which writes standby.signal and primary_conninfo) over the slot the primary's
# init script created; then it hands over to the image's own entry point, which finds an initialised
# PGDATA and starts the standby. Works with the official image and with the local stand-in.
# Environment: PGSHARD_PRIMARY_HOST, PGSHARD_REPLICATION_PASSWORD, PGDATA.
set -euo pipefail

: "${PGSHARD_PRIMARY_HOST:?set PGSHARD_PRIMARY_HOST to the host name of the primary}"
: "${PGSHARD_REPLICATION_PASSWORD:?set PGSHARD_REPLICATION_PASSWORD}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # compose starts replicas after their primary is healthy; still allow the primary a moment
    # (a restart of the whole project), bounded so a wrong host name fails instead of hanging.
    for _ in $(seq 1 60); do
        pg_isready -q -h "$PGSHARD_PRIMARY_HOST" -p 5432 && break
        sleep 1
    done
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    echo "pgshard: cloning $PGSHARD_PRIMARY_HOST into $PGDATA"
    PGPASSWORD="$PGSHARD_REPLICATION_PASSWORD" pg_basebackup \
        --host="$PGSHARD_PRIMARY_HOST" --port=5432 --username=replicator \
        --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream \
        --slot=replica --checkpoint=fast --no-password
fi

exec docker-entrypoint.sh "$@"
