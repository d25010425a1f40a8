-- Applied to every shard's database by `pgshard cluster up` and the compose init script
-- (idempotent), as pgshard's control-plane role, which owns what it creates. The schema is not
-- named `pgshard`: the proxy logs in as role pgshard, and "$user" would put that schema first on
-- the search path. The identity row is written separately, per shard, so a server can never be
-- mistaken for another shard.
--
-- Application roles (the roles clients run as through pgshard) get no right on pgshard_meta: they
-- can neither change a shard's identity nor read it.

CREATE SCHEMA IF NOT EXISTS pgshard_meta;
CREATE TABLE IF NOT EXISTS pgshard_meta.identity (
    shard_id   integer NOT NULL,
    cluster_id text NOT NULL,
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
REVOKE ALL ON SCHEMA pgshard_meta FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pgshard_meta FROM PUBLIC;
