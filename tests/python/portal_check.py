"""asyncpg cursors over every shard through pgshard, with the driver's defaults: iteration (Bind and
Execute with the prefetch limit, then Execute again) and fetch(n) on a cursor object, inside a
transaction. Rows: users 1..200 named u001..u200. Exits non-zero on the first failed check."""

import asyncio
import sys

import asyncpg


async def main(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            query = "SELECT user_id, name FROM users WHERE user_id > $1 ORDER BY user_id"
            ids = [r["user_id"] async for r in conn.cursor(query, 0, prefetch=13)]
            assert ids == list(range(1, 201)), ids[:5]

        async with conn.transaction():
            cur = await conn.cursor("SELECT user_id, name FROM users ORDER BY user_id DESC")
            first = await cur.fetch(5)
            assert [tuple(r) for r in first] == [(i, f"u{i:03}") for i in range(200, 195, -1)]
            rest = await cur.fetch(300)
            assert [r[0] for r in rest] == list(range(195, 0, -1)), [r[0] for r in rest[:3]]
            assert await cur.fetchrow() is None
            assert await cur.fetch(3) == []

        async with conn.transaction():
            cur = await conn.cursor("SELECT user_id FROM users WHERE user_id <= $1 ORDER BY user_id", 10)
            assert await cur.fetchrow() == (1,)
            assert [r[0] for r in await cur.fetch(4)] == [2, 3, 4, 5]
        # The connection is usable after the transactions.
        assert await conn.fetchval("SELECT count(*) FROM users") == 200
    finally:
        await conn.close()
    print("portal check passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
