"""A transaction whose first statement fails, rolled back the way applications do it: psycopg 3's
`transaction()` and asyncpg's `transaction()`, with their default settings. Each check fails if
the rollback does not end the block (pgshard once answered it with 25P02).

Usage: txn_errors.py URL KEY_A KEY_B  (two keys of `users` that live on different shards)."""

import asyncio
import sys

import asyncpg
import psycopg
from psycopg import errors


def with_psycopg(url: str, a: int, b: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'first')", (a,))
        # The block's first statement is a duplicate key: transaction() rolls back.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'dup')", (a,))
            raise AssertionError("duplicate key accepted")
        except errors.UniqueViolation:
            pass
        row = conn.execute("SELECT name FROM users WHERE user_id = %s", (a,)).fetchone()
        assert row == ("first",), row
        # The first statement fails in the proxy-less sense: an unknown column.
        try:
            with conn.transaction():
                conn.execute("SELECT nope FROM users WHERE user_id = %s", (b,))
            raise AssertionError("unknown column accepted")
        except errors.UndefinedColumn:
            pass
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        # A savepoint (nested transaction()) rescues the block after an error.
        with conn.transaction():
            conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'b')", (b,))
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO users (user_id, name) VALUES (%s, 'dup')", (a,))
            except errors.UniqueViolation:
                pass
            conn.execute("UPDATE users SET name = 'b2' WHERE user_id = %s", (b,))
        row = conn.execute("SELECT name FROM users WHERE user_id = %s", (b,)).fetchone()
        assert row == ("b2",), row
        # Without autocommit (psycopg's default): the failed first statement, then rollback().
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SELECT 1/0 FROM users WHERE user_id = %s", (a,))
            raise AssertionError("division by zero accepted")
        except errors.DivisionByZero:
            conn.rollback()
        assert conn.execute("SELECT name FROM users WHERE user_id = %s", (a,)).fetchone() == (
            "first",
        )
        conn.commit()


async def with_asyncpg(url: str, a: int, b: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO users (user_id, name) VALUES ($1, 'dup')", a)
            raise AssertionError("duplicate key accepted")
        except asyncpg.UniqueViolationError:
            pass
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", a) == "first"
        try:
            async with conn.transaction():
                await conn.fetchval("SELECT 1/0 FROM users WHERE user_id = $1", b)
            raise AssertionError("division by zero accepted")
        except asyncpg.DivisionByZeroError:
            pass
        assert await conn.fetchval("SELECT 'after'") == "after"
        async with conn.transaction():
            await conn.execute("UPDATE users SET name = 'b3' WHERE user_id = $1", b)
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO users (user_id, name) VALUES ($1, 'x')", a)
            except asyncpg.UniqueViolationError:
                pass
        assert await conn.fetchval("SELECT name FROM users WHERE user_id = $1", b) == "b3"
    finally:
        await conn.close()


def main() -> None:
    url, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with_psycopg(url, a, b)
    asyncio.run(with_asyncpg(url, a, b))
    print("ok")


if __name__ == "__main__":
    main()
