"""Read-heavy load through pgshard for bench/replicas.sh.

Each client thread loops for DURATION seconds: with probability WRITE_SHARE it updates a random
user and reads that user back at once (a read right after a write, timed on its own); otherwise it
reads a random user. Every read also returns pg_is_in_recovery(), so the share served by replicas
is counted exactly. Prints one line of JSON: ops/s, replica share, stale reads, and the p50/p99 of
reads right after writes in milliseconds.
"""

import json
import random
import sys
import threading
import time

import psycopg

URL, CLIENTS, DURATION, USERS, WRITE_SHARE = (
    sys.argv[1],
    int(sys.argv[2]),
    float(sys.argv[3]),
    int(sys.argv[4]),
    float(sys.argv[5]),
)

lock = threading.Lock()
totals = {"ops": 0, "reads": 0, "replica_reads": 0, "stale": 0}
after_write_ms = []


def client(seed):
    rng = random.Random(seed)
    ops = reads = replica = stale = 0
    timings = []
    with psycopg.connect(URL, autocommit=True) as conn:
        cur = conn.cursor()
        end = time.monotonic() + DURATION
        n = 0
        while time.monotonic() < end:
            user = rng.randint(1, USERS)
            if rng.random() < WRITE_SHARE:
                # Each client writes only its own users, so a read right after its write must
                # show exactly that write.
                user = rng.randrange(0, USERS // CLIENTS) * CLIENTS + seed + 1
                n += 1
                value = f"w{seed}-{n}"
                cur.execute("UPDATE users SET name = %s WHERE user_id = %s", (value, user))
                start = time.perf_counter()
                cur.execute(
                    "SELECT name, pg_is_in_recovery() FROM users WHERE user_id = %s", (user,)
                )
                row = cur.fetchone()
                timings.append((time.perf_counter() - start) * 1000.0)
                ops += 2
                if row is None or row[0] != value:
                    stale += 1
            else:
                cur.execute(
                    "SELECT name, pg_is_in_recovery() FROM users WHERE user_id = %s", (user,)
                )
                row = cur.fetchone()
                ops += 1
            reads += 1
            replica += 1 if row is not None and row[1] else 0
    with lock:
        totals["ops"] += ops
        totals["reads"] += reads
        totals["replica_reads"] += replica
        totals["stale"] += stale
        after_write_ms.extend(timings)


threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
after_write_ms.sort()


def pct(p):
    if not after_write_ms:
        return 0.0
    return after_write_ms[min(len(after_write_ms) - 1, int(len(after_write_ms) * p))]


print(
    json.dumps(
        {
            "ops_per_s": totals["ops"] / DURATION,
            "replica_share": totals["replica_reads"] / max(1, totals["reads"]),
            "stale": totals["stale"],
            "after_write_reads": len(after_write_ms),
            "after_write_p50_ms": pct(0.50),
            "after_write_p99_ms": pct(0.99),
        }
    )
)
