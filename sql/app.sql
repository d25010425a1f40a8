-- The demo application's schema, applied to every shard. `users` is sharded by user_id; its key is
-- the primary key (so uniqueness is enforced per shard, and logical replication can filter on it).

CREATE TABLE IF NOT EXISTS public.users (
    user_id    bigint PRIMARY KEY,
    name       text,
    email      text,
    created_at timestamptz NOT NULL DEFAULT now()
);
