"""LISTEN/NOTIFY through pgshard with the drivers' own APIs, run by tests/notify.rs:
`notify_check.py LISTEN_URL NOTIFY_URL` (two proxies of one cluster). psycopg 3 listens with
`conn.notifies()` and asyncpg with `add_listener`; the other proxy sends NOTIFY and pg_notify
(psycopg, server-side parameters). Prints "notify passed"; any failed check raises."""

import asyncio
import sys

import asyncpg
import psycopg


def psycopg_notifies(listen_url: str, notify_url: str) -> None:
    with psycopg.connect(listen_url, autocommit=True) as listener, psycopg.connect(
        notify_url, autocommit=True
    ) as sender:
        listener.execute("LISTEN py_jobs")
        sender.execute("NOTIFY py_jobs, 'a'")
        sender.execute("SELECT pg_notify(%s, %s)", ("py_jobs", "b"))
        with sender.transaction():
            sender.execute("NOTIFY py_jobs, 'c'")
        try:
            with sender.transaction():
                sender.execute("NOTIFY py_jobs, 'never'")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        sender.execute("NOTIFY py_jobs, 'end'")
        got = []
        for n in listener.notifies(timeout=15):
            got.append((n.channel, n.payload))
            if n.payload == "end":
                break
        want = [("py_jobs", p) for p in ["a", "b", "c", "end"]]
        assert got == want, got


async def asyncpg_listener(listen_url: str, notify_url: str) -> None:
    listener = await asyncpg.connect(listen_url)
    sender = await asyncpg.connect(notify_url)
    got = []
    done = asyncio.Event()

    def on_note(_conn, _pid, channel, payload):
        got.append((channel, payload))
        if payload == "end":
            done.set()

    await listener.add_listener("apg_jobs", on_note)
    await sender.execute("NOTIFY apg_jobs, 'x'")
    await sender.execute("SELECT pg_notify($1, $2)", "apg_jobs", "y")
    async with sender.transaction():
        await sender.execute("NOTIFY apg_jobs, 'z'")
    await sender.execute("NOTIFY apg_jobs, 'end'")
    await asyncio.wait_for(done.wait(), 15)
    assert got == [("apg_jobs", p) for p in ["x", "y", "z", "end"]], got
    await listener.remove_listener("apg_jobs", on_note)
    await listener.close()
    await sender.close()


def main() -> None:
    listen_url, notify_url = sys.argv[1], sys.argv[2]
    psycopg_notifies(listen_url, notify_url)
    asyncio.run(asyncpg_listener(listen_url, notify_url))
    print("notify passed")


if __name__ == "__main__":
    main()
