"""psycopg 3 and asyncpg used directly as applications use them, against the database at
PGSHARD_URL: statement_timeout and cancellation (57014) with the session going on, COPY in and
out (text and binary) over a table sharded by bigint and one sharded by text, asyncpg's
copy_records_to_table / copy_from_query, a query timeout (asyncpg cancels), and LISTEN/NOTIFY
read with psycopg's notifies(). Every step prints one JSON line, {"step": name, "result": …} or
{"step": name, "error": SQLSTATE or exception name}: tests/drivers_python.rs runs it once through
pgshard and once against one plain Postgres database and compares the outputs line by line."""

import asyncio
import datetime
import json
import os
import threading
import uuid

import asyncpg
import probe_steps
import psycopg

URL = os.environ["PGSHARD_URL"]


def connect(**kw):
    return psycopg.connect(URL, sslmode="disable", **kw)


def setup():
    with connect(autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS dp_event, dp_label")
        c.execute("CREATE TABLE dp_event (id bigint PRIMARY KEY, kind text NOT NULL, n int, at timestamptz, "
                  "tags text[], doc jsonb, ref uuid)")
        c.execute("CREATE TABLE dp_label (code text PRIMARY KEY, title text, weight numeric(6,2))")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO dp_event (id, kind, n, at) VALUES (%s, %s, %s, %s)",
                            [(i, "k" + str(i % 4), i * 3, datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone.utc)
                              + datetime.timedelta(minutes=i)) for i in range(1, 41)])
        return c.execute("SELECT count(*) FROM dp_event").fetchone()[0]


def statement_timeout():
    out = []
    with connect() as c:
        c.execute("SET statement_timeout = 150")
        try:
            c.execute("SELECT count(*) FROM dp_event WHERE pg_sleep(0.05) IS NOT NULL")
            out.append("no error")
        except psycopg.Error as e:
            out.append(e.sqlstate)
        c.rollback()
        out.append(c.execute("SELECT count(*) FROM dp_event").fetchone()[0])
        c.commit()
        try:
            c.execute("UPDATE dp_event SET n = n + 1 WHERE pg_sleep(0.02) IS NOT NULL")
            out.append("no error")
        except psycopg.Error as e:
            out.append(e.sqlstate)
        c.rollback()
        out.append(c.execute("SELECT sum(n) FROM dp_event").fetchone()[0])
        c.execute("RESET statement_timeout")
        c.commit()
    return out


def statement_timeout_autocommit_keyed():
    out = []
    with connect(autocommit=True) as c:
        c.execute("SET statement_timeout = '100ms'")
        for _ in range(2):
            try:
                c.execute("SELECT pg_sleep(1), n FROM dp_event WHERE id = %s", [7])
                out.append("no error")
            except psycopg.Error as e:
                out.append(e.sqlstate)
            out.append(c.execute("SELECT n FROM dp_event WHERE id = %s", [7]).fetchone()[0])
    return out


def cancel_from_thread():
    out = []
    with connect() as c:
        done = threading.Event()

        def canceller():
            # Until the query has ended: a cancel that comes before the query reached the
            # server(s) finds nothing to cancel, so send one every 50 ms.
            while not done.wait(0.05):
                c.cancel_safe()

        t = threading.Thread(target=canceller)
        t.start()
        try:
            c.execute("SELECT count(*) FROM dp_event WHERE pg_sleep(0.1) IS NOT NULL")
            out.append("no error")
        except psycopg.Error as e:
            out.append(e.sqlstate)
        finally:
            done.set()
            t.join()
        out.append(str(c.info.transaction_status))
        c.rollback()
        out.append(c.execute("SELECT count(*), sum(n) FROM dp_event").fetchone())
        c.commit()
    return out


def copy_in_text_rows():
    with connect() as c:
        with c.cursor() as cur:
            with cur.copy("COPY dp_event (id, kind, n, tags, doc, ref) FROM STDIN") as cp:
                for i in range(100, 130):
                    cp.write_row((i, "copy", i, ["x", str(i)], json.dumps({"i": i}), uuid.UUID(int=i)))
        c.commit()
        return c.execute("SELECT count(*), sum(n), min(tags[2]), max(ref::text) FROM dp_event WHERE kind = 'copy'").fetchone()


def copy_in_binary_rollback():
    with connect() as c:
        with c.cursor() as cur:
            with cur.copy("COPY dp_event (id, kind, n) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "text", "int4"])
                for i in range(200, 220):
                    cp.write_row((i, "bin", -i))
            seen = c.execute("SELECT count(*) FROM dp_event WHERE kind = 'bin'").fetchone()[0]
        c.rollback()
        after = c.execute("SELECT count(*) FROM dp_event WHERE kind = 'bin'").fetchone()[0]
        with c.cursor() as cur:
            with cur.copy("COPY dp_event (id, kind, n) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "text", "int4"])
                for i in range(200, 220):
                    cp.write_row((i, "bin", -i))
        c.commit()
        return [seen, after, c.execute("SELECT count(*), sum(n) FROM dp_event WHERE kind = 'bin'").fetchone()]


def copy_in_text_key():
    with connect() as c:
        with c.cursor() as cur:
            with cur.copy("COPY dp_label (code, title, weight) FROM STDIN") as cp:
                for i in range(25):
                    cp.write_row((f"L{i:03}", f"label {i}\twith tab", f"{i}.5"))
        c.commit()
        rows = []
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT code, title, weight FROM dp_label ORDER BY code DESC LIMIT 5) TO STDOUT") as cp:
                cp.set_types(["text", "text", "numeric"])
                rows = [list(r) for r in cp.rows()]
        return [[r[0], r[1], str(r[2])] for r in rows]


def copy_out_binary_rows():
    with connect() as c:
        with c.cursor() as cur:
            with cur.copy("COPY dp_event (id, kind, n) TO STDOUT (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "text", "int4"])
                rows = sorted(tuple(r) for r in cp.rows())
        c.commit()
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT kind, count(*), sum(n) FROM dp_event GROUP BY kind ORDER BY kind) TO STDOUT (FORMAT BINARY)") as cp:
                cp.set_types(["text", "int8", "int8"])
                agg = [list(r) for r in cp.rows()]
        return [len(rows), rows[:3], rows[-3:], agg]


def copy_error_recovers():
    out = []
    with connect() as c:
        try:
            with c.cursor() as cur:
                with cur.copy("COPY dp_event (id, kind) FROM STDIN") as cp:
                    cp.write_row((300, "e"))
                    cp.write_row((1, "dup"))
                    cp.write_row((301, "e"))
            out.append("no error")
        except psycopg.Error as e:
            out.append(e.sqlstate)
        c.rollback()
        out.append(c.execute("SELECT count(*) FROM dp_event WHERE id IN (300, 301)").fetchone()[0])
        c.commit()
    return out


def listen_notify():
    out = []
    with connect(autocommit=True) as listener, connect(autocommit=True) as sender:
        listener.execute("LISTEN dp_chan")
        sender.execute("NOTIFY dp_chan, 'one'")
        with sender.transaction():
            sender.execute("UPDATE dp_event SET n = n WHERE id IN (1, 2, 3)")
            sender.execute("NOTIFY dp_chan, 'two'")
        sender.execute("SELECT pg_notify(%s, %s)", ["dp_chan", "three"])
        for n in listener.notifies(timeout=5, stop_after=3):
            out.append([n.channel, n.payload])
        listener.execute("UNLISTEN dp_chan")
        sender.execute("NOTIFY dp_chan, 'four'")
        out.append([[n.channel, n.payload] for n in listener.notifies(timeout=0.3)])
    return out


def pg_notify_in_block_over_shards():
    out = []
    with connect(autocommit=True) as listener, connect(autocommit=True) as sender:
        listener.execute("LISTEN dp_chan2")
        with sender.transaction():
            sender.execute("UPDATE dp_event SET n = n WHERE id IN (1, 2, 3)")
            sender.execute("SELECT pg_notify(%s, %s)", ["dp_chan2", "in block"])
        out.append([[n.channel, n.payload] for n in listener.notifies(timeout=0.5, stop_after=1)])
    return out


async def _asyncpg_steps():
    out = []
    c = await asyncpg.connect(URL)
    try:
        try:
            await c.fetch("SELECT pg_sleep(0.05), id FROM dp_event WHERE kind = 'k1'", timeout=0.2)
            out.append("no error")
        except asyncio.TimeoutError:
            out.append("timeout")
        out.append(await c.fetchval("SELECT count(*) FROM dp_event WHERE kind = 'k1'"))
        try:
            await c.execute("SET statement_timeout = 100")
            await c.fetchval("SELECT count(*) FROM dp_event WHERE pg_sleep(0.02) IS NOT NULL")
            out.append("no error")
        except asyncpg.PostgresError as e:
            out.append(e.sqlstate)
        await c.execute("RESET statement_timeout")
        out.append(await c.fetchval("SELECT count(*) FROM dp_event"))
        res = await c.copy_records_to_table("dp_event", records=[(400 + i, "rec", i, ["r"]) for i in range(20)],
                                            columns=["id", "kind", "n", "tags"])
        out.append(res)
        async with c.transaction():
            await c.copy_records_to_table("dp_label", records=[(f"R{i}", "rec", i) for i in range(12)],
                                          columns=["code", "title", "weight"])
            out.append(await c.fetchval("SELECT count(*) FROM dp_label WHERE title = 'rec'"))
        import io
        buf = io.BytesIO()
        res = await c.copy_from_query("SELECT id, n FROM dp_event WHERE kind = $1 ORDER BY id", "rec", output=buf)
        out.append([res, buf.getvalue().decode().splitlines()[:4]])
        buf = io.BytesIO()
        res = await c.copy_from_table("dp_label", output=buf, columns=["code"])
        out.append([res, sorted(buf.getvalue().decode().splitlines())[:5]])
        try:
            async with c.transaction():
                await c.copy_records_to_table("dp_event", records=[(500, "rec", 1), (400, "dup", 1)],
                                              columns=["id", "kind", "n"])
            out.append("no error")
        except asyncpg.PostgresError as e:
            out.append(e.sqlstate)
        out.append(await c.fetchval("SELECT count(*) FROM dp_event WHERE id = 500"))
    finally:
        await c.close()
    return out


def asyncpg_steps():
    return asyncio.run(_asyncpg_steps())


STEPS = [setup, statement_timeout, statement_timeout_autocommit_keyed, cancel_from_thread, copy_in_text_rows,
         copy_in_binary_rollback, copy_in_text_key, copy_out_binary_rows, copy_error_recovers, listen_notify, pg_notify_in_block_over_shards,
         asyncpg_steps]


probe_steps.run(STEPS)
