"""Connection storm against one proxy process for bench/storm.sh.

Opens CLIENTS connections at once (at most LOGINS_AT_ONCE in flight when given) and records each login's latency, samples the proxy's memory
(VmRSS from /proc/PID/status) with every client idle, then lets every client run `SELECT 1` in a
loop for ACTIVE_SECONDS while sampling again. Prints one line of JSON: RSS at start, idle and
active (peak of the samples) and VmHWM in MiB, login p50/p99 in ms, failed logins and queries/s.
"""

import asyncio
import json
import sys
import time

import psycopg

URL, PID, CLIENTS, ACTIVE_SECONDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
# At most this many logins in flight (0: all at once). Thousands of SCRAM logins at once on a
# 2-core machine take longer than the proxies' 60 s login timeouts.
LOGINS_AT_ONCE = int(sys.argv[5]) if len(sys.argv) > 5 else 0


def mem(field):
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def login(gate):
    async with gate:
        started = time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(URL, autocommit=True, prepare_threshold=None)
        except psycopg.Error as e:
            return None, time.monotonic() - started, str(e)
        return conn, time.monotonic() - started, None


async def busy(conn, until, counts, failures):
    n = 0
    while time.monotonic() < until:
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error as e:
            # Counted and shown, not fatal: the idle RSS above is measured already, and a client
            # whose statement timed out waiting for a server connection carries on.
            failures.append(str(e))
            continue
        n += 1
    counts.append(n)


async def main():
    start_rss = mem("VmRSS")
    gate = asyncio.Semaphore(LOGINS_AT_ONCE or CLIENTS)
    results = await asyncio.gather(*(login(gate) for _ in range(CLIENTS)))
    conns = [c for c, _, _ in results if c is not None]
    errors = [e for _, _, e in results if e is not None]
    took = sorted(t for _, t, _ in results)
    # Let the proxy settle (sessions return their server connections), then sample while idle.
    samples = []
    for _ in range(10):
        await asyncio.sleep(0.2)
        samples.append(mem("VmRSS"))
    idle_rss = samples[-1]
    counts = []
    failures = []
    until = time.monotonic() + ACTIVE_SECONDS
    load = asyncio.gather(*(busy(c, until, counts, failures) for c in conns))
    active = []
    while not load.done():
        await asyncio.sleep(0.25)
        active.append(mem("VmRSS"))
    await load
    hwm = mem("VmHWM")
    for c in conns:
        await c.close()
    print(json.dumps({
        "start_rss_mib": start_rss,
        "idle_rss_mib": idle_rss,
        "active_rss_mib": max(active) if active else float("nan"),
        "hwm_mib": hwm,
        "login_p50_ms": 1000 * took[len(took) // 2],
        "login_p99_ms": 1000 * took[min(len(took) - 1, len(took) * 99 // 100)],
        "failed_logins": len(errors),
        "first_error": errors[0] if errors else None,
        "queries_per_s": sum(counts) / ACTIVE_SECONDS,
        "failed_queries": len(failures),
        "first_query_error": failures[0] if failures else None,
    }))


asyncio.run(main())
