-- Applied to every shard's database by `pgshard cluster up` (idempotent). The identity row is
-- written separately, per shard, so a server can never be mistaken for another shard.

CREATE SCHEMA IF NOT EXISTS pgshard;
CREATE TABLE IF NOT EXISTS pgshard.identity (
    shard_id   integer NOT NULL,
    cluster_id text NOT NULL,
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
