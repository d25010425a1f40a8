-- The catalog: the versioned shard map and the live proxies. Applied to the catalog database by
-- `pgshard cluster up` (idempotent). A new map version is a new shard_map_versions row plus its
-- ranges, inserted in one transaction; the trigger announces it to every proxy.

CREATE TABLE IF NOT EXISTS shard_map_versions (
    version    bigint PRIMARY KEY,
    strategy   text NOT NULL CHECK (strategy IN ('range', 'hash', 'modulo')),
    modulus    bigint CHECK (modulus IS NULL OR modulus > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((strategy = 'modulo') = (modulus IS NOT NULL))
);

-- Ranges are [range_lower, range_upper) over the strategy's key space; NULL is unbounded.
CREATE TABLE IF NOT EXISTS shard_map (
    version     bigint NOT NULL REFERENCES shard_map_versions (version) ON DELETE CASCADE,
    range_lower bigint,
    range_upper bigint,
    shard_id    integer NOT NULL,
    CHECK (range_lower IS NULL OR range_upper IS NULL OR range_lower < range_upper)
);
CREATE INDEX IF NOT EXISTS shard_map_version_idx ON shard_map (version);

-- One row per proxy process; node_id feeds the id generator, so two live proxies never share one.
CREATE SEQUENCE IF NOT EXISTS proxy_node_id_seq MINVALUE 0 MAXVALUE 1023 START 0 CYCLE;
CREATE TABLE IF NOT EXISTS proxies (
    node_id    integer PRIMARY KEY,
    name       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION shard_map_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgshard_shard_map', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS shard_map_versions_announce ON shard_map_versions;
CREATE TRIGGER shard_map_versions_announce AFTER INSERT OR UPDATE OR DELETE ON shard_map_versions
    FOR EACH STATEMENT EXECUTE FUNCTION shard_map_announce();
DROP TRIGGER IF EXISTS shard_map_announce ON shard_map;
CREATE TRIGGER shard_map_announce AFTER INSERT OR UPDATE OR DELETE ON shard_map
    FOR EACH STATEMENT EXECUTE FUNCTION shard_map_announce();

-- The two-phase-commit decision log. A coordinator inserts 'commit' after every participant has
-- prepared; recovery inserts 'abort' for a prepared transaction nobody decided in time. The primary
-- key makes the first writer win, so a live coordinator and recovery can never disagree.
CREATE TABLE IF NOT EXISTS txn_decisions (
    gid          text PRIMARY KEY,
    decision     text NOT NULL CHECK (decision IN ('commit', 'abort')),
    participants integer[] NOT NULL,
    coordinator  integer NOT NULL,
    decided_at   timestamptz NOT NULL DEFAULT now()
);

-- The primary every proxy routes a shard's writes to, and the timeline it was seen on. Proxies
-- record a newly promoted primary only with a higher timeline than the row's (compare-and-set), so
-- they all agree; a server claiming to be primary on a lower timeline, or a second primary on the
-- same one, is fenced.
CREATE TABLE IF NOT EXISTS shard_primaries (
    shard_id    integer PRIMARY KEY,
    address     text NOT NULL,
    timeline    bigint NOT NULL CHECK (timeline > 0),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
