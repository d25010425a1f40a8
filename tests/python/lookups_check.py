"""psycopg 3 with its defaults against a `[[lookups]]` column, run by tests/lookups.rs:
`lookups_check.py SETUP.json` (the proxy's URL).

Writes users 1000..1020 with `execute` and `executemany`, reads each back by email (past
psycopg's prepare threshold, so the reads run prepared), rolls back a block's insert, and gets a
unique violation for a duplicate email. Prints "lookups passed" at the end; any failed check
raises."""

import json
import sys

import psycopg
import psycopg.errors


def main(path: str) -> None:
    with open(path) as f:
        setup = json.load(f)
    with psycopg.connect(setup["proxy"], autocommit=True) as conn:
        for k in range(1000, 1010):
            conn.execute(
                "INSERT INTO users (user_id, name, email) VALUES (%s, %s, %s)",
                (k, f"py{k}", f"py{k}@x"),
            )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (user_id, name, email) VALUES (%s, %s, %s)",
                [(k, f"py{k}", f"py{k}@x") for k in range(1010, 1020)],
            )
        for k in range(1000, 1020):
            row = conn.execute(
                "SELECT user_id, name FROM users WHERE email = %s", (f"py{k}@x",)
            ).fetchone()
            assert row == (k, f"py{k}"), (k, row)
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO users (user_id, name, email) VALUES (%s, %s, %s)",
                (1100, "rolled", "pyrolled@x"),
            )
        row = conn.execute(
            "SELECT user_id FROM users WHERE email = %s", ("pyrolled@x",)
        ).fetchone()
        assert row is None, row
        try:
            conn.execute(
                "INSERT INTO users (user_id, name, email) VALUES (%s, %s, %s)",
                (1101, "dup", "py1000@x"),
            )
        except psycopg.errors.UniqueViolation:
            pass
        else:
            raise AssertionError("a duplicate email was accepted")
    print("lookups passed")


if __name__ == "__main__":
    main(sys.argv[1])
