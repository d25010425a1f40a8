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

-- Schema-based sharding: each tenant schema of a map version and the shard holding it whole.
-- Seeded from the config's `[[sharded_schemas]]` for a schema no version lists yet; afterwards the
-- catalog is the truth (a `move-schema` job or a new tenant's CREATE SCHEMA publishes a version).
CREATE TABLE IF NOT EXISTS shard_map_tenants (
    version     bigint NOT NULL REFERENCES shard_map_versions (version) ON DELETE CASCADE,
    schema_name text NOT NULL,
    shard_id    integer NOT NULL,
    PRIMARY KEY (version, schema_name)
);

-- One row per proxy process; node_id feeds the id generator, so two live proxies never share one.
CREATE SEQUENCE IF NOT EXISTS proxy_node_id_seq MINVALUE 0 MAXVALUE 1023 START 0 CYCLE;
CREATE TABLE IF NOT EXISTS proxies (
    node_id    integer PRIMARY KEY,
    name       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Generated keys for smallint/integer shard keys that an INSERT omits: each proxy takes the next
-- block of a table's ids with one upsert, so ids never repeat across proxies and restarts.
CREATE TABLE IF NOT EXISTS key_blocks (
    table_name text PRIMARY KEY,
    next_value bigint NOT NULL CHECK (next_value > 0)
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

-- Online rebalancing. A job moves every key whose shard differs between the map it started from
-- (from_version, from_map) and its target map (target_map; both ShardMaps as JSON); one step per (source,
-- destination) pair. The job row carries the lease of the proxy running it: a proxy killed at any
-- step loses the lease when it expires, and the next proxy resumes or rolls the job back from the
-- rows alone.
CREATE TABLE IF NOT EXISTS rebalance_jobs (
    job_id          bigserial PRIMARY KEY,
    target          text NOT NULL,
    from_version    bigint NOT NULL,
    from_map        jsonb NOT NULL,
    target_map      jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN
                        ('pending', 'copying', 'cutover', 'cleanup', 'done',
                         'cancelling', 'cancelled', 'failed')),
    new_version     bigint,
    cutover_attempts integer NOT NULL DEFAULT 0,
    longest_hold_ms bigint,
    error           text,
    lease_owner     text,
    lease_expires   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- At most one job that has not ended: two jobs planned from the same map would fight.
CREATE UNIQUE INDEX IF NOT EXISTS rebalance_jobs_one_active
    ON rebalance_jobs ((true)) WHERE state NOT IN ('done', 'cancelled', 'failed');

CREATE TABLE IF NOT EXISTS rebalance_steps (
    job_id          bigint NOT NULL REFERENCES rebalance_jobs (job_id) ON DELETE CASCADE,
    step_no         integer NOT NULL,
    source_shard    integer NOT NULL,
    dest_shard      integer NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN
                        ('pending', 'copying', 'synced', 'cut_over', 'cleaned', 'verified',
                         'rolled_back')),
    rows_estimated  bigint,
    rows_copied     bigint NOT NULL DEFAULT 0,
    lag_bytes       bigint,
    rows_deleted    bigint NOT NULL DEFAULT 0,
    checksum        text,
    lease_owner     text,
    lease_expires   timestamptz,
    started_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    PRIMARY KEY (job_id, step_no)
);

-- A cut-over's hold: the runner asks, every live proxy holds new statements, lets its in-flight
-- transactions finish and acknowledges; released (with the new map version, or none when the
-- attempt gave up) the proxies load that map before letting the held statements go.
CREATE TABLE IF NOT EXISTS rebalance_holds (
    hold_id      bigserial PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES rebalance_jobs (job_id) ON DELETE CASCADE,
    requested_at timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    new_version  bigint,
    -- Set by a proxy that gave up holding (its in-flight work did not finish in time): the
    -- attempt then publishes nothing.
    abandoned_by integer
);
CREATE TABLE IF NOT EXISTS rebalance_hold_acks (
    hold_id  bigint NOT NULL REFERENCES rebalance_holds (hold_id) ON DELETE CASCADE,
    node_id  integer NOT NULL,
    acked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hold_id, node_id)
);

CREATE OR REPLACE FUNCTION rebalance_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgshard_rebalance', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS rebalance_jobs_announce ON rebalance_jobs;
CREATE TRIGGER rebalance_jobs_announce AFTER INSERT OR UPDATE OF state ON rebalance_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION rebalance_announce();
DROP TRIGGER IF EXISTS rebalance_holds_announce ON rebalance_holds;
CREATE TRIGGER rebalance_holds_announce AFTER INSERT OR UPDATE ON rebalance_holds
    FOR EACH STATEMENT EXECUTE FUNCTION rebalance_announce();

-- The rebalancing job whose fence (ownership conditions on keyless statements) this proxy has
-- installed: a job copies rows only once every live proxy has it.
ALTER TABLE proxies ADD COLUMN IF NOT EXISTS fence_job bigint NOT NULL DEFAULT 0;

-- The topology: every shard's primary (as registered; after a failover shard_primaries names the
-- one in charge) and its streaming replicas. A change is a new topology_versions row plus the
-- changed rows, in one transaction; the trigger announces it and every proxy opens (or closes)
-- its pools. Seeded from the first proxy's `[[shards]]`; afterwards the catalog is the truth.
CREATE TABLE IF NOT EXISTS topology_versions (
    version    bigint PRIMARY KEY,
    change     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS topology_shards (
    shard_id      integer PRIMARY KEY CHECK (shard_id >= 0),
    host          text NOT NULL,
    port          integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    database      text NOT NULL,
    added_version bigint NOT NULL
);
-- Replicas keep their registration order (server index 1, 2, … of the shard).
CREATE TABLE IF NOT EXISTS topology_replicas (
    shard_id      integer NOT NULL REFERENCES topology_shards (shard_id) ON DELETE CASCADE,
    host          text NOT NULL,
    port          integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    added_version bigint NOT NULL,
    PRIMARY KEY (shard_id, host, port)
);

CREATE OR REPLACE FUNCTION topology_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgshard_topology', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS topology_versions_announce ON topology_versions;
CREATE TRIGGER topology_versions_announce AFTER INSERT ON topology_versions
    FOR EACH STATEMENT EXECUTE FUNCTION topology_announce();
