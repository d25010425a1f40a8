#!/usr/bin/env bash
# Init script for a shard's primary, mounted into /docker-entrypoint-initdb.d by docker-compose.yml;
# the postgres image's entry point runs it once, when it initialises an empty PGDATA. It makes the
# shard what pgshard and its replica expect, with one role per job:
#   - POSTGRES_USER (`pgshard`, the image's superuser): pgshard's control plane (monitors, checks,
#     two-phase commit recovery, rebalancing); it owns pgshard_meta, which no other role may use;
#   - `app`: the role clients of pgshard run as. Not a superuser; it owns the demo schema (`public`
#     and sql/app.sql's tables), so it cannot run programs or touch files on this host;
#   - `replicator`: streaming replication only (the replica's pg_basebackup), with its pg_hba line;
#   - the physical replication slot `replica`, so the primary keeps the WAL its replica still needs;
#   - sql/shard.sql and sql/app.sql (mounted at /pgshard/sql), and this shard's identity row.
# Environment: PGSHARD_SHARD_ID (this shard's id in config/compose.toml), PGSHARD_CLUSTER_ID,
# PGSHARD_REPLICATION_PASSWORD, PGSHARD_APP_PASSWORD, plus the image's own POSTGRES_USER /
# POSTGRES_DB.
set -euo pipefail

: "${PGSHARD_SHARD_ID:?set PGSHARD_SHARD_ID to the id of this shard}"
: "${PGSHARD_REPLICATION_PASSWORD:?set PGSHARD_REPLICATION_PASSWORD}"
: "${PGSHARD_APP_PASSWORD:?set PGSHARD_APP_PASSWORD}"

psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -q \
    --set shard_id="$PGSHARD_SHARD_ID" \
    --set cluster_id="${PGSHARD_CLUSTER_ID:-compose}" \
    --set replication_password="$PGSHARD_REPLICATION_PASSWORD" \
    --set app_password="$PGSHARD_APP_PASSWORD" <<'EOSQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
CREATE ROLE app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
SELECT pg_create_physical_replication_slot('replica') \g /dev/null
\i /pgshard/sql/shard.sql
INSERT INTO pgshard_meta.identity (shard_id, cluster_id) VALUES (:shard_id, :'cluster_id');
ALTER SCHEMA public OWNER TO app;
SET ROLE app;
\i /pgshard/sql/app.sql
RESET ROLE;
EOSQL

printf 'host replication replicator all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
echo "pgshard: shard $PGSHARD_SHARD_ID initialised"
