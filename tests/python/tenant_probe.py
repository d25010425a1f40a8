"""A schema-per-tenant SaaS application and uuid/text keys, used through psycopg 3 and asyncpg with
their defaults against the database at PGSHARD_URL: tenants created by `CREATE SCHEMA tenant_…`
and migrated one by one (the same DDL under each tenant's search_path, django-tenants style), the
tenant switched per request on one connection by `SET search_path` (also after statements were
prepared, inside blocks by `SET LOCAL`, reset by `RESET ALL` / `DISCARD ALL` as pools do, and in
asyncpg's startup packet), joins of tenant tables with a reference table, the catalog queries ORMs
run per schema (SQLAlchemy's inspector, Django's table list), and tables sharded by uuid and text
keys read and written with text and binary parameters, arrays of keys, upserts and keyless merges
ordered by those columns. Every step prints one JSON line (probe_steps.py); probe_diff.py runs it
through pgshard and against one plain Postgres and compares them."""

import asyncio
import os
import uuid

import asyncpg
import probe_steps
import psycopg
import sqlalchemy

URL = os.environ["PGSHARD_URL"]
TENANTS = ["tenant_acme", "tenant_globex", "tenant_initech", "tenant_umbrella"]
NAMES = ["apple", "Apple", "\u00c4pfel", "banana", "Banana", "zebra", "Zebra", "\u00e9t\u00e9", "ete",
         "\u00c9t\u00e9", "a b", "ab", "a-b", "10", "9", "_x", "\u00df", "ss", "\U0001f600", ""]


def uid(i):
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"account-{i}")


def connect(**kw):
    return psycopg.connect(URL, sslmode="disable", **kw)


def error_of(c, sql):
    """The SQLSTATE `sql` fails with on `c`, or "no error"."""
    try:
        c.execute(sql)
        return "no error"
    except psycopg.Error as e:
        return e.sqlstate


def on_asyncpg(body, **kw):
    """Runs `body(conn)` on a new asyncpg connection (its defaults, `kw` added)."""
    async def go():
        conn = await asyncpg.connect(URL, ssl=False, **kw)
        try:
            return await body(conn)
        finally:
            await conn.close()
    return asyncio.run(go())


def migrate(c, tenant):
    """The same migration in each tenant, under its search_path."""
    c.execute(f"SET search_path TO {tenant}, public")
    c.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, plan_id int, "
              "account uuid, created timestamptz DEFAULT now())")
    c.execute("CREATE INDEX orders_item ON orders (item)")
    c.execute("CREATE TABLE lines (order_id int REFERENCES orders (id), n int, PRIMARY KEY (order_id, n))")
    c.execute("RESET search_path")


def setup():
    with connect(autocommit=True) as c:
        for t in TENANTS:
            c.execute(f"DROP SCHEMA IF EXISTS {t} CASCADE")
        c.execute("DROP TABLE IF EXISTS tp_account, tp_doc, tp_plan")
        c.execute("CREATE TABLE tp_plan (id int PRIMARY KEY, name text)")
        c.execute("INSERT INTO tp_plan VALUES (1, 'free'), (2, 'pro'), (3, 'enterprise')")
        c.execute("CREATE TABLE tp_account (id uuid PRIMARY KEY, name text NOT NULL, n int)")
        c.execute("CREATE TABLE tp_doc (slug text PRIMARY KEY, title text, n int)")
        for t in TENANTS:
            c.execute(f"CREATE SCHEMA {t}")
            migrate(c, t)
        return "ok"


def tenant_switching():
    out = []
    with connect(autocommit=True) as c:
        for round_ in range(3):
            for i, t in enumerate(TENANTS):
                c.execute(f"SET search_path TO {t}, public")
                c.execute("INSERT INTO orders (item, plan_id) VALUES (%s, %s)", (f"{t}-{round_}", i % 3 + 1))
                out.append(c.execute("SELECT count(*), max(item) FROM orders").fetchone())
                out.append(c.execute("SHOW search_path").fetchone()[0])
        c.execute("RESET search_path")
    return out


def prepared_after_path_change():
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS * 2:
            c.execute(f"SET search_path TO {t}, public")
            out.append(c.execute("SELECT item FROM orders WHERE id = %s", (1,), prepare=True).fetchone())
            out.append(c.execute("SELECT o.item, p.name FROM orders o JOIN tp_plan p ON p.id = o.plan_id "
                                 "ORDER BY o.id", prepare=True).fetchall())
    return out


def schema_qualified():
    with connect(autocommit=True) as c:
        out = [c.execute(f"SELECT count(*) FROM {t}.orders").fetchone() for t in TENANTS]
        out.append(c.execute("SELECT count(*) FROM tenant_acme.orders o JOIN tenant_acme.lines l "
                             "ON l.order_id = o.id").fetchone())
        out.append(c.execute('SELECT item FROM "tenant_globex"."orders" ORDER BY id').fetchall())
        return out


def set_local_in_block():
    out = []
    with connect() as c:
        for t in TENANTS:
            with c.transaction():
                c.execute(f"SET LOCAL search_path TO {t}, public")
                c.execute("INSERT INTO orders (item, plan_id) VALUES (%s, 1)", (f"local-{t}",))
                out.append(c.execute("SELECT count(*) FROM orders").fetchone())
            out.append(c.execute("SHOW search_path").fetchone())
        out.append(error_of(c, "SELECT count(*) FROM orders"))
        c.rollback()
    return out


def reset_by_pools():
    out = []
    with connect(autocommit=True) as c:
        for reset in ["RESET ALL", "DISCARD ALL", "SET search_path TO DEFAULT", "RESET search_path",
                      "DISCARD PLANS", "DISCARD SEQUENCES", "DISCARD TEMP"]:
            c.execute("SET search_path TO tenant_globex, public")
            out.append(c.execute("SELECT count(*) FROM orders").fetchone())
            c.execute(reset)
            out.append(c.execute("SHOW search_path").fetchone())
            out.append(error_of(c, "SELECT count(*) FROM orders"))
        c.execute("RESET search_path")
    return out


def discards_and_prepared_statements():
    """Statements prepared before a DISCARD, by the same client and by another one (a pool's
    next client): DISCARD ALL drops them (psycopg prepares again), the others keep them."""
    out = []
    for i, reset in enumerate(["DISCARD PLANS", "DISCARD SEQUENCES", "DISCARD TEMP", "DISCARD ALL",
                               "DEALLOCATE ALL", "RESET ALL"]):
        q = f"SELECT {i} + 1 AS n, count(*) FROM tp_plan"
        with connect(autocommit=True) as c, connect(autocommit=True) as other:
            out.append(c.execute(q, prepare=True).fetchone())
            c.execute(reset)
            out.append(other.execute(q, prepare=True).fetchone())
            out.append(c.execute(q, prepare=True).fetchone())
    return out


def pipeline_path_change():
    """A tenant switched inside a psycopg pipeline (one Sync): pgshard refuses the statements
    after the SET (0A000, a known gap) instead of preparing them under the previous path."""
    with connect(autocommit=True) as c:
        try:
            with c.pipeline():
                c.execute("SET search_path TO tenant_globex, public")
                cur = c.execute("SELECT count(*) FROM orders WHERE plan_id = %s", (2,))
            return cur.fetchone()
        finally:
            c.execute("RESET search_path")


def pipeline_path_kept():
    """A pipeline whose SET leaves every name it uses where it was runs as in Postgres."""
    with connect(autocommit=True) as c:
        with c.pipeline():
            c.execute("SET search_path TO public")
            first = c.execute("SELECT count(*) FROM tp_plan WHERE id > %s", (0,))
            c.execute("SET search_path TO tenant_acme, public")
        out = [first.fetchone(), c.execute("SELECT count(*) FROM orders").fetchone()]
        c.execute("RESET search_path")
        return out


def set_config_path():
    out = []
    with connect(autocommit=True) as c:
        out.append(c.execute("SELECT set_config('search_path', %s, false)", ("tenant_initech, public",)).fetchone())
        out.append(c.execute("SELECT count(*) FROM orders").fetchone())
        out.append(c.execute("SELECT current_schema(), current_schemas(false)").fetchone())
    return out


def join_reference():
    with connect(autocommit=True) as c:
        c.execute("SET search_path TO tenant_umbrella, public")
        return c.execute("SELECT p.name, count(o.id) FROM tp_plan p LEFT JOIN orders o ON o.plan_id = p.id "
                         "GROUP BY p.name ORDER BY p.name").fetchall()


def information_schema_per_tenant():
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS[:2]:
            out.append(c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                 "ORDER BY table_name", (t,)).fetchall())
            out.append(c.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = %s AND table_name = 'orders' ORDER BY ordinal_position",
                                 (t,)).fetchall())
        # The tenant written into a prepared statement's text (pgjdbc's DatabaseMetaData).
        out.append(c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema LIKE "
                             "'tenant\\_initech' ORDER BY 1", prepare=True).fetchall())
        # Whether one tenant exists (django-tenants' schema_exists), asked in both protocols.
        for t in TENANTS + ["tenant_none"]:
            out.append(c.execute("SELECT EXISTS(SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)",
                                 (t,)).fetchone())
            out.append(c.execute(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{t}'",
                                 prepare=False).fetchone())
    return out


def django_table_list():
    """Django's introspection.get_table_list under the tenant's search_path (django-tenants)."""
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS[:2]:
            c.execute(f"SET search_path TO {t}, public")
            out.append(c.execute("""
                SELECT c.relname,
                CASE WHEN c.relispartition THEN 'p' WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END,
                obj_description(c.oid, 'pg_class')
                FROM pg_catalog.pg_class c
                LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v')
                    AND n.nspname NOT IN ('pg_catalog', 'pg_toast')
                    AND pg_catalog.pg_table_is_visible(c.oid)
                    AND c.relname IN ('orders', 'lines')
                ORDER BY 1""").fetchall())
    return out


def sqlalchemy_inspect():
    url = "postgresql+psycopg://" + URL.split("://", 1)[1]
    engine = sqlalchemy.create_engine(url, connect_args={"sslmode": "disable"})
    try:
        insp = sqlalchemy.inspect(engine)
        out = [insp.has_schema(t) for t in TENANTS]
        for t in TENANTS[:2]:
            out.append(insp.get_table_names(schema=t))
            out.append([(col["name"], str(col["type"])) for col in insp.get_columns("orders", schema=t)])
            out.append(insp.get_pk_constraint("lines", schema=t))
            out.append(insp.get_foreign_keys("lines", schema=t))
            out.append(sorted(i["name"] for i in insp.get_indexes("orders", schema=t)))
        return out
    finally:
        engine.dispose()


def migration_add_column():
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS:
            c.execute(f"SET search_path TO {t}, public")
            c.execute("ALTER TABLE orders ADD COLUMN note text DEFAULT 'n'")
            out.append(c.execute("SELECT note FROM orders ORDER BY id LIMIT 1").fetchone())
        c.execute("RESET search_path")
    return out


def asyncpg_startup_path():
    async def go():
        res = []
        for t in TENANTS:
            conn = await asyncpg.connect(URL, ssl=False, server_settings={"search_path": f"{t}, public"})
            try:
                res.append(await conn.fetchval("SHOW search_path"))
                res.append(await conn.fetchval("SELECT count(*) FROM orders"))
                res.append(list(await conn.fetchrow("SELECT item FROM orders WHERE id = $1", 1)))
                await conn.execute("SET search_path TO tenant_acme, public")
                res.append(list(await conn.fetchrow("SELECT item FROM orders WHERE id = $1", 1)))
            finally:
                await conn.close()
        return res
    return asyncio.run(go())


def asyncpg_pool_tenants():
    async def go():
        res = []
        pool = await asyncpg.create_pool(URL, ssl=False, min_size=2, max_size=2)
        try:
            for t in TENANTS * 2:
                async with pool.acquire() as conn:
                    await conn.execute(f"SET search_path TO {t}, public")
                    res.append(await conn.fetchval("SELECT count(*) FROM orders WHERE plan_id = $1", 1))
                    async with conn.transaction():
                        await conn.execute("SET LOCAL search_path TO tenant_acme, public")
                        res.append(await conn.fetchval("SELECT count(*) FROM orders WHERE plan_id = $1", 1))
                    res.append(await conn.fetchval("SELECT count(*) FROM orders WHERE plan_id = $1", 1))
        finally:
            await pool.close()
        return res
    return asyncio.run(go())


def uuid_keys_text_and_binary():
    out = []
    with connect(autocommit=True) as c:
        with c.cursor() as cur:
            cur.executemany("INSERT INTO tp_account (id, name, n) VALUES (%s, %s, %s)",
                            [(uid(i), NAMES[i % len(NAMES)], i) for i in range(40)])
        for i in (0, 7, 33):
            out.append(c.execute("SELECT name, n FROM tp_account WHERE id = %s", (uid(i),)).fetchone())
            out.append(c.execute("SELECT name, n FROM tp_account WHERE id = %s", (uid(i),), binary=True).fetchone())
            out.append(c.execute("SELECT name, n FROM tp_account WHERE id = %s::uuid", (str(uid(i)).upper(),)).fetchone())
        with c.cursor(binary=True) as cur:
            cur.execute("SELECT n FROM tp_account WHERE id = ANY(%s) ORDER BY n", ([uid(i) for i in range(0, 40, 3)],))
            out.append(cur.fetchall())
        out.append(c.execute("SELECT n FROM tp_account WHERE id = ANY(%s) ORDER BY n",
                             ([uid(i) for i in range(1, 40, 5)],)).fetchall())
        out.append(c.execute("SELECT n FROM tp_account WHERE id IN (%s, %s, %s) ORDER BY n",
                             (uid(2), uid(3), uid(30))).fetchall())
    return out


def asyncpg_uuid_text_keys():
    async def body(conn):
        res = []
        for i in (1, 8, 21):
            res.append(list(await conn.fetchrow("SELECT name, n FROM tp_account WHERE id = $1", uid(i))))
        rows = await conn.fetch("SELECT n FROM tp_account WHERE id = ANY($1::uuid[]) ORDER BY n",
                                [uid(i) for i in range(0, 40, 4)])
        res.append([r[0] for r in rows])
        rows = await conn.fetch("SELECT n FROM tp_account WHERE id = ANY($1) ORDER BY n",
                                [str(uid(i)) for i in range(0, 40, 6)])
        res.append([r[0] for r in rows])
        await conn.executemany("INSERT INTO tp_doc (slug, title, n) VALUES ($1, $2, $3)",
                               [(NAMES[i] + "-" + str(i), NAMES[i], i) for i in range(len(NAMES))])
        rows = await conn.fetch("SELECT n FROM tp_doc WHERE slug = ANY($1::text[]) ORDER BY n",
                                [NAMES[i] + "-" + str(i) for i in range(0, len(NAMES), 3)])
        res.append([r[0] for r in rows])
        res.append(await conn.fetchval("SELECT title FROM tp_doc WHERE slug = $1", NAMES[2] + "-2"))
        # Upserts on the uuid key, binary parameters.
        for i in (3, 50):
            r = await conn.fetchrow("INSERT INTO tp_account (id, name, n) VALUES ($1, $2, $3) "
                                    "ON CONFLICT (id) DO UPDATE SET n = tp_account.n + excluded.n "
                                    "RETURNING name, n, (xmax = 0) AS inserted", uid(i), "upserted", 100)
            res.append(list(r))
        return res
    return on_asyncpg(body)


def keyless_order_by_uuid_and_text():
    with connect(autocommit=True) as c:
        out = [c.execute("SELECT id, n FROM tp_account ORDER BY id").fetchall()]
        out.append(c.execute("SELECT id FROM tp_account ORDER BY id DESC LIMIT 5").fetchall())
        out.append(c.execute("SELECT name, n FROM tp_account ORDER BY name, n").fetchall())
        out.append(c.execute("SELECT name FROM tp_account ORDER BY name DESC, n LIMIT 7").fetchall())
        out.append(c.execute("SELECT slug FROM tp_doc ORDER BY slug").fetchall())
        out.append(c.execute("SELECT title, count(*) FROM tp_doc GROUP BY title ORDER BY title").fetchall())
        out.append(c.execute("SELECT min(name), max(name), min(id::text), max(id::text) FROM tp_account").fetchone())
        out.append(c.execute("SELECT lower(name) FROM tp_account ORDER BY lower(name), n LIMIT 10").fetchall())
        out.append(c.execute("SELECT DISTINCT name FROM tp_account ORDER BY name").fetchall())
        return out


def asyncpg_keyless_order():
    async def body(conn):
        res = [[str(r[0]) for r in await conn.fetch("SELECT id FROM tp_account ORDER BY id")]]
        res.append([r[0] for r in await conn.fetch("SELECT name FROM tp_account ORDER BY name, n")])
        res.append([r[0] for r in await conn.fetch(
            "SELECT name FROM tp_account WHERE n > $1 ORDER BY name DESC, n LIMIT 9", 5)])
        return res
    return on_asyncpg(body)


def generated_uuid_keys():
    with connect(autocommit=True) as c:
        c.execute("ALTER TABLE tp_account ALTER COLUMN id SET DEFAULT gen_random_uuid()")
        rows = c.execute("INSERT INTO tp_account (name, n) VALUES ('gen', 1), ('gen', 2), ('gen', 3) "
                         "RETURNING id, n").fetchall()
        back = [c.execute("SELECT n FROM tp_account WHERE id = %s", (r[0],)).fetchone() for r in rows]
        return [len(rows), [r[1] for r in rows], back, all(isinstance(r[0], uuid.UUID) for r in rows)]


def tenant_uuid_column():
    with connect(autocommit=True) as c:
        c.execute("SET search_path TO tenant_acme, public")
        c.execute("UPDATE orders SET account = %s WHERE id = 1", (uid(7),), binary=True)
        return c.execute("SELECT o.item, p.item FROM orders o JOIN tenant_acme.orders p ON p.id = o.id "
                         "WHERE o.account = %s", (uid(7),)).fetchall()


def sequences_and_names():
    """Relation-free statements about the current tenant: its sequences and names."""
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS[:3]:
            c.execute(f"SET search_path TO {t}, public")
            out.append(c.execute("SELECT pg_get_serial_sequence('orders', 'id')").fetchone())
            out.append(c.execute("SELECT 'orders'::regclass::text, to_regclass('lines') IS NOT NULL").fetchone())
            out.append(c.execute("SELECT nextval('orders_id_seq') > 0, currval('orders_id_seq') > 0").fetchone())
            out.append(c.execute("SELECT %s::regclass::text", ("orders",)).fetchone())
        c.execute("RESET search_path")
    return out


def copy_into_tenant():
    out = []
    with connect(autocommit=True) as c:
        for t in TENANTS[1:3]:
            c.execute(f"SET search_path TO {t}, public")
            with c.cursor() as cur:
                with cur.copy("COPY orders (item, plan_id) FROM STDIN") as cp:
                    for i in range(5):
                        cp.write_row((f"copied-{t}-{i}", 2))
                rows = []
                with cur.copy("COPY (SELECT item FROM orders WHERE item LIKE 'copied%%' ORDER BY item) TO STDOUT") as cp:
                    for row in cp.rows():
                        rows.append(row)
                out.append(rows)
            out.append(c.execute("SELECT count(*) FROM orders").fetchone())
        c.execute("RESET search_path")
    return out


def block_over_two_tenants():
    out = []
    with connect() as c:
        with c.transaction():
            c.execute("INSERT INTO tenant_acme.orders (item, plan_id) VALUES ('two-a', 3)")
            c.execute("INSERT INTO tenant_globex.orders (item, plan_id) VALUES ('two-g', 3)")
            c.execute("INSERT INTO tenant_initech.orders (item, plan_id) VALUES ('two-i', 3)")
        try:
            with c.transaction():
                c.execute("INSERT INTO tenant_acme.orders (item, plan_id) VALUES ('gone-a', 3)")
                c.execute("INSERT INTO tenant_globex.orders (id, item) VALUES (1, 'dup')")
        except psycopg.Error as e:
            out.append(e.sqlstate)
        for t in TENANTS:
            out.append(c.execute(f"SELECT count(*) FROM {t}.orders WHERE plan_id = 3").fetchone())
        c.commit()
    return out


def path_in_rolled_back_blocks():
    out = []
    with connect() as c:
        c.execute("SET search_path TO tenant_acme, public")
        c.commit()
        c.execute("SET search_path TO tenant_globex, public")
        out.append(c.execute("SELECT current_schema(), count(*) FROM orders").fetchone())
        c.rollback()
        out.append(c.execute("SELECT current_schema(), count(*) FROM orders").fetchone())
        c.commit()
        c.execute("SELECT 1")
        c.execute("SAVEPOINT s")
        c.execute("SET search_path TO tenant_initech, public")
        out.append(c.execute("SELECT current_schema(), count(*) FROM orders").fetchone())
        c.execute("ROLLBACK TO SAVEPOINT s")
        out.append(c.execute("SELECT current_schema(), count(*) FROM orders").fetchone())
        c.commit()
        out.append(c.execute("SHOW search_path").fetchone())
        c.commit()
    return out


def tenant_utility_statements():
    """Migrations' other DDL under the tenant's path, grants and comments on the schema, and
    functions reading a tenant's relation by its qualified name."""
    out = []
    with connect(autocommit=True) as c:
        t = "tenant_globex"
        for sql in [f"GRANT USAGE ON SCHEMA {t} TO PUBLIC",
                    f"GRANT SELECT ON ALL TABLES IN SCHEMA {t} TO PUBLIC",
                    f"ALTER DEFAULT PRIVILEGES IN SCHEMA {t} GRANT SELECT ON TABLES TO PUBLIC",
                    f"COMMENT ON SCHEMA {t} IS 'globex'"]:
            out.append(c.execute(sql).statusmessage)
        out.append(c.execute(f"SELECT obj_description('{t}'::regnamespace)").fetchone())
        out.append(c.execute("SELECT pg_total_relation_size(%s) > 0, has_table_privilege(%s, 'SELECT')",
                             (f"{t}.orders", f'"{t}"."orders"')).fetchone())
        c.execute(f"SET search_path TO {t}, public")
        for sql in ["CREATE TABLE archive (LIKE orders INCLUDING ALL)",
                    "INSERT INTO archive SELECT * FROM orders",
                    "ALTER TABLE archive RENAME TO archived",
                    "ALTER TABLE archived RENAME COLUMN item TO thing",
                    "CREATE SEQUENCE ticket_seq START 100",
                    "CREATE VIEW recent AS SELECT id, item FROM orders",
                    "CREATE MATERIALIZED VIEW order_total AS SELECT count(*) AS n FROM orders",
                    "CREATE FUNCTION order_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM orders'"]:
            out.append(c.execute(sql).statusmessage)
        out.append(c.execute("SELECT nextval('ticket_seq'), order_count(), (SELECT count(*) FROM recent)").fetchone())
        out.append(c.execute("SELECT count(*), min(thing) FROM archived").fetchone())
        out.append(c.execute("SELECT n FROM order_total").fetchone())
        out.append(c.execute("SELECT order_count(), (SELECT count(*) FROM tp_plan)").fetchone())
        for sql in ["DROP FUNCTION order_count()", "DROP MATERIALIZED VIEW order_total", "DROP VIEW recent",
                    "DROP SEQUENCE IF EXISTS ticket_seq", "DROP TABLE IF EXISTS archived"]:
            out.append(c.execute(sql).statusmessage)
        out.append(c.execute("SELECT to_regclass('archived') IS NULL, to_regclass('ticket_seq') IS NULL").fetchone())
        c.execute("RESET search_path")
    return out


steps = [setup, tenant_switching, prepared_after_path_change, schema_qualified, set_local_in_block, reset_by_pools,
         discards_and_prepared_statements, pipeline_path_change, pipeline_path_kept,
         set_config_path, join_reference, information_schema_per_tenant, django_table_list, sqlalchemy_inspect,
         migration_add_column, asyncpg_startup_path, asyncpg_pool_tenants, uuid_keys_text_and_binary,
         asyncpg_uuid_text_keys, keyless_order_by_uuid_and_text, asyncpg_keyless_order, generated_uuid_keys,
         tenant_uuid_column, sequences_and_names, copy_into_tenant, block_over_two_tenants,
         path_in_rolled_back_blocks, tenant_utility_statements]

if __name__ == "__main__":
    probe_steps.run(steps, database_error=(psycopg.Error, asyncpg.PostgresError))
