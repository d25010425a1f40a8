"""Driver checks for pgshard over several shards, run one section at a time by
tests/drivers_python.rs: `drivers_check.py SETUP.json SECTION INDEX`.

SETUP.json holds the proxy's URL, each shard's direct URL and the shard owning each key from
`first_key` on. Every section uses its own window of keys (INDEX), checks through the proxy what the driver returns and
checks directly on the shards where rows landed. Both drivers are used with their defaults.
Prints "<section> passed" at the end; any failed check raises."""

import asyncio
import datetime
import json
import sys

import asyncpg
import psycopg
from psycopg import errors

PER_SHARD = 20


class Setup:
    def __init__(self, path: str, index: int) -> None:
        with open(path) as f:
            data = json.load(f)
        self.proxy = data["proxy"]
        self.shard_urls = {int(k): v for k, v in data["shards"].items()}
        window = data["window"]
        first = data["first_key"] + index * window
        owners = data["owners"][index * window : (index + 1) * window]
        self.keys = {shard: [] for shard in self.shard_urls}
        for offset, shard in enumerate(owners):
            self.keys[shard].append(first + offset)
        for shard, keys in self.keys.items():
            assert len(keys) >= PER_SHARD, (shard, len(keys))
            del keys[PER_SHARD:]
        self.shards = sorted(self.keys)

    def key(self, shard: int, n: int = 0) -> int:
        return self.keys[shard][n]

    def all_keys(self) -> list:
        return sorted(k for keys in self.keys.values() for k in keys)

    def bounds(self) -> tuple:
        keys = self.all_keys()
        return keys[0], keys[-1]

    def shard_of(self, key: int) -> int:
        return next(s for s, keys in self.keys.items() if key in keys)

    def where(self, key: int) -> dict:
        """The shards holding `key`, read directly: {shard: name}."""
        found = {}
        for shard, url in self.shard_urls.items():
            with psycopg.connect(url, autocommit=True) as c:
                row = c.execute("SELECT name FROM users WHERE user_id = %s", (key,)).fetchone()
                if row is not None:
                    found[shard] = row[0]
        return found

    def assert_on_its_shard(self, key: int, name: str) -> None:
        got = self.where(key)
        assert got == {self.shard_of(key): name}, (key, got)

    def assert_absent(self, key: int) -> None:
        got = self.where(key)
        assert got == {}, (key, got)

    def direct_count(self, sql: str, params) -> int:
        total = 0
        for url in self.shard_urls.values():
            with psycopg.connect(url, autocommit=True) as c:
                total += c.execute(sql, params).fetchone()[0]
        return total


def insert_directly(s: Setup, rows) -> None:
    """Inserts (key, name) rows on their shards, bypassing the proxy."""
    for key, name in rows:
        with psycopg.connect(s.shard_urls[s.shard_of(key)], autocommit=True) as c:
            c.execute("INSERT INTO users (user_id, name) VALUES (%s, %s)", (key, name))


def spread(s: Setup, n: int, offset: int = 0) -> list:
    """n keys taking turns over the shards, so consecutive keys sit on different shards."""
    return [s.key(s.shards[i % len(s.shards)], offset + i // len(s.shards)) for i in range(n)]


# ---------------------------------------------------------------- psycopg 3


def psycopg_keyless_read(s: Setup) -> None:
    keys = spread(s, 12)
    insert_directly(s, [(k, f"r{k % 3}") for k in keys])
    lo, hi = s.bounds()
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        # Parse+Bind+Describe+Execute+Sync of a statement every shard runs, merged.
        n = conn.execute("SELECT count(*) FROM users WHERE user_id >= %s AND user_id <= %s", [lo, hi])
        assert n.fetchone() == (12,)
        # Binary parameters.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT count(*) FROM users WHERE user_id >= %b AND user_id <= %b", [lo, hi])
            assert cur.fetchone() == (12,)
        rows = conn.execute(
            "SELECT user_id FROM users WHERE user_id BETWEEN %s AND %s ORDER BY user_id DESC LIMIT %s",
            [lo, hi, 5],
        ).fetchall()
        assert [r[0] for r in rows] == sorted(keys, reverse=True)[:5], rows
        groups = conn.execute(
            "SELECT name, count(*), max(user_id) FROM users WHERE user_id BETWEEN %s AND %s GROUP BY name ORDER BY name",
            [lo, hi],
        ).fetchall()
        want = [
            (f"r{m}", len([k for k in keys if k % 3 == m]), max(k for k in keys if k % 3 == m))
            for m in range(3)
        ]
        assert groups == want, (groups, want)


def psycopg_keyless_write(s: Setup) -> None:
    keys = spread(s, 8)
    insert_directly(s, [(k, "before") for k in keys])
    lo, hi = s.bounds()
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        cur = conn.execute(
            "UPDATE users SET name = %s WHERE user_id BETWEEN %s AND %s AND name = %s",
            ["after", lo, hi, "before"],
        )
        assert cur.rowcount == 8, cur.rowcount
        for k in keys:
            s.assert_on_its_shard(k, "after")
        with conn.cursor(binary=True) as bcur:
            bcur.execute(
                "DELETE FROM users WHERE user_id BETWEEN %b AND %b AND user_id <> %b",
                [lo, hi, keys[0]],
            )
            assert bcur.rowcount == 7, bcur.rowcount
        for k in keys[1:]:
            s.assert_absent(k)
        s.assert_on_its_shard(keys[0], "after")


def psycopg_broadcast(s: Setup) -> None:
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text)")
        cur = conn.execute(
            "INSERT INTO countries (code, name) VALUES (%s, %s) RETURNING code", ["fr", "France"]
        )
        assert cur.fetchall() == [("fr",)]
        assert conn.execute("SELECT name FROM countries WHERE code = %s", ["fr"]).fetchone() == (
            "France",
        )
        cur = conn.execute("UPDATE countries SET name = %s WHERE code = %s", ["République", "fr"])
        assert cur.rowcount == 1, cur.rowcount
    for url in s.shard_urls.values():
        with psycopg.connect(url, autocommit=True) as c:
            got = c.execute("SELECT name FROM countries").fetchall()
            assert got == [("République",)], (url, got)


def psycopg_executemany(s: Setup) -> None:
    keys = spread(s, 16)
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (user_id, name) VALUES (%s, %s)",
                [(k, f"m{k}") for k in keys],
            )
            # With RETURNING, each statement's rows in order.
            more = spread(s, 8, offset=4)
            cur.executemany(
                "INSERT INTO users (user_id, name) VALUES (%s, %s) RETURNING user_id",
                [(k, f"m{k}") for k in more],
                returning=True,
            )
            got = []
            while True:
                got.extend(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
            assert got == more, (got, more)
    for k in keys + more:
        s.assert_on_its_shard(k, f"m{k}")


def psycopg_pipeline(s: Setup) -> None:
    a, b, c = s.key(s.shards[0]), s.key(s.shards[1]), s.key(s.shards[2])
    lo, hi = s.bounds()
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'p') RETURNING user_id", [a])
            c2 = conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'p') RETURNING user_id", [b])
            c3 = conn.execute("SELECT count(*) FROM users WHERE user_id BETWEEN %s AND %s", [lo, hi])
            c4 = conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'p') RETURNING user_id", [c])
            c5 = conn.execute(
                "UPDATE users SET name = 'q' WHERE user_id BETWEEN %s AND %s", [lo, hi]
            )
            c6 = conn.execute("SELECT name FROM users WHERE user_id = %s", [b])
        assert c1.fetchone() == (a,)
        assert c2.fetchone() == (b,)
        # Statements see what the pipeline did before them.
        n3 = c3.fetchone()
        assert n3 == (2,), n3
        assert c4.fetchone() == (c,)
        assert c5.rowcount == 3, c5.rowcount
        assert c6.fetchone() == ("q",)
        # Reads only, on three shards.
        with conn.pipeline():
            reads = [conn.execute("SELECT name FROM users WHERE user_id = %s", [k]) for k in (a, b, c)]
        assert [r.fetchone() for r in reads] == [("q",)] * 3
        # Reads whose subqueries over sharded tables pgshard runs first (SQLAlchemy's count()
        # wraps the query in one), pipelined.
        with conn.pipeline():
            derived = conn.execute(
                "SELECT count(*) FROM (SELECT user_id FROM users WHERE user_id BETWEEN %s AND %s LIMIT %s) s",
                [lo, hi, 2],
            )
            inner = conn.execute(
                "SELECT count(*) FROM users WHERE user_id IN (SELECT user_id FROM users WHERE name = %s)",
                ["q"],
            )
            keyed = conn.execute("SELECT name FROM users WHERE user_id = %s", [a])
        assert derived.fetchone() == (2,)
        assert inner.fetchone() == (3,)
        assert keyed.fetchone() == ("q",)
    for k in (a, b, c):
        s.assert_on_its_shard(k, "q")


def psycopg_pipeline_error(s: Setup) -> None:
    a, b, c = s.key(s.shards[0]), s.key(s.shards[1]), s.key(s.shards[2])
    dup = s.key(s.shards[3])
    insert_directly(s, [(dup, "exists")])
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'e')", [a])
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'e')", [b])
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'e')", [dup])
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'e')", [c])
            raise AssertionError("a duplicate key in a pipeline was accepted")
        except errors.UniqueViolation:
            pass
        # Nothing of the implicit transaction was committed, and the connection goes on.
        assert conn.execute("SELECT count(*) FROM users WHERE user_id = %s", [a]).fetchone() == (0,)
        assert conn.execute("SELECT %s::int + 1", [1]).fetchone() == (2,)
    for k in (a, b, c):
        s.assert_absent(k)
    s.assert_on_its_shard(dup, "exists")


def psycopg_pipeline_cte_and_null_keys(s: Setup) -> None:
    """A keyless DELETE in a CTE counted by its SELECT, and NULL shard keys, pipelined in the
    block psycopg opens by default."""
    keys = spread(s, 8)
    lo, hi = s.bounds()
    insert_directly(s, [(k, "cte") for k in keys])
    with psycopg.connect(s.proxy) as conn:
        with conn.pipeline():
            deleted = conn.execute(
                "WITH d AS (DELETE FROM users WHERE user_id BETWEEN %s AND %s AND name = %s"
                " RETURNING user_id) SELECT count(*), max(user_id) FROM d",
                [lo, hi, "cte"],
            )
            left = conn.execute(
                "SELECT count(*) FROM users WHERE user_id BETWEEN %s AND %s AND name = %s",
                [lo, hi, "cte"],
            )
        assert deleted.fetchone() == (len(keys), max(keys))
        assert left.fetchone() == (0,), "the block sees its own delete"
        conn.commit()
        for k in keys:
            s.assert_absent(k)
        # A NULL key, bound in a pipeline after a good insert: Postgres's not-null violation,
        # and the block (with the good insert) is rolled back.
        good = keys[0]
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'n')", [good])
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'n')", [None])
            raise AssertionError("a NULL shard key was accepted")
        except errors.NotNullViolation as e:
            assert '"user_id"' in str(e), str(e)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM users WHERE user_id = %s", [good]).fetchone() == (0,)
    s.assert_absent(keys[0])


def psycopg_transaction_two_shards(s: Setup) -> None:
    a, b = s.key(s.shards[0]), s.key(s.shards[1])
    x, y = s.key(s.shards[0], 1), s.key(s.shards[1], 1)
    # Defaults: not autocommit, so psycopg opens a block and executemany pipelines in it.
    with psycopg.connect(s.proxy) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (user_id, name) VALUES (%s, %s)", [(a, "t"), (b, "t")]
            )
            cur.execute("SELECT count(*) FROM users WHERE user_id IN (%s, %s)", [a, b])
            assert cur.fetchone() == (2,)
        conn.commit()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (user_id, name) VALUES (%s, %s)", [(x, "t"), (y, "t")]
            )
        conn.rollback()
    # Pipeline mode in a transaction: psycopg sends BEGIN with the pipeline's statements.
    z1, z2 = s.key(s.shards[2], 2), s.key(s.shards[3], 2)
    with psycopg.connect(s.proxy) as conn:
        with conn.pipeline():
            conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'z')", [z1])
            conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'z')", [z2])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.commit()
    s.assert_on_its_shard(a, "t")
    s.assert_on_its_shard(b, "t")
    s.assert_on_its_shard(z1, "z")
    s.assert_on_its_shard(z2, "z")
    s.assert_absent(x)
    s.assert_absent(y)


def psycopg_multirow_returning(s: Setup) -> None:
    keys = spread(s, 6)
    keys = [keys[3], keys[0], keys[5], keys[1], keys[4], keys[2]]
    sql = "INSERT INTO users (user_id, name) VALUES " + ", ".join(["(%s, %s)"] * 3)
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        params = [v for k in keys[:3] for v in (k, f"v{k}")]
        rows = conn.execute(sql + " RETURNING user_id, name", params).fetchall()
        assert rows == [(k, f"v{k}") for k in keys[:3]], rows
        with conn.cursor(binary=True) as cur:
            bsql = "INSERT INTO users (user_id, name) VALUES " + ", ".join(["(%b, %b)"] * 3)
            params = [v for k in keys[3:] for v in (k, f"v{k}")]
            cur.execute(bsql + " RETURNING name, user_id", params)
            assert cur.fetchall() == [(f"v{k}", k) for k in keys[3:]]
        # A row that fails on one shard: no shard keeps any row of the statement.
        fresh = spread(s, 4, offset=8)
        try:
            conn.execute(sql, [fresh[0], "f", fresh[1], "f", keys[0], "dup"])
            raise AssertionError("a duplicate key in a split INSERT was accepted")
        except errors.UniqueViolation:
            pass
        for k in fresh[:2]:
            s.assert_absent(k)
    for k in keys:
        s.assert_on_its_shard(k, f"v{k}")


# ---------------------------------------------------------------- asyncpg


async def asyncpg_fetchval_every_shard(s: Setup) -> None:
    rows = [(s.key(sh, n), f"a{sh}.{n}") for sh in s.shards for n in range(2)]
    insert_directly(s, rows)
    conn = await asyncpg.connect(s.proxy)
    try:
        for i, (k, name) in enumerate(rows):
            # A new text each time: asyncpg prepares it (Parse+Describe+Flush) before binding.
            got = await conn.fetchval(f"SELECT name FROM users WHERE user_id = $1 AND {i} = {i}", k)
            assert got == name, (k, got, name)
        # The same prepared statement for keys on every shard.
        for k, name in rows:
            assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) == name
    finally:
        await conn.close()


async def asyncpg_fetchval_in_transaction(s: Setup) -> None:
    rows = [(s.key(sh), f"b{sh}") for sh in s.shards]
    insert_directly(s, rows)
    conn = await asyncpg.connect(s.proxy)
    try:
        async with conn.transaction():
            for i, (k, name) in enumerate(rows):
                got = await conn.fetchval(f"SELECT name FROM users WHERE user_id = $1 AND {i} = {i}", k)
                assert got == name, (k, got)
            # Writes on two shards commit together.
            for k, _ in rows[:2]:
                await conn.execute("UPDATE users SET name = $2 WHERE user_id = $1", k, "tx")
        try:
            async with conn.transaction():
                for k, _ in rows[2:]:
                    await conn.execute("UPDATE users SET name = $2 WHERE user_id = $1", k, "undone")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    finally:
        await conn.close()
    for k, name in rows[:2]:
        s.assert_on_its_shard(k, "tx")
    for k, name in rows[2:]:
        s.assert_on_its_shard(k, name)


async def asyncpg_recovers_after_errors(s: Setup) -> None:
    rows = [(s.key(sh), f"c{sh}") for sh in s.shards]
    insert_directly(s, rows)
    conn = await asyncpg.connect(s.proxy)
    try:
        for i, (k, name) in enumerate(rows):
            try:
                await conn.fetchval(f"SELECT 1 / (user_id - user_id) FROM users WHERE user_id = $1 AND {i} = {i}", k)
                raise AssertionError("division by zero passed")
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            try:
                await conn.fetchval(f"SELEC name FROM users WHERE user_id = $1 AND {i} = {i}", k)
                raise AssertionError("a syntax error passed")
            except asyncpg.exceptions.PostgresSyntaxError:
                pass
            # The next statement works: no stray 25P02.
            got = await conn.fetchval(f"SELECT name FROM users WHERE user_id = $1 AND {i} = {i} + 0", k)
            assert got == name, (k, got)
        async with conn.transaction():
            k, name = rows[-1]
            assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", k) == name
    finally:
        await conn.close()


async def asyncpg_keyless_read(s: Setup) -> None:
    keys = spread(s, 8)
    insert_directly(s, [(k, "k") for k in keys])
    lo, hi = s.bounds()
    conn = await asyncpg.connect(s.proxy)
    try:
        n = await conn.fetchval("SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi)
        assert n == 8, n
        # An array parameter: asyncpg introspects its type first, reading `jit` and turning it
        # off with set_config(…, false) beside current_setting(), then setting it back.
        n = await conn.fetchval("SELECT count(*) FROM users WHERE user_id = ANY($1::bigint[])", keys)
        assert n == 8, n
        got = await conn.fetch(
            "SELECT user_id FROM users WHERE user_id BETWEEN $1 AND $2 ORDER BY user_id LIMIT $3", lo, hi, 3
        )
        assert [r[0] for r in got] == sorted(keys)[:3], got
        # SQLAlchemy's asyncpg dialect casts LIMIT/OFFSET parameters (`$1::INTEGER`): asyncpg
        # then sends them as 4 binary bytes, which the shards must be asked to read as such.
        got = await conn.fetch(
            "SELECT DISTINCT user_id FROM users WHERE user_id BETWEEN $1 AND $2 ORDER BY user_id"
            " LIMIT $3::INTEGER OFFSET $4::INTEGER",
            lo, hi, 3, 2,
        )
        assert [r[0] for r in got] == sorted(keys)[2:5], got
        n = await conn.fetchval(
            "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2 LIMIT $3::INTEGER", lo, hi, 1
        )
        assert n == 8, n
        # fetchrow/fetchval execute with a row limit: the merged rows stop there.
        first = await conn.fetchrow(
            "SELECT user_id, name FROM users WHERE user_id BETWEEN $1 AND $2 ORDER BY user_id DESC", lo, hi
        )
        assert tuple(first) == (max(keys), "k"), first
        async with conn.transaction():
            assert await conn.fetchval(
                "SELECT max(user_id) FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi
            ) == max(keys)
            status = await conn.execute(
                "UPDATE users SET name = $1 WHERE user_id BETWEEN $2 AND $3", "kk", lo, hi
            )
            assert status == "UPDATE 8", status
    finally:
        await conn.close()
    for k in keys:
        s.assert_on_its_shard(k, "kk")


async def asyncpg_interval_merge(s: Setup) -> None:
    # Intervals (asyncpg reads them in binary, psycopg in text) ordered, min/max'd and
    # DISTINCT'd over every shard, as Postgres compares them: '1 mon' equals '30 days'.
    keys = spread(s, 9)
    insert_directly(s, [(k, "i") for k in keys])
    lo, hi = s.bounds()
    took = "make_interval(days => (user_id % 3)::int, hours => (user_id % 7)::int)"
    want = {k: datetime.timedelta(days=k % 3, hours=k % 7) for k in keys}
    conn = await asyncpg.connect(s.proxy)
    try:
        got = await conn.fetch(
            f"SELECT user_id, {took} AS took FROM users WHERE user_id BETWEEN $1 AND $2"
            " ORDER BY took DESC, user_id LIMIT 4", lo, hi,
        )
        order = sorted(keys, key=lambda k: (-want[k], k))[:4]
        assert [(r[0], r[1]) for r in got] == [(k, want[k]) for k in order], got
        row = await conn.fetchrow(
            f"SELECT min({took}), max({took}) FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi
        )
        assert tuple(row) == (min(want.values()), max(want.values())), row
        same = await conn.fetch(
            "SELECT DISTINCT CASE WHEN user_id % 2 = 0 THEN interval '1 mon' ELSE interval '30 days' END"
            " FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi,
        )
        assert len(same) == 1, same
    finally:
        await conn.close()
    with psycopg.connect(s.proxy, autocommit=True) as c:
        got = c.execute(
            "SELECT user_id FROM users WHERE user_id BETWEEN %s AND %s ORDER BY "
            + took.replace("%", "%%") + ", user_id",
            (lo, hi),
        ).fetchall()
        assert [r[0] for r in got] == sorted(keys, key=lambda k: (want[k], k)), got


async def asyncpg_executemany(s: Setup) -> None:
    keys = spread(s, 12)
    conn = await asyncpg.connect(s.proxy)
    try:
        await conn.executemany(
            "INSERT INTO users (user_id, name) VALUES ($1, $2)", [(k, f"x{k}") for k in keys]
        )
        # A failure in the middle: nothing of the batch stays.
        fresh = spread(s, 4, offset=6)
        try:
            await conn.executemany(
                "INSERT INTO users (user_id, name) VALUES ($1, $2)",
                [(fresh[0], "y"), (fresh[1], "y"), (keys[0], "dup"), (fresh[2], "y")],
            )
            raise AssertionError("a duplicate key in executemany was accepted")
        except asyncpg.exceptions.UniqueViolationError:
            pass
        assert await conn.fetchval("SELECT 40 + $1::int", 2) == 42
    finally:
        await conn.close()
    for k in keys:
        s.assert_on_its_shard(k, f"x{k}")
    for k in fresh[:3]:
        s.assert_absent(k)


async def asyncpg_multirow_returning(s: Setup) -> None:
    keys = spread(s, 5)
    keys.reverse()
    sql = "INSERT INTO users (user_id, name) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8), ($9, $10) RETURNING user_id"
    params = [v for k in keys for v in (k, f"w{k}")]
    conn = await asyncpg.connect(s.proxy)
    try:
        got = await conn.fetch(sql, *params)
        assert [r[0] for r in got] == keys, (got, keys)
    finally:
        await conn.close()
    for k in keys:
        s.assert_on_its_shard(k, f"w{k}")


def psycopg_insert_without_columns(s: Setup) -> None:
    """INSERTs that name no columns (pgshard writes the table's in): bound in text and binary,
    executemany (pipelined by psycopg), a pipeline inside the block psycopg opens."""
    keys = spread(s, 12)
    with psycopg.connect(s.proxy) as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO users VALUES (%s, %s) RETURNING user_id", (keys[0], "t"))
            assert cur.fetchone() == (keys[0],)
            cur.execute(
                "INSERT INTO users VALUES (%s, %s) RETURNING name", (keys[1], "b"), binary=True
            )
            assert cur.fetchone() == ("b",)
            cur.executemany("INSERT INTO users VALUES (%s, %s)", [(k, f"e{k}") for k in keys[2:8]])
            with conn.pipeline():
                for k in keys[8:]:
                    cur.execute("INSERT INTO users VALUES (%s, %s, %s)", (k, f"p{k}", "mail"))
        conn.commit()
    s.assert_on_its_shard(keys[0], "t")
    s.assert_on_its_shard(keys[1], "b")
    for k in keys[2:8]:
        s.assert_on_its_shard(k, f"e{k}")
    for k in keys[8:]:
        s.assert_on_its_shard(k, f"p{k}")


def psycopg_default_values(s: Setup) -> None:
    """INSERT … DEFAULT VALUES (an ORM creating a row of defaults): pgshard gives the key; in the
    block psycopg opens, pipelined, text and binary; a rolled-back row is nowhere, a committed
    one on exactly one shard."""
    with psycopg.connect(s.proxy) as conn:
        with conn.cursor() as cur:
            with conn.pipeline():
                cur.execute("INSERT INTO users DEFAULT VALUES RETURNING user_id")
                gone = cur.fetchone()[0]
                cur.execute("SELECT count(*) FROM users WHERE user_id = %s", (gone,))
                assert cur.fetchone() == (1,), gone
        conn.rollback()
        with conn.cursor(binary=True) as cur:
            with conn.pipeline():
                cur.execute("INSERT INTO users DEFAULT VALUES RETURNING user_id, name")
                kept, name = cur.fetchone()
                assert name is None, name
        conn.commit()
    assert s.where(gone) == {}, gone
    assert list(s.where(kept).values()) == [None], (kept, s.where(kept))
    with psycopg.connect(s.proxy, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE user_id = %s", (kept,))
    assert s.where(kept) == {}, kept


async def asyncpg_insert_without_columns(s: Setup) -> None:
    keys = spread(s, 10)
    kept, rolled_back = keys[:8], keys[8:]
    conn = await asyncpg.connect(s.proxy)
    try:
        await conn.executemany("INSERT INTO users VALUES ($1, $2)", [(k, f"a{k}") for k in kept])
        try:
            async with conn.transaction():
                for k in rolled_back:
                    name = await conn.fetchval(
                        "INSERT INTO users VALUES ($1, $2) RETURNING name", k, "gone"
                    )
                    assert name == "gone", name
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        n = await conn.fetchval("SELECT count(*) FROM users WHERE user_id = ANY($1::bigint[])", keys)
        assert n == len(kept), n
    finally:
        await conn.close()
    for k in kept:
        s.assert_on_its_shard(k, f"a{k}")
    for k in rolled_back:
        s.assert_absent(k)


def main() -> None:
    setup_path, section, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = Setup(setup_path, index)
    check = globals()[section]
    if asyncio.iscoroutinefunction(check):
        asyncio.run(check(s))
    else:
        check(s)
    print(f"{section} passed")


if __name__ == "__main__":
    main()
