"""psycopg 3 with its defaults against tables in a schema other than public, run by
tests/schemas.rs: `schemas_check.py SETUP.json`.

SETUP.json holds the proxy's URL, each shard's direct URL, keys and the shard owning each. Keyed
INSERTs and SELECTs of `billing.invoices`, qualified and unqualified under `SET search_path =
billing`, land on the owning shard (checked directly there); with `public` first, the unqualified
name is the unsharded `public.invoices` again, also for statements psycopg has prepared by then.
Prints "schemas passed" at the end; any failed check raises."""

import json
import sys

import psycopg


def main(path: str) -> None:
    with open(path) as f:
        setup = json.load(f)
    keys = setup["keys"]
    owners = dict(zip(keys, setup["owners"]))
    shards = {int(k): v for k, v in setup["shards"].items()}
    public_rows = setup["public_rows"]
    with psycopg.connect(setup["proxy"], autocommit=True) as conn:
        half = len(keys) // 2
        for k in keys[:half]:
            conn.execute("INSERT INTO billing.invoices (id, n) VALUES (%s, %s)", (k, k % 1000))
        conn.execute("SET search_path = billing")
        for k in keys[half:]:
            conn.execute("INSERT INTO invoices (id, n) VALUES (%s, %s)", (k, k % 1000))
        # Past psycopg's prepare threshold (5): the same statement then runs prepared.
        for k in keys:
            row = conn.execute("SELECT n FROM invoices WHERE id = %s", (k,)).fetchone()
            assert row == (k % 1000,), (k, row)
        conn.execute("SET search_path = public")
        row = conn.execute("SELECT n FROM invoices WHERE id = %s", (5,)).fetchone()
        assert row == (-5,), ("public.invoices by id", row)
        total = conn.execute("SELECT count(*) FROM invoices").fetchone()
        assert total == (public_rows,), ("public.invoices", total)
        conn.execute("SET search_path = billing, public")
        row = conn.execute("SELECT n FROM invoices WHERE id = %s", (keys[0],)).fetchone()
        assert row == (keys[0] % 1000,), ("billing.invoices by id", row)
    for shard, url in shards.items():
        with psycopg.connect(url) as direct:
            mine = sorted(k for k in keys if owners[k] == shard)
            got = direct.execute(
                "SELECT id FROM billing.invoices WHERE id = ANY(%s) ORDER BY id", (keys,)
            ).fetchall()
            assert [r[0] for r in got] == mine, (shard, got, mine)
    print("schemas passed")


if __name__ == "__main__":
    main(sys.argv[1])
