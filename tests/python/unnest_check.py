"""Django 5.2's bulk_create shape through pgshard with psycopg 3: INSERT … SELECT * FROM
UNNEST(arrays) RETURNING, with the arrays sent as text (%t) and binary (%b) parameters.
Prints each returned key and where the check stands; exits non-zero on the first failure."""

import sys

import psycopg

SQL = (
    'INSERT INTO "users" ("user_id", "name", "email") SELECT * FROM '
    "UNNEST(({p})::bigint[], ({p})::varchar(100)[], ({p})::text[]) "
    'RETURNING "users"."user_id", "users"."name"'
)


def main(url: str, first: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for fmt, base in (("%t", first), ("%b", first + 100)):
            ids = list(range(base, base + 12))
            names = [f"py é {i}" if i % 4 else None for i in ids]
            emails = [f'q"{i},{{x}}' for i in ids]
            rows = conn.execute(SQL.format(p=fmt), (ids, names, emails)).fetchall()
            assert rows == list(zip(ids, names)), (fmt, rows)
            got = conn.execute(
                "SELECT email FROM users WHERE user_id = %s", (ids[3],)
            ).fetchone()
            assert got == (emails[3],), got
        # Inside a block that rolls back, nothing stays.
        ids = list(range(first + 200, first + 210))
        try:
            with conn.transaction():
                conn.execute(SQL.format(p="%s"), (ids, [None] * 10, [None] * 10))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        # (A keyless read with parameters is another part of issue 12: literals here.)
        n = conn.execute(
            f"SELECT count(*) FROM users WHERE user_id BETWEEN {ids[0]} AND {ids[-1]}"
        ).fetchone()[0]
        assert n == 0, n
    print("unnest check passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
