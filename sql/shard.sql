-- Applied to every shard's database by `pgshard cluster up` (idempotent). The schema is not named
-- `pgshard`: the proxy logs in as role pgshard, and "$user" would put that schema first on the search
-- path. The identity row is
-- written separately, per shard, so a server can never be mistaken for another shard.

CREATE SCHEMA IF NOT EXISTS pgshard_meta;
CREATE TABLE IF NOT EXISTS pgshard_meta.identity (
    shard_id   integer NOT NULL,
    cluster_id text NOT NULL,
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
