"""Named (server-side) cursors of psycopg 3 through pgshard, with the driver's defaults: a cursor
over every shard (merged in ORDER BY order), read with fetchmany/scroll/fetchone/fetchall and by
iteration, a cursor on one shard with a parameter, a binary cursor (`binary=True`: FETCH with
binary result formats) over every shard whose values equal the text cursor's and a plain query's
for every type it returns, and the refusal of a scrollable cursor over several shards. Rows:
users 1..200 named u001..u200. Exits non-zero on the first failed check."""

import sys

import psycopg
from psycopg import errors


def main(url: str, key: int) -> None:
    with psycopg.connect(url) as conn:
        with conn.cursor(name="c") as cur:
            cur.execute("SELECT user_id, name FROM users ORDER BY user_id")
            first = cur.fetchmany(5)
            assert first == [(i, f"u{i:03}") for i in range(1, 6)], first
            cur.scroll(10)
            assert cur.fetchone() == (16, "u016")
            rest = cur.fetchall()
            assert [r[0] for r in rest] == list(range(17, 201)), rest[:3]
            assert cur.fetchone() is None
        conn.commit()

        with conn.cursor(name="it") as cur:
            cur.itersize = 17
            cur.execute("SELECT user_id FROM users ORDER BY user_id DESC")
            ids = [r[0] for r in cur]
            assert ids == list(range(200, 0, -1)), ids[:5]
        conn.commit()

        with conn.cursor(name="agg") as cur:
            cur.execute("SELECT count(*), max(user_id) FROM users")
            assert cur.fetchall() == [(200, 200)]
        conn.commit()

        # A cursor over several shards with a parameter (DECLARE sent with Bind values).
        with conn.cursor(name="p") as cur:
            cur.execute(
                "SELECT user_id, name FROM users WHERE user_id > %s ORDER BY user_id", (150,)
            )
            assert cur.fetchmany(3) == [(i, f"u{i:03}") for i in range(151, 154)]
            rest = cur.fetchall()
            assert [r[0] for r in rest] == list(range(154, 201)), rest[:3]
        conn.commit()

        with conn.cursor(name="k") as cur:
            cur.execute("SELECT user_id, name FROM users WHERE user_id = %s", (key,))
            assert cur.fetchall() == [(key, f"u{key:03}")]
        conn.commit()

        # Binary FETCH of a cursor over several shards: the values of each type equal what a
        # plain (text) query and a text cursor read, NULLs included.
        typed = (
            "SELECT user_id, name, NULLIF(user_id %% 3, 0) AS maybe, user_id * 1.25 AS num,"
            " user_id / 7.0::float8 AS ratio, ARRAY[user_id, -user_id] AS pair,"
            " (user_id %% 2 = 0) AS even, '2026-01-01 00:00:00+00'::timestamptz"
            " + user_id * interval '1 minute' AS at, md5(name)::uuid AS id"
            " FROM users WHERE user_id > %s ORDER BY user_id"
        )
        expected = conn.execute(typed, (180,)).fetchall()
        assert len(expected) == 20, expected[:2]
        for binary in (False, True):
            with conn.cursor(name=f"typed_{binary}", binary=binary) as cur:
                cur.execute(typed, (180,))
                got = cur.fetchmany(6) + cur.fetchall()
                assert got == expected, (binary, got[:2], expected[:2])
            conn.commit()
        # With extra_float_digits below 1 the held text of a float is rounded: a binary FETCH of
        # it is refused rather than answered inexactly; the other columns still convert.
        conn.execute("SET extra_float_digits = 0")
        with conn.cursor(name="no_float", binary=True) as cur:
            cur.execute("SELECT user_id, name FROM users WHERE user_id > %s ORDER BY user_id", (195,))
            assert cur.fetchall() == [(i, f"u{i:03}") for i in range(196, 201)]
        conn.commit()
        try:
            with conn.cursor(name="rounded", binary=True) as cur:
                cur.execute("SELECT user_id / 7.0::float8 FROM users ORDER BY user_id")
                cur.fetchone()
            raise AssertionError("a binary FETCH of rounded floats was answered")
        except errors.FeatureNotSupported as e:
            assert "extra_float_digits" in str(e), str(e)
        conn.rollback()
        conn.execute("RESET extra_float_digits")
        conn.commit()

        try:
            with conn.cursor(name="s", scrollable=True) as cur:
                cur.execute("SELECT user_id FROM users ORDER BY user_id")
                cur.fetchone()
            raise AssertionError("a SCROLL cursor over several shards was accepted")
        except errors.FeatureNotSupported as e:
            assert "SCROLL" in str(e), str(e)
        conn.rollback()
        # The connection is usable after the refusal.
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (200,)
    print("cursor check passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
